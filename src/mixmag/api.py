"""The Python API of ``import mixmag``: the thin wrappers whose name or signature differs from the
stage function they call, and the in-memory path for one slide.

Everything here delegates: :func:`train_mil` is :func:`mixmag.mil.experiment.train_methods`,
:func:`run_study` loads a config and calls :func:`mixmag.pipeline.study.run_study`,
:func:`build_report` is what ``mixmag report`` does, and :func:`embed_slide` chains the per-slide
pieces of ``tile_slides``, ``embed_slides`` and ``encode_regions`` without writing a file. Stage
engines (torch, timm, scikit-learn) are imported when a function runs, so ``import mixmag`` stays
cheap. See docs/python-api.md.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mixmag.errors import MixmagValueError
from mixmag.geometry import RegionSpec

if TYPE_CHECKING:
    import pandas as pd

    from mixmag.config import PipelineConfig
    from mixmag.embed.settings import EmbedSettings
    from mixmag.encoders import TileEncoder
    from mixmag.evaluate.settings import EvaluateSettings
    from mixmag.io.regions import RegionIndex
    from mixmag.mil.experiment import TrainSummary
    from mixmag.mil.settings import MilSettings
    from mixmag.pipeline.study import StudyResult
    from mixmag.slides.base import SlideReader
    from mixmag.slides.tissue import TissueParams
    from mixmag.tiling.settings import TilingSettings
    from mixmag.utils.settings import StageSettings

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------------------------------------
# the in-memory path for one slide
@dataclass
class SlideEmbedding:
    """Embeddings of one slide's regions, in memory (what :func:`embed_slide` returns).

    R regions, T tokens per region (21 by default: 1 tile at 5x, 4 at 10x, 16 at 20x, coarsest
    first, row-major), D tile-embedding length, W region-encoder width.

    Attributes:
        slide_id: The slide's name (file name without its slide extension).
        coords: int64 (R, 2) top-left ``(x, y)`` of every region in level-0 pixels.
        tile_valid: bool (R, T) whether each token's tile holds enough tissue.
        features: float32 (R, T, D) tile-encoder embedding of every token's tile (invalid tokens
            included). The feature files of ``embed_slides`` hold the same values rounded to float16.
        index: The full region index (``spec``, ``mpp_level0``, ``tissue_fraction`` (R, T), ``attrs``).
        encoder: Provenance of the tile encoder (key, embed_dim, weights source and hash, precision ...).
        cls: float32 (R, W) region-encoder CLS embedding per region; None without a region encoder.
        tokens: float32 (R, T, W) contextualised token embeddings; None without a region encoder.
        region_encoder: Checkpoint summary (path, objective, step, checkpoint_hash); None without one.
    """

    slide_id: str
    coords: np.ndarray
    tile_valid: np.ndarray
    features: np.ndarray
    index: RegionIndex
    encoder: dict[str, Any] = field(default_factory=dict)
    cls: np.ndarray | None = None
    tokens: np.ndarray | None = None
    region_encoder: dict[str, Any] | None = None

    @property
    def n_regions(self) -> int:
        """Number of regions R."""
        return int(self.coords.shape[0])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}={tuple(arr.shape)}" for name in ("features", "cls", "tokens")
                           if (arr := getattr(self, name)) is not None)
        return (f"SlideEmbedding(slide_id={self.slide_id!r}, n_regions={self.n_regions}, {shapes}, "
                f"encoder={self.encoder.get('encoder')!r}, mpp_level0={self.mpp_level0:.4g})")

    @property
    def spec(self) -> RegionSpec:
        """The region geometry (size in µm, tile px, magnifications)."""
        return self.index.spec

    @property
    def mpp_level0(self) -> float:
        """The slide's resolved level-0 µm/px."""
        return self.index.mpp_level0


def _split_options(options: Mapping[str, Any], *models: type[StageSettings]) -> list[dict[str, Any]]:
    """Route keyword options to the settings models that declare them (a name may go to several)."""
    parts: list[dict[str, Any]] = [{} for _ in models]
    for key, value in options.items():
        owners = [i for i, model in enumerate(models) if key in model.model_fields]
        if not owners:
            names = sorted({name for model in models for name in model.model_fields})
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise MixmagValueError(f"unknown option {key!r}{hint}; the options are the fields of "
                                   + " and ".join(model.__name__ for model in models))
        for i in owners:
            parts[i][key] = value
    return parts


