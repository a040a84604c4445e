"""Where encoder weights come from and how a checkpoint is fitted onto a backbone.

Three sources, recorded in every feature file as ``weights_source`` + ``weights_hash``:

* a Hugging Face hub id (``hf-hub:org/name`` or ``org/name``): needs ``huggingface_hub``, network
  and, for gated models, an accepted licence and a token; any failure says how to pass a local copy;
* a local file or folder (``.safetensors`` or a torch state dict, loaded with ``weights_only=True``
  so a checkpoint can never run code);
* random initialisation (``"random"``), for tests and throughput benchmarks only.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixmag.encoders.base import (
    PACKAGED_WEIGHTS,
    RANDOM_WEIGHTS,
    EncoderMeta,
    EncoderRecipe,
    StateDict,
)
from mixmag.errors import MixmagError, MixmagRuntimeError
from mixmag.utils.hashing import sha256_file

logger = logging.getLogger(__name__)

HUB_PREFIXES = ("hf-hub:", "hf_hub:")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A weights value with one of these suffixes is a local file, never a hub id (see looks_like_path).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Files looked for, in order, inside a weights folder (a hub snapshot or a user's export).
FOLDER_CANDIDATES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pt", "model.pth",
                     "checkpoint.pth", "model.pt")
# Prefixes that training frameworks put in front of backbone keys (DDP, wrappers, CLIP towers).
KNOWN_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "trunk.", "visual.trunk.", "teacher.backbone.")


class WeightsError(MixmagRuntimeError):
    """Weights cannot be found, downloaded or fitted; the message says how to fix it."""


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights file ready to load, with its provenance.

    Attributes:
        path: Local file (None for random init).
        source: Recorded source string: hub id, absolute path, "package:<name>" or "random".
        sha256: Hex digest of the file, or "random".
    """

    path: Path | None
    source: str
    sha256: str

    @property
    def is_random(self) -> bool:
        """True for random initialisation."""
        return self.path is None


RANDOM = ResolvedWeights(path=None, source=RANDOM_WEIGHTS, sha256=RANDOM_WEIGHTS)


def looks_like_path(spec: str) -> bool:
    """True when a ``weights`` value can only be a local path, so it is never looked up on the hub.

    That is a value with a weights-file suffix, a backslash, more than one ``/``, a leading ``/``,
    ``.`` or ``~``, or anything else that is not ``org/name`` (a bare ``uni_weights``): a missing file
    is then reported as missing instead of costing a minute of hub retries.
    (:func:`mixmag.embed.settings.weights_kind` reads config values the same way.)
    """
    if spec.startswith(HUB_PREFIXES):
        return False
    return ("\\" in spec or spec.startswith(("/", ".", "~")) or spec.count("/") > 1
            or spec.lower().endswith(WEIGHT_SUFFIXES) or not _HUB_ID.match(spec))


def _hub_id(spec: str) -> str | None:
    for prefix in HUB_PREFIXES:
        if spec.startswith(prefix):
            repo = spec[len(prefix):]
            return repo if _HUB_ID.match(repo) else None
    return None if looks_like_path(spec) else spec


def _file_in_folder(folder: Path) -> Path:
    for name in FOLDER_CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for ext in ("*.safetensors", "*.bin", "*.pth", "*.pt") for p in folder.glob(ext))
    if len(found) == 1:
        return found[0]
    raise WeightsError(
        f"weights folder {folder} holds {len(found)} candidate files ({', '.join(p.name for p in found) or 'none'}); "
        f"pass the file itself with --weights, e.g. {folder / 'model.safetensors'}"
    )


