"""Instance sources: what one MIL method treats as an instance of a bag.

These sources cover the paper's comparison and its baselines (docs/concepts/evaluation.md):

- ``tiles``: the FM embeddings of the valid tiles of one magnification (``abmil-5x|10x|20x``);
  no encoder; ``(N, D)`` with N = valid tiles of that magnification in the bag.
- ``tokens``: every valid token of every region after the region encoder, ``(Σ valid, W)``
  (``mix-random|mem|cmem``): contextualised 5x, 10x and 20x tokens side by side.
- ``cls``: one CLS vector per region, ``(R, W)`` (``mix-mem-cls``): ~16x shorter than 20x tiles.
- ``concat``: one vector per region, the mean valid tile of each magnification concatenated,
  ``(R, M * D)`` (``abmil-ms-concat``): multi-scale without a transformer, the baseline that
  tells whether the mixing encoder adds anything over seeing the scales side by side.
- ``context``: every valid tile of one magnification with context pooled from that magnification
  alone, ``(N, 3 * D)`` (``abmil-20x-context``): ``[tile, mean of its 2x2 block, mean of its
  region]``, i.e. pseudo-10x and pseudo-5x vectors made from 20x features (MSPN-style), so no
  5x/10x pixels are needed. It asks whether mixing needs real low-magnification pixels or only
  wider context.

A source works in two steps so that data preparation stays on the CPU and the encoder runs inside
the model's forward pass (which is what makes end-to-end fine-tuning possible):
:meth:`InstanceSource.prepare` selects (and during training subsamples) from a
:class:`~mixmag.mil.data.BagRegions`; :meth:`InstanceSource.instances` turns the prepared tensors
into instance embeddings, running the encoder when the source needs one.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mixmag.errors import MixmagValueError
from mixmag.geometry import RegionSpec, magnification_label, parse_magnification
from mixmag.mil.data import BagRegions
from mixmag.registry import Registry

logger = logging.getLogger(__name__)


@dataclass
class ModelInput:
    """Prepared tensors of one bag (CPU until moved by the engine).

    Attributes:
        x: ``tiles``: (N, D) instances; region sources: (R, T, D) regions.
        valid: Region sources: (R, T) bool token validity; None for ``tiles``.
        region: ``tiles``: (N,) row in the :class:`BagRegions` of each instance's region;
            region sources: (R,) rows of the kept regions.
        token: ``tiles``: (N,) token slot of each instance; None for region sources.
    """

    x: torch.Tensor
    valid: torch.Tensor | None
    region: np.ndarray
    token: np.ndarray | None

    @staticmethod
    def concat(inputs: Sequence[ModelInput]) -> tuple[ModelInput, np.ndarray]:
        """Stack the regions of several prepared bags (region sources) for one encoder call.

        Returns:
            ``(merged, bag_of_row)``: ``merged.region`` numbers the stacked rows 0..R-1 and
            ``bag_of_row`` (R,) gives the position in ``inputs`` of each row's bag.
        """
        if any(inp.valid is None for inp in inputs):
            raise ValueError("ModelInput.concat() stacks regions; tile inputs are padded per bag instead")
        x = torch.cat([inp.x for inp in inputs])
        valid = torch.cat([inp.valid for inp in inputs if inp.valid is not None])
        bag_of_row = np.repeat(np.arange(len(inputs)), [inp.x.shape[0] for inp in inputs])
        return ModelInput(x=x, valid=valid, region=np.arange(x.shape[0], dtype=np.int64), token=None), bag_of_row

    def to(self, device: torch.device) -> ModelInput:
        """Copy the tensors to ``device`` (index arrays stay on the CPU)."""
        valid = None if self.valid is None else self.valid.to(device, non_blocking=True)
        return ModelInput(self.x.to(device, non_blocking=True), valid, self.region, self.token)


@dataclass
class Instances:
    """Instance embeddings of one bag and where each instance comes from.

    Attributes:
        x: (N, W) instance embeddings.
        region: (N,) int64 row in the bag's :class:`BagRegions` of each instance's region.
        token: (N,) int64 token slot (order of ``RegionSpec.layout()``), -1 for a region's CLS.
    """

    x: torch.Tensor
    region: torch.Tensor
    token: torch.Tensor


def _subsample(n: int, limit: int | None, rng: np.random.Generator | None) -> np.ndarray:
    """Sorted random subset of ``range(n)`` of size ``limit`` (all when ``rng`` is None)."""
    if rng is None or limit is None or n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


class InstanceSource(ABC):
    """Turns a bag's regions into MIL instances (see module docstring)."""

    #: whether :meth:`instances` needs a region encoder
    needs_encoder: bool = False

    def __init__(self, *, magnification: str | None = None) -> None:
        self.magnification = magnification

    @abstractmethod
    def prepare(self, bag: BagRegions, *, limit: int | None = None,
                rng: np.random.Generator | None = None) -> ModelInput:
        """Select the bag's inputs; with ``rng`` keep at most ``limit`` items (training only)."""

    @abstractmethod
    def instances(self, inp: ModelInput, encoder: nn.Module | None, *, chunk: int | None = None) -> Instances:
        """Instance embeddings of a prepared bag (``chunk``: regions per encoder call, eval only)."""

    def instance_dim(self, tile_dim: int, encoder: nn.Module | None) -> int:
        """Dimension of the instances this source produces."""
        return tile_dim if encoder is None else int(encoder.width)  # type: ignore[arg-type]


