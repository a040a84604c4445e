"""Region-encoder checkpoints: a folder with safetensors weights, a JSON config and training state.

Format ``region_checkpoint`` v2 (documented in ``docs/formats/checkpoint.md``)::

    <checkpoint>/
      model.safetensors   encoder.*  RegionEncoder weights (what downstream code loads), always
                                     with encoder.input_mean / encoder.input_std (D,) (v2)
                          head.*     pretraining heads (MEM decoder, CMEM projector), for resuming
                          stats.target_mean, stats.target_std  (D,) cohort target statistics
      config.json         artifact, format_version, objective, step, encoder (constructor kwargs),
                          spec (RegionSpec), tile_dim, config (training settings), extra, created_at
      training_state.pt   optimizer / scheduler / grad-scaler state and RNG states (training only)

A checkpoint folder is written into a temporary sibling and renamed into place, so it is either
complete or absent. ``config.json`` never holds weights and ``training_state.pt`` never holds
code: weights load with safetensors and the training state with ``torch.load(weights_only=True)``; a
damaged or foreign file raises one :class:`~mixmag.io.h5common.FormatError` line naming it.

Older versions are read through :func:`upgrade_checkpoint_tensors` (in memory; the folder on disk
is never rewritten). v1 -> v2: the encoder's input standardisation (``encoder.input_mean`` /
``encoder.input_std``) became part of the layout. v1 folders written before it existed lack the two
tensors; their encoder was trained on raw embeddings, so the identity (mean 0, std 1) reproduces
it exactly, with a logged warning. v1 folders written after it already hold them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from mixmag._version import __version__
from mixmag.encoders.weights import read_safetensors_file, read_torch_file
from mixmag.geometry import RegionSpec
from mixmag.io.h5common import FormatError
from mixmag.region.model import RegionEncoder
from mixmag.utils.atomic import atomic_write_json
from mixmag.utils.hashing import sha256_file

logger = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "region_checkpoint"
CHECKPOINT_VERSION = 2
#: Versions :func:`read_checkpoint_config` accepts; older ones are upgraded by :func:`upgrade_checkpoint_tensors`.
SUPPORTED_CHECKPOINT_VERSIONS = (1, 2)
#: The encoder's input standardisation, always stored since v2 (see :meth:`RegionEncoder.set_input_stats`).
INPUT_STATS = ("encoder.input_mean", "encoder.input_std")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"


class LayoutMismatchError(FormatError):
    """Features and a checkpoint disagree on the tile dimension or the region layout."""


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel (and similar wrappers) keep the real module in `.module`
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _split_model(model: nn.Module) -> tuple[RegionEncoder, dict[str, torch.Tensor]]:
    """Return (encoder, extra head tensors) for a RegionEncoder or a pretraining wrapper."""
    model = _unwrap(model)
    if isinstance(model, RegionEncoder):
        return model, {}
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, RegionEncoder):
        raise TypeError(f"expected a RegionEncoder or a module with an `.encoder` RegionEncoder, got {type(model)}")
    heads = {f"head.{k}": v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    return encoder, heads


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) RNG states as plain containers (weights_only-loadable)."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    state: dict[str, Any] = {
        "python": json.dumps(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states captured by :func:`rng_state`."""
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_region_checkpoint(
    path_dir: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    step: int,
    config: dict[str, Any],
    target_mean: np.ndarray | torch.Tensor | None,
    target_std: np.ndarray | torch.Tensor | None,
    spec: RegionSpec,
    objective: str,
    extra: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint folder (replacing an existing one at ``path_dir``).

    Args:
        path_dir: Checkpoint folder to create.
        model: A :class:`~mixmag.region.model.RegionEncoder`, or a module whose ``.encoder`` is one
            (its other parameters are saved as ``head.*``); DDP wrappers are unwrapped.
        optimizer: When given, its state, the scheduler state and all RNG states go to
            ``training_state.pt`` so that training can resume exactly.
        scheduler: LR scheduler with ``state_dict()``.
        step: Optimizer steps completed.
        config: JSON-serialisable training settings (stored verbatim).
        target_mean: (D,) cohort mean of the tile embeddings used to standardise MEM targets, or None.
        target_std: (D,) cohort standard deviation, or None.
        spec: Region geometry the encoder was trained on.
        objective: ``mem``, ``cmem``, ``random`` or a downstream tag (e.g. ``finetuned``).
        extra: More JSON-serialisable metadata (stored under ``extra``).
        training_state: More torch-serialisable state (e.g. a grad-scaler) for ``training_state.pt``.

    Returns:
        The final checkpoint folder.
    """
    final = Path(path_dir)
    encoder, heads = _split_model(model)
    tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    tensors.update(heads)
    for name, value in (("stats.target_mean", target_mean), ("stats.target_std", target_std)):
        if value is not None:
            tensors[name] = torch.as_tensor(np.asarray(value), dtype=torch.float32)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {
        "artifact": CHECKPOINT_ARTIFACT, "format_version": CHECKPOINT_VERSION, "objective": objective,
        "step": int(step), "encoder": encoder.init_kwargs, "tile_dim": int(encoder.tile_dim),
        "spec": spec.to_dict(), "config": config, "extra": extra or {}, "mixmag_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=f".{os.getpid()}.tmp", dir=final.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"artifact": CHECKPOINT_ARTIFACT})
        if optimizer is not None:
            state = {"optimizer": optimizer.state_dict(), "rng": rng_state(), "step": int(step)}
            if scheduler is not None:
                state["scheduler"] = scheduler.state_dict()
            state.update(training_state or {})
            torch.save(state, tmp / STATE_FILE)
        atomic_write_json(tmp / CONFIG_FILE, meta)  # written last: marks the folder complete
        if final.exists():
            # move the old folder aside first: rename() cannot replace a non-empty directory
            old = final.with_name(f".{final.name}.{os.getpid()}.old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Find the checkpoint folder meant by ``path``.

    Accepts a checkpoint folder, its ``model.safetensors``, or a pretraining run folder (then its
    ``final`` checkpoint, else the newest one under ``checkpoints/``).
    """
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_FILE, CONFIG_FILE):
        p = p.parent
    if (p / CONFIG_FILE).is_file():
        return p
    if (p / "final" / CONFIG_FILE).is_file():
        return p / "final"
    steps = sorted((c for c in (p / "checkpoints").glob("step_*") if (c / CONFIG_FILE).is_file()),
                   key=lambda c: c.name)
    if steps:
        return steps[-1]
    raise FormatError(f"no region-encoder checkpoint at {p}; pass a checkpoint folder or the --out "
                      "folder of `mixmag pretrain`")