def _unreachable(exc: BaseException) -> bool:
    """Whether a hub error means the hub cannot be reached at all (offline, DNS, timeout, not cached)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "Timeout",
                         "ConnectTimeout", "ConnectError", "TimeoutError"})


def _download(meta: EncoderMeta, recipe: EncoderRecipe, repo_id: str) -> Path:
    hint = (
        f"Download the weights on a machine with internet access (e.g. `hf download {repo_id}`) "
        f"and pass the file or folder with --weights PATH, or use --random-weights for a smoke test."
    )
    gate = (f" The model is gated: accept its licence at https://huggingface.co/{repo_id} and log in "
            "(`hf auth login` or HF_TOKEN)." if meta.gated else "")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise WeightsError(f"{meta.key}: downloading {repo_id} needs huggingface_hub "
                           f"(pip install 'mixmag[hub]').{gate} {hint}") from exc
    errors = []
    # the hub library logs its own retry warnings (many lines); they are in our one-line error
    # anyway, so they show only at --log-level DEBUG
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        hub_logger.setLevel(logging.ERROR)
    try:
        for filename in recipe.hub_filenames:
            try:
                return Path(hf_hub_download(repo_id=repo_id, filename=filename))
            except Exception as exc:  # hub errors are many classes (offline, gated, 404, HTTP); all end here
                errors.append(f"{filename}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                if _unreachable(exc):  # every other file would wait for the same retries and timeouts
                    break
    finally:
        hub_logger.setLevel(level)
    raise WeightsError(f"{meta.key}: could not get weights from hf-hub:{repo_id} "
                       f"({'; '.join(errors)}).{gate} {hint}")


def resolve_weights(meta: EncoderMeta, recipe: EncoderRecipe, weights: str | os.PathLike[str] | None,
                    *, random_weights: bool = False) -> ResolvedWeights:
    """Decide which weights to load for an entry (nothing is loaded yet).

    Args:
        meta: Entry metadata (its ``default_weights`` applies when ``weights`` is None).
        recipe: Entry recipe (hub file names, packaged-weights locator).
        weights: Local file/folder, hub id, or None for the entry's default.
        random_weights: Ignore all weights and initialise randomly.

    Raises:
        WeightsError: Path missing, download failed, or both ``weights`` and ``random_weights``.
    """
    if random_weights:
        if weights is not None:
            raise WeightsError("pass either --weights or --random-weights, not both")
        return RANDOM
    spec = str(weights) if weights is not None else meta.default_weights
    if spec == RANDOM_WEIGHTS:
        return RANDOM
    if spec == PACKAGED_WEIGHTS:
        if recipe.packaged_weights is None:
            raise WeightsError(f"{meta.key}: the entry names packaged weights but has no locator")
        path = Path(recipe.packaged_weights())
        return ResolvedWeights(path=path, source=f"package:{path.name}", sha256=sha256_file(path))
    local = Path(spec).expanduser()
    if local.exists():
        path = _file_in_folder(local) if local.is_dir() else local
        return ResolvedWeights(path=path.resolve(), source=str(path.resolve()), sha256=sha256_file(path))
    repo_id = _hub_id(spec)
    if repo_id is None and looks_like_path(spec):
        raise WeightsError(f"{meta.key}: weights file not found: {local} (neither an existing file/folder nor a "
                           f"hub id such as org/name or hf-hub:org/name); check the path")
    if repo_id is None:
        raise WeightsError(f"{meta.key}: weights {spec!r} is neither an existing file/folder nor a hub id "
                           f"(org/name or hf-hub:org/name); check the id")
    path = _download(meta, recipe, repo_id)
    return ResolvedWeights(path=path, source=f"hf-hub:{repo_id}", sha256=sha256_file(path))


_REDOWNLOAD = "re-download or re-copy it"
# what mixmag will not do, in words for the user: no library flag a user might be tempted to flip
_NO_PICKLES = "mixmag loads tensors only, never pickled Python code"
# What a file starts with, for telling the user what it is instead of weights.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # torch.save (zip container since torch 1.6)
_LFS_POINTER = b"version https://git-lfs"
# torch's weights_only refusal names the first class it met, e.g. "GLOBAL argparse.Namespace was not ..."
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def sniff_weights_format(path: str | os.PathLike[str]) -> str:
    """What a weights file holds, judged from its first bytes (the suffix is not trusted).

    Returns:
        ``"safetensors"``, ``"torch-zip"`` (``torch.save``), ``"torch-legacy"`` (a pickle stream:
        ``torch.save(..., _use_new_zipfile_serialization=False)`` or a plain pickle),
        ``"empty"``, ``"lfs-pointer"`` (a Git LFS pointer, not the file), ``"html"`` (a web page
        saved instead of the download) or ``"unknown"``.
    """
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        return "empty"
    if head.startswith(_ZIP_MAGIC):
        return "torch-zip"
    if head.startswith(_LFS_POINTER):
        return "lfs-pointer"
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "html"
    # safetensors: u64 little-endian header length, then the JSON header itself
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"
    if head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode with a known protocol
        return "torch-legacy"
    return "unknown"


def _bad_file_message(p: Path, kind: str, exc: BaseException) -> str:
    """One line saying what ``p`` is instead of a loadable file, and what to do."""
    size = p.stat().st_size
    if kind == "empty":
        return f"{p}: the file is empty (0 bytes); {_REDOWNLOAD}"
    if kind == "lfs-pointer":
        return (f"{p}: a Git LFS pointer ({size} bytes), not the weights; fetch the real file (`git lfs pull` "
                "in its repository) or download it again")
    if kind == "html":
        return f"{p}: an HTML page ({size} bytes), not weights (a failed or login-page download?); download it again"
    text = " ".join(str(exc).split())
    if kind in ("torch-zip", "torch-legacy") and isinstance(exc, pickle.UnpicklingError):
        found = _UNSUPPORTED_GLOBAL.search(text)
        if found:  # a readable file that holds Python objects besides tensors
            return (f"{p}: the checkpoint holds pickled Python objects ({found.group(1)}), not only tensors; "
                    f"{_NO_PICKLES}. Re-save its tensors where it was made: "
                    "torch.save(model.state_dict(), PATH) or safetensors.torch.save_file(...)")
    if kind == "safetensors":
        # the library's own wording is short and exact ("incomplete metadata, file not fully covered")
        return (f"{p}: a damaged or truncated safetensors file ({size} bytes; {text[:120]}); {_REDOWNLOAD}")
    if kind == "torch-zip":
        return f"{p}: a damaged or truncated PyTorch file ({size} bytes, the zip archive is incomplete); {_REDOWNLOAD}"
    return (f"{p}: not a PyTorch state dict or safetensors file, or truncated ({size} bytes); {_REDOWNLOAD}. "
            f"{_NO_PICKLES}")


def read_safetensors_file(
    path: str | os.PathLike[str], *, device: str = "cpu", error: type[MixmagError] = WeightsError
) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` whose failures are one :class:`MixmagError` line naming the file.

    A damaged file otherwise surfaces as a bare ``SafetensorError: Error while deserializing
    header: ...`` without the path. Used for encoder weights, region-encoder checkpoints and by
    :func:`load_state_dict_file`.

    Args:
        path: The ``.safetensors`` file.
        device: Device the tensors are placed on.
        error: Class raised for a missing or unreadable file (e.g. ``FormatError`` for artifacts).
    """
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: file not found")
    try:
        return dict(load_file(str(p), device=device))
    except (OSError, MemoryError):  # the machine's state (permissions, memory), not the file's content
        raise
    except Exception as exc:  # SafetensorError and the header's JSON/UTF-8 errors
        raise error(_bad_file_message(p, sniff_weights_format(p), exc)) from exc


