"""Named per-region feature sets that the probes compare (registry ``FEATURE_SETS``).

Each entry turns a batch of regions into one vector per region::

    fn(x (B, T, D) float32 FM tile embeddings, valid (B, T) bool, spec, encoder | None) -> (B, F) float32

Rows that cannot be computed (e.g. no valid tile at the magnification asked for) are NaN; the
probes leave those regions out and report how many regions they used.

* ``tiles-5x`` / ``tiles-10x`` / ``tiles-20x``: mean embedding of the region's valid tiles of one
  magnification (which tokens those are is read from the spec, not assumed).
* ``tiles-5x+20x``: the 5x and 20x means side by side (does the fine scale add to the coarse one?).
* ``region-cls`` / ``region-tokens-mean``: the CLS, or the mean of the contextualised valid tokens,
  of a pretrained region encoder run in eval mode without masking (computed in memory, as
  :mod:`mixmag.region.encode` would write them).

Entries whose magnifications are not in the spec, or that need an encoder when none is given,
are reported as unavailable by :func:`available_feature_sets`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from mixmag.errors import MixmagKeyError, MixmagValueError
from mixmag.geometry import RegionSpec
from mixmag.region.model import RegionEncoder
from mixmag.registry import Registry

FeatureFn = Callable[[np.ndarray, np.ndarray, RegionSpec, "RegionEncoder | None"], np.ndarray]


@dataclass(frozen=True)
class FeatureSetMeta:
    """What a feature set needs.

    Attributes:
        description: One line for docs and tables.
        magnifications: Nominal magnifications (5.0, 20.0 ...) that must be in the spec.
        needs_encoder: Computed with a region-encoder checkpoint.
    """

    description: str
    magnifications: tuple[float, ...] = ()
    needs_encoder: bool = False


FEATURE_SETS: Registry[FeatureFn] = Registry("diagnostic feature set")


def _mag_tokens(spec: RegionSpec, magnification: float) -> np.ndarray:
    """(T,) bool tokens of one nominal magnification (KeyError when the spec has none)."""
    mags = np.asarray(spec.magnifications)
    hits = np.flatnonzero(np.isclose(mags, magnification))
    if not hits.size:
        raise MixmagKeyError(f"the region layout has no {magnification:g}x tokens (it has "
                             f"{', '.join(f'{m:g}x' for m in spec.magnifications)})")
    return spec.layout().mag_index == int(hits[0])


def magnification_mean(x: np.ndarray, valid: np.ndarray, spec: RegionSpec, magnifications: Sequence[float]
                       ) -> np.ndarray:
    """Mean of the valid tiles of each magnification, concatenated: (B, len(magnifications) * D).

    A region with no valid tile at one of the magnifications gets a NaN row.
    """
    parts = []
    for mag in magnifications:
        w = (valid & _mag_tokens(spec, mag)[None, :]).astype(np.float32)  # (B, T)
        n = w.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            parts.append(np.einsum("bt,btd->bd", w, x) / n)
    return np.concatenate(parts, axis=1).astype(np.float32)


def _register_tiles(mags: tuple[float, ...]) -> None:
    key = "tiles-" + "+".join(f"{m:g}x" for m in mags)
    fn = partial(_tiles, magnifications=mags)
    what = " and ".join(f"{m:g}x" for m in mags)
    FEATURE_SETS.add(key, fn, FeatureSetMeta(f"mean FM embedding of the valid {what} tiles", mags))


def _tiles(x: np.ndarray, valid: np.ndarray, spec: RegionSpec, encoder: RegionEncoder | None, *,
           magnifications: tuple[float, ...]) -> np.ndarray:
    return magnification_mean(x, valid, spec, magnifications)


for _mags in ((5.0,), (10.0,), (20.0,), (5.0, 20.0)):
    _register_tiles(_mags)


@torch.no_grad()
def _encode(x: np.ndarray, valid: np.ndarray, encoder: RegionEncoder) -> tuple[np.ndarray, np.ndarray]:
    encoder.eval()
    device = next(encoder.parameters()).device
    cls, tokens = encoder.forward_features(torch.from_numpy(x).to(device), torch.from_numpy(valid).to(device))
    return cls.float().cpu().numpy(), tokens.float().cpu().numpy()


@FEATURE_SETS.register("region-cls", FeatureSetMeta("CLS of the region encoder (eval, no masking)",
                                                      needs_encoder=True))
def region_cls(x: np.ndarray, valid: np.ndarray, spec: RegionSpec, encoder: RegionEncoder | None) -> np.ndarray:
    """(B, W) CLS embedding of each region."""
    if encoder is None:
        raise MixmagValueError("region-cls needs a region-encoder checkpoint")
    return _encode(x, valid, encoder)[0]


@FEATURE_SETS.register("region-tokens-mean", FeatureSetMeta(
    "mean of the region encoder's contextualised valid tokens", needs_encoder=True))
def region_tokens_mean(x: np.ndarray, valid: np.ndarray, spec: RegionSpec, encoder: RegionEncoder | None
                       ) -> np.ndarray:
    """(B, W) mean of the contextualised valid tokens (NaN for a region without a valid token)."""
    if encoder is None:
        raise MixmagValueError("region-tokens-mean needs a region-encoder checkpoint")
    w = valid.astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.einsum("bt,btw->bw", w, _encode(x, valid, encoder)[1]) / w.sum(1, keepdims=True)).astype(np.float32)


def _display_order(key: str) -> tuple[bool, int, tuple[float, ...], str]:
    """Tile sets first (fewest magnifications, coarsest first), encoder sets last."""
    meta: FeatureSetMeta = FEATURE_SETS.meta(key)
    return meta.needs_encoder, len(meta.magnifications), meta.magnifications, key


def available_feature_sets(spec: RegionSpec, *, with_encoder: bool) -> tuple[list[str], dict[str, str]]:
    """Registered feature sets usable for ``spec``, and ``{key: reason}`` for the others."""
    usable, skipped = [], {}
    have = spec.magnifications
    for key in sorted(FEATURE_SETS.keys(), key=_display_order):
        meta: FeatureSetMeta = FEATURE_SETS.meta(key)
        missing = [m for m in meta.magnifications if not any(math.isclose(m, h) for h in have)]
        if missing:
            skipped[key] = f"no {', '.join(f'{m:g}x' for m in missing)} tokens in the region layout"
        elif meta.needs_encoder and not with_encoder:
            skipped[key] = "needs a region-encoder checkpoint (--checkpoint)"
        else:
            usable.append(key)
    return usable, skipped
