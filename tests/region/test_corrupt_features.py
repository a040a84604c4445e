"""Corrupt feature files in pretraining and encoding: skipped (or masked), recorded, never fatal to the others.

Header problems (not HDF5, incomplete, shapes that disagree) are found when the cohort is scanned;
NaN/inf among valid tokens is found where regions are read and masked deterministically (the data
stream must stay a pure function of seed and step), then listed as ``error`` in the run's manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from mixmag.errors import MixmagError
from mixmag.io.manifest import read_manifest
from mixmag.region.data import RegionStream, scan_feature_cohort
from mixmag.region.encode import encode_regions
from mixmag.region.pretrain import pretrain_region_encoder
from mixmag.synth.region_features import write_synthetic_feature_cohort

FAST = {"preset": "tiny", "num_workers": 0, "progress": False, "device": "cpu", "checkpoint_every": 0}
STREAM = {"batch_size": 8, "total_steps": 6, "seed": 1, "n_views": 2, "mask_ratio": 0.5, "mag_mask_prob": 0.25,
          "token_drop_max": 0.5, "regions_per_slide": 6, "shuffle_buffer": 16}


def _replace(f: h5py.File, name: str, data: np.ndarray) -> None:
    del f[name]
    f.create_dataset(name, data=data)


def _damage_headers(paths: list[Path]) -> dict[str, str]:
    """Damage slides 1..6 in six header ways; return {slide_id: expected reason fragment}."""
    paths[1].write_bytes(paths[1].read_bytes()[:2048])
    paths[2].write_bytes(b"not an hdf5 file")
    with h5py.File(paths[3], "a") as f:
        f.attrs["complete"] = False
    with h5py.File(paths[4], "a") as f:
        _replace(f, "coords", f["coords"][:-1])
    with h5py.File(paths[5], "a") as f:
        _replace(f, "tile_valid", f["tile_valid"][:-1])
    with h5py.File(paths[6], "a") as f:
        f.attrs["embed_dim"] = 99
    return {"slide0001": "not a readable HDF5 file", "slide0002": "not a readable HDF5 file",
            "slide0003": "incomplete (a killed embedding run?)", "slide0004": "but coords has shape",
            "slide0005": "tile_valid has shape", "slide0006": "the embed_dim attr is 99"}


def _nan_at_valid_tokens(path: Path, regions: list[int]) -> None:
    with h5py.File(path, "a") as f:
        valid = f["tile_valid"][()]
        for r in regions:
            f["tile_features"][r, int(np.flatnonzero(valid[r])[0]), 3] = np.nan


@pytest.fixture(autouse=True)
def _visible_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    # a CLI test may have run configure_logging(), which stops propagation to caplog's root handler
    monkeypatch.setattr(logging.getLogger("mixmag"), "propagate", True)


@pytest.fixture(scope="module")
def random_run(small_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("random_run")
    pretrain_region_encoder(small_features, out, objective="random", **FAST)
    return out


def test_pretraining_skips_and_records_files_that_fail_their_checks(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    paths = write_synthetic_feature_cohort(tmp_path / "f", n_slides=8, regions_per_slide=6)
    expected = _damage_headers(paths)
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        cohort = scan_feature_cohort(tmp_path / "f")
    assert [s.slide_id for s in cohort.slides] == ["slide0000", "slide0007"]
    skipped = {sid: (status, reason) for sid, _, status, reason in cohort.skipped}
    for sid, fragment in expected.items():
        assert skipped[sid][0] == "error" and fragment in skipped[sid][1], (sid, skipped[sid])
        assert f"skipping slide {sid}: " in caplog.text
    result = pretrain_region_encoder(tmp_path / "f", tmp_path / "out", steps=2, batch_size=4, **FAST)
    assert (result.n_slides, result.n_skipped) == (2, 6) and (result.checkpoint / "config.json").exists()
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    for sid, fragment in expected.items():
        assert rows[sid]["status"] == "error" and fragment in rows[sid]["error"]
    assert rows["slide0000"]["status"] == rows["slide0007"]["status"] == "ok"


def test_no_usable_file_is_one_clear_error(tmp_path: Path) -> None:
    paths = write_synthetic_feature_cohort(tmp_path / "f", n_slides=2, regions_per_slide=4)
    for p in paths:
        p.write_bytes(b"garbage")
    with pytest.raises(MixmagError, match=r"no usable regions in 2 feature file\(s\).*slide0000: not a readable HDF5"):
        pretrain_region_encoder(tmp_path / "f", tmp_path / "out", steps=2, batch_size=4, **FAST)


def test_stream_masks_nonfinite_valid_tokens_deterministically(tmp_path: Path) -> None:
    paths = write_synthetic_feature_cohort(tmp_path / "f", n_slides=3, regions_per_slide=6)
    _nan_at_valid_tokens(paths[1], [0, 1, 2, 3, 4, 5])
    with h5py.File(paths[2], "a") as f:
        f["tile_features"][2, :, :] = np.inf  # every token of one region, valid or not
    cohort = scan_feature_cohort(tmp_path / "f")  # the header scan does not read values
    assert len(cohort.slides) == 3
    whole = list(RegionStream(cohort, **STREAM))
    assert all(np.isfinite(b["x"].numpy()).all() for b in whole)
    flagged = {tuple(p) for b in whole for p in b["nonfinite"].tolist()}
    assert {s for s, _ in flagged} == {1, 2} and (2, 2) in flagged
    stream = RegionStream(cohort, **STREAM)
    for b in whole:  # a masked token is invalid, hence neither kept nor masked (no input, no target)
        ids = stream.sample_ids(b["index"].numpy())
        all_inf = (ids[:, 0] == 2) & (ids[:, 1] == 2)
        assert not b["valid"][all_inf].any() and not b["x"][all_inf].any()
        assert not (b["keep"] & ~b["valid"]).any() and not (b["mask"] & ~b["valid"]).any()
    assert any(((stream.sample_ids(b["index"].numpy()) == [2, 2]).all(1)).any() for b in whole)
    later = list(RegionStream(cohort, start_step=4, **STREAM))
    halves = [list(RegionStream(cohort, rank=r, world_size=2, **STREAM)) for r in (0, 1)]
    np.testing.assert_array_equal(later[0]["valid"], whole[4]["valid"])
    np.testing.assert_array_equal(later[1]["x"], whole[5]["x"])
    for step in (0, 3):
        np.testing.assert_array_equal(np.concatenate([h[step]["valid"] for h in halves]), whole[step]["valid"])


def test_pretraining_masks_nan_slides_and_records_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = write_synthetic_feature_cohort(tmp_path / "f", n_slides=4, regions_per_slide=5)
    _nan_at_valid_tokens(paths[1], [3])
    with h5py.File(paths[2], "a") as f:
        f["tile_features"][...] = np.nan  # a whole slide of NaN (an encoder that overflowed)
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        result = pretrain_region_encoder(tmp_path / "f", tmp_path / "out", objective="cmem", steps=3, batch_size=8,
                                         **FAST)
    assert result.final_loss is not None and np.isfinite(result.final_loss)
    assert (result.n_slides, result.n_nonfinite) == (4, 2)
    assert "slide slide0001: NaN/inf tile features" in caplog.text and "slide slide0002" in caplog.text
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert rows["slide0001"]["status"] == rows["slide0002"]["status"] == "error"
    assert "valid tokens of 1 of 5 regions (first: [3])" in rows["slide0001"]["error"]
    assert "its finite tokens were used" in rows["slide0001"]["error"]
    assert "5 of 5 regions" in rows["slide0002"]["error"] and "contributed nothing" in rows["slide0002"]["error"]
    assert rows["slide0000"]["status"] == rows["slide0003"]["status"] == "ok"
    # a finished run asked again keeps the record
    again = pretrain_region_encoder(tmp_path / "f", tmp_path / "out", objective="cmem", steps=3, batch_size=8, **FAST)
    assert again.resumed_from == 3
    assert read_manifest(tmp_path / "out" / "manifest.csv")["slide0002"]["status"] == "error"


def test_encode_skips_and_records_bad_files(random_run: Path, tmp_path: Path) -> None:
    paths = write_synthetic_feature_cohort(tmp_path / "f", n_slides=8, regions_per_slide=4)
    expected = _damage_headers(paths)
    _nan_at_valid_tokens(paths[7], [2])
    expected["slide0007"] = "NaN/inf tile features in regions [2]"
    summary = encode_regions(tmp_path / "f", random_run, tmp_path / "out", progress=False, device="cpu")
    assert (summary.n_ok, summary.n_error) == (1, 7)
    rows = read_manifest(summary.manifest)
    for sid, fragment in expected.items():
        assert rows[sid]["status"] == "error" and fragment in rows[sid]["error"], (sid, rows[sid])
        assert fragment in summary.errors[sid]
        assert not (tmp_path / "out" / f"{sid}.h5").exists()
    assert rows["slide0000"]["status"] == "ok" and (tmp_path / "out" / "slide0000.h5").exists()


def test_encode_with_nothing_usable_is_one_error(random_run: Path, tmp_path: Path) -> None:
    paths = write_synthetic_feature_cohort(tmp_path / "f", n_slides=2, regions_per_slide=4)
    with h5py.File(paths[0], "a") as f:
        f.attrs["complete"] = False
    paths[1].write_bytes(b"garbage")
    with pytest.raises(MixmagError, match="every one of the 2 feature files failed .* slide0000: incomplete"):
        encode_regions(tmp_path / "f", random_run, tmp_path / "out", progress=False, device="cpu")
    assert read_manifest(tmp_path / "out" / "manifest.csv")["slide0001"]["status"] == "error"
