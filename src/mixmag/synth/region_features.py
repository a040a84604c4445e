"""Synthetic feature cohorts with a known cross-magnification structure (tests, demos, benchmarks).

Each region draws a latent vector; every tile's latent is its parent tile's latent (the tile one
magnification coarser that contains it) plus independent noise, so a 20x tile is predictable from
its 10x parent (and, less well, from the 5x tile and its siblings) up to its own noise. A fixed
random map per magnification, shared by every slide, turns latents into "FM embeddings"::

    z_coarsest = z_region + n0,   z_child = z_parent + n_m,   e = tanh(z @ A_m) * 2 + b_m + eps

Invalid (background) tokens get a common background embedding plus noise, as real FMs do for empty
tiles. The fraction of a masked 20x embedding's variance that can be explained from its context is
therefore known and large, which is what the MEM tests measure against a predict-the-mean baseline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixmag.geometry import RegionSpec
from mixmag.io.features import FeatureWriter
from mixmag.io.regions import RegionIndex

MPP_LEVEL0 = 0.25  # a 40x-scanned slide: a 448 µm region is 1792 level-0 pixels


@dataclass(frozen=True)
class SyntheticFeatureModel:
    """The generative model of synthetic tile embeddings (shared by every slide of a cohort).

    Args:
        spec: Region layout.
        tile_dim: Embedding dimension D.
        latent_dim: Dimension of the hidden tile latents.
        level_noise: Std of the latent noise added at each magnification, coarsest first; the
            finest level's noise is what no context can predict.
        obs_noise: Std of the i.i.d. noise on every embedding.
        seed: Seeds the per-magnification maps (the "foundation model").
    """

    spec: RegionSpec
    tile_dim: int = 16
    latent_dim: int = 8
    level_noise: tuple[float, ...] = (0.3, 0.5, 0.3)
    obs_noise: float = 0.05
    seed: int = 1234

    def _maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0xFEA7])
        n_mags = len(self.spec.mpps)
        maps = rng.normal(size=(n_mags, self.latent_dim, self.tile_dim)) / np.sqrt(self.latent_dim)
        bias = rng.normal(scale=0.5, size=(n_mags, self.tile_dim))
        background = rng.normal(scale=0.5, size=self.tile_dim)
        return maps, bias, background

    def parents(self) -> np.ndarray:
        """(T,) index of each token's parent token (-1 for the coarsest magnification)."""
        layout = self.spec.layout()
        slices = list(self.spec.token_slices().values())
        parent = np.full(layout.n_tokens, -1, dtype=np.int64)
        for m in range(1, len(slices)):
            n_here = self.spec.tiles_per_side(self.spec.mpps[m])
            n_up = self.spec.tiles_per_side(self.spec.mpps[m - 1])
            for t in range(slices[m].start, slices[m].stop):
                r, c = layout.grid_rc[t]
                parent[t] = slices[m - 1].start + (r * n_up // n_here) * n_up + (c * n_up // n_here)
        return parent

    def sample(self, n_regions: int, rng: np.random.Generator, *, invalid_frac: float = 0.1,
               slide_shift: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_regions`` regions of one slide.

        Returns:
            ``(features (n, T, D) float32, valid (n, T) bool)``; every region keeps at least one
            valid token.
        """
        maps, bias, background = self._maps()
        layout = self.spec.layout()
        parent = self.parents()
        noise = np.resize(np.asarray(self.level_noise, dtype=np.float64), len(self.spec.mpps))
        t = layout.n_tokens
        z = np.empty((n_regions, t, self.latent_dim))
        region = rng.normal(size=(n_regions, 1, self.latent_dim))
        for tok in range(t):  # parents precede children in token order
            base = region[:, 0] if parent[tok] < 0 else z[:, parent[tok]]
            z[:, tok] = base + rng.normal(scale=noise[layout.mag_index[tok]], size=(n_regions, self.latent_dim))
        feats = np.tanh(np.einsum("ntk,tkd->ntd", z, maps[layout.mag_index])) * 2.0 + bias[layout.mag_index]
        feats += rng.normal(scale=slide_shift, size=self.tile_dim)  # per-slide batch effect
        valid = rng.random((n_regions, t)) >= invalid_frac
        valid[np.arange(n_regions), rng.integers(0, t, n_regions)] = True
        feats = np.where(valid[..., None], feats, background + rng.normal(scale=0.3, size=feats.shape))
        feats += rng.normal(scale=self.obs_noise, size=feats.shape)
        return feats.astype(np.float32), valid


def synthetic_region_index(n_regions: int, spec: RegionSpec, valid: np.ndarray, *, slide_id: str,
                           rng: np.random.Generator) -> RegionIndex:
    """A plausible region index: regions on a non-overlapping grid of a 40x (0.25 µm/px) slide."""
    side = int(round(spec.region_size_level0(MPP_LEVEL0)))
    cols = max(int(np.ceil(np.sqrt(max(n_regions, 1)))), 1)
    idx = np.arange(n_regions)
    coords = np.stack([(idx % cols) * side, (idx // cols) * side], axis=1)
    tissue = np.where(valid, rng.uniform(0.3, 1.0, valid.shape), rng.uniform(0.0, 0.05, valid.shape))
    rows = max(int(np.ceil(n_regions / cols)), 1)
    return RegionIndex(coords=coords, tile_valid=valid, tissue_fraction=tissue, spec=spec, mpp_level0=MPP_LEVEL0,
                       attrs={"slide_id": slide_id, "slide_path": f"synthetic://{slide_id}",
                              "slide_hash": "synthetic", "reader": "synthetic", "mpp_source": "synthetic",
                              "level0_width": cols * side, "level0_height": rows * side})


def write_synthetic_feature_cohort(
    folder: str | os.PathLike[str],
    *,
    n_slides: int,
    regions_per_slide: int | tuple[int, int] = 32,
    model: SyntheticFeatureModel | None = None,
    spec: RegionSpec | None = None,
    tile_dim: int = 16,
    invalid_frac: float = 0.1,
    empty_slides: int = 0,
    seed: int = 0,
    encoder: str = "synthetic",
    prefix: str = "slide",
) -> list[Path]:
    """Write ``n_slides`` feature files (``mixmag.io.features`` format) into ``folder``.

    Args:
        folder: Output folder (created).
        n_slides: Slides with regions.
        regions_per_slide: Regions per slide, or an inclusive (low, high) range drawn per slide.
        model: Generative model (default: :class:`SyntheticFeatureModel` for ``spec``/``tile_dim``).
        spec: Region layout (default 5x/10x/20x, 21 tokens).
        tile_dim: Embedding dimension when ``model`` is not given.
        invalid_frac: Probability that a token is background.
        empty_slides: Extra slides with zero regions (to exercise the empty-slide path).
        seed: Seeds the regions (the embedding maps are seeded by ``model.seed``).
        encoder: Encoder key written into the files.
        prefix: File-name prefix; files are ``{prefix}{i:04d}.h5``.

    Returns:
        Paths of the written files, in slide order.
    """
    spec = spec or (model.spec if model is not None else RegionSpec())
    model = model or SyntheticFeatureModel(spec=spec, tile_dim=tile_dim)
    rng = np.random.default_rng([seed, 0x5111])
    attrs = {"encoder": encoder, "weights_source": "synthetic", "weights_hash": "random",
             "transform": {}, "pooling": "synthetic", "precision": "fp32"}
    paths = []
    for i in range(n_slides + empty_slides):
        slide_id = f"{prefix}{i:04d}"
        if i >= n_slides:
            n = 0
        elif isinstance(regions_per_slide, tuple):
            n = int(rng.integers(regions_per_slide[0], regions_per_slide[1] + 1))
        else:
            n = int(regions_per_slide)
        feats, valid = model.sample(n, rng, invalid_frac=invalid_frac)
        index = synthetic_region_index(n, model.spec, valid, slide_id=slide_id, rng=rng)
        path = Path(folder) / f"{slide_id}.h5"
        with FeatureWriter(path, index, embed_dim=model.tile_dim, attrs=attrs) as writer:
            if n:
                writer.write(0, feats)
        paths.append(path)
    return paths