def embed_slide(
    slide: PathLike | SlideReader,
    encoder: str | TileEncoder | None = None,
    *,
    region_encoder: PathLike | None = None,
    tiling: TilingSettings | None = None,
    embed: EmbedSettings | None = None,
    spec: RegionSpec | None = None,
    mpp: float | None = None,
    reader: str | None = None,
    tissue_params: TissueParams | None = None,
    resample: str = "box",
    region_batch_size: int = 256,
    region_precision: str = "fp32",
    progress: bool = True,
    **options: Any,
) -> SlideEmbedding:
    """Tile, embed and (optionally) region-encode one slide in memory; no file is written.

    The same steps as ``tile_slides`` -> ``embed_slides`` (-> ``encode_regions``) for one slide:
    tissue detection, the region grid and the reads come from
    :func:`mixmag.tiling.slide.index_slide` and :class:`~mixmag.tiling.extract.RegionTileReader`,
    the tile embeddings from :func:`mixmag.embed.memory.embed_region_tiles`, the region embeddings
    from :func:`mixmag.region.encode.encode_features`. With equal settings the features equal those
    of the feature file up to its float16 rounding.

    Args:
        slide: Slide file (any reader backend: SVS, NDPI, tiled TIFF ...) or a slide opened with
            :func:`mixmag.slides.open_slide` (left open).
        encoder: Tile-encoder registry key (:func:`mixmag.list_encoders`; sets ``embed.encoder``)
            or a built :class:`~mixmag.encoders.TileEncoder` (``mixmag.encoders.build_encoder``;
            reuse one across slides to load the weights once; then ``embed``'s encoder, weights
            and device are not used). None: ``embed.encoder``.
        region_encoder: Region-encoder checkpoint folder or ``pretrain_region_encoder`` run folder;
            adds ``cls`` and ``tokens``. Its tile encoder and region layout must match.
        tiling: Region geometry and tissue rules (:class:`~mixmag.tiling.settings.TilingSettings`,
            e.g. a study config's ``config.tiling``; its defaults when None). ``workers`` is not used.
        embed: Encoder, weights, batch size, precision and device
            (:class:`~mixmag.embed.settings.EmbedSettings`, e.g. ``config.embed``; its defaults when
            None). ``precision="auto"`` keeps reduced precision only where it reproduces fp32, as in
            ``embed_slides``. ``workers`` is not used: tiles are decoded in this process.
        spec: The region geometry as a :class:`~mixmag.RegionSpec`, used instead of
            ``tiling.region_um``/``tile_px``/``magnifications``.
        mpp: Level-0 µm/px override (beats the slide's metadata).
        reader: Force a reader backend (``openslide``, ``tiffslide``, ``image``) for a path.
        tissue_params: Tissue-detection settings (``mixmag.slides.tissue.TissueParams``).
        resample: Filter reaching the exact target µm/px: ``"box"`` or ``"lanczos"``.
        region_batch_size: Regions per region-encoder forward pass.
        region_precision: Region encoder: ``fp32`` (default, as ``encode_regions``), ``bf16``,
            ``fp16`` or ``auto``.
        progress: Show a progress bar over tiles.
        **options: Single fields of ``tiling`` or ``embed`` replacing theirs, e.g.
            ``min_tissue=0.5, thumbnail_px=1024, weights="/models/uni", precision="fp32",
            device="cpu", batch_size=64``; unknown names raise with close matches.

    Returns:
        A :class:`SlideEmbedding`; R = 0 (with a logged warning) when no region has enough tissue.

    Raises:
        SlideError: The slide cannot be opened or its resolution is unknown (pass ``mpp``).
        MixmagValueError: An unknown option or an invalid value.
        MixmagKeyError: Unknown encoder key or reader.
        WeightsError: Tile-encoder weights unavailable (gated hub model without a token ...).
        LayoutMismatchError: The region-encoder checkpoint does not fit these features.

    Example::

        >>> import mixmag as mm
        >>> emb = mm.embed_slide("slide.svs", "tiny.d16", region_encoder="runs/pretrain/mem")
        >>> emb.features.shape, emb.cls.shape        # (R, 21, 16), (R, W)
    """
    from mixmag.embed.memory import embed_region_tiles
    from mixmag.embed.settings import EmbedSettings
    from mixmag.encoders import TileEncoder, build_encoder
    from mixmag.slides import open_slide, resolve_mpp
    from mixmag.slides.opener import slide_stem
    from mixmag.tiling.extract import RegionTileReader
    from mixmag.tiling.settings import GEOMETRY_FIELDS, TilingSettings
    from mixmag.tiling.slide import index_slide
    from mixmag.utils.device import resolve_device

    # settings errors first, before the slide is read or a model is built
    tiling_options, embed_options = _split_options(options, TilingSettings, EmbedSettings)
    t = (tiling if tiling is not None else TilingSettings()).updated(**tiling_options)
    built = encoder if isinstance(encoder, TileEncoder) else None
    if encoder is not None and built is None:
        embed_options["encoder"] = encoder
    e = (embed if embed is not None else EmbedSettings()).updated(**embed_options)
    if spec is None:
        spec = t.region_spec()
    elif given := sorted(set(tiling_options) & set(GEOMETRY_FIELDS)):
        raise MixmagValueError(f"give the region geometry either as spec or as {', '.join(given)}, not both")
    dev = built.device if built is not None else resolve_device(e.device)
    with contextlib.ExitStack() as stack:
        opened = stack.enter_context(open_slide(slide, reader)) if isinstance(slide, (str, os.PathLike)) else slide
        slide_id = slide_stem(opened.path)
        level0_mpp = resolve_mpp(opened, mpp)
        w, h = opened.dimensions
        attrs = {"slide_id": slide_id, "slide_path": str(Path(opened.path).resolve()), "reader": opened.name,
                 "mpp_source": level0_mpp.source, "resample": resample, "level0_width": w, "level0_height": h}
        regions = index_slide(opened, level0_mpp.mpp, spec, min_tissue=t.min_tissue,
                              valid_min_tissue=t.valid_min_tissue, thumbnail_px=t.thumbnail_px,
                              tissue_params=tissue_params, resample=resample, attrs=attrs)
        index = regions.index
        index.attrs.update(read_level=regions.plan.level,
                           achieved_mpps=[regions.plan.achieved_mpps[m] for m in spec.mpps])
        if index.n_regions == 0:
            logger.warning("%s: no region has >= %g tissue (tissue covers %.1f%% of the slide)", slide_id,
                           t.min_tissue, 100 * regions.tissue.tissue_fraction_total)
        enc = built if built is not None else build_encoder(
            e.encoder, weights=e.weights, random_weights=e.random_weights, device=dev, precision=e.precision)
        features = embed_region_tiles(index, RegionTileReader(opened, index, resample=resample), enc,
                                      batch_size=e.batch_size, precision=e.precision, progress=progress)
    result = SlideEmbedding(slide_id=slide_id, coords=index.coords, tile_valid=index.tile_valid,
                            features=features, index=index, encoder=enc.provenance())
    if region_encoder is not None:
        _add_region_embeddings(result, region_encoder, device=enc.device, batch_size=region_batch_size,
                               precision=region_precision)
    return result