INSTANCE_SOURCES: Registry[type[InstanceSource]] = Registry("instance source")


@INSTANCE_SOURCES.register("tiles")
class TileInstanceSource(InstanceSource):
    """Valid tile embeddings of one magnification (no encoder).

    Args:
        magnification: Label (``"20x"``) or exact resolution (``"0.5mpp"``) of the tiles.
    """

    def __init__(self, *, magnification: str | None = None) -> None:
        if magnification is None:
            raise ValueError("tile methods need a magnification, e.g. '20x' or '0.5mpp'")
        super().__init__(magnification=magnification)
        self.mpp = parse_magnification(magnification)

    def _slice(self, spec: RegionSpec) -> slice:
        for mpp, sl in spec.token_slices().items():
            if math.isclose(mpp, self.mpp, rel_tol=1e-6):
                return sl
        have = ", ".join(magnification_label(m) for m in spec.mpps)
        raise MixmagValueError(f"the features have no {self.magnification} tokens (they have {have})")

    def prepare(self, bag: BagRegions, *, limit: int | None = None,
                rng: np.random.Generator | None = None) -> ModelInput:
        """(N, D) valid tiles of the magnification, region-major then row-major."""
        sl = self._slice(bag.spec)
        valid = bag.valid[:, sl]
        if not valid.any():
            # Invalid tiles are still embedded, so the bag is not empty; say so
            # (docs/concepts/resolution.md#which-regions-are-kept-which-tokens-are-valid).
            logger.warning("bag of slides %s has no valid %s tile; using all its %s tiles",
                           ",".join(bag.slide_ids), self.magnification, self.magnification)
            valid = np.ones_like(valid)
        region, slot = np.nonzero(valid)
        keep = _subsample(len(region), limit, rng)
        region, token = region[keep], slot[keep] + sl.start
        x = torch.from_numpy(np.ascontiguousarray(bag.feats[region, token])).float()
        return ModelInput(x=x, valid=None, region=region.astype(np.int64), token=token.astype(np.int64))

    def instances(self, inp: ModelInput, encoder: nn.Module | None, *, chunk: int | None = None) -> Instances:
        """The tiles themselves."""
        assert inp.token is not None
        dev = inp.x.device
        return Instances(inp.x, torch.as_tensor(inp.region, device=dev), torch.as_tensor(inp.token, device=dev))


