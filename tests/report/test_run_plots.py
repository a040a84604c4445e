"""Run-folder PNG writers: the files, their pixel size, and what each figure draws."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from mixmag.report.run_plots import (
    write_calibration,
    write_comparison_plot,
    write_learning_curve,
    write_loss_curve,
    write_roc,
)

SRC = Path(__file__).resolve().parents[2] / "src"


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _records(n: int, terms: tuple[str, ...]) -> list[dict[str, float]]:
    return [{"step": s, **{t: 1.0 + 1.0 / s for t in terms}, "lr": 1e-3, "grad_norm": 1.0} for s in range(1, n + 1)]


def test_loss_curve_is_770_by_440_px_and_skips_empty_logs(tmp_path: Path) -> None:
    assert write_loss_curve([], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    path = write_loss_curve(_records(80, ("loss", "mem1", "mem2")), tmp_path / "loss_curve.png", title="cmem")
    assert path == tmp_path / "loss_curve.png"
    assert _png_size(path) == (770, 440)  # 7 x 4 in at 110 dpi, as before the figures moved to report


def test_loss_curve_of_mem_draws_the_total_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def spy(records: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return real(records, **kwargs)

    from mixmag.report import plots

    real = plots.loss_curves
    monkeypatch.setattr(plots, "loss_curves", spy)
    write_loss_curve(_records(10, ("loss", "mem1")), tmp_path / "mem.png")
    assert seen["columns"] == ["loss"]  # MEM: the total is its single term
    assert seen["title"] == "region-encoder pretraining"
    write_loss_curve(_records(10, ("loss", "mem1", "mem2", "nce")), tmp_path / "cmem.png")
    assert seen["columns"] == ["loss", "mem1", "mem2", "nce"]


def test_evaluation_pngs_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    prob = np.clip(0.3 * y + rng.uniform(0, 0.7, 40), 0, 1)
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.6, 0.5], "val_loss": [0.7, 0.65, 0.66],
                            "val_auroc": [0.5, 0.6, 0.62]})
    table = pd.DataFrame({"target": ["t"] * 2, "method": ["abmil-20x", "mix-mem"], "mean_auroc": [0.7, 0.8],
                          "sd_auroc": [0.05, 0.04], "ci_lo": [0.6, 0.7], "ci_hi": [0.8, 0.9]})
    written = [
        write_learning_curve(history, tmp_path / "learning_curve.png", best_epoch=2, title="t — m — fold 0"),
        write_roc(y, np.stack([1 - prob, prob], 1), np.arange(40) % 4, tmp_path / "roc.png", title="t — m"),
        write_calibration(y, prob, tmp_path / "calibration.png", title="t"),
        write_comparison_plot(table, tmp_path / "comparison.png", reference="abmil-20x"),
    ]
    assert [p.name for p in written] == ["learning_curve.png", "roc.png", "calibration.png", "comparison.png"]
    for path in written:
        width, height = _png_size(path)
        assert 300 < width < 1200 and 150 < height < 900, (path.name, width, height)  # cropped 120-dpi figures


def test_roc_labels_pooled_folds_or_one_cohort(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mixmag.report import evaluation_plots

    figures = []
    real = evaluation_plots.roc_curves

    def keep(*args: object, **kwargs: object) -> object:
        figures.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return figures[-1]

    monkeypatch.setattr(evaluation_plots, "roc_curves", keep)
    y = np.array([0, 1] * 12)
    prob = np.linspace(0.1, 0.9, 24)
    write_roc(y, prob, np.arange(24) % 3, tmp_path / "cv.png")
    write_roc(y, prob, None, tmp_path / "external.png")
    auc = roc_auc_score(y, prob)
    assert figures[0].axes[0].get_legend_handles_labels()[1] == [
        "fold 0", "fold 1", "fold 2", f"pooled (AUROC {auc:.3f}, n=24)"]
    assert figures[1].axes[0].get_legend_handles_labels()[1] == [f"all (AUROC {auc:.3f}, n=24)"]


def test_writers_import_matplotlib_lazily() -> None:
    # stage modules import run_plots at start-up; matplotlib loads when a PNG is first written
    code = "import sys, mixmag.report.run_plots; print('matplotlib' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
