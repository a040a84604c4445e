from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mixmag.geometry import RegionSpec
from mixmag.io.features import FeatureFile
from mixmag.io.h5common import FormatError
from mixmag.io.manifest import read_manifest
from mixmag.io.region_embeddings import RegionEmbeddingFile
from mixmag.region.checkpoints import (
    LayoutMismatchError,
    load_region_encoder,
    resolve_checkpoint,
    save_region_checkpoint,
)
from mixmag.region.encode import encode_regions
from mixmag.region.model import build_region_encoder
from mixmag.region.pretrain import pretrain_region_encoder
from mixmag.synth.region_features import write_synthetic_feature_cohort

TRIDENT_COORDS_ATTRS = {"patch_size", "patch_size_level0", "level0_magnification", "target_magnification",
                        "overlap", "level0_width", "level0_height", "name", "savetodir"}


@pytest.fixture(scope="module")
def mem_run(small_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mem_run")
    pretrain_region_encoder(small_features, out, objective="mem", preset="tiny", steps=3, batch_size=8,
                            num_workers=0, progress=False, device="cpu", checkpoint_every=0)
    return out


def _trident_read(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """What TRIDENT/CLAM-style loaders do: plain h5py, `features` + `coords` + coords attrs."""
    with h5py.File(path, "r") as f:
        return f["features"][:], f["coords"][:], dict(f["coords"].attrs)


def test_checkpoint_roundtrip(mem_run: Path, tmp_path: Path) -> None:
    encoder, info = load_region_encoder(mem_run)  # a run folder resolves to its final checkpoint
    assert resolve_checkpoint(mem_run) == mem_run / "final"
    assert {"objective", "spec", "tile_dim", "config", "step", "target_mean", "target_std",
            "checkpoint_hash"} <= set(info)
    assert info["objective"] == "mem" and info["step"] == 3 and info["spec"] == RegionSpec()
    assert info["target_mean"].shape == (16,) and (info["target_std"] > 0).all()
    assert not encoder.training
    meta = json.loads((mem_run / "final" / "config.json").read_text())
    assert meta["config"]["settings"]["mask_ratio"] == 0.5
    # saving a bare (e.g. fine-tuned) encoder and loading it back gives the same function
    x, valid = torch.randn(2, 21, 16), torch.rand(2, 21) > 0.2
    path = save_region_checkpoint(tmp_path / "ft", model=encoder, step=7, config={"note": "finetuned"},
                                  target_mean=None, target_std=None, spec=RegionSpec(), objective="finetuned")
    back, info2 = load_region_encoder(path / "model.safetensors")
    torch.testing.assert_close(back(x, valid), encoder(x, valid), rtol=0, atol=0)
    assert (info2["step"], info2["objective"], info2["target_mean"]) == (7, "finetuned", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # no temporary folders left
    with pytest.raises(FormatError, match="no region-encoder checkpoint"):
        load_region_encoder(tmp_path / "nothing")


@pytest.mark.parametrize("mode", ["cls", "tokens"])
def test_encode_outputs_load_like_trident_files_and_are_deterministic(
        mem_run: Path, small_features: Path, tmp_path: Path, mode: str) -> None:
    summary = encode_regions(small_features, mem_run, tmp_path / "a", mode=mode, batch_size=5, progress=False,
                             device="cpu")
    assert (summary.n_ok, summary.n_empty, summary.n_error) == (4, 1, 0)
    encode_regions(small_features, mem_run, tmp_path / "b", mode=mode, batch_size=64, progress=False,
                   device="cpu")
    same = encode_regions(small_features, mem_run, tmp_path / "c", mode=mode, batch_size=5, progress=False,
                          device="cpu")
    _, info = load_region_encoder(mem_run)
    t, w = 21, info["width"]
    for path in summary.files:
        feats, coords, attrs = _trident_read(path)
        feats_b, coords_b, _ = _trident_read(tmp_path / "b" / path.name)
        np.testing.assert_array_equal(feats, _trident_read(same.out_dir / path.name)[0])  # bit-identical rerun
        np.testing.assert_allclose(feats, feats_b, rtol=1e-3, atol=1e-3)  # other batch size, same numbers
        np.testing.assert_array_equal(coords, coords_b)
        assert set(attrs) >= TRIDENT_COORDS_ATTRS
        ff = FeatureFile(small_features / path.name)
        r = ff.n_regions
        assert feats.shape == ((r, w) if mode == "cls" else (r * t, w)) and coords.shape == (feats.shape[0], 2)
        with h5py.File(path) as f:
            assert f.attrs["artifact"] == "region_embeddings" and f.attrs["format_version"] == 1
            assert f.attrs["checkpoint_hash"] == info["checkpoint_hash"] and f.attrs["objective"] == "mem"
            assert f.attrs["source_feature_file"] == str(small_features / path.name)
            assert json.loads(f.attrs["encoder_config"])["width"] == w
            np.testing.assert_array_equal(f["region_coords"][:], ff.index.coords)
        if r and mode == "tokens":
            # flattened rows are region-major; coords are each token's own tile top-left
            offsets = ff.index.token_offsets_level0()
            np.testing.assert_array_equal(coords[t + 6], ff.index.coords[1] + offsets[6])
            emb = RegionEmbeddingFile(path)
            tokens, valid = emb.read([1, 0])
            np.testing.assert_array_equal(tokens[0].reshape(-1, w), feats[t:2 * t].astype(np.float32))
            np.testing.assert_array_equal(valid, ff.index.tile_valid[[1, 0]])
            assert attrs["patch_size"] == 224 and attrs["patch_size_level0"] == 448
        elif r:
            assert attrs["patch_size"] == 896 and attrs["patch_size_level0"] == 1792
            with torch.no_grad():
                x, valid = ff.read(slice(0, 2))
                expected = load_region_encoder(mem_run)[0](torch.from_numpy(x), torch.from_numpy(valid))
            np.testing.assert_allclose(feats[:2], expected.numpy(), rtol=1e-5, atol=1e-5)
    resumed = encode_regions(small_features, mem_run, tmp_path / "a", mode=mode, progress=False, device="cpu")
    assert resumed.n_skipped == 5 and resumed.n_ok == 0
    rows = read_manifest(tmp_path / "a" / "manifest.csv")
    assert {r["status"] for r in rows.values()} == {"skipped"}


def test_encode_continues_past_a_bad_slide(mem_run: Path, tmp_path: Path) -> None:
    paths = write_synthetic_feature_cohort(tmp_path / "f", n_slides=3, regions_per_slide=4)
    with h5py.File(paths[1], "a") as f:
        f["tile_features"][0, 0, 0] = np.inf
    (tmp_path / "f" / "broken.h5").write_bytes(b"not an hdf5 file")
    summary = encode_regions(tmp_path / "f", mem_run, tmp_path / "out", progress=False, device="cpu")
    assert (summary.n_ok, summary.n_error) == (2, 2)
    assert "NaN/inf" in summary.errors["slide0001"] and "not a readable HDF5" in summary.errors["broken"]
    assert not (tmp_path / "out" / "slide0001.h5").exists()  # nothing half-written


def test_encode_with_a_checkpoint_of_another_layout_fails_clearly(mem_run: Path, tmp_path: Path) -> None:
    write_synthetic_feature_cohort(tmp_path / "f17", n_slides=1, regions_per_slide=3, spec=RegionSpec(mpps=(2.0, 0.5)))
    with pytest.raises(LayoutMismatchError, match="17 tokens per region != checkpoint's 21"):
        encode_regions(tmp_path / "f17", mem_run, tmp_path / "o", progress=False, device="cpu")
    write_synthetic_feature_cohort(tmp_path / "d8", n_slides=1, regions_per_slide=3, tile_dim=8)
    with pytest.raises(LayoutMismatchError, match="tile embedding dim 8 != checkpoint's 16"):
        encode_regions(tmp_path / "d8", mem_run, tmp_path / "o", progress=False, device="cpu")


def test_other_layouts_train_and_encode_end_to_end(tmp_path: Path) -> None:
    spec = RegionSpec(region_um=896.0)  # 2x2 region of 5x tiles: 4 + 16 + 64 tokens
    write_synthetic_feature_cohort(tmp_path / "f", n_slides=2, regions_per_slide=6, spec=spec, tile_dim=8)
    result = pretrain_region_encoder(tmp_path / "f", tmp_path / "run", objective="cmem", preset="tiny",
                                     position="sincos", steps=2, batch_size=4, num_workers=0, progress=False,
                                     device="cpu", checkpoint_every=0)
    summary = encode_regions(tmp_path / "f", result.checkpoint, tmp_path / "emb", mode="tokens", progress=False,
                             device="cpu")
    emb = RegionEmbeddingFile(summary.files[0])
    assert emb.read()[0].shape == (6, 84, 32) and emb.spec == spec
    fresh = build_region_encoder(tile_dim=8, spec=spec, preset="tiny", position="sincos")
    assert fresh.n_tokens == 84
