"""Each setting of a stage is declared once, in the stage's model, and reaches the stage from everywhere.

Walks every field of :class:`~mixmag.region.settings.PretrainSettings` and
:class:`~mixmag.mil.settings.MilSettings`: each must reach the stage function from a study YAML
(through ``mixmag run``'s study) and from the stage's command (``--set section.key=value``, and a
named option, where there is one, must default to the model's default). The engine-level
signatures (``MILClassifier``, ``TrainParams``, ``train_methods``, ``pretrain_region_encoder``) may
not declare a setting the model does not have. A setting added in one place only fails here.
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

import mixmag.mil.experiment as experiment
import mixmag.region.pretrain as pretrain
from mixmag.cli.app import build_app
from mixmag.config import EvaluateConfig, PipelineConfig, load_config
from mixmag.mil.estimator import MILClassifier
from mixmag.mil.settings import MilSettings, estimator_fields
from mixmag.mil.train import TrainParams
from mixmag.pipeline.study import Study
from mixmag.region.settings import PretrainOptions, PretrainSettings, RegionSettings
from mixmag.utils.settings import field_default

# Values for string fields that only accept some words; any other field gets a generic sample.
SAMPLES: dict[str, list[Any]] = {
    "objective": ["cmem"], "preset": ["small"], "position": ["sincos"], "loss": ["cosine"], "device": ["cpu"],
    "bag_level": ["slide"], "region_preset": ["tiny"], "precision": ["fp32"], "methods": [["abmil-5x", "mix-mem"]],
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


PRETRAIN_SAMPLES = {name: sample(PretrainSettings, name) for name in PretrainSettings.model_fields}
MIL_SAMPLES = {name: sample(MilSettings, name) for name in MilSettings.model_fields}


def _assert_reached(got: BaseModel, want: dict[str, Any], where: str) -> None:
    missed = {k: (getattr(got, k), v) for k, v in want.items() if getattr(got, k) != v}
    assert not missed, f"settings that did not reach the stage from {where} (got, wanted): {missed}"


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace both stage functions by recorders of the settings they are given."""
    seen: dict[str, Any] = {}

    def fake_pretrain(features: Any, out: Any, *, settings: PretrainSettings, **kw: Any) -> Any:
        seen.setdefault("pretrain", []).append(settings)
        return SimpleNamespace(checkpoint=Path(out) / "final", metrics_path=Path(out) / "m.jsonl", final_loss=None,
                               objective="x", steps=0, n_slides=0, n_regions=0)

    def fake_train(features: Any, labels: Any, out: Any, *, settings: MilSettings, **kw: Any) -> Any:
        seen["train"] = settings
        seen["train_labels"] = labels
        table = pd.DataFrame(columns=["target", "method", "mean_auroc", "sd_auroc", "ci_lo", "ci_hi"])
        return SimpleNamespace(skipped=[], runs=[1], targets=["label"], table=lambda: table)

    monkeypatch.setattr(pretrain, "pretrain_region_encoder", fake_pretrain)
    monkeypatch.setattr(experiment, "train_methods", fake_train)
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


def test_the_region_section_is_the_run_settings_plus_study_keys() -> None:
    run_only = set(PretrainSettings.model_fields) - set(RegionSettings.model_fields)
    assert run_only == {"objective"}  # chosen per run from `region.objectives`
    assert set(RegionSettings.model_fields) - set(PretrainOptions.model_fields) == {"objectives", "pretrain_on"}
    assert PipelineConfig.model_fields["region"].annotation is RegionSettings
    assert PipelineConfig.model_fields["mil"].annotation is MilSettings


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
    _invoke(["train", str(tmp_path / "f"), "--out", str(tmp_path / "o"), *_set_items("mil", MIL_SAMPLES)])
    _assert_reached(recorded["train"], MIL_SAMPLES, "`mixmag train --set mil.*`")


