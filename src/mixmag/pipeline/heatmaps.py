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
from mixmag.mil.data import FeatureStore
from mixmag.mil.deploy import RunScores
from mixmag.report.heatmap import read_region_tiles, top_k_regions, write_slide_heatmaps
from mixmag.report.settings import ReportSettings
from mixmag.slides import open_slide

logger = logging.getLogger(__name__)


def pick_method(table: pd.DataFrame) -> tuple[str, str, Path] | None:
    """(target, method, run_dir) of the best token-level mixing method (falls back to any method).

    Token-level methods (``mix-*`` except the CLS variant) give the within-region view per
    magnification, so they are preferred for pictures; among them the highest mean AUROC wins
    (classification targets first; without any, the highest value of the other targets' metric).
    """
    from mixmag.evaluate.compare import comparison_view

    runs = comparison_view(table[table["target"] != "Average"]).dropna(subset=["mean"])
    if runs.empty:
        return None
    auroc = runs[runs["metric"] == "auroc"]
    runs = auroc if not auroc.empty else runs
    tokens = runs[runs["method"].str.startswith("mix-") & ~runs["method"].str.endswith("-cls")]
    pool = tokens if not tokens.empty else runs
    best = pool.loc[pool["mean"].astype(float).idxmax()]
    return str(best["target"]), str(best["method"]), Path(str(best["run_dir"]))


def token_scores(attn: dict[str, np.ndarray], n_regions: int, n_tokens: int) -> np.ndarray | None:
    """(R, T) attention per region token, or None when the instances are not tokens (tiles/CLS)."""
    tokens = attn["instance_token"]
    if tokens.size == 0 or (tokens < 0).any():
        return None
    scores = np.zeros((n_regions, n_tokens), dtype=np.float64)
    np.add.at(scores, (attn["instance_region"], tokens), attn["attention"])
    return scores


def draw_slide_attention(features: Path, region_attention: np.ndarray, out_dir: Path, *, name: str,
                         settings: ReportSettings, token_attention: np.ndarray | None = None) -> list[Path]:
    """Attention overlay, within-region view and top-k crops of one slide; the PNGs written.

    Args:
        features: The slide's feature file (its region index gives the slide path and geometry).
        region_attention: (R,) attention per region, in the feature file's region order.
        out_dir: Folder of the PNGs (``<name>_attention.png``, ``_region.png``, ``_top.png``).
        name: File stem.
        settings: ``top_k`` and ``thumbnail_px``.
        token_attention: (R, T) attention per region token (None: no within-region view).

    Returns:
        The written paths; empty (with a warning) when the slide file is not at its recorded path.
    """
    with FeatureFile(features) as ff:
        index = ff.index
    recorded = index.attrs.get("slide_path")
    slide_path = Path(str(recorded)) if recorded else None
    if slide_path is None or not slide_path.is_file():
        logger.warning("slide %s not found at %s: no heatmap", index.attrs.get("slide_id", features.stem), recorded)
        return []
    reader = index.attrs.get("reader")
    with open_slide(slide_path, reader=reader) as slide:
        thumb, level0 = slide.thumbnail(settings.thumbnail_px), slide.dimensions
    region_att = np.asarray(region_attention, dtype=np.float64)
    k = min(settings.top_k, len(region_att))
    top = top_k_regions(region_att, k)
    tiles = read_region_tiles(slide_path, index, top, reader=reader) if k else None
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_slide_heatmaps(
        out_dir, slide_id=name, thumbnail=thumb, level0_size=level0, coords=index.coords,
        region_size_level0=index.region_size_level0, attention=region_att, spec=index.spec,
        token_scores=token_attention, top_tiles=tiles, top_k=k, valid=index.tile_valid)
    return list(paths.values())


def write_prediction_heatmaps(scores: RunScores, store: FeatureStore, out_dir: Path, *,
                              settings: ReportSettings) -> list[Path]:
    """Heatmaps of the most confidently positive and negative new bags of one run (``mixmag predict``).

    The attention is that of the reported model (the final model, or the mean over the fold
    models), so the picture shows what the reported probability rests on.
    """
    frame = scores.frame()
    written: list[Path] = []
    index_of = {b.bag_id: i for i, b in enumerate(scores.bags)}
    for bag_id in _choose_bags(frame, settings.heatmap_slides):
        i = index_of[bag_id]
        tokens = scores.token_attention[i]
        for slide_id, region_att in scores.region_attention[i].items():
            written += draw_slide_attention(
                store.paths[slide_id], region_att, out_dir,
                name=f"{scores.run.target}_{scores.run.method}_{slide_id}", settings=settings,
                token_attention=None if tokens is None else tokens.get(slide_id))
    return written


#: The score a run's bags are ranked by: a binary probability, a survival risk, a regression value.
_RANK_COLUMNS = ("prob", "risk", "pred")


def _choose_bags(predictions: pd.DataFrame, n: int) -> list[str]:
    """The n most confidently positive bags first, then the most confidently negative ones (survival:
    highest risk first, then lowest; regression: highest predicted value, then lowest)."""
    column = next((c for c in _RANK_COLUMNS if c in predictions.columns), None)
    if column is None:
        return predictions["bag_id"].astype(str).head(n).tolist()
    ranked = predictions.sort_values(column, ascending=False)["bag_id"].astype(str).tolist()
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
    picked = pick_method(table)
    if picked is None:
        logger.warning("no finished MIL run: no heatmaps")
        return []
    target, method, run_dir = picked
    predictions = pd.read_csv(run_dir / "predictions.csv")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for bag_id in _choose_bags(predictions, s.heatmap_slides):
        attn_file = run_dir / "attention" / f"{bag_id}.h5"
        if not attn_file.exists():
            logger.warning("no attention file for %s in %s", bag_id, run_dir)
            continue
        for slide_id, attn in read_attention(attn_file).items():
            features = features_dir / f"{slide_id}.h5"
            with FeatureFile(features) as ff:
                n_tokens = ff.index.spec.n_tokens
            written += draw_slide_attention(
                features, attn["region_attention"], out_dir, name=f"{target}_{method}_{slide_id}", settings=s,
                token_attention=token_scores(attn, len(attn["coords"]), n_tokens))
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
