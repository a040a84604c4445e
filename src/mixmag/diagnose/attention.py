"""Does a trained MIL model attend to the regions an annotator marked?

For every bag of a MIL run (its ``attention/<bag>.h5``, written with the bag's test-fold model) and
every property of the region labels:

* ``attention_share``: attention mass on labelled regions that hold the property, divided by the
  mass on all labelled regions;
* ``uniform_share``: the same share under uniform attention over the bag's instances (a region's
  weight is its number of instances: one per valid tile for tile methods, per valid token for
  token methods, one for CLS methods); ``share_ratio`` = attention / uniform (1 = no preference);
* ``rank_auroc``: AUROC of region attention for "holds the property" within the bag (only
  when the bag has labelled regions of both kinds); ``rank_auroc_uniform`` is the same AUROC with
  the instance counts as scores, i.e. what uniform attention would score (about 0.5).

Region attention is the ``region_attention`` dataset (the sum over the region's instances), so
tile-instance and region/token methods are handled alike. Regions without any instance (e.g. no
valid 20x tile for ``abmil-20x``) and unlabelled regions are left out. Summaries average over
positive bags (label other than the first class), negative bags and all bags.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from mixmag.diagnose.labels import LabelTable, label_regions
from mixmag.errors import MixmagFileNotFoundError
from mixmag.io.features import FeatureFile
from mixmag.io.h5common import read_attrs
from mixmag.mil.artifacts import read_attention
from mixmag.region.data import feature_paths

logger = logging.getLogger(__name__)

ATTENTION_COLUMNS = ("target", "method", "bag_id", "label", "positive", "prob_pos", "property", "n_regions",
                     "n_holding", "attention_share", "uniform_share", "share_ratio", "rank_auroc",
                     "rank_auroc_uniform")
SUMMARY_COLUMNS = ("target", "method", "property", "bags", "n_bags", "attention_share", "uniform_share",
                   "share_ratio", "rank_auroc", "rank_auroc_uniform", "n_bags_auroc")


def find_mil_runs(path: str | os.PathLike[str]) -> list[Path]:
    """Run folders (holding ``attention/``) at ``path``: the folder itself, or ``<target>/<method>/`` below it."""
    p = Path(path)
    if (p / "attention").is_dir():
        return [p]
    runs = sorted(a.parent for pattern in ("*/attention", "*/*/attention") for a in p.glob(pattern) if a.is_dir())
    if not runs:
        raise MixmagFileNotFoundError(f"no MIL run with an attention/ folder at or below {p}; pass the --out "
                                      "folder of `mixmag train` or one of its <target>/<method> folders")
    return runs


def _bag_regions(slides: dict[str, dict[str, np.ndarray]], table: LabelTable, paths: dict[str, Path],
                 min_overlap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled regions of one bag with instances: (attention (n,), instance counts (n,), holds (n, P))."""
    att, count, holds = [], [], []
    for sid, s in slides.items():
        if sid not in paths:
            logger.warning("attention of slide %s: no feature file, slide left out", sid)
            continue
        index = FeatureFile(paths[sid]).index
        if not np.array_equal(index.coords, s["coords"]):
            logger.warning("attention of slide %s: regions differ from its feature file, slide left out", sid)
            continue
        labels = label_regions(table, index, slide_id=sid, min_overlap=min_overlap)
        if labels is None:
            continue
        n = np.bincount(s["instance_region"], minlength=index.n_regions)
        keep = labels.labelled & (n > 0)
        att.append(s["region_attention"][keep].astype(np.float64))
        count.append(n[keep].astype(np.float64))
        holds.append(labels.holds[keep])
    if not att:
        return np.zeros(0), np.zeros(0), np.zeros((0, len(table.properties)), dtype=bool)
    return np.concatenate(att), np.concatenate(count), np.concatenate(holds)


def _auroc(h: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(h, score)) if 0 < h.sum() < len(h) else float("nan")


def _bag_info(attrs: dict[str, Any], path: Path) -> dict[str, Any]:
    classes = [str(c) for c in attrs.get("classes", [])]
    prob = attrs.get("prob", [])
    label = attrs.get("label")
    positive = bool(classes) and str(label) != classes[0]
    return {"bag_id": str(attrs.get("bag_id", path.stem)), "label": label, "positive": positive,
            "prob_pos": float(1.0 - prob[0]) if len(prob) > 1 else float("nan")}


def attention_diagnostics(mil_dir: str | os.PathLike[str],
                          features: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                          table: LabelTable, *, min_overlap: float = 0.5) -> pd.DataFrame:
    """Per-bag attention on labelled regions for every run at ``mil_dir`` (see the module docstring).

    Args:
        mil_dir: A run folder (``<out>/<target>/<method>``) or the ``--out`` folder of ``mixmag train``.
        features: The feature files the run was trained on (for region geometry).
        table: Region labels.
        min_overlap: Coverage from which a region holds a property.

    Returns:
        One row per (run, bag, property) with columns :data:`ATTENTION_COLUMNS`; bags without
        labelled regions are left out.
    """
    paths = {p.stem: p for p in feature_paths(features)}
    rows = []
    for run in find_mil_runs(mil_dir):
        for file in sorted((run / "attention").glob("*.h5")):
            with h5py.File(file, "r") as f:
                attrs = read_attrs(f)
            info = _bag_info(attrs, file)
            att, count, holds = _bag_regions(read_attention(file), table, paths, min_overlap)
            if not len(att) or att.sum() <= 0:
                continue
            for k, prop in enumerate(table.properties):
                h = holds[:, k]
                share, uniform = att[h].sum() / att.sum(), count[h].sum() / count.sum()
                rows.append({"target": str(attrs.get("target", run.parent.name)),
                             "method": str(attrs.get("method", run.name)), **info, "property": prop,
                             "n_regions": int(len(h)), "n_holding": int(h.sum()), "attention_share": float(share),
                             "uniform_share": float(uniform),
                             "share_ratio": float(share / uniform) if uniform > 0 else float("nan"),
                             "rank_auroc": _auroc(h, att), "rank_auroc_uniform": _auroc(h, count)})
    if not rows:
        logger.warning("no bag of %s has labelled regions: no attention diagnostics", mil_dir)
    return pd.DataFrame(rows, columns=list(ATTENTION_COLUMNS))


def summarize_attention(per_bag: pd.DataFrame) -> pd.DataFrame:
    """Means over positive, negative and all bags per (target, method, property).

    ``share_ratio`` is the ratio of the mean shares (not the mean of ratios), computed over bags
    with at least one holding region; rank AUROCs average the bags where they are defined.
    """
    out = []
    for (target, method, prop), g in per_bag.groupby(["target", "method", "property"], sort=False):
        for name, sel in (("positive", g["positive"]), ("negative", ~g["positive"]), ("all", g["positive"] | True)):
            b = g[sel.astype(bool)]
            if b.empty:
                continue
            with_pos = b[b["n_holding"] > 0]
            share, uniform = with_pos["attention_share"].mean(), with_pos["uniform_share"].mean()
            out.append({"target": target, "method": method, "property": prop, "bags": name, "n_bags": len(b),
                        "attention_share": share, "uniform_share": uniform,
                        "share_ratio": share / uniform if uniform > 0 else float("nan"),
                        "rank_auroc": b["rank_auroc"].mean(), "rank_auroc_uniform": b["rank_auroc_uniform"].mean(),
                        "n_bags_auroc": int(b["rank_auroc"].notna().sum())})
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))
