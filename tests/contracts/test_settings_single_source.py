"""Each setting of a stage is declared once, in the stage's model, and reaches the stage from everywhere.

Walks every field of the stage settings models (:class:`~mixmag.tiling.settings.TilingSettings`,
:class:`~mixmag.embed.settings.EmbedSettings`, :class:`~mixmag.region.settings.PretrainSettings`,
:class:`~mixmag.mil.settings.MilSettings`, :class:`~mixmag.evaluate.settings.EvaluateSettings`,
:class:`~mixmag.report.settings.ReportSettings`): each must reach the stage function from a study
YAML (through ``mixmag run``'s study) and from the stage's command (``--set section.key=value``,
and a named option, where there is one, must default to the model's default). The engine-level
signatures (``tile_slides``, ``embed_slides``, ``MILClassifier``, ``TrainParams``,
``train_methods``, ``pretrain_region_encoder``, the study heatmaps) may not declare a setting the
model does not have. A setting added in one place only fails here.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import fields
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import typer
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

import mixmag.embed.engine as engine
import mixmag.mil.experiment as experiment
import mixmag.pipeline.heatmaps as study_heatmaps
import mixmag.pipeline.study as study_mod
import mixmag.region.pretrain as pretrain
import mixmag.report.build as report_build
import mixmag.tiling.tile as tile_mod
from mixmag.cli.app import build_app
from mixmag.config import ExternalConfig, PipelineConfig, SlidesConfig, load_config
from mixmag.embed.settings import EmbedSettings
from mixmag.evaluate.settings import EvaluateSettings, cross_validation_fields
from mixmag.mil.estimator import ENDPOINT_PARAMS, MILClassifier
from mixmag.mil.settings import MilSettings, estimator_fields
from mixmag.mil.train import TrainParams
from mixmag.pipeline.study import Study, StudyResult
from mixmag.region.settings import PretrainOptions, PretrainSettings, RegionSettings
from mixmag.report.settings import ReportSettings
from mixmag.tiling.settings import TilingSettings
from mixmag.utils.settings import field_default

# Values for string fields that only accept some words; any other field gets a generic sample.
SAMPLES: dict[str, list[Any]] = {
    "objective": ["cmem"], "preset": ["small"], "position": ["sincos"], "loss": ["cosine"], "device": ["cpu"],
    "bag_level": ["slide"], "region_preset": ["tiny"], "precision": ["fp32"], "methods": [["abmil-5x", "mix-mem"]],
    # a region geometry that tiles (the study builds it when it starts)
    "region_um": [224.0], "tile_px": [112], "magnifications": [["10x", "20x"]], "workers": [2],
    "encoder": ["tiny.d16"], "reader": ["tiffslide"], "ray_address": ["10.0.0.1:6379"],
    # the endpoint settings (docs/concepts/endpoints.md)
    "target_types": [{"label": "regression"}], "survival_columns": [{"os": ["os_months", "os_status"]}],
    "regression_loss": ["huber"], "risk_groups": [3],
}


def _generic(annotation: Any, default: Any) -> list[Any]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    origin = typing.get_origin(annotation) or annotation
    if origin is bool:
        return [not default]
    if origin is int:
        return [(default or 0) + 3, 16]
    if origin is float:
        return [0.3, 0.7, 2.5]
    if origin is tuple:
        return [(0.8, 0.9)]
    if origin is list:
        return [["mem"], ["sample"]]
    if origin is dict:
        return [{"mem": "/sample/checkpoint"}]
    if isinstance(origin, type) and issubclass(origin, Enum):
        return [m.value for m in origin]
    if origin is Path:
        return ["/sample/file.csv"]
    return ["sample"]


def sample(model: type[BaseModel], name: str) -> Any:
    """A valid value of ``model.name`` other than its default (as the validated model holds it)."""
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    for candidate in [*SAMPLES.get(name, []), *_generic(field.annotation, default)]:
        try:
            value = getattr(model.model_validate({name: candidate}), name)
        except (ValueError, KeyError):
            continue
        if value != default:
            return value
    pytest.fail(f"no valid non-default sample for {model.__name__}.{name}: add one to SAMPLES")


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.value if isinstance(value, Enum) else value


def _set_items(section: str, values: dict[str, Any]) -> list[str]:
    items = []
    for name, value in values.items():
        text = yaml.safe_dump(_plain(value), default_flow_style=True).strip().removesuffix("...").strip()
        items += ["--set", f"{section}.{name}={text}"]
    return items


def _samples(model: type[BaseModel]) -> dict[str, Any]:
    return {name: sample(model, name) for name in model.model_fields}


PRETRAIN_SAMPLES = _samples(PretrainSettings)
MIL_SAMPLES = _samples(MilSettings)
TILING_SAMPLES = _samples(TilingSettings)
SLIDES_SAMPLES = _samples(SlidesConfig)
EMBED_SAMPLES = _samples(EmbedSettings)
EVALUATE_SAMPLES = _samples(EvaluateSettings)
REPORT_SAMPLES = _samples(ReportSettings)
CROSS_VALIDATION = cross_validation_fields(EvaluateSettings)


def _assert_reached(got: BaseModel, want: dict[str, Any], where: str) -> None:
    missed = {k: (getattr(got, k), v) for k, v in want.items() if getattr(got, k) != v}
    assert not missed, f"settings that did not reach the stage from {where} (got, wanted): {missed}"


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the stage functions by recorders of the settings they are given."""
    seen: dict[str, Any] = {}

    def fake_tile(inputs: Any, out: Any, *, settings: TilingSettings, **kw: Any) -> Any:
        seen["tile"] = settings
        seen["tile_inputs"] = [Path(p) for p in inputs]
        seen["tile_slides"] = {k: kw[k] for k in ("mpp_override", "mpp_csv", "reader")}
        return SimpleNamespace(all_failed=False, stopped_early=False, manifest_path=Path(out) / "m.csv",
                               n_regions=0, n_inputs=0, n_warned=0, results=[], count=lambda status: 0,
                               workers=[])

    def fake_embed(region_dir: Any, out: Any, *, settings: EmbedSettings, **kw: Any) -> Any:
        seen["embed"] = settings
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "s.h5").touch()
        return SimpleNamespace(ok=[], skipped=[], claimed_elsewhere=[], errors={}, n_tiles=0, tiles_per_s=0.0,
                               precision="fp32", manifest="m", workers=[])

    def fake_heatmaps(*args: Any, settings: ReportSettings, **kw: Any) -> list[Path]:
        seen["report"] = settings
        return []

    def fake_redraw(run_dir: Path, settings: ReportSettings) -> list[Path]:
        seen["report"] = settings
        (Path(run_dir) / "config.resolved.yaml").write_text("out: .\n")  # a run folder the report can show
        return []

    def fake_plan(out: Path, objectives: list[str], **kw: Any) -> Any:
        seen["diagnose_plan"] = kw
        return SimpleNamespace(empty=False, checkpoints=list(objectives), slide_label_column=None,
                               settings=lambda: {})

    def fake_run_plan(plan: Any, features: Path, out: Path, *, seed: int) -> dict[str, Any]:
        seen["diagnose_seed"] = seed
        return {}

    def fake_pretrain(features: Any, out: Any, *, settings: PretrainSettings, **kw: Any) -> Any:
        seen.setdefault("pretrain", []).append(settings)
        return SimpleNamespace(checkpoint=Path(out) / "final", metrics_path=Path(out) / "m.jsonl", final_loss=None,
                               objective="x", steps=0, n_slides=0, n_regions=0)

    def fake_train(features: Any, labels: Any, out: Any, *, settings: MilSettings, evaluation: EvaluateSettings,
                   **kw: Any) -> Any:
        seen["train"] = settings
        seen["train_evaluation"] = evaluation
        seen["train_labels"] = labels
        table = pd.DataFrame(columns=["target", "method", "mean_auroc", "sd_auroc", "ci_lo", "ci_hi"])
        return SimpleNamespace(skipped=[], runs=[1], targets=["label"], table=lambda: table)

    # the paths here are samples that exist nowhere: the commands' data checks (preflight) are off
    monkeypatch.setattr("mixmag.preflight.preflight", lambda config, **kw: [])
    monkeypatch.setattr(tile_mod, "tile_slides", fake_tile)
    monkeypatch.setattr(engine, "embed_slides", fake_embed)
    monkeypatch.setattr("mixmag.embed.embed_slides", fake_embed)
    monkeypatch.setattr(pretrain, "pretrain_region_encoder", fake_pretrain)
    monkeypatch.setattr(experiment, "train_methods", fake_train)
    monkeypatch.setattr(study_heatmaps, "write_study_heatmaps", fake_heatmaps)
    monkeypatch.setattr(study_heatmaps, "redraw_run_heatmaps", fake_redraw)
    monkeypatch.setattr(report_build, "build_report_from_inputs", lambda spec, out: "report.html")
    monkeypatch.setattr(study_mod, "plan_diagnostics", fake_plan)
    monkeypatch.setattr(study_mod, "run_plan", fake_run_plan)
    monkeypatch.setattr(Study, "pretrain_corpus", lambda self: ([], "note"))
    return seen


