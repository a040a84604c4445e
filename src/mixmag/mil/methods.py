"""The methods of the paper's comparison as configuration over one model (docs/concepts/evaluation.md).

A method is a row of a table: which instance source, which magnification (tile methods), how the
region encoder is initialised, and which pooling head. Adding a method is adding a row, e.g.::

    METHODS.add("mix-mem-frozen-cls", MethodSpec(source="cls", encoder="mem", freeze_encoder=True))

``encoder`` names the *checkpoint role* (``"random"``, ``"mem"``, ``"cmem"``) looked up in the
``checkpoints`` mapping given to training; ``fresh_if_missing`` lets ``mix-random`` build a freshly
initialised encoder when no ``random`` checkpoint is given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mixmag.mil.instances import INSTANCE_SOURCES, InstanceSource
from mixmag.mil.settings import PAPER_METHODS
from mixmag.registry import Registry

__all__ = ["METHODS", "PAPER_METHODS", "MethodSpec"]


@dataclass(frozen=True)
class MethodSpec:
    """One MIL method.

    Attributes:
        source: Instance source key (``tiles``, ``tokens``, ``cls``).
        magnification: Tile magnification for ``tiles`` (``"20x"``); None otherwise.
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
}
for _key, _spec in _TABLE.items():
    METHODS.add(_key, _spec, meta=_spec)