def read_checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``config.json`` of the checkpoint at ``path`` (see :func:`resolve_checkpoint`)."""
    folder = resolve_checkpoint(path)
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FormatError(f"{folder / CONFIG_FILE}: not valid JSON ({exc}); the checkpoint folder is damaged: copy it "
                          "again, or rerun `mixmag pretrain`") from exc
    if meta.get("artifact") != CHECKPOINT_ARTIFACT:
        raise FormatError(f"{folder}: not a mixmag region-encoder checkpoint (artifact={meta.get('artifact')!r})")
    version = int(meta.get("format_version", -1))
    if version not in SUPPORTED_CHECKPOINT_VERSIONS:
        hint = ("it was written by a newer mixmag; upgrade mixmag" if version > CHECKPOINT_VERSION
                else "re-run `mixmag pretrain`")
        raise FormatError(f"{folder}: checkpoint format_version {meta.get('format_version')} is not "
                          f"supported (supports {list(SUPPORTED_CHECKPOINT_VERSIONS)}); {hint}")
    meta["path"] = str(folder)
    return meta


def upgrade_checkpoint_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Bring the tensors of a checkpoint written as ``meta["format_version"]`` to the current layout.

    The upgrade happens in memory; the folder on disk is left as it is.

    - v1 -> v2: v2 always stores the encoder's input standardisation (:data:`INPUT_STATS`). A v1
      checkpoint written before input standardisation existed has neither tensor: its encoder was
      trained on raw tile embeddings, so the identity (mean 0, std 1) reproduces its outputs exactly.
      It is *not* derived from ``stats.target_*``, which that encoder never applied to its inputs.
      A warning is logged. v1 checkpoints written later already hold both and are used as they are.

    Args:
        tensors: Every tensor of ``model.safetensors`` (from ``safetensors.torch.load_file``).
        meta: The checkpoint's validated ``config.json`` (:func:`read_checkpoint_config`).

    Returns:
        The tensors in the current (v2) layout (a new dict; ``tensors`` is not modified).

    Raises:
        FormatError: A current-version checkpoint lacks tensors the version guarantees.
    """
    version = int(meta["format_version"])
    where = meta.get("path", "checkpoint")
    out = dict(tensors)
    missing = [k for k in INPUT_STATS if k not in out]
    if version >= 2:
        if missing:
            raise FormatError(f"{where}: region_checkpoint v{version} without {missing}; the file is damaged "
                              "or was not written by mixmag; re-run `mixmag pretrain`")
        return out
    if len(missing) == 1:
        raise FormatError(f"{where}: holds only one of {list(INPUT_STATS)}; the file is damaged")
    if missing:
        tile_dim = int(meta["tile_dim"])
        ref = out.get("encoder.proj.weight")
        device = ref.device if ref is not None else torch.device("cpu")
        out["encoder.input_mean"] = torch.zeros(tile_dim, dtype=torch.float32, device=device)
        out["encoder.input_std"] = torch.ones(tile_dim, dtype=torch.float32, device=device)
        logger.warning("%s: region_checkpoint v1 written before input standardisation existed; its encoder "
                       "was trained on raw tile embeddings and is loaded with identity input statistics "
                       "(mean 0, std 1). Re-save it (or re-run `mixmag pretrain`) to store v%d.",
                       where, CHECKPOINT_VERSION)
    return out


