"""The extraction engine on hand-made region indexes with a fake tile source (no slide reader needed)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from mixmag.embed import (
    EmbedConfigError,
    SlideEmbeddingError,
    discover_jobs,
    embed_slides,
    parse_shard,
)
from mixmag.embed.claims import ClaimBoard, ClaimOwner
from mixmag.encoders import ENCODERS, EncoderMeta, build_encoder, register_encoder
from mixmag.io.features import FeatureFile
from mixmag.io.manifest import read_manifest
from mixmag.io.regions import write_region_index
from mixmag.utils.hashing import sha256_file

torch.set_num_threads(1)


def _features(path):
    with FeatureFile(path) as ff:
        return ff.read()[0]


def test_every_tile_is_embedded_with_provenance(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"a": 3, "b": 5})
    out = tmp_path / "feats"
    summary = embed_slides(src, out, **kit.run)
    assert sorted(summary.ok) == ["a", "b"] and not summary.errors
    assert summary.n_tiles == 8 * 21 and summary.precision == "fp32"
    enc = build_encoder("tiny.d16")
    for slide_id, n in (("a", 3), ("b", 5)):
        ff = FeatureFile(out / f"{slide_id}.h5")
        feats, valid = ff.read()
        assert feats.shape == (n, 21, 16) and ff.encoder == "tiny.d16"
        index = kit.make_index(slide_id, n, seed=0 if slide_id == "a" else 1)
        np.testing.assert_array_equal(valid, index.tile_valid)
        np.testing.assert_array_equal(ff.index.coords, index.coords)
        # batches of 16 tiles mix regions and slides; each row still is its own tile's embedding
        direct = np.stack([enc.encode(torch.from_numpy(kit.fake_region_tiles(slide_id, r))).numpy() for r in range(n)])
        np.testing.assert_allclose(feats, direct.astype(np.float16).astype(np.float32), rtol=2e-3, atol=2e-3)
        a = ff.attrs
        assert (a["weights_hash"], a["weights_source"], a["pooling"], a["precision"]) == ("random", "random",
                                                                                          "avgpool", "fp32")
        assert a["transform"]["input_px"] == 224 and a["transform"]["mean"] == [0.485, 0.456, 0.406]
        assert a["slide_hash"] == "q1:test"
        assert a["source_region_index_hash"] == sha256_file(src / "regions" / f"{slide_id}.h5")
    rows = read_manifest(out / "manifest.csv")
    assert {k: r["status"] for k, r in rows.items()} == {"a": "ok", "b": "ok"}
    assert rows["b"]["n_items"] == "5" and not list(out.glob(".*.tmp"))


@pytest.mark.parametrize(("min_cosine", "kept"), [(0.0, "bf16"), (1.01, "fp32")])
def test_auto_precision_embeds_the_first_batch_once_more_and_records_what_it_kept(tmp_path, kit, monkeypatch,
                                                                              min_cosine, kept) -> None:
    """"auto" tries bf16 on the first batch against fp32: kept or dropped, the rows are in that precision."""
    import mixmag.embed.core as core

    monkeypatch.setattr(core, "AUTO_PRECISION_MIN_COSINE", min_cosine)  # force either outcome
    enc = build_encoder("tiny.vit-d32", precision="bf16")
    calls: list[int] = []
    encode = enc.encode
    monkeypatch.setattr(enc, "encode", lambda x: (calls.append(x.shape[0]), encode(x))[1])
    src = kit.write_regions(tmp_path / "tiles", {"a": 3})  # 63 tiles: batches of 16, 16, 16, 15
    summary = embed_slides(src, tmp_path / "feats", **dict(kit.run, encoder=enc, precision="auto"))
    assert summary.precision == kept and enc.precision == kept
    # the check's one extra (fp32) pass over 16 tiles in slices of 4, the first batch once, then each
    # batch once in sub-batches of 8 (thread policy split, mixmag.embed.split)
    assert calls == [4, 4, 4, 4, 16, 8, 8, 8, 8, 8, 7]
    # bf16 kept: the weights now live in bf16 (cast once); fp32 kept: untouched
    assert enc.weights_dtype == (torch.bfloat16 if kept == "bf16" else None)
    with FeatureFile(tmp_path / "feats" / "a.h5") as ff:
        feats = ff.read()[0]
        assert ff.attrs["precision"] == kept
    monkeypatch.undo()
    direct = np.stack([enc.encode(torch.from_numpy(kit.fake_region_tiles("a", r))).numpy() for r in range(3)])
    np.testing.assert_allclose(feats, direct.astype(np.float16).astype(np.float32), rtol=2e-2, atol=2e-2)


def test_worker_processes_give_the_same_files(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"a": 3, "b": 2, "c": 4})
    embed_slides(src, tmp_path / "inline", **kit.run)
    summary = embed_slides(src, tmp_path / "workers", **{**kit.run, "workers": 2})
    assert sorted(summary.ok) == ["a", "b", "c"]
    for s in "abc":
        np.testing.assert_array_equal(_features(tmp_path / "inline" / f"{s}.h5"),
                                      _features(tmp_path / "workers" / f"{s}.h5"))


def test_workers_share_one_large_slide_and_survive_a_corrupt_region(tmp_path, kit) -> None:
    """Two workers decode chunks of the same slide; a corrupt region fails only its slide."""
    src = kit.write_regions(tmp_path / "tiles", {"big": 13, "corrupt": 9, "small": 1})
    summary = embed_slides(src, tmp_path / "w3", **{**kit.run, "workers": 2, "batch_size": 8})
    assert sorted(summary.ok) == ["big", "small"] and "JPEG decode error" in summary.errors["corrupt"]
    embed_slides(src, tmp_path / "w0", **kit.run)
    for s in ("big", "small"):
        np.testing.assert_array_equal(_features(tmp_path / "w3" / f"{s}.h5"), _features(tmp_path / "w0" / f"{s}.h5"))
    assert not (tmp_path / "w3" / "corrupt.h5").exists() and not list((tmp_path / "w3").glob(".*.tmp"))


def test_resume_checks_provenance_not_existence(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"a": 2, "b": 2})
    out = tmp_path / "feats"
    embed_slides(src, out, **kit.run)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    # a run killed while rewriting the manifest left its temp file; no slide of it is redone
    leftover = out / ".manifest.csv.k1ll3d.999999999.tmp"
    leftover.write_text("slide_id,status\n")
    again = embed_slides(src, out, **kit.run)
    assert not leftover.exists()
    assert sorted(again.skipped) == ["a", "b"] and not again.ok and again.n_tiles == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == mtimes
    # slide b was re-scanned (new slide hash -> new region index): only b is recomputed
    write_region_index(src / "regions" / "b.h5", kit.make_index("b", 3, seed=1, slide_hash="q1:rescanned"))
    third = embed_slides(src, out, **kit.run)
    assert third.ok == ["b"] and third.skipped == ["a"]
    assert FeatureFile(out / "b.h5").n_regions == 3
    assert read_manifest(out / "manifest.csv")["a"]["status"] == "ok"  # skip keeps the producing row


def test_bad_inputs_fail_per_slide_and_nothing_else_is_lost(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"good": 2, "other": 1})
    write_region_index(src / "regions" / "broken.h5",
                       kit.make_index("broken", 2, slide_path="/data/unreadable/broken.svs"))
    with h5py.File(src / "regions" / "other.h5", "r+") as f:
        f.attrs["format_version"] = 99  # a region index from a future mixmag
    listing = tmp_path / "slides.txt"
    names = ["good", "other", "broken", "missing"]
    listing.write_text("\n".join(str(src / "regions" / f"{n}.h5") for n in names) + "\n")
    out = tmp_path / "feats"
    summary = embed_slides(listing, out, **kit.run)
    assert summary.ok == ["good"]
    errors = summary.errors
    assert set(errors) == {"other", "broken", "missing"}
    assert "format_version 99 is not supported" in errors["other"]
    assert "cannot open slide" in errors["broken"] and "not a TIFF" in errors["broken"]
    assert "does not exist" in errors["missing"] and "mixmag tile" in errors["missing"]
    assert sorted(p.name for p in out.glob("*.h5")) == ["good.h5"]
    assert not list(out.glob(".*.tmp")) and not list((out / ".claims").glob("*.claim"))
    rows = read_manifest(out / "manifest.csv")
    assert rows["broken"]["status"] == "error" and rows["good"]["status"] == "ok"
    with pytest.raises(SlideEmbeddingError, match="slide broken: cannot open"):  # first in id order
        embed_slides(listing, tmp_path / "ff", **{**kit.run, "fail_fast": True})


def test_tiling_manifest_rows_without_region_file_are_errors(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"a": 1})
    (src / "manifest.csv").write_text(
        "slide_id,path,status,n_items,seconds,error,output\n"
        f"a,/s/a.svs,ok,1,1.0,,{src / 'regions' / 'a.h5'}\n"
        f"gone,/s/gone.svs,ok,4,1.0,,{src / 'regions' / 'gone.h5'}\n")
    summary = embed_slides(src, tmp_path / "feats", **kit.run)
    assert summary.ok == ["a"] and "does not exist" in summary.errors["gone"]


@pytest.fixture
def inf_encoder():
    """A 3-d encoder dividing by each channel's spatial std: uniform tiles give inf."""
    meta = EncoderMeta(key="test.inf-on-flat", family="Tests", embed_dim=3, pooling="avgpool")

    class Ratio(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)) / x.std(dim=(2, 3))

    register_encoder(meta)(lambda **kw: Ratio())
    yield meta.key
    ENCODERS._entries.pop(meta.key)