def _add_region_embeddings(result: SlideEmbedding, checkpoint: PathLike, *, device: Any, batch_size: int,
                           precision: str) -> None:
    """Fill ``result.cls`` / ``result.tokens`` with the region encoder of ``checkpoint``."""
    from mixmag.region.checkpoints import check_layout, load_region_encoder
    from mixmag.region.encode import encode_features
    from mixmag.utils.device import resolve_amp

    model, info = load_region_encoder(checkpoint, map_location=device)
    check_layout(info, tile_dim=result.features.shape[-1], spec=result.spec, source=f"slide {result.slide_id}")
    result.cls, result.tokens = encode_features(
        model, result.features, result.tile_valid, batch_size=batch_size, device=device,
        dtype=resolve_amp(precision, device, training=False).dtype, slide_id=result.slide_id)
    result.region_encoder = {k: info[k] for k in ("path", "objective", "step", "checkpoint_hash")}


# ------------------------------------------------------------------------------------------------
# stage wrappers whose name or signature differs from the stage function
def train_mil(
    features: PathLike,
    labels: PathLike,
    out_dir: PathLike,
    *,
    settings: MilSettings | None = None,
    evaluation: EvaluateSettings | None = None,
    pretrained: Mapping[str, PathLike] | None = None,
    progress: bool = True,
    **options: Any,
) -> TrainSummary:
    """Cross-validate AB-MIL methods on every label column with identical splits; write run folders.

    :func:`mixmag.mil.experiment.train_methods` under its public name (``mixmag train``): the
    paper's methods (``abmil-5x|10x|20x``, ``mix-random``, ``mix-mem``, ``mix-cmem``,
    ``mix-mem-cls`` ...) share one AB-MIL head and one patient-level split per target; every
    fold is early-stopped on an inner validation split and scored by AUROC
    (docs/concepts/evaluation.md).

    Args:
        features: Folder of ``<slide_id>.h5`` feature files of one tile encoder (``embed_slides``).
        labels: CSV/TSV with ``patient_id``, ``slide_id`` and one column per target (binary labels).
        out_dir: Output root; runs go to ``<out_dir>/<target>/<method>/`` (docs/formats/mil-run.md).
        settings: :class:`~mixmag.mil.settings.MilSettings` (methods, targets, model and
            optimisation; e.g. a study config's ``config.mil``); its defaults when None.
        evaluation: The cross-validation protocol: ``folds``, ``val_frac``, ``bootstrap`` and
            ``splits`` of :class:`~mixmag.evaluate.settings.EvaluateSettings` (e.g.
            ``config.evaluate``); its defaults when None.
        pretrained: Region-encoder checkpoints per role, e.g. ``{"mem": ..., "cmem": ...,
            "random": ...}`` (``pretrain_region_encoder(...).checkpoint``). A method whose role has
            no checkpoint is skipped and listed in ``summary.skipped``.
        progress: Progress bars.
        **options: Single fields replacing those of ``settings`` (``methods=["abmil-20x",
            "mix-mem"]``, ``epochs=5``, ``hidden_dim=64``, ``seed=1`` ...) or of ``evaluation``
            (``folds=3`` outer folds, ``val_frac``, ``bootstrap`` resamples for the CIs,
            ``splits`` a split file to reuse), and ``overwrite=True`` to replace runs made with
            other settings; unknown names raise with close matches.

    Returns:
        A :class:`~mixmag.mil.experiment.TrainSummary`: ``runs`` (target, method, mean/sd/pooled
        AUROC, CI), ``skipped`` and ``table()`` (a DataFrame); also written to ``<out_dir>/summary.json``.

    Raises:
        MixmagValueError: Bad settings, unknown method, or labels that match no feature file.

    Example::

        >>> summary = mm.train_mil("run/features/tiny.d16", "labels.csv", "run/mil",
        ...                        pretrained={"mem": "run/pretrain/mem"}, methods=["abmil-20x", "mix-mem"],
        ...                        folds=3, epochs=5)
        >>> summary.table()[["target", "method", "mean_auroc"]]
    """
    from mixmag.mil.experiment import train_methods

    return train_methods(features, labels, out_dir, settings=settings, evaluation=evaluation,
                         pretrained=pretrained, progress=progress, **options)


