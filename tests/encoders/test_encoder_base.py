"""Transform, pooling, precision and registry behaviour of the encoder base classes."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mixmag.encoders import ENCODERS, EncoderMeta, TileTransform, build_encoder, register_encoder


def test_transform_normalises_and_resizes() -> None:
    t = TileTransform(input_px=112, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    tiles = torch.full((3, 224, 224, 3), 255, dtype=torch.uint8)
    x = t(tiles)
    assert x.shape == (3, 3, 112, 112) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="uint8"):
        t(tiles.float())


def test_importing_the_registry_does_not_import_vendor_libraries() -> None:
    code = "import sys, mixmag.encoders as e; assert len(e.ENCODERS) >= 10; print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bf16_autocast_matches_fp32() -> None:
    """The reduced precision used on CPU keeps embeddings at cosine >= 0.999 (tiny ViT, real-ish input)."""
    fp32 = build_encoder("tiny.vit-d32", precision="fp32")
    bf16 = build_encoder("tiny.vit-d32", precision="bf16")
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    tiles = torch.randint(0, 256, (4, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a, b = fp32.encode(tiles), bf16.encode(tiles)
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() >= 0.999


def test_cpu_batches_run_in_bounded_slices_with_the_same_embeddings(monkeypatch) -> None:
    enc = build_encoder("tiny.vit-d32", precision="fp32")
    tiles = torch.randint(0, 256, (37, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    whole = enc.encode(tiles[:8])  # at most cpu_max_batch: one call
    seen: list[int] = []
    forward = enc.forward
    monkeypatch.setattr(enc, "forward", lambda x: (seen.append(x.shape[0]), forward(x))[1])
    out = enc.encode(tiles)
    assert seen == [16, 16, 5] and out.shape == (37, enc.embed_dim)
    torch.testing.assert_close(out[:8], whole, rtol=1e-4, atol=1e-5)


def test_cpu_slice_comes_from_the_registry_entry() -> None:
    """Convnets with large feature maps run fewer tiles per CPU call than ViTs (activation memory)."""
    assert build_encoder("efficientnet-lite0-imagenet", random_weights=True).cpu_max_batch == 4
    assert build_encoder("tiny.vit-d32").cpu_max_batch == ENCODERS.get("tiny.vit-d32").cpu_max_batch == 16


def test_transform_is_exactly_the_published_normalisation() -> None:
    """The in-place transform equals ((x / 255) - mean) / std, laid out channels-last."""
    enc = build_encoder("tiny.vit-d32")
    tiles = torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor(enc.meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(enc.meta.std).view(1, 3, 1, 1)
    expected = (tiles.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    got = enc.transform(tiles)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_reused_cpu_input_buffer_never_leaks_between_batches() -> None:
    """encode() writes CPU batches into one kept buffer: results equal a fresh encoder's, batch by batch."""
    enc, fresh = build_encoder("tiny.vit-d32"), build_encoder("tiny.vit-d32")
    g = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, 256, (n, 224, 224, 3), dtype=torch.uint8, generator=g) for n in (6, 6, 4, 6)]
    for tiles in batches:
        torch.testing.assert_close(enc.encode(tiles), fresh.encode(tiles.clone()), rtol=0, atol=0)
        fresh._cpu_inputs.clear()  # the reference never reuses
    buf = enc._cpu_inputs[threading.get_ident()]  # this thread's buffer (one per calling thread)
    assert buf.shape == (6, 3, 224, 224) and len(enc._cpu_inputs) == 1
    torch.testing.assert_close(enc.transform(batches[0], out=buf), enc.transform(batches[0]), rtol=0, atol=0)


def test_threads_encoding_at_once_each_get_their_own_input_buffer() -> None:
    """Thread policy split runs encode() in several threads: a shared buffer would mix their tiles."""
    enc = build_encoder("tiny.d16")
    g = torch.Generator().manual_seed(4)
    parts = [torch.randint(0, 256, (4, 224, 224, 3), dtype=torch.uint8, generator=g) for _ in range(6)]
    alone = [enc.encode(p) for p in parts]
    with ThreadPoolExecutor(3) as pool:
        for _ in range(3):
            together = list(pool.map(enc.encode, parts))
            assert all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))


def test_plugin_style_registration_and_duplicate_keys() -> None:
    meta = EncoderMeta(key="test.linear-probe", family="Tests", embed_dim=4, pooling="avgpool")

    @register_encoder(meta)
    def _probe(**overrides):
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4))

    try:
        enc = build_encoder("test.linear-probe")
        assert enc.encode(torch.zeros(2, 224, 224, 3, dtype=torch.uint8)).shape == (2, 4)
        with pytest.raises(ValueError, match="duplicate"):
            register_encoder(meta)(_probe)
    finally:
        ENCODERS._entries.pop("test.linear-probe")
    with pytest.raises(ValueError, match="unknown pooling"):
        register_encoder(EncoderMeta(key="test.bad", family="x", embed_dim=1, pooling="max"))


def test_metadata_of_published_models() -> None:
    v2 = ENCODERS.meta("virchow2")
    assert (v2.embed_dim, v2.pooling, v2.gated, v2.hf_repo) == (2560, "cls+mean", True, "paige-ai/Virchow2")
    hopt = ENCODERS.meta("h-optimus-0")
    assert hopt.mean == (0.707223, 0.578729, 0.703617) and hopt.std == (0.211883, 0.230117, 0.177517)
    lite = ENCODERS.meta("efficientnet-lite0-imagenet")
    assert lite.default_weights == "package" and "NOT a pathology model" in lite.weights_note


def test_zoo_table_in_docs_is_current(tmp_path) -> None:
    """docs/encoders.md holds the table generated from the registry (regenerate with the catalog module)."""
    from pathlib import Path

    from mixmag.encoders.catalog import update_doc

    doc = Path(__file__).resolve().parents[2] / "docs" / "encoders.md"
    copy = tmp_path / "encoders.md"
    copy.write_text(doc.read_text(encoding="utf-8"), encoding="utf-8")
    assert not update_doc(copy), "run: python -m mixmag.encoders.catalog docs/encoders.md"
