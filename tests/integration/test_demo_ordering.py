"""The full-size demo shows what the method is for: pretrained mixing above single magnification.

About 7 minutes on a 2-core CPU, so it is marked slow and left out of CI (run it with
``pytest -m slow tests/integration/test_demo_ordering.py`` or ``python benchmarks/demo.py``);
docs/performance.md ("Demo") records the numbers of the measured runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mixmag.pipeline.demo import mixing_gaps, run_demo

MARGIN = 0.1  # mean AUROC over the best of abmil-20x / abmil-5x


@pytest.mark.slow
def test_full_demo_puts_pretrained_mixing_above_single_magnification(tmp_path: Path) -> None:
    result = run_demo(tmp_path, progress=False)
    assert result.comparison is not None
    table = result.comparison[result.comparison["target"] != "Average"].set_index("method")["mean_auroc"]
    print("mean AUROC per method:", {m: round(float(v), 3) for m, v in table.items()})
    gaps = mixing_gaps(result.comparison)
    print("gap over the best single-magnification baseline:", {m: round(g, 3) for m, g in gaps.items()})
    # Each single-magnification baseline is at chance by construction of the cohort ...
    for baseline in ("abmil-5x", "abmil-20x"):
        assert abs(float(table[baseline]) - 0.5) < 0.15, f"{baseline} should be near chance, got {table[baseline]:.3f}"
    # ... and every pretrained mixing method is above both by a clear margin.
    for method, gap in gaps.items():
        assert gap >= MARGIN, f"{method} is only {gap:+.3f} above the best single-magnification baseline"