# --------------------------------------------------------------------------- from a study YAML
def test_every_setting_reaches_both_stages_from_a_study_yaml(tmp_path: Path, recorded: dict[str, Any]) -> None:
    options = {k: v for k, v in PRETRAIN_SAMPLES.items() if k != "objective"}
    # a run's objective comes from the section's list of objectives
    region = {**options, "objectives": [PRETRAIN_SAMPLES["objective"]]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "run"), "region": _plain(region),
                                    "mil": _plain(MIL_SAMPLES)}), encoding="utf-8")
    study = Study(load_config(path), progress=False)
    study.fps.update({"tile": "t", "embed": "e"})
    study.pretrain(PRETRAIN_SAMPLES["objective"])
    study.train({})
    _assert_reached(recorded["pretrain"][0], PRETRAIN_SAMPLES, "the region section")
    _assert_reached(recorded["train"], MIL_SAMPLES, "the mil section")
    assert recorded["train_labels"] == MIL_SAMPLES["labels"]


def test_every_tiling_embedding_evaluation_and_report_setting_reaches_its_stage_from_a_study_yaml(
        tmp_path: Path, recorded: dict[str, Any]) -> None:
    path = tmp_path / "study.yaml"
    evaluate = {**EVALUATE_SAMPLES, "diagnostics": True}  # false skips the stage that reads the others
    path.write_text(yaml.safe_dump({
        "out": str(tmp_path / "run"), "slides": _plain(SLIDES_SAMPLES), "tiling": _plain(TILING_SAMPLES),
        "embed": _plain(EMBED_SAMPLES), "mil": {"labels": "/l.csv"}, "evaluate": _plain(evaluate),
        "report": _plain(REPORT_SAMPLES)}), encoding="utf-8")
    study = Study(load_config(path), progress=False)
    study.tile()
    study.embed()
    result = StudyResult(run_dir=study.out)
    result.stages["train"] = study.train({})
    study.fps.update({"compare": "c", "pretrain-mem": "m"})
    study.heatmaps(pd.DataFrame())
    study.diagnose(["mem"], result)
    _assert_reached(recorded["tile"], TILING_SAMPLES, "the tiling section")
    assert recorded["tile_inputs"] == [*SLIDES_SAMPLES["inputs"], *SLIDES_SAMPLES["pretrain_inputs"]]
    assert recorded["tile_slides"] == {"mpp_override": SLIDES_SAMPLES["mpp"], "mpp_csv": SLIDES_SAMPLES["mpp_csv"],
                                       "reader": SLIDES_SAMPLES["reader"]}
    _assert_reached(recorded["embed"], EMBED_SAMPLES, "the embed section")
    _assert_reached(recorded["train_evaluation"], {k: EVALUATE_SAMPLES[k] for k in CROSS_VALIDATION},
                    "the evaluate section (training)")
    assert recorded["diagnose_plan"]["region_labels"] == EVALUATE_SAMPLES["region_labels"]
    assert recorded["diagnose_seed"] == EVALUATE_SAMPLES["seed"]
    _assert_reached(recorded["report"], REPORT_SAMPLES, "the report section")
    assert set(EvaluateSettings.model_fields) == {*CROSS_VALIDATION, "seed", "region_labels", "diagnostics"}
    study.config.evaluate.diagnostics = False
    assert study.diagnose(["mem"], result) is None


