"""``mixmag run``: the whole study from one config, stage by stage, skipping what is finished.

Stages and their folders below ``config.out``::

    tiles/       regions/<slide>.h5, qc/, tissue/          (mixmag.tiling)
    features/    <encoder>/<slide>.h5                      (mixmag.embed)
    pretrain/    <objective>/ checkpoints, metrics, plot   (mixmag.region)
    mil/         <target>/<method>/ folds, predictions     (mixmag.mil)
    compare/     comparison.md/.csv/.png                   (mixmag.evaluate)
    heatmaps/    <slide>_attention.png ...                 (mixmag.report)
    external/    predictions, metrics, plots of a new cohort (mixmag.pipeline.predict; with `external.inputs`)
    diagnostics/ pretraining, probes, ceiling, attention   (mixmag.diagnose)
    report.html, stages.json, config.resolved.yaml, env.json, run.log

Every stage is fingerprinted in ``stages.json`` (:mod:`mixmag.pipeline.ledger`); the stage functions
are themselves resumable per slide/step, so an interrupted run continues where it stopped.

Each stage method imports its engine (torch, timm, scikit-learn) when it runs, not at module
import: ``mixmag run`` starts fast and a resumed run whose stages are all done loads none of them.
These imports all point down the layers (see ``[tool.importlinter]`` in pyproject.toml).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mixmag.config import PipelineConfig, dump_config
from mixmag.errors import MixmagRuntimeError, MixmagValueError
from mixmag.evaluate.settings import cross_validation_fields
from mixmag.mil.settings import ENDPOINT_SETTINGS
from mixmag.pipeline.diagnostics_stage import (
    check_region_labels,
    plan_diagnostics,
    run_plan,
)
from mixmag.pipeline.ledger import StageLedger, StageRecord, fingerprint
from mixmag.pipeline.report import EXTERNAL_DIR, RESOLVED_CONFIG, write_study_report
from mixmag.preflight import STUDY, PreflightError, preflight
from mixmag.tiling.inputs import collect_slides
from mixmag.utils.atomic import atomic_write_json, atomic_write_text
from mixmag.utils.cost import Ask
from mixmag.utils.env import environment_info
from mixmag.utils.logging import add_file_handler
from mixmag.utils.settings import field_default, runtime_fields

if TYPE_CHECKING:
    from mixmag.region.pretrain import PretrainResult

logger = logging.getLogger(__name__)

@dataclass
class StudyResult:
    """What :func:`run_study` did.

    Attributes:
        run_dir: The run folder.
        stages: Ledger record per stage (``skipped`` tells which were reused).
        comparison: The methods x tasks table (None without labels).
        external: External AUROC per run (``target, method, model, n_bags, auroc, ci_lo, ci_hi``)
            of the ``external`` stage; None without ``external.inputs``, empty without its labels.
        report: Path of ``report.html``.
    """

    run_dir: Path
    stages: dict[str, StageRecord] = field(default_factory=dict)
    comparison: pd.DataFrame | None = None
    external: pd.DataFrame | None = None
    report: Path | None = None

    @property
    def skipped(self) -> list[str]:
        """Names of stages reused from an earlier run."""
        return [k for k, r in self.stages.items() if r.skipped]


def _section(config: PipelineConfig, name: str, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    data = getattr(config, name).model_dump(mode="json")
    skip = set(exclude)
    return {k: v for k, v in data.items() if k not in skip}


#: The columns of ``StudyResult.external`` (and of the external stage's recorded ``metrics``).
EXTERNAL_COLUMNS = ("target", "method", "model", "n_bags", "n_unlabelled", "auroc", "ci_lo", "ci_hi", "n_boot")
#: More columns of regression and survival runs (their metric's name and value; docs/concepts/endpoints.md).
ENDPOINT_EXTERNAL_COLUMNS = ("metric", "spearman", "cindex")
#: ``external/inputs.json``: the inputs the new cohort's tiles and features were made from.
EXTERNAL_INPUTS = "inputs.json"


def _plain(value: Any) -> Any:
    """A JSON-ready scalar (numpy numbers become Python numbers) for the stage ledger."""
    return value.item() if hasattr(value, "item") else value


def _clear_external(out: Path, inputs: list[str]) -> None:
    """Remove an earlier external stage's results before it runs again; record ``inputs``.

    ``predict_cohort`` scores every feature file in its folder and writes metrics and plots only
    for what it scores now, so files of another cohort, or of runs gone since, would otherwise be
    scored or shown again. The new cohort's tiles and features stay when they were made from the
    same inputs (``EXTERNAL_INPUTS`` says which; their tiling and embedding resume per slide, so an
    interrupted stage does not embed again).
    """
    marker = out / EXTERNAL_INPUTS
    try:
        same = json.loads(marker.read_text(encoding="utf-8")) == inputs
    except (OSError, ValueError):
        same = False
    if out.is_dir():
        for child in out.iterdir():
            if same and child.name in ("tiles", "features"):
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    atomic_write_json(marker, inputs)


class Study:
    """One study run: owns the folder, the ledger and the stage functions.

    Args:
        config: Validated study config.
        progress: Show progress bars.
        ask: Asked to go on when a stage's first steps estimate it past its limit
            (``region.confirm_above_minutes``); None stops the stage instead (batch mode).
    """

    def __init__(self, config: PipelineConfig, *, progress: bool = True, ask: Ask | None = None) -> None:
        self.config = config
        self.progress = progress
        self.ask = ask
        self.out = Path(config.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.ledger = StageLedger(self.out)
        self.spec = config.tiling.region_spec()  # a bad geometry fails before any stage runs
        self.fps: dict[str, str] = {}

    # ----------------------------------------------------------------- helpers
    def _fp(self, name: str, settings: dict[str, Any], upstream: list[str]) -> str:
        fp = fingerprint(settings, [self.fps[u] for u in upstream])
        self.fps[name] = fp
        return fp

    def _settings(self, section: str, **extra: Any) -> dict[str, Any]:
        """A section's settings without its runtime-only fields (they never change a result)."""
        runtime = runtime_fields(type(getattr(self.config, section)))
        return {**_section(self.config, section, exclude=runtime), **extra}

    @property
    def regions_dir(self) -> Path:
        """Region indexes of every slide."""
        return self.out / "tiles" / "regions"

    @property
    def features_dir(self) -> Path:
        """Feature files of the configured encoder."""
        return self.out / "features" / self.config.embed.encoder

    def _unlabeled_ids(self) -> set[str]:
        pool = self.config.slides.pretrain_inputs
        if not pool:
            return set()
        everything = collect_slides([*self.config.slides.inputs, *pool], exclude=self.out)
        pool_paths = {j.path for j in collect_slides(list(pool), exclude=self.out)}
        return {j.slide_id for j in everything if j.path in pool_paths}

    def pretrain_corpus(self) -> tuple[list[Path], str]:
        """Feature files used for pretraining and a sentence saying which slides they are."""
        files = sorted(p for p in self.features_dir.glob("*.h5") if not p.name.startswith("."))
        unlabeled = self._unlabeled_ids()
        mode = self.config.region.pretrain_on
        if mode == "auto":
            mode = "unlabeled" if unlabeled else "all"
        if mode == "unlabeled":
            if not unlabeled:
                raise MixmagValueError("region.pretrain_on is 'unlabeled' but slides.pretrain_inputs is empty; "
                                       "add unlabeled slides or set region.pretrain_on: all")
            chosen = [p for p in files if p.stem in unlabeled]
            note = (f"Region encoders were pretrained on {len(chosen)} unlabeled slides only: no slide "
                    "of an evaluated patient was seen during pretraining.")
        else:
            chosen = files
            note = (f"Region encoders were pretrained (self-supervised, labels unused) on all {len(chosen)} "
                    "slides, including the slides of the patients later used as test folds.")
        if not chosen:
            raise MixmagValueError(f"no feature files to pretrain on in {self.features_dir}")
        return chosen, note

    # ------------------------------------------------------------------ stages
    def tile(self) -> StageRecord:
        """Region indexes, QC pictures and tissue GeoJSON for labeled and unlabeled slides."""
        from mixmag.tiling.tile import tile_slides

        s, t = self.config.slides, self.config.tiling
        inputs = [*s.inputs, *s.pretrain_inputs]
        if not inputs:
            raise MixmagValueError("slides.inputs is empty: list slide files or folders in the config")
        fp = self._fp("tile", {"slides": _section(self.config, "slides"), **self._settings("tiling")}, [])

        def run() -> dict[str, Any]:
            summary = tile_slides(inputs, self.out / "tiles", settings=t, mpp_override=s.mpp, mpp_csv=s.mpp_csv,
                                  reader=s.reader, progress=self.progress)
            if summary.all_failed:
                raise MixmagRuntimeError(f"every slide failed to tile; see {summary.manifest_path}")
            return {"regions": str(self.regions_dir), "manifest": str(summary.manifest_path),
                    "n_regions": summary.n_regions}

        return self.ledger.run("tile", fp, run)

    def embed(self) -> StageRecord:
        """Tile embeddings of every region with the configured foundation model."""
        from mixmag.embed.engine import embed_slides

        e = self.config.embed
        fp = self._fp("embed", self._settings("embed"), ["tile"])

        def run() -> dict[str, Any]:
            summary = embed_slides(self.regions_dir, self.features_dir, settings=e, progress=self.progress)
            done = sorted(self.features_dir.glob("*.h5"))
            if not done:
                raise MixmagRuntimeError(f"no slide was embedded; see {self.features_dir / 'manifest.csv'}")
            logger.info("embedded %d slides (%s)", len(done), summary)
            return {"features": str(self.features_dir), "n_slides": len(done)}

        return self.ledger.run("embed", fp, run)

    def objectives(self) -> list[str]:
        """Pretraining runs needed: configured objectives plus each method's checkpoint role.

        A method's role is its registry entry's ``encoder`` (``random`` for ``mix-random``, ``mem``
        for ``mix-mem-frozen`` ...), so a new method needs no entry here.
        """
        from mixmag.mil.methods import METHODS  # torch: only when the study runs

        wanted = list(dict.fromkeys(self.config.region.objectives))
        methods = self.config.mil.methods if self.config.mil.labels else []
        for method in methods:
            obj = METHODS.get(method).encoder
            if obj is not None and obj not in wanted:
                wanted.append(obj)
        return wanted

    def pretrain(self, objective: str) -> StageRecord:
        """Pretrain one region encoder (``random`` saves the seeded initialisation).

        A training objective runs in this process, or, when ``region.nproc_per_node`` or
        ``region.nnodes`` asks for more than one process, as a torchrun job (:meth:`_launch_pretraining`)
        that trains the same encoder and is recorded the same way.
        """
        from mixmag.region.objectives import OBJECTIVES
        from mixmag.region.pretrain import pretrain_region_encoder

        name = f"pretrain-{objective}"
        fp = self._fp(name, self._settings("region", objective=objective,
                                           pretrain_inputs=[str(p) for p in self.config.slides.pretrain_inputs]),
                      ["embed"])

        def run() -> dict[str, Any]:
            files, note = self.pretrain_corpus()
            out = self.out / "pretrain" / objective
            if self.config.region.launches_torchrun and OBJECTIVES.get(objective).trains:
                result = self._launch_pretraining(files, out, objective)
            else:  # `random` only saves the initialisation: one process, even on a cluster
                result = pretrain_region_encoder(files, out, settings=self.config.region.run_settings(objective),
                                                 progress=self.progress, ask=self.ask)
            # `random` logs no step, so it may have no metrics file (the ledger checks listed paths exist)
            metrics = str(result.metrics_path) if result.metrics_path.exists() else None
            return {"checkpoint": str(result.checkpoint), "metrics": metrics,
                    "final_loss": result.final_loss, "corpus_note": note}

        return self.ledger.run(name, fp, run)

    def _launch_pretraining(self, files: list[Path], out: Path, objective: str) -> PretrainResult:
        """Pretrain ``objective`` as a torchrun job of ``region.nnodes`` x ``region.nproc_per_node`` processes.

        The job reads its settings from the study's resolved config, so it trains with exactly the
        settings of the in-process run; it is told ``--yes`` when this study may go on past the
        duration estimate (``ask`` given), else it stops there as a batch run does.
        """
        from mixmag.region.launch import TorchrunLaunch, launch_pretraining

        r = self.config.region
        config = self.out / RESOLVED_CONFIG  # what Study.run wrote; again for a stage run on its own
        atomic_write_text(config, dump_config(self.config))
        launch = TorchrunLaunch(nproc_per_node=r.nproc_per_node, nnodes=r.nnodes, rdzv_endpoint=r.rdzv_endpoint)
        return launch_pretraining(files, out, config=config, objective=objective, launch=launch,
                                  assume_yes=self.ask is not None)

    def train(self, checkpoints: dict[str, str]) -> StageRecord:
        """Cross-validated AB-MIL for every method and target under identical splits."""
        from mixmag.mil.experiment import train_methods

        m, ev = self.config.mil, self.config.evaluate
        labels = m.labels
        if labels is None:
            raise MixmagValueError("mil.labels is not set: the train stage needs a labels CSV")
        # only the protocol that training reads: diagnostics fields never invalidate trained models
        protocol = set(cross_validation_fields(type(ev))) - runtime_fields(type(ev))
        evaluate = _section(self.config, "evaluate", exclude=set(type(ev).model_fields) - protocol)
        # the endpoint settings came later: at their defaults the fingerprint stays what earlier runs
        # recorded, so their trained models are reused
        mil = {k: v for k, v in self._settings("mil").items()
               if not (k in ENDPOINT_SETTINGS and v == field_default(type(m), k))}
        # one key per section: a flat merge let evaluate.seed hide mil.seed from the fingerprint
        fp = self._fp("train", {"mil": mil, "evaluate": evaluate},
                      ["embed", *(f"pretrain-{o}" for o in sorted(checkpoints))])

        def run() -> dict[str, Any]:
            summary = train_methods(
                self.features_dir, labels, self.out / "mil", settings=m, evaluation=ev, pretrained=checkpoints,
                overwrite=True, progress=self.progress,
            )
            for skipped in summary.skipped:
                logger.warning("method %s skipped: %s", skipped.method, skipped.reason)
            if not summary.runs:
                raise MixmagRuntimeError("no MIL method could be trained; see the warnings above")
            return {"mil": str(self.out / "mil"), "targets": summary.targets,
                    "skipped": {s.method: s.reason for s in summary.skipped}}

        return self.ledger.run("train", fp, run)

    def compare(self) -> tuple[StageRecord, pd.DataFrame]:
        """The paper-style table (methods x tasks, mean AUROC, CI, delta vs abmil-20x)."""
        from mixmag.evaluate.compare import compare_runs

        fp = self._fp("compare", {}, ["train"])
        out = self.out / "compare"

        def run() -> dict[str, Any]:
            compare_runs([self.out / "mil"], out)
            return {"table": str(out / "comparison.csv")}

        rec = self.ledger.run("compare", fp, run)
        return rec, pd.read_csv(rec.outputs["table"])

    def heatmaps(self, table: pd.DataFrame) -> StageRecord:
        """Attention heatmaps of a few slides from the best mixing method's out-of-fold attention."""
        from mixmag.pipeline.heatmaps import write_study_heatmaps

        r = self.config.report
        settings: dict[str, Any] = {"n": r.heatmap_slides, "top_k": r.top_k}
        # the thumbnail size became a setting later: at its default the fingerprint stays what earlier
        # runs recorded, so their heatmaps are reused
        if r.thumbnail_px != field_default(type(r), "thumbnail_px"):
            settings["thumbnail_px"] = r.thumbnail_px
        fp = self._fp("heatmaps", settings, ["compare"])

        def run() -> dict[str, Any]:
            paths = write_study_heatmaps(self.out / "mil", table, self.features_dir, self.out / "heatmaps",
                                         settings=r)
            return {"heatmaps": str(self.out / "heatmaps"), "files": [str(p) for p in paths]}

        return self.ledger.run("heatmaps", fp, run)

    def external(self, comparison: pd.DataFrame | None = None) -> StageRecord:
        """The trained runs applied to the ``external`` cohort (:func:`~mixmag.pipeline.predict.predict_cohort`).

        The new slides are tiled and embedded into ``external/`` exactly like the training slides
        (geometry, encoder and weights come from the training features' provenance). Its outputs
        record the external AUROC of every run (``metrics``) so a reused stage still reports them.
        Heatmaps are drawn for the method the study's own heatmaps show (``comparison`` picks it).
        """
        from mixmag.pipeline.heatmaps import pick_method
        from mixmag.pipeline.predict import METRICS_CSV, PREDICTIONS_CSV, predict_cohort

        x, r = self.config.external, self.config.report
        # what the predictions, their bootstrap CI and the heatmaps of the new cohort depend on;
        # device and tiling workers only change the speed
        fp = self._fp("external", {"external": self._settings("external"), "bootstrap": self.config.evaluate.bootstrap,
                                   "seed": self.config.mil.seed, "report": self._settings("report")},
                      ["embed", "train"])
        out = self.out / EXTERNAL_DIR
        inputs = [str(p) for p in x.inputs]
        picked = pick_method(comparison) if comparison is not None else None

        def run() -> dict[str, Any]:
            _clear_external(out, inputs)
            result = predict_cohort(
                self.out, x.inputs, out, labels=x.labels, methods=x.methods or None, device=self.config.mil.device,
                workers=self.config.tiling.workers, n_boot=self.config.evaluate.bootstrap, seed=self.config.mil.seed,
                report=r, heatmap_methods=[picked[1]] if picked else [], write_report=False,
                progress=self.progress)
            metrics = [{k: _plain(row[k]) for k in (*EXTERNAL_COLUMNS, *ENDPOINT_EXTERNAL_COLUMNS)
                        # a run of one metric has no value of the others (NaN in a mixed table)
                        if k in row and not (k in ("auroc", *ENDPOINT_EXTERNAL_COLUMNS) and pd.isna(row[k]))}
                       for row in result.metrics.to_dict("records")]
            return {"external": str(out), "predictions": str(out / PREDICTIONS_CSV),
                    "metrics_csv": str(out / METRICS_CSV) if metrics else None,
                    "features": str(result.features_dir), "n_bags": int(result.predictions["bag_id"].nunique()),
                    "n_problems": len(result.problems), "metrics": metrics}

        return self.ledger.run("external", fp, run)

    def diagnose(self, objectives: list[str], result: StudyResult) -> StageRecord | None:
        """``mixmag diagnose`` on the study's features, pretrained encoders and (with region labels) MIL run.

        Returns None when ``evaluate.diagnostics`` is off or nothing can be diagnosed (no pretrained
        encoder and no region labels); :mod:`mixmag.pipeline.diagnostics_stage` says what runs.
        """
        ev = self.config.evaluate
        if not ev.diagnostics:
            logger.info("evaluate.diagnostics is false: no diagnose stage")
            return None
        train = result.stages.get("train")
        targets = train.outputs.get("targets", []) if train is not None else []
        # the slide ceiling needs a class label: regression and survival targets (listed in the
        # training summary's `endpoints`) are not candidates
        summary = self.out / "mil" / "summary.json"
        endpoints = json.loads(summary.read_text(encoding="utf-8")).get("endpoints", {}) if summary.is_file() else {}
        targets = [t for t in targets if endpoints.get(t, "classification") == "classification"]
        plan = plan_diagnostics(self.out, objectives, region_labels=ev.region_labels,
                                slide_labels=self.config.mil.labels, comparison=result.comparison,
                                targets=targets)
        if plan.empty:
            logger.info("no pretrained region encoder and no evaluate.region_labels: nothing to diagnose")
            return None
        upstream = ["embed", *(f"pretrain-{o}" for o in plan.checkpoints)]
        fp = self._fp("diagnose", {**plan.settings(), "seed": ev.seed},
                      upstream + (["compare"] if plan.slide_label_column is not None else []))
        return self.ledger.run("diagnose", fp, lambda: run_plan(plan, self.features_dir, self.out / "diagnostics",
                                                                 seed=ev.seed))

    # -------------------------------------------------------------------- run
    def run(self) -> StudyResult:
        """Run every stage in order (labels-dependent stages only when labels are configured).

        Raises:
            PreflightError: Before any stage, every problem :func:`~mixmag.preflight.preflight`
                finds with the files and data the stages read (one line each).
        """
        problems = preflight(self.config, stages=STUDY)
        errors = [p.line() for p in problems if p.level == "error"]
        if errors:
            raise PreflightError(errors, [p.line() for p in problems if p.level == "warning"])
        check_region_labels(self.config.evaluate.region_labels)
        atomic_write_text(self.out / RESOLVED_CONFIG, dump_config(self.config))
        atomic_write_json(self.out / "env.json", environment_info())
        handler = add_file_handler(self.out / "run.log")
        try:
            for problem in problems:  # warnings only: in the run's log too
                logger.warning("%s", problem.line())
            result = StudyResult(run_dir=self.out)
            result.stages["tile"] = self.tile()
            result.stages["embed"] = self.embed()
            checkpoints: dict[str, str] = {}
            for objective in self.objectives():
                rec = self.pretrain(objective)
                result.stages[rec.name] = rec
                checkpoints[objective] = rec.outputs["checkpoint"]
            if self.config.mil.labels is None:
                logger.warning("mil.labels is not set: no biomarker evaluation (pretraining and its diagnostics only)")
                if self.config.external.inputs:
                    logger.warning("external.inputs is set but nothing is trained to score them: no external stage")
            else:
                result.stages["train"] = self.train(checkpoints)
                result.stages["compare"], result.comparison = self.compare()
                if self.config.report.heatmap_slides:
                    result.stages["heatmaps"] = self.heatmaps(result.comparison)
                if self.config.external.inputs:
                    result.stages["external"] = self.external(result.comparison)
                    recorded = result.stages["external"].outputs.get("metrics") or []
                    more = [c for c in ENDPOINT_EXTERNAL_COLUMNS if any(c in m for m in recorded)]
                    result.external = pd.DataFrame(recorded, columns=[*EXTERNAL_COLUMNS, *more])
            diagnose = self.diagnose(list(checkpoints), result)
            if diagnose is not None:
                result.stages["diagnose"] = diagnose
            result.report = write_study_report(self.out, self.config, result.stages, result.comparison)
            return result
        finally:
            logging.getLogger("mixmag").removeHandler(handler)
            handler.close()


def run_study(config: PipelineConfig, *, progress: bool = True, ask: Ask | None = None) -> StudyResult:
    """Run (or resume) the study described by ``config``; see the module docstring."""
    return Study(config, progress=progress, ask=ask).run()
