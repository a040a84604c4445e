"""Study heatmaps: out-of-fold attention of the best mixing method drawn on a few slides.

The attention comes from the ``attention/<bag>.h5`` files that ``mixmag train`` writes with each
bag's *test-fold* model, so every heatmap shows a prediction the model made without having seen
that patient. Pixels are read only for the thumbnail and the top-k region crops.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mixmag.io.features import FeatureFile
from mixmag.mil.artifacts import read_attention
from mixmag.report.heatmap import read_region_tiles, top_k_regions, write_slide_heatmaps
from mixmag.slides import open_slide

logger = logging.getLogger(__name__)

THUMBNAIL_PX = 1024


def pick_method(table: pd.DataFrame) -> tuple[str, str, Path] | None:
    """(target, method, run_dir) of the best token-level mixing method (falls back to any method).

    Token-level methods (``mix-*`` except the CLS variant) give the within-region view per
    magnification, so they are preferred for pictures; among them the highest mean AUROC wins.
    """
    runs = table[table["target"] != "Average"].dropna(subset=["mean_auroc"])
    if runs.empty:
        return None
    tokens = runs[runs["method"].str.startswith("mix-") & ~runs["method"].str.endswith("-cls")]
    pool = tokens if not tokens.empty else runs
    best = pool.loc[pool["mean_auroc"].astype(float).idxmax()]
    return str(best["target"]), str(best["method"]), Path(str(best["run_dir"]))


def token_scores(attn: dict[str, np.ndarray], n_regions: int, n_tokens: int) -> np.ndarray | None:
    """(R, T) attention per region token, or None when the instances are not tokens (tiles/CLS)."""
    tokens = attn["instance_token"]
    if tokens.size == 0 or (tokens < 0).any():
        return None
    scores = np.zeros((n_regions, n_tokens), dtype=np.float64)
    np.add.at(scores, (attn["instance_region"], tokens), attn["attention"])
    return scores


def _choose_bags(predictions: pd.DataFrame, n: int) -> list[str]:
    """The n most confidently positive bags first, then the most confidently negative ones."""
    if "prob" not in predictions.columns:
        return predictions["bag_id"].astype(str).head(n).tolist()
    ranked = predictions.sort_values("prob", ascending=False)["bag_id"].astype(str).tolist()
    n_pos = (n + 1) // 2
    chosen = ranked[:n_pos] + [b for b in reversed(ranked) if b not in ranked[:n_pos]][: n - n_pos]
    return chosen


def write_study_heatmaps(mil_dir: Path, table: pd.DataFrame, features_dir: Path, out_dir: Path, *,
                         n_slides: int = 4, top_k: int = 4) -> list[Path]:
    """Write attention, within-region and top-k PNGs for ``n_slides`` slides; return the paths."""
    picked = pick_method(table)
    if picked is None:
        logger.warning("no finished MIL run: no heatmaps")
        return []
    target, method, run_dir = picked
    predictions = pd.read_csv(run_dir / "predictions.csv")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for bag_id in _choose_bags(predictions, n_slides):
        attn_file = run_dir / "attention" / f"{bag_id}.h5"
        if not attn_file.exists():
            logger.warning("no attention file for %s in %s", bag_id, run_dir)
            continue
        for slide_id, attn in read_attention(attn_file).items():
            ff = FeatureFile(features_dir / f"{slide_id}.h5")
            index = ff.index
            slide_path = Path(str(index.attrs.get("slide_path", "")))
            if not slide_path.exists():
                logger.warning("slide %s not found at %s: no heatmap", slide_id, slide_path)
                continue
            with open_slide(slide_path, reader=index.attrs.get("reader")) as slide:
                thumb = slide.thumbnail(THUMBNAIL_PX)
                level0 = slide.dimensions
            region_att = attn["region_attention"].astype(np.float64)
            k = min(top_k, len(region_att))
            top = top_k_regions(region_att, k)
            tiles = read_region_tiles(slide_path, index, top, reader=index.attrs.get("reader")) if k else None
            paths = write_slide_heatmaps(
                out_dir, slide_id=f"{target}_{method}_{slide_id}", thumbnail=thumb, level0_size=level0,
                coords=index.coords, region_size_level0=index.region_size_level0, attention=region_att,
                spec=index.spec, token_scores=token_scores(attn, index.n_regions, index.spec.n_tokens),
                top_tiles=tiles, top_k=k, valid=index.tile_valid,
            )
            written.extend(paths.values())
            ff.close()
    logger.info("wrote %d heatmap images for %s / %s", len(written), target, method)
    return written