def test_the_region_section_is_the_run_settings_plus_study_keys() -> None:
    run_only = set(PretrainSettings.model_fields) - set(RegionSettings.model_fields)
    assert run_only == {"objective"}  # chosen per run from `region.objectives`
    # plus how `mixmag run` launches each run (tests/integration/test_study_torchrun.py)
    assert set(RegionSettings.model_fields) - set(PretrainOptions.model_fields) == {
        "objectives", "pretrain_on", "nproc_per_node", "nnodes", "rdzv_endpoint"}
    assert PipelineConfig.model_fields["region"].annotation is RegionSettings
    assert PipelineConfig.model_fields["mil"].annotation is MilSettings


def test_the_root_config_composes_the_stage_models() -> None:
    sections = {name: field.annotation for name, field in PipelineConfig.model_fields.items() if name != "out"}
    assert sections == {"slides": SlidesConfig, "tiling": TilingSettings, "embed": EmbedSettings,
                        "region": RegionSettings, "mil": MilSettings, "evaluate": EvaluateSettings,
                        "report": ReportSettings, "external": ExternalConfig}


# ------------------------------------------------------------------------------- from the CLI
def _invoke(args: list[str]) -> None:
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output


def test_every_pretraining_setting_reaches_the_stage_with_set(tmp_path: Path, recorded: dict[str, Any]) -> None:
    options = {k: v for k, v in PRETRAIN_SAMPLES.items() if k != "objective"}
    _invoke(["pretrain", str(tmp_path / "f"), "--out", str(tmp_path / "o"),
             "--objective", PRETRAIN_SAMPLES["objective"], *_set_items("region", options)])
    _assert_reached(recorded["pretrain"][0], PRETRAIN_SAMPLES, "`mixmag pretrain --set region.*`")


