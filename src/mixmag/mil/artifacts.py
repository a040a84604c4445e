"""Fold models and attention maps on disk, and :func:`predict_bag` for heatmaps of new slides.

Formats (``docs/formats/mil-run.md``):

- ``model.pt`` (``mil_model`` v1): ``torch.save`` of plain containers only (loadable with
  ``weights_only=True``): method key, class names, tile_dim, region spec, head kwargs, the region
  encoder's constructor kwargs (or the recipe that rebuilds it), and the ``state_dict``. Models
  of the regression and survival endpoints are ``mil_model`` v2: v1 plus an ``endpoint`` block
  (its key and the regression target's training mean and sd), so a mixmag that predates
  endpoints refuses them instead of reading their output as class logits; classification models
  stay v1.
- ``attention/<bag_id>.h5`` (``mil_attention`` v1): one group per slide ``slides/<slide_id>`` with
  ``coords`` (R, 2) int64 region top-left in level-0 px, ``region_attention`` (R,) (sum over the
  region's instances), and per instance ``instance_region`` (N,), ``instance_token`` (N,) slot
  (-1 = CLS), ``instance_mpp`` (N,) µm/px of the token (NaN for CLS) and ``attention`` (N,).
  Attention sums to 1 over the whole bag. File attrs: bag_id, patient_id, method, target, fold,
  classes, label, prob.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from mixmag.encoders.weights import read_torch_file
from mixmag.errors import MixmagFileNotFoundError, MixmagValueError
from mixmag.geometry import RegionSpec
from mixmag.io.h5common import FormatError, check_format, write_attrs
from mixmag.mil.abmil import HEADS
from mixmag.mil.data import BagRegions, FeatureStore
from mixmag.mil.encoders import RegionEncoderRecipe
from mixmag.mil.estimator import ENDPOINT_PARAMS, MILClassifier
from mixmag.mil.labels import Bag
from mixmag.mil.methods import METHODS
from mixmag.mil.model import MILModel
from mixmag.mil.train import BagPrediction
from mixmag.region.checkpoints import state_differences
from mixmag.region.model import RegionEncoder
from mixmag.utils.atomic import atomic_path

MODEL_ARTIFACT = "mil_model"
MODEL_VERSION = 1
#: The version of a regression or survival model (v1 + ``endpoint``); readable versions.
ENDPOINT_MODEL_VERSION = 2
MODEL_VERSIONS = (MODEL_VERSION, ENDPOINT_MODEL_VERSION)
ATTENTION_ARTIFACT = "mil_attention"
ATTENTION_VERSION = 1


def safe_name(bag_id: str) -> str:
    """File-system-safe file stem for a bag id (characters outside ``[A-Za-z0-9._-]`` -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", bag_id) or "_"


def save_fold_model(path: str | os.PathLike[str], clf: MILClassifier, *, spec: RegionSpec,
                    recipe: RegionEncoderRecipe | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write a fitted model as ``mil_model`` v1, or v2 for regression/survival (module docstring)."""
    model = clf.model_
    head = model.head
    encoder_kwargs = getattr(model.encoder, "init_kwargs", None) if model.encoder is not None else None
    classification = clf.endpoint == "classification"
    params = {k: v for k, v in clf.get_params().items()
              if k not in ("method", "encoder", "classes") and not (classification and k in ENDPOINT_PARAMS)}
    payload = {
        "artifact": MODEL_ARTIFACT, "format_version": MODEL_VERSION if classification else ENDPOINT_MODEL_VERSION,
        "method": clf.method,
        "classes": [str(c) for c in clf.classes_.tolist()], "tile_dim": int(clf.n_features_in_),
        "spec": spec.to_dict(),
        "head": {"key": METHODS.get(clf.method).head, "in_dim": int(head.in_dim),  # type: ignore[arg-type]
                 "n_classes": int(head.n_classes),  # type: ignore[arg-type]
                 "hidden_dim": clf.hidden_dim, "attention_dim": clf.attention_dim, "dropout": clf.dropout},
        "encoder_kwargs": encoder_kwargs, "encoder_recipe": None if recipe is None else recipe.to_dict(),
        "params": params,
        "extra": extra or {},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if not classification:
        scale = getattr(clf, "target_scale_", None)
        payload["endpoint"] = {"key": clf.endpoint, "target_scale": None if scale is None else list(scale)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_fold_model(path: str | os.PathLike[str]) -> tuple[MILClassifier, RegionSpec]:
    """Rebuild a fitted :class:`MILClassifier` (on CPU) and its region spec from ``model.pt``."""
    p = Path(path)
    if not p.exists():
        raise MixmagFileNotFoundError(f"model file {p} does not exist")
    payload = read_torch_file(p, error=FormatError)  # one line for a damaged or foreign file
    if not isinstance(payload, dict) or payload.get("artifact") != MODEL_ARTIFACT \
            or payload.get("format_version") not in MODEL_VERSIONS:
        raise FormatError(f"{p}: not a mixmag {MODEL_ARTIFACT} v{MODEL_VERSION}/v{ENDPOINT_MODEL_VERSION} file; use "
                          "the model.pt that `mixmag train` wrote")
    spec = RegionSpec.from_dict(payload["spec"])
    encoder = None
    if payload["encoder_kwargs"] is not None:
        encoder = RegionEncoder(**payload["encoder_kwargs"])
    elif payload["encoder_recipe"] is not None:
        encoder = RegionEncoderRecipe(**payload["encoder_recipe"]).build()
    clf = MILClassifier(payload["method"], encoder=encoder, classes=payload["classes"], **payload["params"])
    h = payload["head"]
    head = HEADS.get(h["key"])(h["in_dim"], n_classes=h["n_classes"], hidden_dim=h["hidden_dim"],
                               attention_dim=h["attention_dim"], dropout=h["dropout"])
    model = MILModel(source=METHODS.get(payload["method"]).build_source(), head=head, encoder=encoder)
    try:  # the model's load hooks upgrade older files (v1: no instance statistics) before torch compares
        model.load_state_dict(payload["state_dict"])
    except RuntimeError:  # torch's own message is one line per tensor
        differ = state_differences(model.state_dict(), payload["state_dict"])
        raise FormatError(f"{p}: its weights do not fit the {payload['method']} model its header describes ({differ}); "
                          "the file was edited or mixed from two runs: use the model.pt that `mixmag train` wrote") from None
    clf.model_ = model.eval()
    clf.classes_ = np.asarray(payload["classes"])
    scale = (payload.get("endpoint") or {}).get("target_scale")
    clf.target_scale_ = None if scale is None else (float(scale[0]), float(scale[1]))
    clf.n_features_in_ = int(payload["tile_dim"])
    clf.history_, clf.best_epoch_, clf.criterion_ = [], int(payload["extra"].get("best_epoch", 0)), "loaded"
    return clf, spec


@dataclass
class SlideAttention:
    """Attention of one slide's instances (see module docstring for the fields)."""

    slide_id: str
    coords: np.ndarray
    region_attention: np.ndarray
    instance_region: np.ndarray
    instance_token: np.ndarray
    instance_mpp: np.ndarray
    attention: np.ndarray


@dataclass
class BagExplanation:
    """Prediction of one bag with its attention split per slide."""

    prob: np.ndarray
    classes: list[str]
    slides: list[SlideAttention]


def explain(pred: BagPrediction, bag: BagRegions, classes: Sequence[str]) -> BagExplanation:
    """Map a prediction's per-instance attention back to slides, regions and magnifications."""
    token_mpp = bag.spec.layout().mpps
    slides = []
    starts = np.searchsorted(bag.slide_index, np.arange(len(bag.slide_ids)))
    for s, sid in enumerate(bag.slide_ids):
        rows = np.flatnonzero(bag.slide_index == s)
        sel = np.isin(pred.region, rows)
        region_local = pred.region[sel].astype(np.int64) - starts[s]
        token = pred.token[sel].astype(np.int64)
        mpp = np.where(token >= 0, token_mpp[np.clip(token, 0, None)], np.nan)
        region_att = np.bincount(region_local, weights=pred.attention[sel], minlength=len(rows))
        slides.append(SlideAttention(sid, bag.coords[rows], region_att.astype(np.float32), region_local, token,
                                     mpp.astype(np.float32), pred.attention[sel].astype(np.float32)))
    return BagExplanation(pred.prob, [str(c) for c in classes], slides)


def write_attention(path: str | os.PathLike[str], expl: BagExplanation, attrs: dict[str, Any]) -> Path:
    """Atomically write ``mil_attention`` v1 for one bag."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for s in expl.slides:
            g = f.create_group(f"slides/{s.slide_id}")
            g.create_dataset("coords", data=s.coords.astype(np.int64))
            g.create_dataset("region_attention", data=s.region_attention)
            g.create_dataset("instance_region", data=s.instance_region)
            g.create_dataset("instance_token", data=s.instance_token)
            g.create_dataset("instance_mpp", data=s.instance_mpp)
            g.create_dataset("attention", data=s.attention)
        write_attrs(f, {**attrs, "classes": expl.classes, "prob": [float(p) for p in expl.prob]})
        f.attrs["artifact"] = ATTENTION_ARTIFACT
        f.attrs["format_version"] = ATTENTION_VERSION
    return Path(path)


def read_attention(path: str | os.PathLike[str]) -> dict[str, dict[str, np.ndarray]]:
    """``{slide_id: {dataset: array}}`` of a ``mil_attention`` file."""
    with h5py.File(path, "r") as f:
        check_format(f, str(path), ATTENTION_ARTIFACT, (ATTENTION_VERSION,))
        return {sid: {k: g[k][()] for k in g} for sid, g in f["slides"].items()}


def predict_bag(model: str | os.PathLike[str] | MILClassifier, features: str | os.PathLike[str]
                | Sequence[str | os.PathLike[str]], *, device: str = "auto") -> BagExplanation:
    """Probability and attention of one bag (one slide, or a patient's slides) from feature files.

    Args:
        model: A fold's ``model.pt`` or a fitted :class:`MILClassifier`.
        features: Feature file(s) ``<slide_id>.h5`` of the bag (same encoder as at training).
        device: Device to run on.

    Returns:
        The bag's class probabilities and per-slide, per-region, per-instance attention.
    """
    clf, spec = load_fold_model(model) if not isinstance(model, MILClassifier) else (model, None)
    paths = [Path(features)] if isinstance(features, (str, os.PathLike)) else [Path(p) for p in features]
    folder = paths[0].parent
    if any(p.parent != folder for p in paths):
        raise MixmagValueError("the feature files of one bag must be in one folder")
    store = FeatureStore(folder, cache_bytes=0)
    problems = store.check([p.stem for p in paths])
    if problems:
        raise FormatError("; ".join(f"{k}: {v}" for k, v in problems.items()))
    if spec is not None and store.spec != spec:
        raise FormatError(f"the features use {store.spec}, the model was trained on {spec}")
    if store.tile_dim != clf.n_features_in_:
        raise FormatError(f"the features have dim {store.tile_dim}, the model expects {clf.n_features_in_}")
    bag = store.bag(Bag("bag", "bag", tuple(p.stem for p in paths), -1))
    if spec is not None:  # loaded here: run on the requested device (a given estimator keeps its own)
        clf.set_params(device=device)
    pred = clf.predict_bags([bag], attention=True)[0]
    return explain(pred, bag, clf.classes_.tolist())
