"""The methods of the paper's comparison as configuration over one model (docs/concepts/evaluation.md).

A method is a row of a table: which instance source, which magnification (tile methods), how the
region encoder is initialised, and which pooling head. Adding a method is adding a row, e.g.::

    METHODS.add("mix-mem-frozen-cls", MethodSpec(source="cls", encoder="mem", freeze_encoder=True))

``encoder`` names the *checkpoint role* (``"random"``, ``"mem"``, ``"cmem"``) looked up in the
``checkpoints`` mapping given to training; ``fresh_if_missing`` lets ``mix-random`` build a freshly
initialised encoder when no ``random`` checkpoint is given.

Besides the paper's seven (:data:`PAPER_METHODS`, the default), the table holds the baselines
reviewers ask for (:data:`BASELINE_METHODS`, docs/concepts/evaluation.md#baselines): run them by
name like any other method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import mixmag.mil.transmil  # noqa: F401 (registers the "transmil" head used below)
from mixmag.mil.instances import INSTANCE_SOURCES, InstanceSource
from mixmag.mil.settings import PAPER_METHODS
from mixmag.registry import Registry

__all__ = ["BASELINE_METHODS", "METHODS", "PAPER_METHODS", "MethodSpec"]


@dataclass(frozen=True)
class MethodSpec:
    """One MIL method.

    Attributes:
        source: Instance source key (``tiles``, ``tokens``, ``cls``, ``mean``, ``concat``, ``context``).
        magnification: Tile magnification for ``tiles`` and ``context`` (``"20x"``), the joined ones
            for ``concat`` (``"5x+10x+20x"``); None for the encoder sources.
        encoder: Checkpoint role of the region encoder (None: no encoder).
        fresh_if_missing: Build a fresh seeded encoder when that checkpoint is not given.
        freeze_encoder: Always freeze the encoder for this method (else the run's setting applies).
        head: MIL head key in :data:`mixmag.mil.abmil.HEADS`.
        description: One line for tables and docs.
    """

    source: str
    magnification: str | None = None
    encoder: str | None = None
    fresh_if_missing: bool = False
    freeze_encoder: bool = False
    head: str = "abmil"
    description: str = ""

    def build_source(self) -> InstanceSource:
        """Instantiate this method's instance source."""
        return INSTANCE_SOURCES.get(self.source)(magnification=self.magnification)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (written into each run's config)."""
        return asdict(self)


METHODS: Registry[MethodSpec] = Registry("MIL method")

_TABLE: dict[str, MethodSpec] = {
    "abmil-5x": MethodSpec("tiles", "5x", description="AB-MIL over 5x (2.0 µm/px) tile embeddings"),
    "abmil-10x": MethodSpec("tiles", "10x", description="AB-MIL over 10x (1.0 µm/px) tile embeddings"),
    "abmil-20x": MethodSpec("tiles", "20x", description="AB-MIL over 20x (0.5 µm/px) tile embeddings"),
    "mix-random": MethodSpec("tokens", encoder="random", fresh_if_missing=True,
                             description="randomly initialised mixing encoder, all tokens, fine-tuned"),
    "mix-mem": MethodSpec("tokens", encoder="mem", description="MEM-pretrained mixing encoder, all tokens, fine-tuned"),
    "mix-cmem": MethodSpec("tokens", encoder="cmem", description="CMEM-pretrained mixing encoder, all tokens, fine-tuned"),
    "mix-mem-cls": MethodSpec("cls", encoder="mem", description="MEM-pretrained encoder, one CLS per region, fine-tuned"),
    "mix-mem-mean": MethodSpec("mean", encoder="mem",
                               description="MEM-pretrained encoder, one mean output token per region, fine-tuned"),
    "abmil-ms-concat": MethodSpec("concat", "5x+10x+20x",
                                  description="AB-MIL over regions as [mean 5x, mean 10x, mean 20x tile] (no encoder)"),
    "mix-random-mean": MethodSpec("mean", encoder="random", fresh_if_missing=True,
                                  description="randomly initialised encoder, one mean output token per region, fine-tuned"),
    # Baselines (docs/concepts/evaluation.md#baselines); not in the paper's default list.
    "abmil-20x-context": MethodSpec("context", "20x",
                                    description="AB-MIL over 20x tiles as [tile, mean of its 2x2 block, mean of its "
                                                "region]: pseudo-10x/5x context from 20x features only"),
    "mix-mem-frozen": MethodSpec("tokens", encoder="mem", freeze_encoder=True,
                                 description="MEM-pretrained mixing encoder, all tokens, frozen"),
    "mix-cmem-frozen": MethodSpec("tokens", encoder="cmem", freeze_encoder=True,
                                  description="CMEM-pretrained mixing encoder, all tokens, frozen"),
    "transmil-20x": MethodSpec("tiles", "20x", head="transmil",
                               description="TransMIL (transformer, class token, PPEG) over 20x tile embeddings"),
}

#: The reviewers' baselines: 20x-only context, frozen encoders, a transformer aggregator over 20x.
BASELINE_METHODS: tuple[str, ...] = ("abmil-20x-context", "mix-mem-frozen", "mix-cmem-frozen", "transmil-20x")

for _key, _spec in _TABLE.items():
    METHODS.add(_key, _spec, meta=_spec)