def test_every_mil_setting_reaches_the_stage_with_set(tmp_path: Path, recorded: dict[str, Any]) -> None:
    cross_validation = {k: EVALUATE_SAMPLES[k] for k in CROSS_VALIDATION}
    _invoke(["train", str(tmp_path / "f"), "--out", str(tmp_path / "o"), *_set_items("mil", MIL_SAMPLES),
             *_set_items("evaluate", cross_validation)])
    _assert_reached(recorded["train"], MIL_SAMPLES, "`mixmag train --set mil.*`")
    _assert_reached(recorded["train_evaluation"], cross_validation, "`mixmag train --set evaluate.*`")


def test_every_tiling_setting_reaches_the_stage_with_set(tmp_path: Path, recorded: dict[str, Any]) -> None:
    _invoke(["tile", "--out", str(tmp_path / "o"), *_set_items("tiling", TILING_SAMPLES),
             *_set_items("slides", SLIDES_SAMPLES)])  # no INPUTS: the config's slides
    _assert_reached(recorded["tile"], TILING_SAMPLES, "`mixmag tile --set tiling.*`")
    assert recorded["tile_inputs"] == [*SLIDES_SAMPLES["inputs"], *SLIDES_SAMPLES["pretrain_inputs"]]
    assert recorded["tile_slides"] == {"mpp_override": SLIDES_SAMPLES["mpp"], "mpp_csv": SLIDES_SAMPLES["mpp_csv"],
                                       "reader": SLIDES_SAMPLES["reader"]}
    _invoke(["tile", "a.svs", "--out", str(tmp_path / "o"), *_set_items("slides", SLIDES_SAMPLES)])
    assert recorded["tile_inputs"] == [Path("a.svs")]  # INPUTS replace the config's slides


def test_every_embedding_setting_reaches_the_stage_with_set(tmp_path: Path, recorded: dict[str, Any]) -> None:
    _invoke(["embed", str(tmp_path / "t"), "--out", str(tmp_path / "o"), *_set_items("embed", EMBED_SAMPLES)])
    _assert_reached(recorded["embed"], EMBED_SAMPLES, "`mixmag embed --set embed.*`")


def test_every_report_setting_reaches_the_heatmaps_with_set(tmp_path: Path, recorded: dict[str, Any]) -> None:
    _invoke(["report", str(tmp_path), *_set_items("report", REPORT_SAMPLES)])
    _assert_reached(recorded["report"], REPORT_SAMPLES, "`mixmag report --set report.*`")
    recorded.pop("report")
    _invoke(["report", str(tmp_path)])
    assert "report" not in recorded  # without report settings the run's own heatmaps are shown


# command -> (sections its named options map to, in priority order; options that are not settings)
COMMANDS: dict[str, tuple[list[type[BaseModel]], set[str]]] = {
    "tile": ([TilingSettings, SlidesConfig], {"out", "config", "overrides", "overwrite", "fail_fast", "no_progress"}),
    "embed": ([EmbedSettings], {"out", "config", "overrides", "shard", "overwrite", "fail_fast", "progress"}),
    "pretrain": ([PretrainSettings, RegionSettings], {"out", "config", "overrides", "resume", "progress", "yes"}),
    "train": ([MilSettings, EvaluateSettings], {"out", "config", "overrides", "mem_checkpoint", "cmem_checkpoint",
                                                "random_checkpoint", "overwrite", "progress",
                                                # NAME=VALUE items of the dict settings target_types/survival_columns
                                                "target_type_items", "survival_column_items"}),
    "report": ([ReportSettings], {"inputs", "out", "config", "overrides"}),
}