def _study_config(config: PipelineConfig | PathLike | Mapping[str, Any],
                  overrides: Mapping[str, Any] | Sequence[str] | None) -> PipelineConfig:
    """Validated study config from a config object, a YAML path or a nested mapping, plus overrides."""
    from pydantic import ValidationError

    from mixmag.config import PipelineConfig, apply_overrides, set_dotted
    from mixmag.config_errors import ConfigError, format_config_error, load_config_checked

    if isinstance(overrides, str):
        overrides = [overrides]
    items = [] if overrides is None or isinstance(overrides, Mapping) else list(overrides)
    values = dict(overrides) if isinstance(overrides, Mapping) else {}
    if isinstance(config, (str, os.PathLike)):
        return load_config_checked(config, items, values=values)
    if isinstance(config, PipelineConfig):
        if not items and not values:
            return config
        data = config.model_dump(mode="json")
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
    else:
        raise MixmagValueError(f"config must be a PipelineConfig, a YAML path or a mapping, not {type(config).__name__}")
    apply_overrides(data, items)
    for dotted, value in values.items():
        set_dotted(data, dotted, value)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_config_error(exc, None, overrides=items)) from None


def run_study(
    config: PipelineConfig | PathLike | Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    progress: bool = True,
) -> StudyResult:
    """Run (or resume) a whole study: tile -> embed -> pretrain -> MIL -> compare -> heatmaps ->
    diagnostics -> report.html, as ``mixmag run`` does.

    Every stage is fingerprinted in ``<out>/stages.json``: a finished stage with unchanged settings
    and inputs is skipped, a changed one reruns with everything after it.

    Args:
        config: A study config: the path of a YAML file (``mixmag config init study.yaml`` writes a
            commented template), a nested mapping of sections (``{"out": "runs/s", "slides":
            {"inputs": [...]}, "embed": {"encoder": "uni"}}``) or a :class:`~mixmag.PipelineConfig`.
        overrides: Settings replacing those of ``config``: ``{"mil.epochs": 5}`` (dotted key ->
            value) or ``["mil.epochs=5"]`` (``--set`` items, values parsed as YAML).
        progress: Progress bars.

    Returns:
        A :class:`~mixmag.StudyResult`: ``run_dir``, ``stages`` (ledger record per stage),
        ``skipped`` (stage names reused), ``comparison`` (methods x tasks DataFrame, None without
        labels) and ``report`` (path of ``report.html``).

    Raises:
        ConfigError: Missing file, YAML error, unknown key or invalid value (the message names the
            file, line and key, with close matches).
        MixmagRuntimeError: A stage produced nothing (e.g. every slide failed to tile).

    Example::

        >>> result = mm.run_study("study.yaml", overrides={"mil.epochs": 5})
        >>> result.comparison[["target", "method", "mean_auroc"]], result.report
    """
    from mixmag.pipeline.study import run_study as run

    return run(_study_config(config, overrides), progress=progress)


