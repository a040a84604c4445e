"""Synthetic-cohort plans: label rule, property counts independent of the label, geometry."""

from __future__ import annotations

import numpy as np
import pytest

from mixmag.synth.layout import (
    ATYPICAL,
    RING,
    SCATTERED,
    grid_shape,
    knobs_from_difficulty,
    plan_slide,
)


def _plans(label: int, n: int, difficulty: float = 0.5, size: tuple[int, int] = (3072, 2304)) -> list:
    root = np.random.SeedSequence(123 + label)
    return [plan_slide(np.random.default_rng(s), label=label, width_px=size[0], height_px=size[1], mpp=0.5,
                       region_um=448.0, knobs=knobs_from_difficulty(difficulty)) for s in root.spawn(n)]


def test_label_rule_and_equal_property_counts() -> None:
    pos, neg = _plans(1, 150), _plans(0, 150)
    for p in pos:
        assert p.n_informative >= 1
    for p in neg:
        assert p.n_informative == 0
    for p in pos + neg:
        d = p.to_dict()
        # as many ring regions as atypical regions, whatever the label
        assert d["n_ring"] == d["n_atypical"] >= 1
    ring_pos = np.array([p.to_dict()["n_ring"] for p in pos])
    ring_neg = np.array([p.to_dict()["n_ring"] for p in neg])
    # same distribution of the number of rings (and so of atypical regions) in both classes
    assert set(ring_pos) == set(ring_neg)
    assert abs(ring_pos.mean() - ring_neg.mean()) < 0.25


def test_difficulty_controls_informative_regions() -> None:
    easy = np.mean([p.n_informative for p in _plans(1, 60, difficulty=0.0)])
    hard = np.mean([p.n_informative for p in _plans(1, 60, difficulty=1.0)])
    assert hard == 1.0 and easy > 1.5
    k0, k1 = knobs_from_difficulty(0.0), knobs_from_difficulty(1.0)
    assert k0.atypical_gain > k1.atypical_gain and k0.atypical_fraction > k1.atypical_fraction


def test_structures_stay_inside_their_cell() -> None:
    for p in _plans(0, 20) + _plans(1, 20):
        assert {r.architecture for r in p.regions} <= {RING, SCATTERED}
        for r in p.regions:
            x0, y0 = r.col * 448.0, r.row * 448.0
            nests = r.nests_um
            assert np.all(nests[:, 0] - nests[:, 2] >= x0) and np.all(nests[:, 0] + nests[:, 2] <= x0 + 448)
            assert np.all(nests[:, 1] - nests[:, 2] >= y0) and np.all(nests[:, 1] + nests[:, 2] <= y0 + 448)
            lx, ly, lr = r.lumen_um
            assert x0 <= lx - lr and lx + lr <= x0 + 448
            if r.architecture == RING:
                dist = np.hypot(nests[:, 0] - r.centre_um[0], nests[:, 1] - r.centre_um[1])
                assert np.all(np.abs(dist / r.radius_um - 1) < 0.5)


def test_regions_follow_the_default_grid() -> None:
    p = _plans(1, 1)[0]
    assert grid_shape(3072, 2304, 0.5, 448.0) == (2, 3)
    assert [(r.x_px, r.y_px) for r in p.regions] == [(c * 896, r * 896) for r in range(2) for c in range(3)]
    assert sum(r.nuclei == ATYPICAL for r in p.regions) == p.to_dict()["n_atypical"]


def test_too_small_slide_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        plan_slide(np.random.default_rng(0), label=1, width_px=1000, height_px=1000, mpp=0.5,
                   region_um=448.0, knobs=knobs_from_difficulty(0.5))