def _params(command: str) -> dict[str, Any]:
    """The options of ``mixmag COMMAND`` (its positional arguments are inputs, never settings)."""
    group = typer.main.get_command(build_app())
    return {p.name: p for p in group.commands[command].params  # type: ignore[attr-defined]
            if p.param_type_name == "option"}


def _argv(params: dict[str, Any], samples: dict[str, Any]) -> list[str]:
    """Each named option of ``params`` that is a key of ``samples``, given its sample on the command line."""
    argv: list[str] = []
    for name, param in params.items():
        if name not in samples:
            continue
        value, option = _plain(samples[name]), max(param.opts, key=len)
        if isinstance(value, bool):
            argv += [option] if value else []
        else:
            argv += [option, ",".join(value) if isinstance(value, list) else str(value)]
    return argv


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_named_options_are_model_fields_with_the_model_default(command: str) -> None:
    models, other = COMMANDS[command]
    for name, param in _params(command).items():
        owner = next((m for m in models if name in m.model_fields), None)
        if owner is None:
            assert name in other, (f"`mixmag {command}` option {name!r} is not a field of "
                                   f"{[m.__name__ for m in models]}: declare the setting in the model")
            continue
        assert _plain(param.default) == _plain(field_default(owner, name)), (command, name)
        assert param.help, (command, name)


def _named(command: str, model: type[BaseModel]) -> list[str]:
    """The named options of ``mixmag COMMAND`` that set a field of ``model`` (the first section's, see given_settings)."""
    models = COMMANDS[command][0]
    return [n for n in _params(command) if next((m for m in models if n in m.model_fields), None) is model]


def test_named_options_reach_the_stage(tmp_path: Path, recorded: dict[str, Any]) -> None:
    named = _named("pretrain", PretrainSettings) + _named("pretrain", RegionSettings)
    _invoke(["pretrain", str(tmp_path / "f"), "--out", str(tmp_path / "o"),
             *_argv(_params("pretrain"), PRETRAIN_SAMPLES)])
    _assert_reached(recorded["pretrain"][0], {n: PRETRAIN_SAMPLES[n] for n in named}, "named options")

    _invoke(["train", str(tmp_path / "f"), "--out", str(tmp_path / "o"),
             *_argv(_params("train"), {**EVALUATE_SAMPLES, **MIL_SAMPLES})])
    _assert_reached(recorded["train"], {n: MIL_SAMPLES[n] for n in _named("train", MilSettings)}, "named options")
    _assert_reached(recorded["train_evaluation"], {n: EVALUATE_SAMPLES[n] for n in _named("train", EvaluateSettings)},
                    "named options")

    _invoke(["tile", "a.svs", "--out", str(tmp_path / "o"),
             *_argv(_params("tile"), {**SLIDES_SAMPLES, **TILING_SAMPLES})])
    _assert_reached(recorded["tile"], {n: TILING_SAMPLES[n] for n in _named("tile", TilingSettings)}, "named options")
    slides = {"mpp_override": "mpp", "mpp_csv": "mpp_csv", "reader": "reader"}
    assert set(slides.values()) == set(_named("tile", SlidesConfig))
    assert recorded["tile_slides"] == {k: SLIDES_SAMPLES[v] for k, v in slides.items()}

    _invoke(["embed", str(tmp_path / "t"), "--out", str(tmp_path / "o"), *_argv(_params("embed"), EMBED_SAMPLES)])
    _assert_reached(recorded["embed"], {n: EMBED_SAMPLES[n] for n in _named("embed", EmbedSettings)}, "named options")

    _invoke(["report", str(tmp_path), *_argv(_params("report"), REPORT_SAMPLES)])
    _assert_reached(recorded["report"], {n: REPORT_SAMPLES[n] for n in _named("report", ReportSettings)},
                    "named options")


