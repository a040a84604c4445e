"""The settings the study, the demo and the CLI resolve are field for field what they were.

tests/data/settings/resolved-before-issue17.json was captured from the code before the stage
settings models moved into ``mixmag.region.settings`` / ``mixmag.mil.settings``: for each case,
the :class:`PretrainSettings` of every pretraining run, the settings ``train_methods`` works with,
and the estimator parameters in their config-hash order. The stage functions are replaced by
recorders, so nothing trains here. If a default changes on purpose, update the JSON with it.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import mixmag.mil.experiment as experiment
import mixmag.region.pretrain as pretrain
from mixmag.cli.app import build_app
from mixmag.config import PipelineConfig
from mixmag.mil.settings import PAPER_METHODS, MilSettings
from mixmag.pipeline.demo import DEMO_SIZES, demo_config
from mixmag.pipeline.study import Study
from mixmag.region.settings import PretrainSettings

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "settings" / "resolved-before-issue17.json")
                    .read_text(encoding="utf-8"))
REAL_TRAIN = experiment.train_methods

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


def _norm(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        return {str(k): _norm(v, root) for k, v in value.items()}
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
    s: MilSettings = (a["settings"] or MilSettings()).updated(**a["options"])
    values = s.model_dump(mode="json", exclude={"labels"})
    values.update(
        methods=list(s.methods or PAPER_METHODS), targets=list(s.targets) or None,
        checkpoints={k: str(v) for k, v in {**(a["pretrained"] or {}), **s.checkpoints}.items()},
        folds=a["folds"], val_frac=a["val_frac"], bootstrap=a["bootstrap"],
        splits=None if a["splits"] is None else str(a["splits"]), overwrite=a["overwrite"], progress=a["progress"])
    return values, [list(kv) for kv in s.estimator_params().items()]


def _study_case(config: PipelineConfig, root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    runs: dict[str, PretrainSettings] = {}
    trains: list[tuple[dict[str, Any], list[list[Any]]]] = []

    def fake_pretrain(features: Any, out: Path, *, settings: PretrainSettings, **options: Any) -> Any:
        s = settings.updated(**{k: v for k, v in options.items() if k not in ("resume", "progress")})
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