# command -> (sections its named options map to, in priority order; options that are not settings)
COMMANDS: dict[str, tuple[list[type[BaseModel]], set[str]]] = {
    "pretrain": ([PretrainSettings, RegionSettings], {"features", "out", "config", "overrides", "resume", "progress"}),
    "train": ([MilSettings, EvaluateConfig], {"features_dir", "out", "config", "overrides", "mem_checkpoint",
                                              "cmem_checkpoint", "random_checkpoint", "overwrite", "progress"}),
}


def _params(command: str) -> dict[str, Any]:
    group = typer.main.get_command(build_app())
    return {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]


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


def test_named_options_reach_the_stage(tmp_path: Path, recorded: dict[str, Any]) -> None:
    params = _params("pretrain")
    named = [n for n in params if n in PretrainSettings.model_fields]
    argv = [x for n in named for x in (max(params[n].opts, key=len), str(_plain(PRETRAIN_SAMPLES[n])))]
    _invoke(["pretrain", str(tmp_path / "f"), "--out", str(tmp_path / "o"), *argv])
    _assert_reached(recorded["pretrain"][0], {n: PRETRAIN_SAMPLES[n] for n in named}, "named options")

    params = _params("train")
    named = [n for n in params if n in MilSettings.model_fields]
    argv = []
    for n in named:
        value = _plain(MIL_SAMPLES[n])
        argv += [max(params[n].opts, key=len), ",".join(value) if isinstance(value, list) else str(value)]
    _invoke(["train", str(tmp_path / "f"), "--out", str(tmp_path / "o"), *argv])
    _assert_reached(recorded["train"], {n: MIL_SAMPLES[n] for n in named}, "named options")


# ------------------------------------------------------------------ engine-level signatures
def test_estimator_and_engine_parameters_come_from_the_model() -> None:
    model_defaults = {name: field_default(MilSettings, name) for name in MilSettings.model_fields}
    # per-call or estimator-only parameters of MILClassifier (not study settings)
    call_only = {"method", "encoder", "classes", "balanced", "device", "seed", "progress"}
    clf = inspect.signature(MILClassifier.__init__).parameters
    hyper = [n for n in clf if n not in call_only and n != "self"]
    assert hyper == list(estimator_fields(MilSettings)), "MILClassifier and MilSettings' ESTIMATOR fields differ"
    for name in hyper:
        assert _plain(clf[name].default) == _plain(model_defaults[name]), name
    for f in fields(TrainParams):
        if f.name != "balanced":
            assert f.name in MilSettings.model_fields, f"TrainParams.{f.name} is not a MilSettings field"
            assert _plain(f.default) == _plain(model_defaults[f.name]), f.name


def test_stage_functions_take_settings_not_loose_keywords() -> None:
    train = set(inspect.signature(experiment.train_methods).parameters)
    # I/O, the evaluation protocol (the `evaluate` section) and runtime flags; everything else is MilSettings
    assert train == {"features_dir", "labels_path", "out_dir", "settings", "pretrained", "folds", "val_frac",
                     "bootstrap", "splits", "overwrite", "progress", "options"}
    assert set(inspect.signature(pretrain.pretrain_region_encoder).parameters) == {
        "features", "out_dir", "settings", "resume", "progress", "options"}


@pytest.mark.parametrize("page", ["pretrain.md", "train.md"])
def test_settings_tables_in_docs_are_current(page: str, tmp_path: Path) -> None:
    """docs/cli/*.md hold the tables generated from the models (regenerate with the module below)."""
    from mixmag.cli.settings_docs import update_doc

    doc = Path(__file__).resolve().parents[2] / "docs" / "cli" / page
    copy = tmp_path / page
    copy.write_text(doc.read_text(encoding="utf-8"), encoding="utf-8")
    assert "settings-table:" in copy.read_text(encoding="utf-8")
    assert not update_doc(copy), f"run: python -m mixmag.cli.settings_docs docs/cli/{page}"
