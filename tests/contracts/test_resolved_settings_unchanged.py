"""The settings the study, the demo and the CLI resolve are field for field what they were.

tests/data/settings/resolved-before-issue17.json was captured from the code before the stage
settings models moved into ``mixmag.region.settings`` / ``mixmag.mil.settings``: for each case,
the :class:`PretrainSettings` of every pretraining run, the settings ``train_methods`` works with,
and the estimator parameters in their config-hash order. The stage functions are replaced by
recorders, so nothing trains here. If a default changes on purpose, update the JSON with it.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

import mixmag.embed.engine as engine
import mixmag.mil.experiment as experiment
import mixmag.pipeline.heatmaps as study_heatmaps
import mixmag.pipeline.study as study_mod
import mixmag.region.pretrain as pretrain
import mixmag.tiling.tile as tile_mod
from mixmag.cli.app import build_app
from mixmag.config import PipelineConfig, load_config
from mixmag.embed.settings import EmbedSettings
from mixmag.errors import MixmagValueError
from mixmag.evaluate.settings import EvaluateSettings, cross_validation_fields
from mixmag.io.manifest import Status
from mixmag.mil.settings import PAPER_METHODS, MilSettings
from mixmag.pipeline.demo import DEMO_SIZES, demo_config
from mixmag.pipeline.study import Study, StudyResult
from mixmag.region.settings import PretrainSettings
from mixmag.report.settings import ReportSettings
from mixmag.tiling.inputs import TilingJob

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "settings" / "resolved-before-issue17.json")
                    .read_text(encoding="utf-8"))
REAL_TRAIN = experiment.train_methods
# MilSettings fields added after the capture, with the value that does what the code did then: at
# that value they are left out of the comparison (any other value still shows up as a difference)
ADDED_MIL_SETTINGS: dict[str, Any] = {"refit_all": False, "threads": None,
                                      # the endpoints (issue 19): classification, as every target was then
                                      "target_types": {}, "survival_columns": {}, "regression_loss": "mse",
                                      "survival_batch": 32, "risk_groups": 2}
# EmbedSettings fields added after the capture (the ray backend, issue 14), likewise
ADDED_EMBED_SETTINGS: dict[str, Any] = {"backend": "local", "ray_address": "auto", "ray_workers": None,
                                        "ray_gpus_per_worker": None, "ray_cpus_per_worker": None,
                                        "ray_max_retries": 2}


@pytest.fixture(autouse=True)
def _no_data_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paths here exist nowhere (the stages are recorders): the commands' data checks are off."""
    monkeypatch.setattr("mixmag.preflight.preflight", lambda config, **kw: [])


def _without_added(mil: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mil.items() if k not in ADDED_MIL_SETTINGS or v != ADDED_MIL_SETTINGS[k]}

TINY = {
    "slides": {"inputs": ["/c/slides"], "pretrain_inputs": ["/c/unlabeled"]},
    "tiling": {"thumbnail_px": 512},
    "embed": {"encoder": "tiny.d16", "random_weights": True, "batch_size": 16, "workers": 0},
    "region": {"preset": "tiny", "objectives": ["mem"], "steps": 3, "batch_size": 8,
               "checkpoint_every": 0, "num_workers": 0, "width": 64, "depth": 3},
    "mil": {"labels": "/c/labels.csv", "methods": ["abmil-20x", "mix-random", "mix-mem-cls"],
            "epochs": 2, "patience": 2, "hidden_dim": 16, "attention_dim": 8, "region_preset": "tiny",
            "device": "cpu", "precision": "fp32", "targets": ["y"], "checkpoints": {"cmem": "/ck/cmem"}},
    "evaluate": {"folds": 2, "bootstrap": 20, "splits": "/s.csv"},
}


# Run-time fields of any section added after the capture, at the value that does what the code did
# then (`threads` None: the usable cores; `confirm_above_minutes`: runs that short never stop)
ADDED_RUNTIME_SETTINGS: dict[str, Any] = {"threads": None, "confirm_above_minutes": 60.0}


