"""The exit-code contract of the batch commands (docs/cli/exit-codes.md) through the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.cli.common import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, finish_batch
from mixmag.io.manifest import read_manifest

SLIDE = "CMU-1-Small-Region.svs"


def _tile(inputs: list[Path], out: Path) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), ["--log-level", "ERROR", "tile", *map(str, inputs), "--out", str(out),
                                              "--no-progress"])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, shared_wsi: Path) -> tuple[Path, int, str]:
    """A folder with one real slide and one broken file, tiled once: (out folder, exit code, output)."""
    root = tmp_path_factory.mktemp("mixed")
    inputs = root / "in"
    inputs.mkdir()
    shutil.copy(shared_wsi / SLIDE, inputs)
    (inputs / "broken.svs").write_bytes(bytes(range(256)) * 64)  # random bytes: no reader opens it
    code, output = _tile([inputs], root / "out")
    return root / "out", code, output


def test_finish_batch_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert finish_batch(5, 0, "m.csv") == EXIT_OK
    assert capsys.readouterr().err == ""  # nothing failed: no extra line
    assert finish_batch(14, 6, "m.csv") == EXIT_PARTIAL
    assert "6 of 14 slides failed; see m.csv" in capsys.readouterr().err
    assert finish_batch(3, 3, "m.csv") == EXIT_FAILED
    assert finish_batch(0, 0, "m.csv") == EXIT_OK
    assert (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL) == (0, 1, 2, 3)


def test_tile_some_failed_is_partial(mixed: tuple[Path, int, str]) -> None:
    out, code, output = mixed
    assert code == EXIT_PARTIAL, output
    manifest = out / "regions" / "manifest.csv"
    assert f"1 of 2 slides failed; see {manifest}" in " ".join(output.split())
    assert "Traceback" not in output
    rows = read_manifest(manifest)
    assert rows["CMU-1-Small-Region"]["status"] == "ok" and rows["broken"]["status"] == "error"


def test_tile_all_good_is_ok_and_all_broken_is_failed(tmp_path: Path, shared_wsi: Path) -> None:
    code, output = _tile([shared_wsi / SLIDE], tmp_path / "good")
    assert code == EXIT_OK, output
    assert "failed; see" not in output
    broken = tmp_path / "broken.svs"
    broken.write_bytes(bytes(range(256)) * 64)
    code, output = _tile([broken], tmp_path / "bad")
    assert code == EXIT_FAILED, output
    assert "1 of 1 slides failed; see" in " ".join(output.split())


def test_embed_one_slide_failed_is_partial(mixed: tuple[Path, int, str], tmp_path: Path) -> None:
    out, _, _ = mixed
    regions = tmp_path / "regions"
    regions.mkdir()
    good = out / "regions" / "CMU-1-Small-Region.h5"
    shutil.copy(good, regions / "good.h5")
    shutil.copy(good, regions / "corrupt.h5")
    garbage = tmp_path / "corrupt.tiff"
    garbage.write_bytes(b"II*\x00" + b"\x17" * 4096)  # TIFF magic, then nonsense
    with h5py.File(regions / "corrupt.h5", "r+") as f:  # this region file now points at an unreadable slide
        f.attrs["slide_path"] = str(garbage)
        f.attrs["slide_id"] = "corrupt"
    feats = tmp_path / "feats"
    result = CliRunner().invoke(build_app(), ["--log-level", "ERROR", "embed", str(regions), "--out", str(feats),
                                              "--encoder", "tiny.d16", "--random-weights", "--workers", "0",
                                              "--no-progress"])
    assert result.exit_code == EXIT_PARTIAL, result.output
    text = " ".join(result.output.split())
    assert "1 embedded" in text and "1 failed" in text and "1 of 2 slides failed; see" in text
    rows = read_manifest(feats / "manifest.csv")
    assert rows["good"]["status"] == "ok" and rows["corrupt"]["status"] == "error"
    # resumed: the finished slide is skipped, the failed one fails again, the code stays
    again = CliRunner().invoke(build_app(), ["--log-level", "ERROR", "embed", str(regions), "--out", str(feats),
                                             "--encoder", "tiny.d16", "--random-weights", "--workers", "0",
                                             "--no-progress"])
    assert again.exit_code == EXIT_PARTIAL and "1 already done" in " ".join(again.output.split())


def test_usage_error_is_one_line_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["tile", str(tmp_path / "nope"), "--out", str(tmp_path / "out"),
                                              "--no-progress"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Traceback" not in result.output and "nope" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_run_counts_failed_slides_of_every_stage(tmp_path: Path) -> None:
    """`run`/`demo` read the tile and embed manifests and external/problems.csv a finished study left."""
    import pandas as pd

    from mixmag.cli.run_cmd import _failed_inputs
    from mixmag.io.manifest import Manifest, Status
    from mixmag.pipeline.ledger import StageRecord
    from mixmag.pipeline.study import StudyResult

    tiles, feats, external = tmp_path / "tiles" / "manifest.csv", tmp_path / "features", tmp_path / "external"
    for sid, status in {"a": Status.OK, "b": Status.ERROR, "c": Status.OK, "d": Status.EMPTY}.items():
        Manifest(tiles).update(sid, status=status)
    Manifest(feats / "manifest.csv").update("a", status=Status.OK)
    Manifest(feats / "manifest.csv").update("c", status=Status.ERROR)
    external.mkdir()
    pd.DataFrame({"bag_id": ["x"], "slide_ids": ["x1;x2"]}).to_csv(external / "predictions.csv", index=False)
    pd.DataFrame({"slide_id": ["x3"], "stage": ["tile"], "reason": ["broken"]}).to_csv(external / "problems.csv",
                                                                                     index=False)
    result = StudyResult(run_dir=tmp_path, stages={
        "tile": StageRecord("tile", "fp", "done", 0.0, outputs={"manifest": str(tiles)}),
        "embed": StageRecord("embed", "fp", "done", 0.0, outputs={"features": str(feats)}),
        "external": StageRecord("external", "fp", "done", 0.0, outputs={"external": str(external)}),
    })
    n_total, n_failed, where = _failed_inputs(result)
    assert (n_total, n_failed) == (4 + 3, 2 + 1)
    assert where == [str(tiles), str(feats / "manifest.csv"), str(external / "problems.csv")]
    clean = StudyResult(run_dir=tmp_path, stages={"embed": result.stages["embed"]})
    Manifest(feats / "manifest.csv").update("c", status=Status.OK)
    assert _failed_inputs(clean) == (2, 0, [])