def test_non_finite_embeddings_fail_only_their_slide(tmp_path, inf_encoder, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"a": 2, "flat": 2, "z": 1})
    summary = embed_slides(src, tmp_path / "feats", **{**kit.run, "encoder": inf_encoder})
    assert sorted(summary.ok) == ["a", "z"]
    assert "NaN/inf" in summary.errors["flat"] and "--precision fp32" in summary.errors["flat"]
    assert not (tmp_path / "feats" / "flat.h5").exists()


def test_appending_another_encoder_is_refused(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"a": 1})
    out = tmp_path / "feats"
    embed_slides(src, out, **kit.run)
    with pytest.raises(EmbedConfigError, match=r"encoder: folder has 'tiny.d16', this run 'tiny.vit-d32'"):
        embed_slides(src, out, **{**kit.run, "encoder": "tiny.vit-d32"})
    assert FeatureFile(out / "a.h5").encoder == "tiny.d16"  # untouched
    replaced = embed_slides(src, out, **{**kit.run, "encoder": "tiny.vit-d32", "overwrite": True})
    assert replaced.ok == ["a"] and FeatureFile(out / "a.h5").embed_dim == 32


def test_file_of_another_encoder_without_folder_stamp_is_a_slide_error(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"a": 1, "b": 1})
    out = tmp_path / "feats"
    embed_slides(src, out, **kit.run)
    (out / "embed.json").unlink()
    (out / "b.h5").unlink()
    with pytest.raises(EmbedConfigError):  # files alone also identify the folder's encoder
        embed_slides(src, out, **{**kit.run, "encoder": "tiny.vit-d32"})


