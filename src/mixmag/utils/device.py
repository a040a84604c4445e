"""Device and precision selection shared by the embedding, pretraining and MIL engines.

Every engine turns its ``precision`` setting into numerics through :func:`resolve_amp`, so
``"auto"`` means one thing everywhere (docs/concepts/precision.md).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from mixmag.errors import MixmagValueError
from mixmag.utils.settings import Precision

#: The values every ``precision`` setting accepts (those of the settings' :class:`Precision`).
PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)

_NAMES: dict[torch.dtype | None, str] = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; otherwise ``torch.device(device)``.

    Raises:
        MixmagValueError: ``device`` is not a device string (``gpu``, ``cuda0`` ...); torch's own
            complaint lists twenty backends and reads like a bug.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise MixmagValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N (a GPU index) or mps"
                               ) from None


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX).

    bf16 autocast on a CPU without them is emulated and slower than fp32.
    """
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_supports_bf16() -> bool:
    """True when the current GPU computes in bf16 natively (compute capability >= 8.0, or ROCm).

    Older GPUs (V100, T4, ...) only emulate bf16, far slower than their fp16 tensor cores, so
    emulation does not count.
    """
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


@dataclass(frozen=True)
class AmpPolicy:
    """Resolved numerics of one engine: the autocast dtype and whether gradients need scaling.

    Attributes:
        dtype: Autocast dtype (``torch.bfloat16`` or ``torch.float16``); None = plain fp32, no autocast.
        grad_scaler: A :class:`torch.amp.GradScaler` must scale the loss (fp16 training only:
            fp16 gradients underflow without it; bf16 has the exponent range of fp32).
    """

    dtype: torch.dtype | None
    grad_scaler: bool = False

    @property
    def name(self) -> str:
        """``"fp32"``, ``"bf16"`` or ``"fp16"``: the precision actually used (stored in provenance)."""
        return _NAMES[self.dtype]

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        """Autocast context for ``device`` (a no-op context for fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


def resolve_amp(precision: str, device: torch.device, *, training: bool) -> AmpPolicy:
    """The one meaning of a ``precision`` setting, for inference or training on a device.

    ``training=False`` is feature extraction: tile embedding (``mixmag embed``) and region
    encoding (``mixmag encode``). ``training=True`` is a training run: region pretraining, and MIL
    fitting together with the validation and test predictions of the models it fits (they are
    scored in the numerics the model was trained in).

    ===== ========================== ========= ================= ===============================
    value inference on CPU           inference training on CPU   training on CUDA
                                     on CUDA
    ===== ========================== ========= ================= ===============================
    fp32  fp32                       fp32      fp32              fp32
    bf16  bf16                       bf16      bf16              bf16
    fp16  fp16                       fp16      fp16 + GradScaler fp16 + GradScaler
    auto  bf16 if the CPU has native fp16      fp32              bf16 if the GPU has native bf16
          bf16 (AVX-512 BF16 / AMX),                             (:func:`cuda_supports_bf16`),
          else fp32                                              else fp16 + GradScaler
    ===== ========================== ========= ================= ===============================

    Why ``auto`` differs between the columns:

    * Inference on CUDA uses fp16: no gradients, so no underflow to guard against, and fp16 keeps
      three more mantissa bits than bf16. ``mixmag embed`` additionally checks ``auto`` against
      fp32 on the first tiles and falls back to fp32 if they disagree.
    * Training on CUDA prefers bf16: it has the range of fp32, so no gradient scaler is needed.
      GPUs that only emulate bf16 train in fp16 with a scaler instead.
    * Training on CPU stays fp32: reduced-precision training there is slower or noisier for the
      small models mixmag trains. CPU inference uses bf16 only on CPUs that compute it natively.

    An explicit ``bf16`` or ``fp16`` is used as asked on every device; fp16 training always gets a
    gradient scaler, on CPU as on CUDA. Devices other than CPU and CUDA (e.g. ``mps``) run
    ``auto`` in fp32.

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device: Where the model runs (only ``device.type`` matters; no memory is touched).
        training: Whether this resolves the numerics of a training run (see above).

    Raises:
        MixmagValueError: Unknown precision value.
    """
    if precision not in PRECISIONS:
        raise MixmagValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    dtype: torch.dtype | None
    if precision == "auto":
        if device.type == "cuda":
            dtype = torch.bfloat16 if training and cuda_supports_bf16() else torch.float16
        elif device.type == "cpu" and not training:
            dtype = torch.bfloat16 if cpu_supports_bf16() else None
        else:
            dtype = None
    else:
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return AmpPolicy(dtype=dtype, grad_scaler=training and dtype == torch.float16)
