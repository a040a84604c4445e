"""Instance sources: what one MIL method treats as an instance of a bag.

Three sources cover the paper's comparison (docs/concepts/evaluation.md):

- ``tiles``: the FM embeddings of the valid tiles of one magnification (``abmil-5x|10x|20x``);
  no encoder; ``(N, D)`` with N = valid tiles of that magnification in the bag.
- ``tokens``: every valid token of every region after the region encoder, ``(Σ valid, W)``
  (``mix-random|mem|cmem``): contextualised 5x, 10x and 20x tokens side by side.
- ``cls``: one CLS vector per region, ``(R, W)`` (``mix-mem-cls``): ~16x shorter than 20x tiles.
- ``concat``: one vector per region, the mean valid tile of each magnification concatenated,
  ``(R, M * D)`` (``abmil-ms-concat``): multi-scale without a transformer, the baseline that
  tells whether the mixing encoder adds anything over seeing the scales side by side.

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