def test_empty_region_index_gives_empty_file(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"none": 0, "one": 1})
    summary = embed_slides(src, tmp_path / "feats", **kit.run)
    assert sorted(summary.ok) == ["none", "one"]
    assert FeatureFile(tmp_path / "feats" / "none.h5").shape == (0, 21, 16)
    assert read_manifest(tmp_path / "feats" / "manifest.csv")["none"]["status"] == "empty"


def test_shards_partition_the_cohort(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {s: 1 for s in "abcde"})
    parts = [{j.slide_id for j in discover_jobs(src, tmp_path, parse_shard(f"{i}/3"))} for i in range(3)]
    assert set().union(*parts) == set("abcde") and sum(map(len, parts)) == 5
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("3/3")


def test_live_claims_are_respected_and_dead_ones_recovered(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"a": 1, "b": 1})
    out = tmp_path / "feats"
    other = ClaimBoard(out, ClaimOwner(host="node-7", pid=1, token="t"), stale_after_s=3600)
    assert other.try_acquire("a")  # another node is working on slide a right now
    summary = embed_slides(src, out, **kit.run)
    assert summary.ok == ["b"] and summary.claimed_elsewhere == ["a"]
    # that node died: its claim stops being refreshed and goes stale
    later = embed_slides(src, out, **{**kit.run, "stale_after_s": 0.0})
    assert later.ok == ["a"] and later.skipped == ["b"]