class _RegionSource(InstanceSource):
    """Shared preparation of the encoder-based sources: whole regions with their validity mask."""

    needs_encoder = True

    def __init__(self, *, magnification: str | None = None) -> None:
        if magnification is not None:
            raise ValueError("region-encoder methods use every magnification; do not set one")
        super().__init__()

    def prepare(self, bag: BagRegions, *, limit: int | None = None,
                rng: np.random.Generator | None = None) -> ModelInput:
        """(R, T, D) regions with at least one valid token (at most ``limit`` when training)."""
        rows = np.flatnonzero(bag.valid.any(axis=1))
        rows = rows[_subsample(len(rows), limit, rng)]
        x = torch.from_numpy(np.ascontiguousarray(bag.feats[rows])).float()
        return ModelInput(x=x, valid=torch.from_numpy(bag.valid[rows]), region=rows.astype(np.int64), token=None)

    def _encode(self, inp: ModelInput, encoder: nn.Module | None, chunk: int | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder is None:
            raise ValueError(f"{type(self).__name__} needs a region encoder")
        assert inp.valid is not None
        n = inp.x.shape[0]
        step = chunk or n
        forward = encoder.forward_features  # the RegionEncoder API: (x, valid) -> (cls, tokens)
        parts = [forward(inp.x[i:i + step], inp.valid[i:i + step]) for i in range(0, n, step)]  # type: ignore[operator]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@INSTANCE_SOURCES.register("tokens")
class TokenSource(_RegionSource):
    """Every valid contextualised token of every region: (Σ valid, W)."""

    def instances(self, inp: ModelInput, encoder: nn.Module | None, *, chunk: int | None = None) -> Instances:
        """Run the encoder and keep the valid output tokens (5x, 10x and 20x alike)."""
        _, tokens = self._encode(inp, encoder, chunk)
        assert inp.valid is not None
        rows, slots = torch.nonzero(inp.valid, as_tuple=True)
        region = torch.as_tensor(inp.region, device=tokens.device)[rows]
        return Instances(tokens[rows, slots], region, slots)


@INSTANCE_SOURCES.register("cls")
class ClsSource(_RegionSource):
    """One CLS vector per region: (R, W)."""

    def instances(self, inp: ModelInput, encoder: nn.Module | None, *, chunk: int | None = None) -> Instances:
        """Run the encoder and keep the CLS output of each region."""
        cls, _ = self._encode(inp, encoder, chunk)
        region = torch.as_tensor(inp.region, device=cls.device)
        return Instances(cls, region, torch.full_like(region, -1))


@INSTANCE_SOURCES.register("mean")
class TokenMeanSource(_RegionSource):
    """One vector per region, the mean of its valid contextualised tokens: (R, W).

    As short as ``cls``, but built from the outputs MEM pretraining actually trains: MEM
    reconstructs masked tokens, so it shapes the token outputs, never the CLS directly
    (docs/concepts/validity.md measures what that does to the CLS).
    """

    def instances(self, inp: ModelInput, encoder: nn.Module | None, *, chunk: int | None = None) -> Instances:
        """Run the encoder and average each region's valid output tokens."""
        _, tokens = self._encode(inp, encoder, chunk)
        assert inp.valid is not None
        weight = inp.valid.to(tokens.dtype).unsqueeze(-1)
        mean = (tokens * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)
        region = torch.as_tensor(inp.region, device=mean.device)
        return Instances(mean, region, torch.full_like(region, -1))


@INSTANCE_SOURCES.register("concat")
class ScaleConcatSource(InstanceSource):
    """One vector per region: its mean valid tile of each magnification, concatenated (no encoder).

    Args:
        magnification: The magnifications to concatenate, joined by ``+`` in this order
            (``"5x+10x+20x"``; labels or exact resolutions as for ``tiles``).
    """

    def __init__(self, *, magnification: str | None = None) -> None:
        if not magnification or "+" not in magnification:
            raise MixmagValueError("the concat source needs two or more magnifications joined by '+', "
                                   "e.g. '5x+10x+20x'")
        super().__init__(magnification=magnification)
        self.parts = [TileInstanceSource(magnification=m.strip()) for m in magnification.split("+")]

    def prepare(self, bag: BagRegions, *, limit: int | None = None,
                rng: np.random.Generator | None = None) -> ModelInput:
        """(R, M * D) regions with a valid tile, each magnification averaged over its valid tiles.

        A magnification with no valid tile in a kept region is averaged over all its tiles (invalid
        tiles are still embedded: docs/concepts/resolution.md#which-regions-are-kept-which-tokens-are-valid),
        so every kept region has all M parts.
        """
        slices = [part._slice(bag.spec) for part in self.parts]
        rows = np.flatnonzero(np.any([bag.valid[:, sl].any(axis=1) for sl in slices], axis=0))
        rows = rows[_subsample(len(rows), limit, rng)]
        means = []
        for sl in slices:
            feats = bag.feats[rows, sl].astype(np.float32)
            valid = bag.valid[rows, sl]
            weight = np.where(valid.any(axis=1, keepdims=True), valid, True).astype(np.float32)[..., None]
            means.append((feats * weight).sum(axis=1) / weight.sum(axis=1))
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate(means, axis=1)))
        return ModelInput(x=x, valid=None, region=rows.astype(np.int64), token=np.full(len(rows), -1, np.int64))

    def instances(self, inp: ModelInput, encoder: nn.Module | None, *, chunk: int | None = None) -> Instances:
        """The concatenated region vectors themselves."""
        assert inp.token is not None
        dev = inp.x.device
        return Instances(inp.x, torch.as_tensor(inp.region, device=dev), torch.as_tensor(inp.token, device=dev))

    def instance_dim(self, tile_dim: int, encoder: nn.Module | None) -> int:
        """``M * D``: one tile embedding per magnification."""
        return tile_dim * len(self.parts)