def build_report(
    run: PathLike | Mapping[str, Any],
    out_html: PathLike | None = None,
) -> Path:
    """Write the self-contained HTML report of a run, as ``mixmag report`` does.

    Args:
        run: The folder of a ``mixmag run`` (its study report is rebuilt with the study's own
            builder, :func:`mixmag.pipeline.report.rebuild_study_report`); another run folder,
            whose inputs are found at their conventional places
            (:func:`mixmag.report.build.discover_inputs`: ``config.resolved.yaml``, ``env.json``,
            ``evaluate/comparison.csv`` or ``comparison.csv``, ``tiles/qc/*.png``,
            ``pretrain/*/metrics.jsonl``, ``heatmaps/*.png``, ``diagnostics/``); or a mapping / JSON
            file listing the inputs (docs/report.md).
        out_html: Output file (default: ``<run>/report.html``, or the ``out`` key of a mapping).

    Returns:
        The path of the written HTML file (images embedded: one file to share).

    Raises:
        MixmagFileNotFoundError: ``run`` is not a folder or JSON file.
        MixmagValueError: A listed input is malformed (e.g. predictions without ``y_true``).

    Example::

        >>> mm.compare_runs(["run/mil"], "run/evaluate")
        >>> mm.build_report("run")        # -> run/report.html
    """
    from mixmag.pipeline.report import is_study_folder, rebuild_study_report
    from mixmag.report.build import build_report_from_inputs, discover_inputs

    if isinstance(run, Mapping):
        return build_report_from_inputs(run, out_html)
    path = Path(run)
    if out_html is None and path.is_dir() and is_study_folder(path):
        return rebuild_study_report(path)
    return build_report_from_inputs(path if path.is_file() else discover_inputs(path), out_html)


def predict(
    run: PathLike,
    inputs: PathLike | Sequence[PathLike],
    out_dir: PathLike,
    *,
    labels: PathLike | None = None,
    methods: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """Apply trained runs to a new cohort, as ``mixmag predict`` does; the predictions as a DataFrame.

    New slides are tiled and embedded exactly as the training features were (geometry, tissue
    settings, encoder, weights and precision come from the training features' provenance); a
    folder of feature files is checked against that provenance and scored directly. Every fold
    model scores every bag; the reported ``prob`` is the refit-on-all model's when the run has
    one (``mixmag train --refit-all``), else the fold mean, and each model's own score is a
    column too (docs/formats/predictions.md).

    Args:
        run: A ``mixmag run`` folder, a ``mixmag train --out`` folder, one run folder or a ``model.pt``.
        inputs: Slide files/folders, or one folder of feature files.
        out_dir: Where ``predictions.csv``, ``metrics.csv`` (with labels), plots, heatmaps and
            ``report.html`` go.
        labels: Labels table of the new cohort (patients, and the AUROC where labelled).
        methods: Methods to apply (None: all trained ones).
        targets: Targets to apply (None: all).
        progress: Progress bars.
        **options: Further arguments of :func:`mixmag.pipeline.predict.predict_cohort`
            (``weights``, ``device``, ``workers``, ``n_boot``, ``seed``, ``report``, ``write_report``).

    Returns:
        One row per (bag, target, method): ``bag_id, patient_id, slide_ids, target, method, model,
        label, prob`` (binary; ``prob_<class>`` for multi-class) and ``prob_fold<k>``/``prob_ensemble``.

    Example::

        >>> preds = mm.predict("runs/tcga", ["cptac/slides"], "runs/cptac", labels="cptac/labels.csv")
        >>> preds.groupby("method")["prob"].describe()
    """
    from mixmag.pipeline.predict import predict_cohort

    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    return predict_cohort(run, given, out_dir, labels=labels, methods=methods, targets=targets, progress=progress,
                          **options).predictions
