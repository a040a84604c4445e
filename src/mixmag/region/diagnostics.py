"""Quality checks of a pretrained region encoder on held-out feature files.

* :func:`evaluate_reconstruction` - MEM error on masked tokens against the predict-the-mean baseline
  (in standardised target units the baseline error is the targets' mean square, about 1).
* :func:`evaluate_view_retrieval` - how often the CLS of one stochastic view of a region finds the
  other view of the same region among N regions (chance = 1/N).

Both use the checkpoint's own target statistics and, unless overridden, its masking settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mixmag.errors import MixmagValueError
from mixmag.io.features import FeatureFile
from mixmag.region.checkpoints import check_layout, load_checkpoint_tensors, load_region_encoder
from mixmag.region.data import scan_feature_cohort
from mixmag.region.distributed import DistContext
from mixmag.region.masking import make_batch_views
from mixmag.region.objectives import OBJECTIVES, RegionPretrainer


def load_pretrainer(path: str | os.PathLike[str], *, map_location: str = "cpu") -> tuple[RegionPretrainer, dict[str, Any]]:
    """Rebuild encoder + pretraining heads of a MEM/CMEM checkpoint (eval mode)."""
    encoder, info = load_region_encoder(path, map_location=map_location)
    settings = info["config"].get("settings", {})
    objective = OBJECTIVES.get(info["objective"])
    model = RegionPretrainer(encoder, objective=objective, ctx=DistContext(), loss=settings.get("loss", "mse"),
                             proj_dim=settings.get("proj_dim", 256))
    heads = {k.removeprefix("head."): v for k, v in load_checkpoint_tensors(path).items() if k.startswith("head.")}
    missing, unexpected = model.load_state_dict(heads, strict=False)
    if unexpected or any(not k.startswith("encoder.") for k in missing):
        raise MixmagValueError(f"{info['path']}: pretraining heads do not match objective {info['objective']!r}")
    return model.to(map_location).eval(), info


def sample_regions(features: Any, n_regions: int, seed: int, info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of usable regions: ``(x (n, T, D) float32, valid (n, T) bool)``, slide order.

    Raises:
        LayoutMismatchError: The features do not fit the checkpoint described by ``info``.
    """
    cohort = scan_feature_cohort(features)
    check_layout(info, tile_dim=cohort.tile_dim, spec=cohort.spec, source=str(features))
    rng = np.random.default_rng([seed, 0xD1A6])
    pairs = np.concatenate([np.stack([np.full(s.usable.size, i), s.usable], 1) for i, s in enumerate(cohort.slides)])
    pairs = pairs[np.sort(rng.choice(len(pairs), size=min(n_regions, len(pairs)), replace=False))]
    xs, vs = [], []
    for i in np.unique(pairs[:, 0]):
        with FeatureFile(cohort.slides[int(i)].path) as ff:
            x, v = ff.read(pairs[pairs[:, 0] == i, 1])
        xs.append(x)
        vs.append(v)
    return np.concatenate(xs), np.concatenate(vs)


def _views(valid: np.ndarray, info: dict[str, Any], seed: int, n_views: int, overrides: dict[str, Any]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    s = info["config"].get("settings", {})
    kwargs = {"mask_ratio": s.get("mask_ratio", 0.5), "mag_mask_prob": s.get("mag_mask_prob", 0.0),
              "token_drop_max": s.get("token_drop_max", 0.0)}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    mag_index = info["spec"].layout().mag_index
    keep, mask = make_batch_views(valid, mag_index, np.arange(len(valid)), seed=seed, n_views=n_views, **kwargs)
    return torch.from_numpy(keep), torch.from_numpy(mask)


@torch.no_grad()
def evaluate_reconstruction(checkpoint: str | os.PathLike[str], features: str | os.PathLike[str] | Sequence[str],
                            *, n_regions: int = 512, seed: int = 0, mask_ratio: float | None = None,
                            mag_mask_prob: float | None = 0.0, token_drop_max: float | None = 0.0,
                            ) -> dict[str, Any]:
    """Masked-token reconstruction error of a MEM/CMEM checkpoint vs the predict-the-mean baseline.

    Args:
        checkpoint: Checkpoint (or run folder) with pretraining heads.
        features: Held-out feature files.
        n_regions: Regions sampled (seeded) from ``features``.
        seed: Seeds the sample and the masks.
        mask_ratio, mag_mask_prob, token_drop_max: Masking (None = the checkpoint's training value;
            by default plain random masking without token dropping).

    Returns:
        ``mse`` and ``baseline_mse`` over all masked valid tokens, ``per_magnification`` {label:
        (mse, baseline_mse, n_tokens)}, and ``n_tokens``. Errors are per-dimension means in
        standardised target units.
    """
    model, info = load_pretrainer(checkpoint)
    if info["target_mean"] is None:
        raise MixmagValueError(f"{info['path']} ({info['objective']}) has no MEM head/statistics to evaluate")
    x_np, valid = sample_regions(features, n_regions, seed, info)
    keep, mask = _views(valid, info, seed, 1, {"mask_ratio": mask_ratio, "mag_mask_prob": mag_mask_prob,
                                               "token_drop_max": token_drop_max})
    x = torch.from_numpy(x_np)
    target = (x - torch.from_numpy(info["target_mean"])) / torch.from_numpy(info["target_std"])
    _, tokens = model.forward_encoder(x, keep[0], mask[0])
    err = (model.forward_decoder(tokens) - target).pow(2).mean(-1)  # (B, T) per-token MSE
    base = target.pow(2).mean(-1)
    sel = mask[0]
    spec = info["spec"]
    mag_index = torch.from_numpy(spec.layout().mag_index)
    per_mag = {}
    for m, label in enumerate(f"{g:g}x" for g in spec.magnifications):
        s = sel & (mag_index == m)[None, :]
        if s.any():
            per_mag[label] = (float(err[s].mean()), float(base[s].mean()), int(s.sum()))
    return {"mse": float(err[sel].mean()), "baseline_mse": float(base[sel].mean()),
            "per_magnification": per_mag, "n_tokens": int(sel.sum())}


@torch.no_grad()
def evaluate_view_retrieval(checkpoint: str | os.PathLike[str], features: str | os.PathLike[str] | Sequence[str],
                            *, n_regions: int = 256, seed: int = 0, mask_ratio: float | None = None,
                            mag_mask_prob: float | None = None, token_drop_max: float | None = None,
                            ) -> dict[str, float]:
    """Top-1 retrieval of a region's second view from its first, by CLS cosine similarity.

    Views are made like in training (the checkpoint's masking settings unless overridden); masked
    tokens are shown to the encoder as mask tokens.

    Returns:
        ``top1`` accuracy, ``chance`` (1/N) and ``n_regions`` N.
    """
    encoder, info = load_region_encoder(checkpoint)
    x_np, valid = sample_regions(features, n_regions, seed, info)
    keep, mask = _views(valid, info, seed, 2, {"mask_ratio": mask_ratio, "mag_mask_prob": mag_mask_prob,
                                               "token_drop_max": token_drop_max})
    x = torch.from_numpy(x_np)
    c1 = torch.nn.functional.normalize(encoder.forward_encoder(x, keep[0], mask[0])[0], dim=-1)
    c2 = torch.nn.functional.normalize(encoder.forward_encoder(x, keep[1], mask[1])[0], dim=-1)
    hits = (c1 @ c2.T).argmax(dim=1) == torch.arange(len(x))
    return {"top1": float(hits.float().mean()), "chance": 1.0 / len(x), "n_regions": float(len(x))}