def load_checkpoint_tensors(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` (encoder.*, head.*, stats.*), upgraded to the current layout.

    Older format versions go through :func:`upgrade_checkpoint_tensors`.
    """
    meta = read_checkpoint_config(path)
    tensors = read_safetensors_file(Path(meta["path"]) / WEIGHTS_FILE, device=str(map_location), error=FormatError)
    return upgrade_checkpoint_tensors(tensors, meta)


def state_differences(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """What keeps state dict ``found`` from loading into a model whose own is ``expected``, on one line.

    Returns:
        The tensors whose shapes differ, then the missing and the unexpected names (the first three
        of each, with counts); ``""`` when ``found`` loads strictly.
    """
    common = sorted(set(expected) & set(found))
    wrong = [f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}" for k in common
             if found[k].shape != expected[k].shape]
    parts = [f"{label} ({len(keys)}): {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
             for label, keys in (("shape (file vs model)", wrong), ("missing", sorted(set(expected) - set(found))),
                                 ("unexpected", sorted(set(found) - set(expected)))) if keys]
    return "; ".join(parts)


def load_region_encoder(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
                        ) -> tuple[RegionEncoder, dict[str, Any]]:
    """Rebuild the region encoder of a checkpoint.

    Args:
        path: Checkpoint folder, its ``model.safetensors``, or a ``mixmag pretrain`` run folder.
        map_location: Device for the weights.

    Returns:
        ``(encoder, info)``: the :class:`~mixmag.region.model.RegionEncoder` in eval mode, and a dict
        with ``objective``, ``spec`` (RegionSpec), ``tile_dim``, ``n_tokens``, ``width``, ``config``,
        ``step``, ``target_mean`` / ``target_std`` ((D,) float32 numpy or None), ``checkpoint_hash``
        (SHA-256 of the weights file), ``path``, ``encoder_kwargs``, ``extra`` and ``format_version``
        (as stored: older versions are upgraded on load, see :func:`upgrade_checkpoint_tensors`).
    """
    meta = read_checkpoint_config(path)
    folder = Path(meta["path"])
    weights = read_safetensors_file(folder / WEIGHTS_FILE, device=str(map_location), error=FormatError)
    tensors = upgrade_checkpoint_tensors(weights, meta)
    encoder = RegionEncoder(**meta["encoder"])
    state = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    differ = state_differences(encoder.state_dict(), state)
    if differ:  # torch's own message is one line per tensor
        raise FormatError(f"{folder}: {WEIGHTS_FILE} does not fit the encoder its {CONFIG_FILE} describes ({differ}); "
                          f"the two files come from different checkpoints: copy the checkpoint folder again, whole")
    encoder.load_state_dict(state)
    encoder.to(map_location).eval()
    stats = {k: (tensors[f"stats.{k}"].cpu().numpy() if f"stats.{k}" in tensors else None)
             for k in ("target_mean", "target_std")}
    info = {
        "objective": meta["objective"], "spec": RegionSpec.from_dict(meta["spec"]), "tile_dim": int(meta["tile_dim"]),
        "n_tokens": int(meta["encoder"]["n_tokens"]), "width": int(meta["encoder"]["width"]),
        "config": meta.get("config", {}), "step": int(meta["step"]), **stats,
        "checkpoint_hash": sha256_file(folder / WEIGHTS_FILE), "path": str(folder),
        "encoder_kwargs": meta["encoder"], "extra": meta.get("extra", {}),
        "format_version": int(meta["format_version"]),
    }
    return encoder, info


def load_training_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``training_state.pt`` of a checkpoint (optimizer, scheduler, RNG, step ...)."""
    folder = resolve_checkpoint(path)
    file = folder / STATE_FILE
    if not file.is_file():
        raise FormatError(f"{folder} holds no training state (saved for inference only); it cannot be resumed")
    state = read_torch_file(file, error=FormatError)
    if not isinstance(state, dict):
        raise FormatError(f"{file}: holds a {type(state).__name__}, not a mixmag training state; the file is damaged")
    return state


def check_layout(info: dict[str, Any], *, tile_dim: int, spec: RegionSpec, source: str) -> None:
    """Raise :class:`LayoutMismatchError` when features of ``source`` do not fit the checkpoint's layout."""
    problems = []
    if int(info["tile_dim"]) != int(tile_dim):
        problems.append(f"tile embedding dim {tile_dim} != checkpoint's {info['tile_dim']}")
    if spec.n_tokens != int(info["n_tokens"]):
        problems.append(f"{spec.n_tokens} tokens per region != checkpoint's {info['n_tokens']}")
    elif spec != info["spec"]:
        problems.append(f"region layout {spec.to_dict()} != checkpoint's {info['spec'].to_dict()}")
    if problems:
        raise LayoutMismatchError(
            f"{source} does not match the region-encoder checkpoint {info.get('path', '')}: "
            + "; ".join(problems)
            + ". Use a checkpoint pretrained on features of the same tile encoder and region layout."
        )


def remove_checkpoint(path: str | os.PathLike[str]) -> None:
    """Delete a checkpoint folder written by :func:`save_region_checkpoint` (rotation of old ones)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
