"""Region encoders for the ``mix-*`` methods: from a pretraining checkpoint, or freshly initialised.

A method names a *checkpoint role* (``random``, ``mem``, ``cmem``; see :mod:`mixmag.mil.methods`).
:func:`resolve_encoder` turns the role plus the user's ``checkpoints`` mapping into an
:class:`RegionEncoderRecipe`, checking once that the checkpoint fits the features (tile dimension and
region layout); every fold then calls :meth:`RegionEncoderRecipe.build` for its own fresh copy, so no
fine-tuned weights leak between folds.

A fresh encoder (``mix-random`` without a ``random`` checkpoint) copies the *architecture* of a
pretrained checkpoint when one is given, so that random-vs-pretrained compares initialisations and
nothing else; otherwise it is built from the named preset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mixmag.errors import MixmagError, MixmagFileNotFoundError
from mixmag.geometry import RegionSpec
from mixmag.mil.methods import MethodSpec
from mixmag.region.checkpoints import check_layout, load_region_encoder
from mixmag.region.model import RegionEncoder, build_region_encoder
from mixmag.utils.seed import torch_rng_scope

logger = logging.getLogger(__name__)


class MissingCheckpointError(MixmagError, LookupError):
    """A method needs a checkpoint role that was not provided (the method is skipped)."""


@dataclass(frozen=True)
class RegionEncoderRecipe:
    """How to (re)create one method's region encoder.

    Attributes:
        role: Checkpoint role of the method (``random``, ``mem``, ``cmem``).
        checkpoint: Checkpoint folder the weights come from; None for a fresh initialisation.
        checkpoint_hash: SHA-256 of the checkpoint weights (provenance).
        objective: Pretraining objective stored in the checkpoint (``mem``, ``cmem``, ``random``).
        architecture: Constructor kwargs of the encoder to build fresh (copied from a pretrained
            checkpoint); empty: use ``preset``.
        template: The pretrained checkpoint whose architecture and input statistics a fresh
            encoder copies (None: none).
        preset: Region-encoder preset for a fresh build without a template.
        seed: Seed of a fresh initialisation (identical across folds).
        tile_dim: Tile embedding dimension of the features.
        spec: Region geometry of the features (as ``RegionSpec.to_dict()``).
    """

    role: str
    checkpoint: str | None
    checkpoint_hash: str | None
    objective: str | None
    preset: str
    seed: int
    tile_dim: int
    spec: dict[str, Any]
    architecture: dict[str, Any] = field(default_factory=dict)
    template: str | None = None

    def build(self) -> RegionEncoder:
        """A new encoder: loaded from the checkpoint, or freshly initialised under :attr:`seed`."""
        if self.checkpoint is not None:
            encoder, _ = load_region_encoder(self.checkpoint, map_location="cpu")
            return encoder
        with torch_rng_scope(self.seed):  # seed the init without disturbing the caller's RNG
            if self.architecture:
                encoder = RegionEncoder(**self.architecture)
            else:
                encoder = build_region_encoder(tile_dim=self.tile_dim, spec=RegionSpec.from_dict(self.spec),
                                               preset=self.preset)
        if self.template is not None:
            # same input standardisation as the pretrained encoders: only the weights differ
            pretrained, _ = load_region_encoder(self.template, map_location="cpu")
            encoder.set_input_stats(pretrained.input_mean, pretrained.input_std)
        return encoder

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly provenance (written into the run config)."""
        return asdict(self)


def resolve_encoder(method: MethodSpec, *, checkpoints: Mapping[str, str | os.PathLike[str]],
                    tile_dim: int, spec: RegionSpec, preset: str = "base", seed: int = 0,
                    features: str | os.PathLike[str] | None = None) -> RegionEncoderRecipe:
    """Decide where ``method``'s encoder comes from and check it fits the features.

    Args:
        method: A method with ``encoder`` set.
        checkpoints: Checkpoint path per role, e.g. ``{"mem": ..., "cmem": ...}``.
        tile_dim: Tile embedding dimension of the features.
        spec: Region geometry of the features.
        preset: Architecture preset for a fresh encoder when no pretrained checkpoint is given.
        seed: Seed of a fresh initialisation.
        features: The feature folder ``tile_dim`` and ``spec`` come from, named when a checkpoint
            does not fit it.

    Raises:
        MissingCheckpointError: the role has no checkpoint and the method cannot start fresh.
        FileNotFoundError: a given checkpoint path does not exist.
        mixmag.io.h5common.FormatError: the checkpoint does not fit the features.
    """
    assert method.encoder is not None, "resolve_encoder() is for methods with a region encoder"
    role = method.encoder
    base: dict[str, Any] = {"role": role, "preset": preset, "seed": seed, "tile_dim": int(tile_dim), "spec": spec.to_dict()}
    source = f"the feature folder {features}" if features is not None else "the features"
    path = checkpoints.get(role)
    if path is not None:
        if not Path(path).exists():
            raise MixmagFileNotFoundError(f"the {role} checkpoint {path} does not exist")
        _, info = load_region_encoder(path, map_location="cpu")
        check_layout(info, tile_dim=tile_dim, spec=spec, source=source)
        logger.info("%s encoder: checkpoint %s (objective %s, step %s)", role, info["path"],
                    info.get("objective"), info.get("step"))
        return RegionEncoderRecipe(checkpoint=str(info["path"]), checkpoint_hash=info.get("checkpoint_hash"),
                             objective=info.get("objective"), **base)
    if not method.fresh_if_missing:
        raise MissingCheckpointError(f"no {role} checkpoint given (pass --{role}-checkpoint)")
    # Copy the architecture of a pretrained checkpoint, if any, so only the initialisation differs.
    for template_role in sorted(checkpoints):
        template = checkpoints[template_role]
        if Path(template).exists():
            _, info = load_region_encoder(template, map_location="cpu")
            check_layout(info, tile_dim=tile_dim, spec=spec, source=source)
            logger.info("%s encoder: fresh initialisation (seed %d) with the architecture and input statistics "
                        "of the %s checkpoint",
                        role, seed, template_role)
            return RegionEncoderRecipe(checkpoint=None, checkpoint_hash=None, objective="random",
                                 architecture=dict(info["encoder_kwargs"]), template=str(info["path"]), **base)
    logger.info("%s encoder: fresh initialisation (seed %d) from the %r preset", role, seed, preset)
    return RegionEncoderRecipe(checkpoint=None, checkpoint_hash=None, objective="random", **base)
