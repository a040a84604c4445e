"""End to end with real readers: tile -> embed (CLI and API), independent re-read, kill/resume, concurrency."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixmag.embed import embed_slides
from mixmag.encoders import build_encoder
from mixmag.io.features import FeatureFile, is_complete_feature_file
from mixmag.io.manifest import read_manifest

CMU = "CMU-1-Small-Region_pyramid"
N_SLIDES = 6


@pytest.fixture(scope="module")
def cmu_tiles(shared_wsi, tmp_path_factory) -> Path:
    from mixmag.tiling.tile import tile_slides

    out = tmp_path_factory.mktemp("cmu_tiles")
    summary = tile_slides([shared_wsi / f"{CMU}.tiff"], out, progress=False)
    assert summary.results[0].status.value == "ok"
    return out


def test_real_slide_region_file_to_feature_file(cmu_tiles, shared_wsi, tmp_path) -> None:
    """(R, 21, 1280) EfficientNet-Lite0 features; 20x rows equal embedding an independent openslide read."""
    import openslide

    torch.set_num_threads(2)
    out = tmp_path / "feats"
    summary = embed_slides(cmu_tiles, out, encoder="efficientnet-lite0-imagenet", precision="fp32",
                           device="cpu", workers=1, batch_size=32, progress=False)
    assert summary.ok == [CMU]
    ff = FeatureFile(out / f"{CMU}.h5")
    feats, valid = ff.read()
    index = ff.index
    assert feats.shape == (index.n_regions, 21, 1280) and index.n_regions >= 1
    np.testing.assert_array_equal(valid, index.tile_valid)
    np.testing.assert_array_equal(valid, index.tissue_fraction >= index.attrs["tissue_params"]["valid_min_tissue"])
    assert ff.attrs["weights_source"].startswith("package:") and ff.attrs["pooling"] == "avgpool"

    # Independent pixel path: openslide level 0, the region's exact 448-µm extent resized to
    # 896 px (box filter), cut into the 4x4 20x tiles, embedded with the same encoder.
    enc = build_encoder("efficientnet-lite0-imagenet")
    slide = openslide.OpenSlide(str(shared_wsi / f"{CMU}.tiff"))
    side = 448.0 / index.mpp_level0
    sl = index.spec.token_slices()[0.5]
    for r, (x0, y0) in enumerate(index.coords):
        rgba = slide.read_region((int(x0), int(y0)), 0, (int(np.ceil(side)) + 1,) * 2)
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        mosaic = np.asarray(rgb.resize((896, 896), Image.Resampling.BOX, box=(0, 0, side, side)))
        tiles = mosaic.reshape(4, 224, 4, 224, 3).transpose(0, 2, 1, 3, 4).reshape(16, 224, 224, 3)
        ref = enc.encode(torch.from_numpy(np.ascontiguousarray(tiles))).numpy()
        got = feats[r, sl]
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        assert cos.min() > 0.999, (r, cos.min())
        np.testing.assert_allclose(got, ref, rtol=0.02, atol=0.02)


# ---- small synthetic cohort for the process-level tests ---------------------------------------
@pytest.fixture(scope="module")
def cohort_tiles(tmp_path_factory) -> Path:
    from mixmag.synth.tiff import write_synthetic_wsi
    from mixmag.tiling.tile import tile_slides

    root = tmp_path_factory.mktemp("cohort")
    for i in range(N_SLIDES):
        write_synthetic_wsi(root / "slides" / f"s{i}.tiff", (2688 + 448 * (i % 2), 2240), mpp=0.5, n_levels=3, seed=i)
    summary = tile_slides([root / "slides"], root / "tiles", progress=False)
    assert all(r.status.value == "ok" for r in summary.results)
    return root / "tiles"


def _cli(tiles: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mixmag", "embed", str(tiles), "--out", str(out), "--encoder", "tiny.d16",
            "--precision", "fp32", "--device", "cpu", "--batch-size", "8", "--no-progress", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _assert_only_complete_files(out: Path) -> None:
    for path in out.glob("*.h5"):  # temp files are hidden (.name.*.tmp); visible files are whole
        assert is_complete_feature_file(path), path
        ff = FeatureFile(path)
        assert ff.read()[0].shape == (ff.n_regions, 21, 16)


def _snapshot(out: Path) -> dict[str, tuple[np.ndarray, dict]]:
    snap = {}
    for path in sorted(out.glob("*.h5")):
        ff = FeatureFile(path)
        snap[path.name] = (ff.read()[0], ff.attrs)
    return snap


def _kill_after_progress(proc: subprocess.Popen, out: Path, n_done: int, delay_s: float) -> bool:
    """SIGKILL ``proc``'s process group ``delay_s`` after ``n_done`` feature files exist; False if it ended first."""
    while proc.poll() is None and len(list(out.glob("*.h5"))) < n_done:
        time.sleep(0.02)
    time.sleep(delay_s)
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
@pytest.mark.ci
def test_sigkill_at_random_points_then_resume_is_identical(cohort_tiles, tmp_path) -> None:
    """SIGKILL `mixmag embed` >= 5 times at random points; after resuming, files equal an uninterrupted run."""
    ref_out = tmp_path / "reference"
    subprocess.run(_cli(cohort_tiles, ref_out), check=True, env=_env(), capture_output=True)
    reference = _snapshot(ref_out)
    assert len(reference) == N_SLIDES

    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    for _ in range(15):
        done = len(list(out.glob("*.h5")))
        if kills >= 5 or done == N_SLIDES:
            break
        proc = subprocess.Popen(_cli(cohort_tiles, out), env=_env(), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # random point: a random time after 0 or 1 more slides are finished (mid-slide, mid-batch,
        # between writes and renames, during start-up ...)
        kills += _kill_after_progress(proc, out, done + rng.choice([0, 0, 1]), rng.uniform(0.0, 1.5))
        _assert_only_complete_files(out)
    assert kills >= 5
    final = subprocess.run(_cli(cohort_tiles, out), env=_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    resumed = _snapshot(out)
    assert resumed.keys() == reference.keys()
    for name, (feats, attrs) in reference.items():
        np.testing.assert_array_equal(resumed[name][0], feats)
        assert resumed[name][1] == {**attrs, "source_region_index": resumed[name][1]["source_region_index"]}
    assert not list(out.glob(".*.tmp")) and not list((out / ".claims").glob("*.claim"))
    assert {r["status"] for r in read_manifest(out / "manifest.csv").values()} <= {"ok", "skipped"}


def test_two_concurrent_processes_do_every_slide_once(cohort_tiles, tmp_path) -> None:
    out = tmp_path / "shared"
    procs = [subprocess.Popen(_cli(cohort_tiles, out), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    done = [set(re.findall(r"slide (\S+): \d+ regions embedded", out_ + err)) for out_, err in logs]
    assert not (done[0] & done[1]), "a slide was embedded twice"
    assert done[0] | done[1] == {f"s{i}" for i in range(N_SLIDES)}
    _assert_only_complete_files(out)
    assert {r["status"] for r in read_manifest(out / "manifest.csv").values()} == {"ok"}


def test_unreadable_slide_through_the_real_reader(cmu_tiles, tmp_path) -> None:
    """A region index whose slide is now corrupt fails that slide only, with the reader's message."""
    import shutil

    import h5py

    regions = tmp_path / "regions"
    regions.mkdir()
    good = next((cmu_tiles / "regions").glob("*.h5"))
    shutil.copy(good, regions / "good.h5")
    shutil.copy(good, regions / "corrupt.h5")
    garbage = tmp_path / "corrupt.tiff"
    garbage.write_bytes(b"II*\x00" + b"\x17" * 4096)  # TIFF magic, then nonsense
    with h5py.File(regions / "corrupt.h5", "r+") as f:
        f.attrs["slide_path"] = str(garbage)
        f.attrs["slide_id"] = "corrupt"
    summary = embed_slides(regions, tmp_path / "feats", encoder="tiny.d16", precision="fp32", device="cpu",
                           workers=0, progress=False)
    assert summary.ok == ["good"]
    assert "cannot open slide" in summary.errors["corrupt"] and "corrupt.tiff" in summary.errors["corrupt"]