# ------------------------------------------------------------------ engine-level signatures
def test_estimator_and_engine_parameters_come_from_the_model() -> None:
    model_defaults = {name: field_default(MilSettings, name) for name in MilSettings.model_fields}
    # per-call or estimator-only parameters of MILClassifier (not study settings)
    call_only = {"method", "encoder", "classes", "balanced", "device", "seed", "progress", "threads"}
    clf = inspect.signature(MILClassifier.__init__).parameters
    # the endpoint parameters: set per target (not ESTIMATOR fields, so classification runs keep their hash)
    for name in ENDPOINT_PARAMS:
        if name in model_defaults:
            assert _plain(clf[name].default) == _plain(model_defaults[name]), name
    hyper = [n for n in clf if n not in call_only | set(ENDPOINT_PARAMS) and n != "self"]
    assert hyper == list(estimator_fields(MilSettings)), "MILClassifier and MilSettings' ESTIMATOR fields differ"
    for name in hyper:
        assert _plain(clf[name].default) == _plain(model_defaults[name]), name
    for f in fields(TrainParams):
        if f.name not in ("balanced", "endpoint"):  # per call; the endpoint is the target's
            assert f.name in MilSettings.model_fields, f"TrainParams.{f.name} is not a MilSettings field"
            assert _plain(f.default) == _plain(model_defaults[f.name]), f.name


def test_stage_functions_take_settings_not_loose_keywords() -> None:
    def parameters(function: Any) -> set[str]:
        return set(inspect.signature(function).parameters)

    # I/O, the study's slide inputs, per-call engine options and runtime flags; every setting is in the model
    tile = parameters(tile_mod.tile_slides)
    assert tile == {"inputs", "out_dir", "settings", "spec", "mpp_override", "mpp_csv", "reader", "tissue_params",
                    "resample", "overwrite", "fail_fast", "progress", "options"}
    assert not tile & set(TilingSettings.model_fields)
    embed = parameters(engine.embed_slides)
    assert embed == {"region_dir", "out_dir", "settings", "encoder", "shard", "overwrite", "fail_fast", "progress",
                     "decode_threads", "stale_after_s", "open_tiles", "options"}
    assert embed & set(EmbedSettings.model_fields) == {"encoder"}  # a key, or a built TileEncoder
    assert parameters(experiment.train_methods) == {"features_dir", "labels_path", "out_dir", "settings", "evaluation",
                                                    "pretrained", "overwrite", "progress", "options"}
    assert parameters(pretrain.pretrain_region_encoder) == {"features", "out_dir", "settings", "resume", "progress",
                                                            "ask", "options"}
    assert parameters(study_heatmaps.write_study_heatmaps) == {"mil_dir", "table", "features_dir", "out_dir",
                                                               "settings"}


def test_old_keyword_arguments_still_set_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tile_slides(min_tissue=...)``, ``embed_slides(batch_size=...)``, ``train_methods(folds=...)`` keep working."""
    seen: dict[str, Any] = {}
    monkeypatch.setattr(tile_mod, "collect_slides", lambda *a, **k: seen.setdefault("tile", []) or [])
    with pytest.raises(ValueError, match="no slides found"):
        tile_mod.tile_slides([tmp_path], tmp_path / "o", min_tissue=0.5, valid_min_tissue=0.2, thumbnail_px=1024,
                             workers=2, progress=False)
    with pytest.raises(ValueError, match="unknown tiling option 'min_tisue'"):
        tile_mod.tile_slides([tmp_path], tmp_path / "o", min_tisue=0.5)
    with pytest.raises(ValueError, match="either as spec or as region_um"):
        tile_mod.tile_slides([tmp_path], tmp_path / "o", spec=TilingSettings().region_spec(), region_um=224)
    with pytest.raises(ValueError, match="workers must be 'auto' or a number"):
        engine.embed_slides(tmp_path, tmp_path / "f", encoder="tiny.d16", batch_size=8, workers="many")
    with pytest.raises(ValueError, match="unknown MIL option 'fold'"):
        experiment.train_methods(tmp_path, tmp_path / "l.csv", tmp_path / "o", fold=3)


@pytest.mark.parametrize("page", ["cli/tile.md", "cli/embed.md", "cli/pretrain.md", "cli/train.md", "report.md"])
def test_settings_tables_in_docs_are_current(page: str, tmp_path: Path) -> None:
    """The command pages hold the tables generated from the models (regenerate with the module below)."""
    from mixmag.cli.settings_docs import update_doc

    doc = Path(__file__).resolve().parents[2] / "docs" / page
    copy = tmp_path / Path(page).name
    copy.write_text(doc.read_text(encoding="utf-8"), encoding="utf-8")
    assert "settings-table:" in copy.read_text(encoding="utf-8")
    assert not update_doc(copy), f"run: python -m mixmag.cli.settings_docs docs/{page}"
