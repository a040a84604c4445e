"""The remaining-time estimate of an embedding run (mixmag.embed.estimate): counted tiles x timed batches."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from mixmag.embed.estimate import MIN_LOGGED_SECONDS, EmbedEstimator, tiles_to_embed
from mixmag.embed.jobs import EmbedJob
from mixmag.geometry import RegionSpec
from mixmag.io.regions import count_region_tiles
from mixmag.utils.cost import PROBE_STEPS


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(estimator: EmbedEstimator, clock: FakeClock, *, batches: int, batch: int, seconds: float,
         first: float = 30.0) -> None:
    """``batches`` batches of ``batch`` tiles; the first takes ``first`` s (warm-up), the rest ``seconds`` each."""
    done = 0
    for i in range(batches):
        clock.now += first if i == 0 else seconds
        done += batch
        estimator.tick(done)


def test_the_estimate_is_the_probe_rate_times_the_tiles_left(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    estimator = EmbedEstimator(3, 100_000, device="cpu", clock=clock)
    with caplog.at_level(logging.INFO, logger="mixmag"):
        for done in range(100, (PROBE_STEPS + 1) * 100 + 1, 100):
            assert estimator.estimate is None  # the warm-up batch starts the clock; then PROBE_STEPS are timed
            clock.now += 30.0 if done == 100 else 1.0
            estimator.tick(done)
        est = estimator.estimate
        _run(estimator, clock, batches=20, batch=100, seconds=5.0)  # later batches change nothing
    assert estimator.estimate is est
    assert est is not None
    # the warm-up batch (30 s) is left out: 4 timed batches of 100 tiles at 1 s each
    assert est.unit_seconds == pytest.approx(0.01)
    assert est.units_left == 100_000 - (PROBE_STEPS + 1) * 100
    lines = [r.getMessage() for r in caplog.records if "embedding" in r.getMessage()]
    assert lines == ["embedding 3 slide(s) (100,000 tiles): about 16 min 35 s on cpu (0.01 s/tile x 99500 tiles); "
                     "a GPU embeds tens of times faster (docs/performance.md)"]


def test_a_short_run_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    estimator = EmbedEstimator(1, 2_000, device="cpu", clock=clock)
    with caplog.at_level(logging.INFO, logger="mixmag"):
        _run(estimator, clock, batches=10, batch=100, seconds=1.0)
    assert estimator.estimate is not None and estimator.estimate.seconds < MIN_LOGGED_SECONDS
    assert not [r for r in caplog.records if "embedding" in r.getMessage()]
    nothing = EmbedEstimator(0, 0, device="cpu", clock=clock)  # everything was done already
    _run(nothing, clock, batches=10, batch=100, seconds=1.0)
    assert nothing.estimate is None


def test_tiles_to_embed_counts_missing_feature_files_from_the_region_shapes(tmp_path: Path, kit: Any) -> None:
    kit.write_regions(tmp_path, {"a": 3, "b": 5, "c": 2})
    regions = tmp_path / "regions"
    tokens = RegionSpec().n_tokens
    assert count_region_tiles(regions / "b.h5") == 5 * tokens
    assert count_region_tiles(tmp_path / "missing.h5") == 0  # the run reports it; the estimate skips it
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    assert count_region_tiles(tmp_path / "broken.h5") == 0
    out = tmp_path / "features"
    out.mkdir()
    jobs = [EmbedJob(s, regions / f"{s}.h5", out / f"{s}.h5") for s in ("a", "b", "c")]
    (out / "b.h5").write_bytes(b"done earlier")
    assert tiles_to_embed(jobs, overwrite=False) == (2, 5 * tokens)
    assert tiles_to_embed(jobs, overwrite=True) == (3, 10 * tokens)
