"""Pure, seeded mask generators for masked embedding modeling (MEM) and region subsampling.

Nothing here mutates its inputs or touches global random state. Every generator is written once,
vectorised over a batch of regions, as a function of *uniform random numbers*; the randomness comes
either from a :class:`numpy.random.Generator` (the per-region functions, handy for experiments) or
from a counter-based hash of ``(seed, view, global sample index)`` (:func:`make_batch_views`, used
in training). The latter gives every region the same masks whatever the batch it lands in, the
number of DDP processes or data-loader workers, or the step a run was resumed from; and it costs
microseconds per region instead of building a generator per region.

Conventions (arrays over the T tokens of a region, or (B, T) for a batch):

* ``valid`` - the token's tile holds tissue. Invalid tokens are never masked and never kept.
* ``keep`` - tokens the encoder sees after token dropping (a subset of ``valid``); the rest are
  key-padded exactly like invalid tokens.
* ``mask`` - kept tokens whose input is replaced by the mask token and whose FM embedding is the
  reconstruction target (a subset of ``keep``).
"""

from __future__ import annotations

import numpy as np

_MIN_KEEP = 2  # token dropping leaves at least this many valid tokens, so a view can be masked


def n_masked(n_valid: int, ratio: float) -> int:
    """Number of tokens to mask among ``n_valid``: ``round(ratio * n_valid)`` (half up).

    Clamped to ``[1, n_valid - 1]`` when ``n_valid >= 2`` so every region has both a target and some
    context; 0 when fewer than two tokens are valid (nothing can be predicted from nothing).
    """
    return int(_n_masked(np.asarray([n_valid]), ratio)[0])


def _n_masked(n_valid: np.ndarray, ratio: float) -> np.ndarray:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must lie in (0, 1), got {ratio}")
    k = np.clip(np.floor(ratio * n_valid + 0.5), 1, np.maximum(n_valid - 1, 1)).astype(np.int64)
    return np.where(n_valid >= 2, k, 0)


