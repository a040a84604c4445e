"""`mixmag demo --quick` end to end: embedded data only, the printed table and the report."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixmag.cli.app import build_app


@pytest.mark.slow
@pytest.mark.ci
def test_quick_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    study = tmp_path / "study"
    report = study / "report.html"
    assert report.exists()
    html = report.read_text(encoding="utf-8")
    for method in ("abmil-5x", "abmil-10x", "abmil-20x", "mix-random", "mix-mem", "mix-cmem", "mix-mem-cls"):
        assert method in result.output
        assert method in html
    assert "ImageNet model used as an offline baseline" in html
    assert "pretrained (self-supervised, labels unused) on all" in html
    assert "report:" in result.output
    assert list((study / "heatmaps").glob("*_attention.png"))
