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
import re
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
from mixmag.errors import MixmagRuntimeError
from mixmag.utils.hashing import sha256_file

logger = logging.getLogger(__name__)

HUB_PREFIXES = ("hf-hub:", "hf_hub:")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
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


def _hub_id(spec: str) -> str | None:
    for prefix in HUB_PREFIXES:
        if spec.startswith(prefix):
            return spec[len(prefix):]
    return spec if _HUB_ID.match(spec) else None


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
    for filename in recipe.hub_filenames:
        try:
            return Path(hf_hub_download(repo_id=repo_id, filename=filename))
        except Exception as exc:  # hub errors are many classes (offline, gated, 404, HTTP); all end here
            errors.append(f"{filename}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
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
    if repo_id is None:
        raise WeightsError(f"{meta.key}: weights {spec!r} is neither an existing file/folder nor a hub id "
                           f"(org/name); check the path")
    path = _download(meta, recipe, repo_id)
    return ResolvedWeights(path=path, source=f"hf-hub:{repo_id}", sha256=sha256_file(path))


def load_state_dict_file(path: str | os.PathLike[str]) -> StateDict:
    """Read a ``.safetensors`` file or a torch checkpoint (``weights_only=True``) into a flat state dict.

    Torch checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``,
    ``{"teacher": ...}``) are unwrapped.
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(p), device="cpu"))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types; report them as one
        raise WeightsError(f"{p}: not a readable torch state dict ({type(exc).__name__}: {exc}). Checkpoints "
                           "are loaded with weights_only=True; re-save plain tensors with torch.save(model.state_dict())") from exc
    for wrapper in ("state_dict", "model", "teacher", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{p}: expected a dict of tensors (a state dict)")
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


def fit_state_dict(model: nn.Module, state: StateDict, recipe: EncoderRecipe, *, key: str) -> None:
    """Load ``state`` into ``model`` strictly, after prefix stripping, conversion and pos-embed resampling.

    Raises:
        WeightsError: Keys missing/unexpected or shapes differ (the message lists the first few).
    """
    model_state = model.state_dict()
    if recipe.convert_state_dict is not None:
        state = recipe.convert_state_dict(state, model)
    state = strip_prefix(state, set(model_state))
    state = {k: v for k, v in state.items() if not (k.startswith(recipe.ignore_keys) and k not in model_state)}
    state = resample_pos_embed(state, model)
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    wrong = sorted(k for k in set(state) & set(model_state) if state[k].shape != model_state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
            if keys
        )
        raise WeightsError(f"weights do not fit encoder {key!r}: {detail}. Check that the file belongs to this "
                           f"model (see `mixmag list encoders`)")
    model.load_state_dict(state, strict=True)
