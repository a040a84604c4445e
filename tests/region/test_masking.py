from __future__ import annotations

import numpy as np
import pytest

from mixmag.geometry import RegionSpec
from mixmag.region.masking import (
    drop_tokens,
    magnification_mask,
    make_batch_views,
    make_view,
    n_masked,
    random_mask,
)

MAG = RegionSpec().layout().mag_index  # [0, 1 x4, 2 x16]


@pytest.mark.parametrize(("n_valid", "ratio", "expected"), [
    (21, 0.5, 11), (20, 0.5, 10), (2, 0.5, 1), (2, 0.9, 1), (3, 0.1, 1), (10, 0.75, 8), (1, 0.5, 0), (0, 0.5, 0),
])
def test_n_masked_rounds_half_up_and_keeps_context(n_valid: int, ratio: float, expected: int) -> None:
    assert n_masked(n_valid, ratio) == expected


def test_random_mask_exact_ratio_and_never_masks_invalid() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        valid = rng.random(21) < rng.uniform(0.1, 1.0)
        mask = random_mask(valid, 0.5, rng)
        assert not (mask & ~valid).any()
        assert mask.sum() == n_masked(int(valid.sum()), 0.5)
    with pytest.raises(ValueError, match="mask ratio"):
        random_mask(np.ones(21, bool), 1.0, rng)


def test_magnification_mask_covers_one_whole_magnification() -> None:
    rng = np.random.default_rng(1)
    valid = np.ones(21, bool)
    valid[[2, 7, 8]] = False
    seen = set()
    for _ in range(60):
        mask = magnification_mask(valid, MAG, rng)
        assert mask is not None and not (mask & ~valid).any()
        mags = set(MAG[mask].tolist())
        assert len(mags) == 1
        m = mags.pop()
        seen.add(m)
        np.testing.assert_array_equal(mask, valid & (m == MAG))  # every valid token of it
        assert (valid & ~mask).any()  # another magnification stays visible
    assert seen == {0, 1, 2}
    only_20x = np.zeros(21, bool)
    only_20x[5:] = True
    assert magnification_mask(only_20x, MAG, rng) is None  # nothing would stay visible


def test_token_dropping_bounds() -> None:
    rng = np.random.default_rng(2)
    valid = np.ones(21, bool)
    valid[:3] = False
    dropped = []
    for _ in range(300):
        keep = drop_tokens(valid, 0.5, rng)
        assert not (keep & ~valid).any()
        dropped.append(valid.sum() - keep.sum())
    assert min(dropped) == 0 and max(dropped) == 8  # floor(f * 18) with f uniform in [0, 0.5)
    two = np.zeros(21, bool)
    two[[0, 9]] = True
    assert drop_tokens(two, 0.9, rng).sum() == 2  # always keeps min_keep tokens
    np.testing.assert_array_equal(drop_tokens(valid, 0.0, rng), valid)


def test_view_with_whole_magnification_probability() -> None:
    rng = np.random.default_rng(3)
    valid = np.ones(21, bool)
    whole = 0
    for _ in range(400):
        keep, mask = make_view(valid, MAG, rng, mask_ratio=0.5, mag_mask_prob=0.25, token_drop_max=0.0)
        assert not (mask & ~keep).any()
        if any(np.array_equal(mask, m == MAG) for m in range(3)):
            whole += 1
    assert 0.18 < whole / 400 < 0.32  # p = 0.25 (random 50 % masks never equal a whole magnification)


def test_batch_views_are_seeded_per_sample_not_per_batch() -> None:
    rng = np.random.default_rng(4)
    valid = rng.random((6, 21)) < 0.8
    kwargs = {"seed": 7, "n_views": 2, "mask_ratio": 0.5, "mag_mask_prob": 0.25, "token_drop_max": 0.5}
    keep, mask = make_batch_views(valid, MAG, np.arange(100, 106), **kwargs)
    keep2, mask2 = make_batch_views(valid, MAG, np.arange(100, 106), **kwargs)
    np.testing.assert_array_equal(mask, mask2)
    np.testing.assert_array_equal(keep, keep2)
    # sample 103 gets the same views inside any batch (what makes DDP shards and resume exact)
    k3, m3 = make_batch_views(valid[3:4], MAG, np.array([103]), **kwargs)
    np.testing.assert_array_equal(m3[:, 0], mask[:, 3])
    np.testing.assert_array_equal(k3[:, 0], keep[:, 3])
    assert not np.array_equal(mask[0], mask[1])  # the two views differ
    other, _ = make_batch_views(valid, MAG, np.arange(100, 106), **{**kwargs, "seed": 8})
    assert not np.array_equal(other, keep)


def test_vectorised_batch_views_keep_every_property() -> None:
    rng = np.random.default_rng(5)
    valid = rng.random((500, 21)) < rng.uniform(0.05, 1.0, (500, 1))
    keep, mask = make_batch_views(valid, MAG, np.arange(500), seed=3, n_views=1, mask_ratio=0.5,
                                  mag_mask_prob=0.0, token_drop_max=0.5)
    keep, mask = keep[0], mask[0]
    n_valid, n_keep = valid.sum(1), keep.sum(1)
    assert not (keep & ~valid).any() and not (mask & ~keep).any()
    assert (n_keep >= np.minimum(n_valid, 2)).all() and (n_valid - n_keep <= np.floor(0.5 * n_valid)).all()
    assert [int(m) for m in mask.sum(1)] == [n_masked(int(k), 0.5) for k in n_keep]
    assert (n_keep < n_valid).mean() > 0.5  # dropping happens


def test_counter_uniforms_are_uniform_and_independent() -> None:
    from mixmag.region.masking import counter_uniforms

    u = counter_uniforms(0, 0, np.arange(20_000), 0, 4)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.003
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    other = counter_uniforms(0, 0, np.arange(20_000), 1, 4)  # another stream
    assert abs(np.corrcoef(u[:, 0], other[:, 0])[0, 1]) < 0.03
    np.testing.assert_array_equal(counter_uniforms(0, 0, np.array([7, 3]), 0, 4), u[[7, 3]])
