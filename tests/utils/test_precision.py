"""One meaning of ``precision`` (auto/fp32/bf16/fp16) for inference and training, on CPU and CUDA.

CUDA cases only look at ``device.type`` and the bf16 capability query, which is monkeypatched:
nothing here touches a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixmag import RegionSpec
from mixmag.errors import MixmagValueError
from mixmag.utils import device as device_mod
from mixmag.utils.device import PRECISIONS, AmpPolicy, resolve_amp

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
BF16, FP16 = torch.bfloat16, torch.float16


@pytest.fixture
def hardware(monkeypatch: pytest.MonkeyPatch):
    """Set what the CPU and the GPU can do natively; records how CUDA bf16 support was asked."""
    calls: list[bool] = []

    def configure(*, cpu_bf16: bool = False, cuda_bf16: bool = False) -> list[bool]:
        def is_bf16_supported(including_emulation: bool = True) -> bool:
            calls.append(including_emulation)
            # an emulating GPU would answer True when emulation counts; the policy must not ask that
            return cuda_bf16 or including_emulation

        monkeypatch.setattr(device_mod, "cpu_supports_bf16", lambda: cpu_bf16)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
        return calls

    return configure


# (precision, device, training, cpu_bf16, cuda_bf16) -> (dtype, grad_scaler)
TABLE = [
    # fp32: plain fp32 everywhere
    ("fp32", CPU, False, True, True, None, False),
    ("fp32", CPU, True, True, True, None, False),
    ("fp32", CUDA, False, True, True, None, False),
    ("fp32", CUDA, True, True, True, None, False),
    # bf16: as asked, never a scaler (bf16 has the exponent range of fp32)
    ("bf16", CPU, False, False, False, BF16, False),
    ("bf16", CPU, True, False, False, BF16, False),
    ("bf16", CUDA, False, False, False, BF16, False),
    ("bf16", CUDA, True, False, False, BF16, False),
    # fp16: as asked; training scales the loss on every device
    ("fp16", CPU, False, True, True, FP16, False),
    ("fp16", CPU, True, True, True, FP16, True),
    ("fp16", CUDA, False, True, True, FP16, False),
    ("fp16", CUDA, True, True, True, FP16, True),
    # auto, inference on CPU: bf16 only where the CPU computes it natively
    ("auto", CPU, False, True, False, BF16, False),
    ("auto", CPU, False, False, False, None, False),
    # auto, training on CPU: fp32 whatever the CPU can do
    ("auto", CPU, True, True, True, None, False),
    ("auto", CPU, True, False, False, None, False),
    # auto, inference on CUDA: fp16 whatever the GPU can do
    ("auto", CUDA, False, False, True, FP16, False),
    ("auto", CUDA, False, False, False, FP16, False),
    # auto, training on CUDA: bf16 on GPUs with native bf16, else fp16 with a scaler
    ("auto", CUDA, True, False, True, BF16, False),
    ("auto", CUDA, True, False, False, FP16, True),
]


@pytest.mark.parametrize(("precision", "device", "training", "cpu_bf16", "cuda_bf16", "dtype", "scaler"), TABLE)
def test_policy_table(hardware, precision: str, device: torch.device, training: bool, cpu_bf16: bool,
                      cuda_bf16: bool, dtype: torch.dtype | None, scaler: bool) -> None:
    hardware(cpu_bf16=cpu_bf16, cuda_bf16=cuda_bf16)
    assert resolve_amp(precision, device, training=training) == AmpPolicy(dtype=dtype, grad_scaler=scaler)


def test_table_covers_every_value_device_and_mode() -> None:
    cases = {(p, d.type, t) for p, d, t, *_ in TABLE}
    assert cases == {(p, d, t) for p in PRECISIONS for d in ("cpu", "cuda") for t in (False, True)}


def test_cuda_bf16_emulation_does_not_count(hardware) -> None:
    calls = hardware(cuda_bf16=False)
    assert resolve_amp("auto", CUDA, training=True).dtype == FP16
    assert calls == [False]


def test_other_devices_run_auto_in_fp32(hardware) -> None:
    hardware(cpu_bf16=True, cuda_bf16=True)
    mps = torch.device("mps")
    assert resolve_amp("auto", mps, training=False) == AmpPolicy(None, False)
    assert resolve_amp("auto", mps, training=True) == AmpPolicy(None, False)
    assert resolve_amp("fp16", mps, training=True) == AmpPolicy(FP16, True)


def test_unknown_precision_is_a_user_error() -> None:
    with pytest.raises(MixmagValueError, match="auto, fp32, fp16, bf16"):
        resolve_amp("fp8", CPU, training=False)


def test_policy_names_and_autocast() -> None:
    assert [AmpPolicy(d).name for d in (None, BF16, FP16)] == ["fp32", "bf16", "fp16"]
    x = torch.ones(2, 2)
    with AmpPolicy(None).autocast(CPU):
        assert (x @ x).dtype == torch.float32
    with AmpPolicy(BF16).autocast(CPU):
        assert (x @ x).dtype == BF16


# --- the three engines use it ------------------------------------------------------------------

@pytest.mark.parametrize("cpu_bf16", [True, False])
def test_tile_embedding_resolves_auto_for_inference(hardware, cpu_bf16: bool) -> None:
    from mixmag.encoders.factory import build_encoder

    hardware(cpu_bf16=cpu_bf16)
    enc = build_encoder("tiny.d16", device="cpu", precision="auto")
    assert enc.autocast_dtype == (BF16 if cpu_bf16 else None)


@pytest.mark.parametrize(("precision", "dtype", "scaler"), [("auto", None, False), ("fp32", None, False),
                                                             ("bf16", BF16, False), ("fp16", FP16, True)])
def test_pretraining_resolves_for_training(hardware, precision: str, dtype: torch.dtype | None,
                                           scaler: bool) -> None:
    from mixmag.region.distributed import DistContext
    from mixmag.region.settings import PretrainSettings
    from mixmag.region.trainer import Trainer

    hardware(cpu_bf16=True)  # auto training stays fp32 on the CPU even where bf16 is native
    settings = PretrainSettings(preset="tiny", precision=precision, device="cpu", batch_size=2)
    trainer = Trainer(tile_dim=8, spec=RegionSpec(), settings=settings, ctx=DistContext())
    assert trainer.dtype == dtype
    assert trainer.scaler.is_enabled() == scaler


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_mil_training_and_its_predictions_resolve_for_training(hardware, monkeypatch: pytest.MonkeyPatch,
                                                               precision: str) -> None:
    from mixmag.mil import train as mil_train
    from mixmag.mil.data import BagRegions
    from mixmag.mil.estimator import MILClassifier

    hardware(cpu_bf16=True)  # predictions of a fitted model follow training: fp32 under auto on the CPU
    seen: list[tuple[str, bool]] = []

    def spy(p: str, device: torch.device, *, training: bool) -> AmpPolicy:
        seen.append((p, training))
        return resolve_amp(p, device, training=training)

    scalers: list[str] = []
    real_scaler = torch.amp.GradScaler

    def scaler_spy(device_type: str = "cuda", **kwargs: object) -> torch.amp.GradScaler:
        scalers.append(device_type)
        return real_scaler(device_type, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mil_train, "resolve_amp", spy)
    monkeypatch.setattr(mil_train.torch.amp, "GradScaler", scaler_spy)
    rng = np.random.default_rng(0)
    bags = [BagRegions.from_array(rng.standard_normal((3, 21, 4)).astype(np.float32)) for _ in range(4)]
    clf = MILClassifier("abmil-20x", hidden_dim=8, attention_dim=4, epochs=1, device="cpu",
                        precision=precision).fit(bags, [0, 1, 0, 1])
    probs = clf.predict_proba(bags)
    assert np.isfinite(probs).all()
    assert seen and all(s == (precision, True) for s in seen)
    assert scalers == (["cpu"] if precision == "fp16" else [])
