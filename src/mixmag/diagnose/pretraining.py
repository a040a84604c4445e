"""Did MEM/CMEM pretraining learn anything beyond the trivial answer? (no labels needed)

For a seeded sample of regions, the checkpoint's encoder + MEM decoder reconstruct masked tokens
under several masking patterns, and the error is compared with two baselines that need no model:

* ``zero``: predict 0, i.e. the cohort mean, since targets are standardised with the checkpoint's
  own statistics (the error is then the targets' mean square, about 1 per dimension);
* ``region_mean``: predict the mean target of the region's *visible* (valid, unmasked) tokens,
  the answer "this region looks like itself" that needs no learning.

Patterns: ``random`` (the checkpoint's mask ratio over valid tokens, no token dropping) and
``mask-<mag>`` for each magnification (every valid token of that magnification masked, in regions
that keep a valid token at another magnification). Errors are per-dimension MSE in standardised
target units, broken down by the magnification of the masked token. ``ratio_* < 1`` means the
encoder beats that baseline; a ratio near 1 for ``region_mean`` means it learned little more than
averaging the region.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mixmag.errors import MixmagValueError
from mixmag.region.checkpoints import load_checkpoint_tensors, resolve_checkpoint
from mixmag.region.diagnostics import load_pretrainer, sample_regions
from mixmag.region.masking import make_batch_views

logger = logging.getLogger(__name__)

PRETRAINING_COLUMNS = ("checkpoint", "pattern", "magnification", "n_tokens", "mse_model", "mse_zero",
                       "mse_region_mean", "ratio_zero", "ratio_region_mean")
METRICS_FILE = "metrics.jsonl"


def _masks(valid: np.ndarray, mag_index: np.ndarray, pattern: int | None, *, ratio: float, seed: int,
           offset: int) -> np.ndarray:
    """(B, T) masks: random at ``ratio`` (pattern None) or every valid token of magnification ``pattern``."""
    if pattern is None:
        _, mask = make_batch_views(valid, mag_index, np.arange(offset, offset + len(valid)), seed=seed, n_views=1,
                                   mask_ratio=ratio, mag_mask_prob=0.0, token_drop_max=0.0)
        return mask[0]
    mask = valid & (mag_index == pattern)[None, :]
    context = (valid & ~mask).any(axis=1)  # without another magnification there is nothing to predict from
    return mask & context[:, None]


@torch.no_grad()
def _errors(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
            mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T) per-token MSE of the model, the zero baseline and the region-mean baseline."""
    _, tokens = model.forward_encoder(x, valid, mask)  # type: ignore[operator]
    err = (model.forward_decoder(tokens) - target).pow(2).mean(-1)  # type: ignore[operator]
    visible = (valid & ~mask).float()  # (B, T)
    region_mean = torch.einsum("bt,btd->bd", visible, target) / visible.sum(1, keepdim=True).clamp_min(1.0)
    return err, target.pow(2).mean(-1), (region_mean[:, None, :] - target).pow(2).mean(-1)


@torch.no_grad()
def pretraining_diagnostics(checkpoint: str | os.PathLike[str],
                            features: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                            name: str = "", n_regions: int = 1024, seed: int = 0, batch_size: int = 128,
                            ) -> pd.DataFrame:
    """Masked-reconstruction error per masking pattern and magnification, against both baselines.

    Args:
        checkpoint: MEM/CMEM checkpoint (or pretraining run folder) with its decoder head.
        features: Feature folder or files (ideally slides the encoder was not trained on).
        name: Value of the ``checkpoint`` column (default: the checkpoint folder).
        n_regions: Regions sampled (seeded) from ``features``.
        seed: Seeds the sample and the random masks.
        batch_size: Regions per forward pass.

    Returns:
        Columns :data:`PRETRAINING_COLUMNS`; one row per (pattern, magnification of the masked
        token), plus a ``magnification == "all"`` row for the random pattern.

    Raises:
        ValueError: The checkpoint has no MEM decoder or target statistics (e.g. ``random``).
        LayoutMismatchError: The features do not fit the checkpoint.
    """
    names = load_checkpoint_tensors(checkpoint).keys()
    if "stats.target_mean" not in names or not any(k.startswith("head.decoder.") for k in names):
        raise MixmagValueError(f"{resolve_checkpoint(checkpoint)} has no MEM decoder/target statistics (an untrained "
                               "`random` or a fine-tuned encoder): reconstruction cannot be evaluated")
    model, info = load_pretrainer(checkpoint)
    settings = info["config"].get("settings", {})
    if settings.get("loss", "mse") != "mse":
        logger.warning("%s was trained with the %s loss: its MSE is not what it optimised", info["path"],
                       settings.get("loss"))
    spec = info["spec"]
    mag_index = spec.layout().mag_index
    labels = [f"{m:g}x" for m in spec.magnifications]
    x_np, valid_np = sample_regions(features, n_regions, seed, info)
    mean, std = torch.from_numpy(info["target_mean"]), torch.from_numpy(info["target_std"])
    patterns: list[tuple[str, int | None]] = [("random", None)] + [(f"mask-{lab}", m) for m, lab in enumerate(labels)]
    mi = torch.from_numpy(mag_index)
    rows = []
    for pattern, which in patterns:
        sums = torch.zeros(len(labels), 3, dtype=torch.float64)  # model, zero, region_mean
        counts = torch.zeros(len(labels), dtype=torch.float64)
        for start in range(0, len(x_np), batch_size):
            valid = valid_np[start:start + batch_size]
            mask = torch.from_numpy(_masks(valid, mag_index, which, ratio=float(settings.get("mask_ratio", 0.5)),
                                           seed=seed, offset=start))
            x = torch.from_numpy(x_np[start:start + batch_size])
            errs = _errors(model, x, (x - mean) / std, torch.from_numpy(valid), mask)
            for m in range(len(labels)):
                sel = mask & (mi == m)[None, :]
                counts[m] += sel.sum()
                for j, e in enumerate(errs):
                    sums[m, j] += e[sel].double().sum()
        groups = [(labels[m], sums[m], counts[m]) for m in range(len(labels)) if counts[m] > 0]
        if which is None and groups:
            groups.append(("all", sums.sum(0), counts.sum()))
        for label, s, n in groups:
            mse = (s / n).tolist()
            rows.append({"checkpoint": name or info["path"], "pattern": pattern, "magnification": label,
                         "n_tokens": int(n), "mse_model": mse[0], "mse_zero": mse[1], "mse_region_mean": mse[2],
                         "ratio_zero": mse[0] / mse[1], "ratio_region_mean": mse[0] / mse[2]})
    return pd.DataFrame(rows, columns=list(PRETRAINING_COLUMNS))


def find_metrics_log(checkpoint: str | os.PathLike[str]) -> Path | None:
    """The ``metrics.jsonl`` of the pretraining run a checkpoint belongs to, if it is still there.

    Looks in the given folder, the resolved checkpoint folder and the two folders above it
    (``<run>/final`` and ``<run>/checkpoints/step_N`` layouts of ``mixmag pretrain``).
    """
    given = Path(checkpoint)
    candidates = [given]
    try:
        folder = resolve_checkpoint(given)
        candidates += [folder, folder.parent, folder.parent.parent]
    except ValueError:
        pass
    for c in candidates:
        if (c / METRICS_FILE).is_file():
            return c / METRICS_FILE
    return None