def _block_of_slot(spec: RegionSpec, sl: slice, label: str) -> tuple[np.ndarray, int]:
    """2x2 block of each token of one magnification, from the spec's layout.

    Returns:
        ``(block (n*n,), n_blocks)``: block index (row-major over the (n/2 x n/2) block grid) of
        every token slot in ``sl``, where n is that magnification's tiles per side.

    Raises:
        MixmagValueError: n is odd (1 included): 2x2 blocks do not tile the grid.
    """
    grid_rc = spec.layout().grid_rc[sl]  # (n*n, 2) (row, col) of each tile of that magnification
    n = int(grid_rc.max()) + 1
    if n % 2:
        raise MixmagValueError(
            f"the context source pools 2x2 blocks of {label} tiles (the footprint of one tile at half "
            f"that magnification), but a region of {spec.region_um:g} µm is {n}x{n} {label} tiles; it needs "
            f"an even number per side (region_um a multiple of {2 * spec.tile_px * parse_magnification(label):g} µm)"
        )
    half = n // 2
    return (grid_rc[:, 0] // 2) * half + grid_rc[:, 1] // 2, half * half


@INSTANCE_SOURCES.register("context")
class ContextSource(InstanceSource):
    """Each valid tile of one magnification with context pooled from that magnification only (no encoder).

    The instance of a valid tile is ``[tile, pseudo-coarse block, pseudo-coarse region]`` (3 * D):

    - ``tile``: its own embedding;
    - block: the mean of the *valid* tiles of its 2x2 block (the footprint of one tile at half the
      magnification: a pseudo-10x vector for 20x tiles; 4 blocks per default region);
    - region: the mean of the valid tiles of its region (a pseudo-5x vector for 20x tiles: with the
      default 448 µm region that is exactly the footprint of the 5x tile).

    Only the token slots of ``magnification`` are read, so the features of other magnifications
    may be absent or anything. Invalid (background) tiles are not instances and are left out of
    every mean (they may hold anything, NaN included); as for ``tiles``, a bag without any valid tile
    of the magnification uses all of them. Blocks follow the spec's token layout (row, col of
    each tile), so any spec whose grid at that magnification has an even side works.

    Args:
        magnification: The tiles' label (``"20x"``) or exact resolution (``"0.5mpp"``).
    """

    def __init__(self, *, magnification: str | None = None) -> None:
        super().__init__(magnification=magnification)
        self.tiles = TileInstanceSource(magnification=magnification)

    def _geometry(self, spec: RegionSpec) -> tuple[slice, np.ndarray, int]:
        """Token slots of the magnification, the 2x2 block of each, and the number of blocks."""
        try:
            sl = self.tiles._slice(spec)
        except MixmagValueError as exc:
            raise MixmagValueError(
                f"{exc}: the context source builds its instances and their context from {self.magnification} "
                f"tiles alone, so the features must hold that magnification; embed with a region spec that "
                f"includes it, or choose another method") from None
        return (sl, *_block_of_slot(spec, sl, str(self.magnification)))

    def prepare(self, bag: BagRegions, *, limit: int | None = None,
                rng: np.random.Generator | None = None) -> ModelInput:
        """(N, 3 * D) instances of the valid tiles, region-major then row-major (like ``tiles``).

        The means are taken over every valid tile of the region before subsampling, so a training
        subset changes which instances are seen, never their context.
        """
        sl, block, n_blocks = self._geometry(bag.spec)
        valid = bag.valid[:, sl]
        if not valid.any():
            logger.warning("bag of slides %s has no valid %s tile; using all its %s tiles",
                           ",".join(bag.slide_ids), self.magnification, self.magnification)
            valid = np.ones_like(valid)
        rows = np.flatnonzero(valid.any(axis=1))
        valid = valid[rows]  # (R, n*n)
        # np.where, not a product: invalid tokens may hold NaN/inf (0 * inf = nan)
        feats = np.where(valid[..., None], bag.feats[rows, sl].astype(np.float32), np.float32(0))  # (R, n*n, D)
        weight = valid.astype(np.float32)
        one_hot = np.eye(n_blocks, dtype=np.float32)[block].T  # (n_blocks, n*n)
        block_mean = (one_hot @ feats) / np.maximum(weight @ one_hot.T, 1.0)[..., None]  # (R, n_blocks, D)
        region_mean = feats.sum(axis=1) / weight.sum(axis=1)[:, None]  # (R, D); every kept row has a valid tile
        local, slot = np.nonzero(valid)
        keep = _subsample(len(local), limit, rng)
        local, slot = local[keep], slot[keep]
        x = np.concatenate([feats[local, slot], block_mean[local, block[slot]], region_mean[local]], axis=1)
        return ModelInput(x=torch.from_numpy(np.ascontiguousarray(x)), valid=None,
                          region=rows[local].astype(np.int64), token=(slot + sl.start).astype(np.int64))

    def instances(self, inp: ModelInput, encoder: nn.Module | None, *, chunk: int | None = None) -> Instances:
        """The tiles with their pooled context."""
        return self.tiles.instances(inp, encoder, chunk=chunk)

    def instance_dim(self, tile_dim: int, encoder: nn.Module | None) -> int:
        """``3 * D``: the tile, its block mean and its region mean."""
        return 3 * tile_dim
