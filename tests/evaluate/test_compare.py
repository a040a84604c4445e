"""compare_runs: the paper-style table, paired tests against the reference, and its files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixmag.evaluate.compare import AVERAGE, compare_runs, format_tables
from mixmag.mil.labels import Bag
from mixmag.mil.runfolder import predictions_frame, summarize_run


def _fake_run(root: Path, target: str, method: str, strength: float, *, seed: int, n: int = 60) -> Path:
    """A finished run folder with out-of-fold predictions of a given quality."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)  # the same patients and labels in every run of a target
    noise = np.random.default_rng(seed).standard_normal(n)
    prob = 1 / (1 + np.exp(-(strength * (2 * y - 1) + noise)))
    bags = [Bag(f"P{i:02d}", f"P{i:02d}", (f"P{i:02d}",), int(y[i])) for i in range(n)]
    frames = [predictions_frame([bags[i] for i in range(f, n, 3)], np.stack([1 - prob, prob], 1)[f::3], f, ["0", "1"])
              for f in range(3)]
    run = root / target / method
    run.mkdir(parents=True)
    summarize_run(run, pd.concat(frames), target=target, method=method, classes=["0", "1"], fold_info={},
                  n_boot=100, seed=0)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for target, base in (("msi", 0.3), ("kras", 0.2)):
        _fake_run(root, target, "abmil-20x", base, seed=1)
        _fake_run(root, target, "mix-mem", 2.0, seed=2)
        _fake_run(root, target, "abmil-5x", base, seed=3)
    return root


def test_table_has_deltas_pvalues_and_average_row(runs: Path, tmp_path: Path) -> None:
    table = compare_runs([runs], tmp_path, n_boot=300)
    per_task = table[table["target"] != AVERAGE].set_index(["target", "method"])
    assert set(per_task.index) == {(t, m) for t in ("msi", "kras") for m in ("abmil-20x", "mix-mem", "abmil-5x")}
    for target in ("msi", "kras"):
        better = per_task.loc[(target, "mix-mem")]
        ref = per_task.loc[(target, "abmil-20x")]
        assert better["delta"] == pytest.approx(better["mean_auroc"] - ref["mean_auroc"])
        assert better["delta"] > 0.2 and better["delta_lo"] > 0
        assert better["p_bootstrap"] < 0.01 and better["p_delong"] < 0.01
        assert np.isnan(ref["delta"])
        assert ref["ci_lo"] <= ref["pooled_auroc"] <= ref["ci_hi"]
    avg = table[table["target"] == AVERAGE].set_index("method")
    assert avg.loc["mix-mem", "mean_auroc"] == pytest.approx(per_task.xs("mix-mem", level="method")["mean_auroc"].mean())
    assert avg.loc["mix-mem", "wins"] == 2
    for name in ("comparison.csv", "comparison.md", "comparison.png"):
        assert (tmp_path / name).stat().st_size > 0
    md = (tmp_path / "comparison.md").read_text()
    assert "| task | abmil-5x | abmil-20x | mix-mem |" in md and "| Average |" in md


def test_format_tables_orders_methods_like_the_paper(runs: Path) -> None:
    auc, delta = format_tables(compare_runs([runs], n_boot=0))
    assert list(auc.columns) == ["abmil-5x", "abmil-20x", "mix-mem"]
    assert list(auc.index) == ["kras", "msi", AVERAGE]
    assert "±" in auc.loc["msi", "mix-mem"] and delta.loc["msi", "abmil-20x"] == ""
    assert delta.loc[AVERAGE, "mix-mem"].endswith("(2/2 tasks up)")


def test_errors(runs: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        compare_runs([tmp_path])
    same = compare_runs([runs / "msi" / "mix-mem", runs, tmp_path / ".." / runs.name], n_boot=0)
    assert len(same) == 6 + 3  # one run reached three ways counts once; 3 average rows
    shutil.copytree(runs / "msi" / "mix-mem", tmp_path / "copy" / "mix-mem")
    with pytest.raises(ValueError, match="two runs of mix-mem on msi"):
        compare_runs([runs, tmp_path / "copy"], n_boot=0)
