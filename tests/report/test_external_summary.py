"""The report summary's external-validation sentence: every run when few, the best three when many."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mixmag.pipeline.report import MAX_EXTERNAL_NAMED, external_summary


def _folder(tmp_path: Path, aurocs: dict[str, float]) -> Path:
    rows = [{"target": "msi", "method": m, "model": "ensemble", "n_bags": 30, "auroc": a, "ci_lo": a - 0.1,
             "ci_hi": a + 0.05} for m, a in aurocs.items()]
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    pd.DataFrame({"bag_id": [f"P{i}" for i in range(30)]}).to_csv(tmp_path / "predictions.csv", index=False)
    return tmp_path


def test_few_runs_are_all_named(tmp_path: Path) -> None:
    text = external_summary(_folder(tmp_path, {"abmil-20x": 0.61, "mix-mem": 0.72}), None)
    assert "External AUROC (95% CI): `abmil-20x` 0.610 (0.510–0.660); `mix-mem` 0.720 (0.620–0.770)." in text


def test_many_runs_name_the_best_three(tmp_path: Path) -> None:
    aurocs = {f"method-{i}": 0.5 + 0.03 * ((i * 7) % 12) for i in range(12)}
    assert len(aurocs) > MAX_EXTERNAL_NAMED
    text = external_summary(_folder(tmp_path, aurocs), None)
    best = sorted(aurocs, key=aurocs.__getitem__, reverse=True)[:3]
    assert "External AUROC, best 3 of 12 runs (95% CI): " in text
    named = [m for m in aurocs if f"`{m}`" in text]
    assert sorted(named) == sorted(best)
    assert text.index(f"`{best[0]}`") < text.index(f"`{best[1]}`") < text.index(f"`{best[2]}`")