def read_torch_file(path: str | os.PathLike[str], *, error: type[MixmagError] = WeightsError) -> Any:
    """``torch.load(weights_only=True)`` whose failures are one :class:`MixmagError` line naming the file.

    Without it a bad file shows PyTorch's several-paragraph refusal that recommends
    ``weights_only=False`` (running the file's code), or a zip-reader error without the path.
    Objects other than tensors and plain containers are always refused.

    Args:
        path: A ``torch.save`` file.
        error: Class raised for a missing or unreadable file (e.g. ``FormatError`` for artifacts).
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: file not found")
    try:
        with warnings.catch_warnings():
            # legacy pickles with protocol > 2 load fine but warn with a paragraph about it
            warnings.filterwarnings("ignore", message=".*[Dd]etected pickle protocol", category=UserWarning)
            return torch.load(p, map_location="cpu", weights_only=True)
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # UnpicklingError, RuntimeError (zip reader), EOFError, ValueError ...
        raise error(_bad_file_message(p, sniff_weights_format(p), exc)) from exc


def load_state_dict_file(path: str | os.PathLike[str]) -> StateDict:
    """Read a ``.safetensors`` file or a torch checkpoint (``weights_only=True``) into a flat state dict.

    The format is recognised from the file's first bytes (a safetensors file named ``.bin`` loads);
    torch checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``,
    ``{"teacher": ...}``) are unwrapped.

    Raises:
        WeightsError: The file is empty, truncated, not a weights file (a Git LFS pointer, an HTML
            page, text), holds pickled Python objects, or holds no dict of tensors; one line naming
            the file and what to do.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: file not found")
    kind = sniff_weights_format(p)
    if kind == "safetensors" or (kind == "unknown" and p.suffix == ".safetensors"):
        return read_safetensors_file(p)
    if kind not in ("torch-zip", "torch-legacy", "unknown"):
        raise WeightsError(_bad_file_message(p, kind, ValueError()))
    obj = read_torch_file(p)
    for wrapper in ("state_dict", "model", "teacher", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = f"a {type(obj).__name__}" if not isinstance(obj, dict) else (
            "an empty dict" if not obj else "a dict whose values are not all tensors")
        raise WeightsError(f"{p}: holds {what}, not a state dict (a dict of tensors); save one with "
                           "torch.save(model.state_dict(), PATH)")
    return dict(obj)


def strip_prefix(state: StateDict, model_keys: set[str]) -> StateDict:
    """Remove a wrapper prefix (``module.``, ``backbone.`` ...) if that makes more keys match the model."""
    best, best_hits = state, len(model_keys & set(state))
    for prefix in KNOWN_PREFIXES:
        cand = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(model_keys & set(cand))
        if hits > best_hits:
            best, best_hits = cand, hits
    return best


def resample_pos_embed(state: StateDict, model: nn.Module) -> StateDict:
    """Resample a checkpoint's absolute position embedding to the model's patch grid (timm's method).

    Checkpoints trained at 518 px (DINOv2 style) are used at 224 px; Hugging Face Dinov2 does the
    same interpolation at every forward pass, here it is done once at load time.
    """
    pos = state.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pos is None or target is None or pos.shape == target.shape:
        return state
    from timm.layers import resample_abs_pos_embed

    n_prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    patch_embed: Any = model.patch_embed
    grid = patch_embed.grid_size
    state = dict(state)
    state["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=n_prefix)
    logger.info("resampled pos_embed %s -> %s", tuple(pos.shape), tuple(state["pos_embed"].shape))
    return state


def fit_state_dict(
    model: nn.Module, state: StateDict, recipe: EncoderRecipe, *, key: str, source: str | os.PathLike[str] | None = None
) -> None:
    """Load ``state`` into ``model`` strictly, after prefix stripping, conversion and pos-embed resampling.

    Args:
        model: The freshly built backbone (modified in place).
        state: Tensors read from the weights file.
        recipe: The entry's recipe (converter, ignored keys).
        key: Registry key, for messages.
        source: The weights file, named in messages.

    Raises:
        WeightsError: Keys missing/unexpected or shapes differ (the message lists the first few).
    """
    where = f"{source}: " if source is not None else ""
    model_state = model.state_dict()
    if recipe.convert_state_dict is not None:
        try:
            state = recipe.convert_state_dict(state, model)
        except WeightsError as exc:
            raise WeightsError(f"{where}{exc}") from exc
    state = strip_prefix(state, set(model_state))
    state = {k: v for k, v in state.items() if not (k.startswith(recipe.ignore_keys) and k not in model_state)}
    state = resample_pos_embed(state, model)
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    wrong = sorted(k for k in set(state) & set(model_state) if state[k].shape != model_state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label} ({len(keys)}): {', '.join(keys[:4])}{f' and {len(keys) - 4} more' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
            if keys
        )
        if not set(state) & set(model_state):
            detail = f"no tensor name in common; {detail}"
        raise WeightsError(f"{where}weights do not fit encoder {key!r}: {detail}. Check that the file belongs to "
                           f"this model (see `mixmag list encoders`)")
    model.load_state_dict(state, strict=True)