def _norm(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        return {str(k): _norm(v, root) for k, v in value.items()
                if not (k in ADDED_RUNTIME_SETTINGS and v == ADDED_RUNTIME_SETTINGS[k])}
    if isinstance(value, (list, tuple)):
        return [_norm(v, root) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return value.replace(str(root), "<out>")
    return value


def _effective_train(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[list[Any]]]:
    """What ``train_methods`` works with, named as its keyword arguments were before."""
    bound = inspect.signature(REAL_TRAIN).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    options = dict(a["options"])  # the protocol keywords of the evaluation, the others of the MIL settings
    protocol = {k: options.pop(k) for k in cross_validation_fields(EvaluateSettings) if k in options}
    ev: EvaluateSettings = (a["evaluation"] or EvaluateSettings()).updated(**protocol)
    s: MilSettings = (a["settings"] or MilSettings()).updated(**options)
    values = _without_added(s.model_dump(mode="json", exclude={"labels"}))
    values.update(
        methods=list(s.methods or PAPER_METHODS), targets=list(s.targets) or None,
        checkpoints={k: str(v) for k, v in {**(a["pretrained"] or {}), **s.checkpoints}.items()},
        folds=ev.folds, val_frac=ev.val_frac, bootstrap=ev.bootstrap,
        splits=None if ev.splits is None else str(ev.splits), overwrite=a["overwrite"], progress=a["progress"])
    return values, [list(kv) for kv in s.estimator_params().items()]


def _study_case(config: PipelineConfig, root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    runs: dict[str, PretrainSettings] = {}
    trains: list[tuple[dict[str, Any], list[list[Any]]]] = []

    def fake_pretrain(features: Any, out: Path, *, settings: PretrainSettings, **options: Any) -> Any:
        s = settings.updated(**{k: v for k, v in options.items() if k not in ("resume", "progress", "ask")})
        runs[s.objective] = s
        return SimpleNamespace(checkpoint=Path(out) / "final", metrics_path=Path(out) / "m.jsonl", final_loss=None)

    def fake_train(*args: Any, **kwargs: Any) -> Any:
        trains.append(_effective_train(args, kwargs))
        return SimpleNamespace(skipped=[], runs=[1], targets=["label"])

    monkeypatch.setattr(pretrain, "pretrain_region_encoder", fake_pretrain)
    monkeypatch.setattr(experiment, "train_methods", fake_train)
    monkeypatch.setattr(Study, "pretrain_corpus", lambda self: ([], "note"))
    study = Study(config, progress=False)
    study.fps.update({"tile": "t", "embed": "e"})
    checkpoints = {o: study.pretrain(o).outputs["checkpoint"] for o in study.objectives()}
    if config.mil.labels is not None:
        study.train(checkpoints)
    case: dict[str, Any] = {"pretrain": {o: s.to_dict() for o, s in runs.items()},
                            "result_defining": {o: s.result_defining() for o, s in runs.items()}}
    if trains:
        case["train"], case["estimator_params"] = trains[0]
    return _norm(case, root)


def _configs(root: Path) -> dict[str, PipelineConfig]:
    configs = {f"demo-{name}": demo_config(root / f"demo-{name}" / "study", Path("/cohort"), size=size, user_slides=[])
               for name, size in DEMO_SIZES.items()}
    configs["defaults"] = PipelineConfig(out=root / "defaults", mil={"labels": "/l.csv"})
    configs["tiny"] = PipelineConfig.model_validate({"out": str(root / "tiny"), **TINY})
    return configs


@pytest.mark.parametrize("case", ["demo-full", "demo-quick", "defaults", "tiny"])
def test_study_resolves_the_same_settings(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _configs(tmp_path)[case]
    got = _study_case(config, tmp_path / case, monkeypatch)
    want = GOLDEN["study"][case]
    assert got["pretrain"] == want["pretrain"]
    assert got["result_defining"] == want["result_defining"]  # what a checkpoint must match to resume
    assert got.get("train") == want.get("train")
    assert got.get("estimator_params") == want.get("estimator_params")  # order included: the run config hash


# (golden key, arguments today). Options that lost their named flag are given with --set.
PRETRAIN_CLI = [
    ("pretrain-defaults", []),
    ("pretrain-config", ["--config", "{config}", "--objective", "cmem", "--steps", "2", "--lr", "0.001",
                         "--set", "region.width=32"]),
    ("pretrain-flags", ["--objective", "random", "--preset", "small", "--batch-size", "64", "--device", "cpu",
                        "--precision", "fp32", "--seed", "3", "--set", "region.num_workers=0",
                        "--set", "region.checkpoint_every=0"]),
]
TRAIN_CLI = [
    ("train-defaults", []),
    ("train-flags", ["--methods", "abmil-5x,abmil-20x", "--folds", "2", "--epochs", "1", "--bootstrap", "20",
                     "--device", "cpu", "--no-progress", "--lr", "0.001", "--batch-size", "4", "--mem-checkpoint",
                     "{tmp}/mem", "--set", "mil.region_preset=tiny", "--targets", "a", "--targets", "b",
                     "--set", "mil.standardize=false", "--set", "mil.freeze_encoder=true", "--seed", "7"]),
]


@pytest.mark.parametrize(("case", "args"), PRETRAIN_CLI)
def test_pretrain_cli_resolves_the_same_settings(case: str, args: list[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"region": TINY["region"]}), encoding="utf-8")
    got: dict[str, Any] = {}

    def fake(features: Any, out: Any, *, settings: PretrainSettings, **options: Any) -> Any:
        got["settings"] = settings.to_dict()
        return SimpleNamespace(final_loss=None, objective="x", steps=0, n_slides=0, n_regions=0, checkpoint="c",
                               metrics_path="m")

    monkeypatch.setattr(pretrain, "pretrain_region_encoder", fake)
    argv = [a.format(config=config, tmp=tmp_path) for a in args]
    res = CliRunner().invoke(build_app(), ["pretrain", str(tmp_path / "feats"), "--out", str(tmp_path / "o"), *argv])
    assert res.exit_code == 0, res.output
    assert _norm(got["settings"], tmp_path) == GOLDEN["cli"][case]


@pytest.mark.parametrize(("case", "args"), TRAIN_CLI)
def test_train_cli_resolves_the_same_settings(case: str, args: list[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    got: dict[str, Any] = {}

    def fake(*a: Any, **k: Any) -> Any:
        got["train"], _ = _effective_train(a, k)
        return SimpleNamespace(skipped=[], runs=[], targets=[])

    monkeypatch.setattr(experiment, "train_methods", fake)
    argv = [a.format(tmp=tmp_path) for a in args]
    res = CliRunner().invoke(build_app(), ["train", str(tmp_path / "feats"), "--labels", str(tmp_path / "l.csv"),
                                           "--out", str(tmp_path / "tout"), *argv])
    assert res.exit_code == 0, res.output
    assert _norm(got["train"], tmp_path) == GOLDEN["cli"][case]


# =================================================================== tiling, embedding, evaluation, report
# tests/data/settings/resolved-before-issue17-stages.json was captured from the code before the
# tiling, embedding, evaluation and report settings moved into their stage packages: what
# tile_slides builds (its run record, per-slide options and fingerprint), what embed_slides,
# train_methods and the heatmaps work with, the settings behind every stage fingerprint of the
# study, the defaults of the commands' options and of the whole config, and `mixmag config init`.
STAGES_GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "settings" / "resolved-before-issue17-stages.json")
                           .read_text(encoding="utf-8"))
REAL_EMBED = engine.embed_slides
REAL_HEATMAPS = study_heatmaps.write_study_heatmaps

# every tiling, embedding, evaluation and report setting off its default
STAGES = {
    "slides": {"inputs": ["/c/slides"], "pretrain_inputs": ["/c/unlabeled"], "mpp": 0.25, "mpp_csv": "/c/mpp.csv",
               "reader": "image"},
    "tiling": {"region_um": 224, "tile_px": 112, "magnifications": ["10x", "20x"], "min_tissue": 0.4,
               "valid_min_tissue": 0.2, "thumbnail_px": 512, "workers": 3},
    "embed": {"encoder": "tiny.d16", "weights": "/w/model.pt", "batch_size": 8, "precision": "fp16",
              "device": "cpu", "workers": 2},
    "region": {"preset": "tiny", "objectives": ["mem"]},
    "mil": {"labels": "/c/labels.csv", "methods": ["abmil-20x", "mix-mem"]},
    "evaluate": {"folds": 3, "val_frac": 0.3, "bootstrap": 10, "seed": 5, "splits": "/s.csv",
                 "region_labels": "/c/regions.csv"},
    "report": {"heatmap_slides": 2, "top_k": 7},
}


def _plain_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: getattr(v, "value", str(v))))


@pytest.fixture
def tile_probe(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The real ``tile_slides`` with its per-slide work, slide discovery and process pool recorded.

    Two slides are found; the first fails, so a run with ``fail_fast`` tiles one slide, else two.
    """
    seen: dict[str, Any] = {"collect": [], "options": [], "workers": [], "progress": []}

    def collect(inputs: Any, *, mpp_override: Any = None, mpp_table: Any = None, exclude: Any = None) -> Any:
        seen["collect"].append({"inputs": [str(i) for i in inputs], "mpp_override": mpp_override,
                                "mpp_table": mpp_table, "exclude": str(exclude)})
        return [TilingJob(Path("/c/s/a.svs"), "a", mpp_override), TilingJob(Path("/c/s/b.svs"), "b", mpp_override)]

    def one(job: TilingJob, options: Any, out_dir: Path, previous: Any = None) -> Any:
        seen["options"].append({**asdict(options), "fingerprint": options.fingerprint(job.mpp_override)})
        status = Status.ERROR if job.slide_id == "a" else Status.OK
        return tile_mod.SlideResult(job.slide_id, str(job.path), status, n_regions=1, error="x" * (status == Status.ERROR))

    @contextlib.contextmanager
    def executor(workers: int) -> Any:
        seen["workers"].append(workers)
        yield None

    class Bar:
        def __init__(self, *a: Any, disable: bool = False, **k: Any) -> None:
            seen["progress"].append(not disable)

        def update(self, n: int) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr(tile_mod, "collect_slides", collect)
    monkeypatch.setattr(tile_mod, "tile_one_slide", one)
    monkeypatch.setattr(tile_mod, "_executor", executor)
    monkeypatch.setattr(tile_mod, "tqdm", Bar)
    monkeypatch.setattr(tile_mod, "read_mpp_csv", lambda path: {"read from": str(path)})
    monkeypatch.setattr(tile_mod, "_environment", lambda: {})
    # a machine with cores to spare: the worker count is the setting's, not capped by this machine
    from mixmag.utils.cpus import CpuBudget

    monkeypatch.setattr(tile_mod, "usable_cpus", lambda: CpuBudget(n=64, source="test", cores=64, machine=64))
    return seen


def _tile_record(seen: dict[str, Any], out: Path) -> dict[str, Any]:
    run = json.loads((out / "tile_run.json").read_text(encoding="utf-8"))
    run.pop("environment")
    run.pop("cpu_budget")  # the machine's usable cores, recorded since: not a setting
    return {"tile_run": run, "collect": seen["collect"], "options": seen["options"], "workers": seen["workers"],
            "progress": seen["progress"], "slides_tiled": len(seen["options"])}


def _effective_embed(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """What ``embed_slides`` works with, named as its keyword arguments were before."""
    bound = inspect.signature(REAL_EMBED).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    options = dict(a["options"])
    if a["encoder"] is not None:  # a registry key (a built encoder is used as given)
        options["encoder"] = a["encoder"]
    s: EmbedSettings = (a["settings"] or EmbedSettings()).updated(**options)
    dumped = {k: v for k, v in s.model_dump(mode="json").items()
              if k not in ADDED_EMBED_SETTINGS or v != ADDED_EMBED_SETTINGS[k]}
    values = {**dumped, **{k: a[k] for k in ("decode_threads", "shard", "overwrite", "fail_fast",
                                             "progress", "stale_after_s")}}
    # plan_decoding reads workers as int(workers): the string "2" and the number 2 are one setting
    values["workers"] = values["workers"] if values["workers"] == "auto" else int(values["workers"])
    values.update(region_dir=str(a["region_dir"]), out_dir=str(a["out_dir"]), open_tiles=a["open_tiles"].__name__)
    return _plain_json(values)


def _effective_heatmaps(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the study's heatmaps are drawn with (the thumbnail size was a module constant)."""
    bound = inspect.signature(REAL_HEATMAPS).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    s: ReportSettings = a["settings"] or ReportSettings()
    return _plain_json({"mil_dir": a["mil_dir"], "features_dir": a["features_dir"], "out_dir": a["out_dir"],
                        "n_slides": s.heatmap_slides, "top_k": s.top_k, "thumbnail_px": s.thumbnail_px})


def _stages_case(config: PipelineConfig, root: Path, monkeypatch: pytest.MonkeyPatch,
                 tile_probe: dict[str, Any]) -> dict[str, Any]:
    """Every stage of the study run with recorders: what each engine gets and what each fingerprint hashes."""
    case: dict[str, Any] = {"fingerprint_settings": {}}
    real_fp = Study._fp

    def fp(self: Study, name: str, settings: dict[str, Any], upstream: list[str]) -> str:
        case["fingerprint_settings"][name] = _plain_json(settings)
        return real_fp(self, name, settings, upstream)

    def fake_embed(*args: Any, **kwargs: Any) -> Any:
        case["embed"] = _effective_embed(args, kwargs)
        study.features_dir.mkdir(parents=True, exist_ok=True)
        (study.features_dir / "a.h5").touch()
        return SimpleNamespace()

    def fake_pretrain(features: Any, out: Path, **kw: Any) -> Any:
        return SimpleNamespace(checkpoint=Path(out) / "final", metrics_path=Path(out) / "m.jsonl", final_loss=None)

    def fake_train(*args: Any, **kwargs: Any) -> Any:
        case["train"], _ = _effective_train(args, kwargs)
        return SimpleNamespace(skipped=[], runs=[1], targets=["label"])

    def fake_heatmaps(*args: Any, **kwargs: Any) -> list[Path]:
        case["heatmaps"] = _effective_heatmaps(args, kwargs)
        return []

    def fake_plan(out: Path, objectives: list[str], **kw: Any) -> Any:
        case["diagnose_plan"] = _plain_json({"objectives": objectives, **{k: v for k, v in kw.items()
                                                                          if k != "comparison"}})
        return SimpleNamespace(empty=False, checkpoints=list(objectives), slide_label_column="label",
                               settings=lambda: {"plan": "p"})

    def fake_run_plan(plan: Any, features: Path, out: Path, *, seed: int) -> dict[str, Any]:
        case["diagnose_seed"] = seed
        return {}

    monkeypatch.setattr(Study, "_fp", fp)
    monkeypatch.setattr(engine, "embed_slides", fake_embed)
    monkeypatch.setattr(pretrain, "pretrain_region_encoder", fake_pretrain)
    monkeypatch.setattr(experiment, "train_methods", fake_train)
    monkeypatch.setattr(study_heatmaps, "write_study_heatmaps", fake_heatmaps)
    monkeypatch.setattr(study_mod, "plan_diagnostics", fake_plan)
    monkeypatch.setattr(study_mod, "run_plan", fake_run_plan)
    monkeypatch.setattr(Study, "pretrain_corpus", lambda self: ([], "note"))
    study = Study(config, progress=False)
    result = StudyResult(run_dir=study.out)
    if [*config.slides.inputs, *config.slides.pretrain_inputs]:
        study.tile()
        case["tile"] = _tile_record(tile_probe, study.out / "tiles")
    else:
        with pytest.raises(MixmagValueError, match="slides.inputs is empty"):
            study.tile()
        study.fps["tile"] = "t"
    study.embed()
    checkpoints = {o: study.pretrain(o).outputs["checkpoint"] for o in study.objectives()}
    if config.mil.labels is not None:
        result.stages["train"] = study.train(checkpoints)
        study.fps["compare"] = "c"
        result.comparison = pd.DataFrame({"target": ["label"], "method": ["mix-mem"], "mean_auroc": [0.5]})
        if config.report.heatmap_slides:
            study.heatmaps(result.comparison)
    study.diagnose(list(checkpoints), result)
    return _norm(case, root)


def _stage_configs(root: Path) -> dict[str, PipelineConfig]:
    configs = _configs(root)
    configs["stages"] = PipelineConfig.model_validate({"out": str(root / "stages"), **STAGES})
    return configs


@pytest.mark.parametrize("case", ["demo-full", "demo-quick", "defaults", "tiny", "stages"])
def test_study_resolves_the_same_stage_settings(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                tile_probe: dict[str, Any]) -> None:
    config = _stage_configs(tmp_path)[case]
    got = _stages_case(config, tmp_path / case, monkeypatch, tile_probe)
    want = STAGES_GOLDEN["study"][case]
    for key in ("tile", "embed", "train", "heatmaps", "diagnose_plan", "diagnose_seed"):
        assert got.get(key) == want.get(key), key
    # what each stage fingerprint hashes: equal settings keep every finished stage of a run reusable
    fps = dict(got["fingerprint_settings"])
    train = fps.pop("train")
    # the one deliberate change: the train stage hashes mil and evaluate as two sections; the flat
    # merge it hashed before let evaluate.seed hide mil.seed (a new mil.seed did not rerun training)
    assert set(train) == {"mil", "evaluate"}
    # and the second: of evaluate, only the cross-validation protocol that training reads is hashed,
    # so the diagnostics stage's seed, region labels and switch never invalidate trained models
    assert train["evaluate"] == {k: want["fingerprint_settings"]["train"][k]
                                 for k in cross_validation_fields(EvaluateSettings)}
    flat = want["fingerprint_settings"]["train"]
    assert {k: v for k, v in _without_added(train["mil"]).items() if k != "seed"} == {
        k: v for k, v in flat.items() if k not in EvaluateSettings.model_fields}
    assert "seed" in train["mil"] and "seed" not in train["evaluate"]
    assert fps == {k: v for k, v in want["fingerprint_settings"].items() if k != "train"}


# (golden key, arguments today). Options that lost their named flag are given with --set.
TILE_CLI = [
    ("tile-defaults", []),
    ("tile-flags", ["--mpp", "0.5", "--mpp-csv", "/c/mpp.csv", "--magnifications", "10x,20x", "--region-um", "224",
                    "--tile-px", "112", "--min-tissue", "0.5", "--set", "tiling.valid_min_tissue=0.2", "--reader",
                    "image", "--set", "tiling.thumbnail_px=512", "--workers", "2", "--overwrite", "--fail-fast",
                    "--no-progress"]),
]
EMBED_CLI = [
    ("embed-defaults", []),
    ("embed-flags", ["--encoder", "tiny.d16", "--weights", "/w/model.pt", "--random-weights", "--batch-size", "8",
                     "--precision", "fp32", "--device", "cpu", "--workers", "2", "--shard", "1/4", "--overwrite",
                     "--fail-fast", "--no-progress"]),
]
EVALUATE_TRAIN_CLI = [
    ("train-evaluate-config", ["--config", "{config}", "--bootstrap", "7"]),
]


@pytest.mark.parametrize(("case", "args"), TILE_CLI)
def test_tile_cli_resolves_the_same_settings(case: str, args: list[str], tmp_path: Path,
                                             tile_probe: dict[str, Any]) -> None:
    out = tmp_path / "tout"
    res = CliRunner().invoke(build_app(), ["tile", "/c/slides", "--out", str(out), *args])
    # the probe fails one of two slides: exit 3 (EXIT_PARTIAL), or 1 when --fail-fast stops the batch
    assert res.exit_code == (1 if "--fail-fast" in args else 3), res.output
    assert _norm(_tile_record(tile_probe, out), tmp_path) == STAGES_GOLDEN["cli"][case]


@pytest.mark.parametrize(("case", "args"), EMBED_CLI)
def test_embed_cli_resolves_the_same_settings(case: str, args: list[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    got: dict[str, Any] = {}

    def fake(*a: Any, **k: Any) -> Any:
        got["embed"] = _effective_embed(a, k)
        return SimpleNamespace(ok=[], skipped=[], claimed_elsewhere=[], errors={}, n_tiles=0, tiles_per_s=0.0,
                               precision="fp32", manifest="m", workers=[])

    monkeypatch.setattr("mixmag.embed.embed_slides", fake)
    res = CliRunner().invoke(build_app(), ["embed", str(tmp_path / "tiles"), "--out", str(tmp_path / "f"), *args])
    assert res.exit_code == 0, res.output
    assert _norm(got["embed"], tmp_path) == STAGES_GOLDEN["cli"][case]


@pytest.mark.parametrize(("case", "args"), EVALUATE_TRAIN_CLI)
def test_train_cli_resolves_the_same_evaluation(case: str, args: list[str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"mil": {"epochs": 2}, "evaluate": STAGES["evaluate"]}), encoding="utf-8")
    got: dict[str, Any] = {}

    def fake(*a: Any, **k: Any) -> Any:
        got["train"], _ = _effective_train(a, k)
        return SimpleNamespace(skipped=[], runs=[], targets=[])

    monkeypatch.setattr(experiment, "train_methods", fake)
    argv = [a.format(config=config) for a in args]
    res = CliRunner().invoke(build_app(), ["train", str(tmp_path / "feats"), "--labels", str(tmp_path / "l.csv"),
                                           "--out", str(tmp_path / "tout"), *argv])
    assert res.exit_code == 0, res.output
    assert _norm(got["train"], tmp_path) == STAGES_GOLDEN["cli"][case]


def _option_defaults(command: str) -> dict[str, Any]:
    group = typer.main.get_command(build_app())
    return _plain_json({p.name: p.default for p in group.commands[command].params})  # type: ignore[attr-defined]


# an option that was dropped is a config key now: its default must be that key's default
DROPPED_OPTIONS: dict[tuple[str, str], str] = {("tile", "valid_min_tissue"): "tiling.valid_min_tissue",
                                               ("tile", "thumbnail_px"): "tiling.thumbnail_px"}
# deliberate changes: `mixmag heatmap --thumbnail-px` drew 1600-px thumbnails where the study's
# heatmaps (report.thumbnail_px) drew 1024; it now takes the report setting's default
CHANGED_DEFAULTS: dict[tuple[str, str], str] = {("heatmap", "thumbnail_px"): "report.thumbnail_px"}


@pytest.mark.parametrize("command", ["tile", "embed", "train", "report", "heatmap"])
def test_command_option_defaults_are_unchanged(command: str) -> None:
    now = _option_defaults(command)
    defaults = PipelineConfig().model_dump(mode="json")
    for name, default in STAGES_GOLDEN["option_defaults"][command].items():
        if (command, name) in CHANGED_DEFAULTS:
            section, key = CHANGED_DEFAULTS[(command, name)].split(".")
            assert now[name] == defaults[section][key] != default, (command, name)
        elif name in now:
            # a comma-separated text option became a list option that also splits at commas
            value = ",".join(now[name]) if isinstance(now[name], list) and isinstance(default, str) else now[name]
            assert value == default, (command, name)
        else:
            section, key = DROPPED_OPTIONS[(command, name)].split(".")
            assert defaults[section][key] == default, (command, name)


def test_config_defaults_and_the_old_template_are_unchanged(tmp_path: Path) -> None:
    want = STAGES_GOLDEN["config_defaults"]
    got = PipelineConfig().model_dump(mode="json")
    # keys added since may only be new: every old key keeps its default
    assert {s: {k: v for k, v in got[s].items() if k in want[s]} if isinstance(got[s], dict) else got[s]
            for s in want} == want
    old = tmp_path / "old-template.yaml"
    old.write_text(STAGES_GOLDEN["config_template"], encoding="utf-8")
    assert load_config(old) == PipelineConfig()  # a template written before loads with the same meaning
