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

from mixmag.errors import MixmagFileNotFoundError
from mixmag.io.features import FeatureFile
from mixmag.mil.artifacts import read_attention
from mixmag.report.heatmap import read_region_tiles, top_k_regions, write_slide_heatmaps
from mixmag.report.settings import ReportSettings
from mixmag.slides import open_slide

logger = logging.getLogger(__name__)


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
                         settings: ReportSettings | None = None) -> list[Path]:
    """Write attention, within-region and top-k PNGs; return the paths.

    Args:
        mil_dir: The study's MIL folder (``<target>/<method>/`` runs with ``attention/``).
        table: The comparison table (:func:`~mixmag.evaluate.compare.compare_runs`) that picks the method.
        features_dir: Feature files of the slides (their region index gives the slide path).
        out_dir: Folder of the PNGs.
        settings: ``heatmap_slides``, ``top_k`` and ``thumbnail_px``
            (:class:`~mixmag.report.settings.ReportSettings`; its defaults when None).
    """
    s = settings if settings is not None else ReportSettings()
    n_slides, top_k = s.heatmap_slides, s.top_k
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
                thumb = slide.thumbnail(s.thumbnail_px)
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


def redraw_run_heatmaps(run_dir: str | Path, settings: ReportSettings) -> list[Path]:
    """Draw the heatmaps of a finished ``mixmag run`` folder again with other report settings.

    The study's earlier heatmaps of the same method (``heatmaps/<target>_<method>_*.png``) are
    replaced; other pictures in ``heatmaps/`` (the demo's ``yours_*``) are kept. The study's ledger
    is left as it is, so a later ``mixmag run`` draws the config's heatmaps again.

    Raises:
        MixmagFileNotFoundError: The folder has no comparison table or resolved config (no MIL
            results of ``mixmag run``).
    """
    from mixmag.config import load_config

    run = Path(run_dir)
    table_path, resolved = run / "compare" / "comparison.csv", run / "config.resolved.yaml"
    for need in (table_path, resolved):
        if not need.is_file():
            raise MixmagFileNotFoundError(
                f"{run} has no {need.relative_to(run)}: heatmaps are redrawn from the folder of a `mixmag run` "
                "with labels (mil.labels)")
    table = pd.read_csv(table_path)
    picked = pick_method(table)
    out_dir = run / "heatmaps"
    if picked is not None:
        prefix = f"{picked[0]}_{picked[1]}_"
        for old in out_dir.glob("*.png"):
            if old.name.startswith(prefix):
                old.unlink()
    encoder = load_config(resolved).embed.encoder
    return write_study_heatmaps(run / "mil", table, run / "features" / encoder, out_dir, settings=settings)