def _lowest(eligible: np.ndarray, keys: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(B, T) bool: the ``k[b]`` eligible tokens of each row with the smallest random keys."""
    keys = np.where(eligible, keys, np.inf)
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    return eligible & (rank < k[:, None])


def _random_masks(valid: np.ndarray, ratio: float, u_tokens: np.ndarray) -> np.ndarray:
    return _lowest(valid, u_tokens, _n_masked(valid.sum(axis=1), ratio))


def _drop(valid: np.ndarray, max_fraction: float, u_fraction: np.ndarray, u_tokens: np.ndarray) -> np.ndarray:
    if not 0.0 <= max_fraction < 1.0:
        raise ValueError(f"token_drop_max must lie in [0, 1), got {max_fraction}")
    n_valid = valid.sum(axis=1)
    n_drop = np.minimum(np.floor(u_fraction * max_fraction * n_valid), np.maximum(n_valid - _MIN_KEEP, 0))
    return valid & ~_lowest(valid, u_tokens, n_drop.astype(np.int64))


def _magnification_masks(valid: np.ndarray, mag_index: np.ndarray, u_pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole-magnification masks and whether each row could get one (valid tokens at >= 2 mags)."""
    mag_index = np.asarray(mag_index)
    n_mags = int(mag_index.max()) + 1
    onehot = mag_index[None, :, None] == np.arange(n_mags)[None, None, :]  # (1, T, M)
    present = (valid[:, :, None] & onehot).any(axis=1)  # (B, M)
    n_present = present.sum(axis=1)
    pick = np.minimum(np.floor(u_pick * n_present), np.maximum(n_present - 1, 0))  # j-th present mag
    chosen = np.argmax(present & (np.cumsum(present, axis=1) == (pick + 1)[:, None]), axis=1)
    return valid & (mag_index[None, :] == chosen[:, None]), n_present >= 2


def _views(valid: np.ndarray, mag_index: np.ndarray, u: dict[str, np.ndarray], *, mask_ratio: float,
           mag_mask_prob: float, token_drop_max: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= mag_mask_prob <= 1.0:
        raise ValueError(f"mag_mask_prob must lie in [0, 1], got {mag_mask_prob}")
    keep = _drop(valid, token_drop_max, u["drop_fraction"], u["drop_tokens"])
    whole, possible = _magnification_masks(keep, mag_index, u["mag_pick"])
    use_whole = possible & (u["mag_draw"] < mag_mask_prob)
    mask = np.where(use_whole[:, None], whole, _random_masks(keep, mask_ratio, u["mask_tokens"]))
    return keep, mask


# uniforms drawn per view: one per region (1) or one per token (-1)
_SHAPES = {"drop_fraction": 1, "drop_tokens": -1, "mag_draw": 1, "mag_pick": 1, "mask_tokens": -1}


def _generator_uniforms(rng: np.random.Generator, b: int, t: int) -> dict[str, np.ndarray]:
    return {k: (rng.random(b) if n == 1 else rng.random((b, t))) for k, n in _SHAPES.items()}


# ----------------------------------------------------------------------------- per-region API
def random_mask(valid: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Mask exactly :func:`n_masked` randomly chosen valid tokens.

    Args:
        valid: (T,) bool.
        ratio: Fraction of valid tokens to mask, in (0, 1).
        rng: Source of randomness.

    Returns:
        (T,) bool mask, a subset of ``valid``.
    """
    valid = np.asarray(valid, dtype=bool)[None]
    return _random_masks(valid, ratio, rng.random(valid.shape))[0]


def magnification_mask(valid: np.ndarray, mag_index: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Mask every valid token of one randomly chosen magnification.

    The magnification is drawn among those with at least one valid token; at least one *other*
    magnification must keep a valid token, so the model always has context.

    Args:
        valid: (T,) bool.
        mag_index: (T,) int magnification index of every token.
        rng: Source of randomness.

    Returns:
        (T,) bool mask, or None when valid tokens exist at fewer than two magnifications.
    """
    mask, possible = _magnification_masks(np.asarray(valid, dtype=bool)[None], mag_index, rng.random(1))
    return mask[0] if possible[0] else None


def drop_tokens(valid: np.ndarray, max_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Region subsampling: drop ``floor(f * n_valid)`` valid tokens, ``f`` uniform in ``[0, max_fraction)``.

    At least two valid tokens are kept (all of them if there are fewer), so the view can be masked.

    Returns:
        (T,) bool ``keep`` vector, a subset of ``valid``.
    """
    valid = np.asarray(valid, dtype=bool)[None]
    return _drop(valid, max_fraction, rng.random(1), rng.random(valid.shape))[0]


def make_view(valid: np.ndarray, mag_index: np.ndarray, rng: np.random.Generator, *, mask_ratio: float,
              mag_mask_prob: float = 0.0, token_drop_max: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One stochastic view of a region: token dropping, then MEM masking of the kept tokens.

    With probability ``mag_mask_prob`` (and when possible) the mask is one whole magnification of
    the kept tokens, otherwise exactly :func:`n_masked` random kept tokens.

    Returns:
        ``(keep (T,) bool, mask (T,) bool)`` with ``mask`` a subset of ``keep`` and ``keep`` of ``valid``.
    """
    valid = np.asarray(valid, dtype=bool)[None]
    keep, mask = _views(valid, mag_index, _generator_uniforms(rng, 1, valid.shape[1]), mask_ratio=mask_ratio,
                        mag_mask_prob=mag_mask_prob, token_drop_max=token_drop_max)
    return keep[0], mask[0]


# ----------------------------------------------------------------------------- batched, counter-based
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective avalanche hash of uint64 arrays (wrap-around arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def counter_uniforms(seed: int, view: int, sample_index: np.ndarray, stream: int, n: int) -> np.ndarray:
    """(B, n) uniforms in [0, 1) that depend only on (seed, view, sample index, stream, column).

    A counter-based generator (hashing, no state), so any subset of samples can be generated
    anywhere and agree bit for bit.
    """
    with np.errstate(over="ignore"):
        key = np.array([seed, view, stream], dtype=np.uint64)
        base = _mix64(_mix64(_mix64(key[0:1] + _GOLDEN) ^ key[1:2]) + key[2:3] * _GOLDEN)  # (1,)
        idx = np.asarray(sample_index, dtype=np.int64).astype(np.uint64)[:, None]
        ctr = _mix64(base + _mix64(idx + _GOLDEN)) + np.arange(n, dtype=np.uint64)[None, :] * _GOLDEN
        z = _mix64(ctr)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def make_batch_views(valid: np.ndarray, mag_index: np.ndarray, sample_index: np.ndarray, *, seed: int,
                     n_views: int, mask_ratio: float, mag_mask_prob: float,
                     token_drop_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Views for a batch; each region's randomness is keyed by its global sample index.

    Args:
        valid: (B, T) bool.
        mag_index: (T,) int.
        sample_index: (B,) int global position of every region in the training stream.
        seed: Run seed.
        n_views: Views per region (1 for MEM, 2 for CMEM), independent of each other.
        mask_ratio, mag_mask_prob, token_drop_max: See :func:`make_view`.

    Returns:
        ``(keep (V, B, T) bool, mask (V, B, T) bool)``.
    """
    valid = np.asarray(valid, dtype=bool)
    t = valid.shape[1]
    keeps, masks = [], []
    for v in range(n_views):
        u = {}
        for stream, (name, n) in enumerate(_SHAPES.items()):  # an independent stream per purpose
            block = counter_uniforms(seed, v, sample_index, stream, t if n < 0 else 1)
            u[name] = block if n < 0 else block[:, 0]
        keep, mask = _views(valid, mag_index, u, mask_ratio=mask_ratio, mag_mask_prob=mag_mask_prob,
                            token_drop_max=token_drop_max)
        keeps.append(keep)
        masks.append(mask)
    return np.stack(keeps), np.stack(masks)

