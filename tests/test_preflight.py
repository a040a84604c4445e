"""Every bad value or missing file of a study config is reported by `mixmag config show`, before any work.

Each bad case goes through the CLI (``mixmag config show study.yaml``): exit status 2, one line per
problem naming ``file:line``, the key and the culprit, never a traceback. The slide "files" are
empty files: finding slides only looks at names, nothing here opens one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner, Result

import mixmag
from mixmag.cli.app import build_app
from mixmag.config import READER_KEYS, PipelineConfig
from mixmag.config_errors import ConfigError
from mixmag.embed.settings import ENCODER_KEYS, weights_kind
from mixmag.errors import MixmagValueError
from mixmag.mil.settings import BAG_LEVELS, METHOD_KEYS
from mixmag.preflight import PreflightError, Problem, check_config, preflight
from mixmag.region.settings import OBJECTIVE_KEYS, POSITIONS, PRESET_KEYS, RECONSTRUCTION_LOSSES
from mixmag.registry import KnownKeys, Registry


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A slides folder (a, b, c), labels tables good and bad, an empty folder: their paths by name."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("a.svs", "b.svs", "c.tiff", "notes.txt"):
        (slides / name).touch()
    (tmp_path / "empty").mkdir()

    def table(name: str, text: str) -> str:
        (tmp_path / name).write_text(text, encoding="utf-8")
        return str(tmp_path / name)

    return {
        "tmp": str(tmp_path), "slides": str(slides), "empty": str(tmp_path / "empty"),
        "labels": table("labels.csv", "patient_id,slide_id,label\np1,a,0\np2,b,1\np3,c,1\n"),
        "empty_csv": table("empty.csv", ""),
        "no_slide_id": table("no_slide_id.csv", "patient_id,label\np1,0\n"),
        "other_labels": table("other.csv", "patient_id,slide_id,label\np1,x1,0\np2,x2,1\n"),
        "extra_labels": table("extra.csv", "patient_id,slide_id,label\np1,a,0\np2,b,1\np3,c,1\np4,ghost,0\n"),
        "slide_list": table("list.csv", f"path\n{slides / 'a.svs'}\n{tmp_path / 'gone.svs'}\n"),
    }


def _show(tmp_path: Path, body: str, *args: str) -> tuple[Path, Result]:
    path = tmp_path / "study.yaml"
    path.write_text(f"out: {tmp_path / 'run'}\n{body}", encoding="utf-8")
    return path, CliRunner().invoke(build_app(), ["config", "show", str(path), *args])


def _errors(result: Result) -> list[str]:
    """The problem lines; every non-empty line of the output must be one."""
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert all(ln.startswith(("error: ", "warning: ")) for ln in lines), result.output
    return [ln for ln in lines if ln.startswith("error: ")]


# id, YAML after the `out:` line, line (in that YAML) of the culprit, its key, words the line must hold
BAD = [
    # registry keys, with close matches
    ("encoder", "embed:\n  encoder: unii\n", 2, "embed.encoder", ["unii", "Did you mean: uni"]),
    ("method", "mil:\n  methods: [abmil-20x, mix-mam]\n", 2, "mil.methods[1]", ["mix-mam", "Did you mean: mix-mem"]),
    ("objective", "region:\n  objectives: [mam]\n", 2, "region.objectives[0]", ["mam", "Did you mean: mem"]),
    ("reader", "slides:\n  reader: opnslide\n", 2, "slides.reader", ["opnslide", "Did you mean: openslide"]),
    ("preset", "region:\n  preset: bse\n", 2, "region.preset", ["bse", "Did you mean: base"]),
    ("mil-region-preset", "mil:\n  region_preset: tinny\n", 2, "mil.region_preset", ["Did you mean: tiny"]),
    ("external-method", "external:\n  methods: [abmil-21x]\n", 2, "external.methods[0]", ["Did you mean: abmil-20x"]),
    ("bag-level", "mil:\n  bag_level: patients\n", 2, "mil.bag_level", ["patients", "patient, slide"]),
    ("position", "region:\n  position: learned\n", 2, "region.position", ["learned", "slot, sincos"]),
    ("loss", "region:\n  loss: l1\n", 2, "region.loss", ["l1", "mse, cosine"]),
    # magnifications and the region geometry
    ("magnification-word", "tiling:\n  magnifications:\n    - 20x\n    - foo\n", 4, "tiling.magnifications[1]",
     ["'foo' is not a magnification", "20x", "0.5mpp"]),
    ("magnification-zero", "tiling:\n  magnifications: [0mpp]\n", 2, "tiling.magnifications[0]",
     ["'0mpp' is not a magnification"]),
    ("magnification-geometry", "tiling:\n  magnifications: [7x]\n", 2, "tiling.magnifications",
     ["[7x]", "not a whole number"]),
    ("magnification-duplicate", "tiling:\n  magnifications: [20x, 0.5mpp]\n", 2, "tiling.magnifications",
     ["duplicate"]),
    ("region-geometry", "tiling:\n  region_um: 300\n", 2, "tiling.region_um", ["300", "not a whole number"]),
    # value ranges
    ("min-tissue-range", "tiling:\n  min_tissue: 2\n", 2, "tiling.min_tissue", ["less than or equal to 1"]),
    ("dropout-range", "mil:\n  dropout: 1.0\n", 2, "mil.dropout", ["less than 1"]),
    ("folds-range", "evaluate:\n  folds: 1\n", 2, "evaluate.folds", ["greater than or equal to 2"]),
    ("mask-ratio-range", "region:\n  mask_ratio: 0\n", 2, "region.mask_ratio", ["greater than 0"]),
    ("batch-size-range", "embed:\n  batch_size: 0\n", 2, "embed.batch_size", ["greater than or equal to 1"]),
    ("device", "embed:\n  device: gpu\n", 2, "embed.device", ["gpu", "unknown device", "cuda"]),
    # weights: a hub id's form, a local file's existence
    ("hub-id", "embed:\n  weights: hf-hub:uni\n", 2, "embed.weights", ["not a hub id", "hf-hub:org/name"]),
    ("weights-missing", "embed:\n  weights: {tmp}/weights/uni.bin\n", 2, "embed.weights",
     ["uni.bin", "file not found"]),
    ("weights-bare-word", "embed:\n  weights: uni_weights\n", 2, "embed.weights", ["file not found", "org/name"]),
    # slides
    ("slides-missing", "slides:\n  inputs: [{tmp}/nope]\n", 2, "slides.inputs[0]", ["nope", "does not exist"]),
    ("slides-empty-folder", "slides:\n  inputs: [{slides}, {empty}]\n", 2, "slides.inputs[1]",
     ["empty", "holds no slide file", ".svs"]),
    ("slide-list", "slides:\n  inputs: [{slide_list}]\n", 2, "slides.inputs[0]",
     ["list.csv", "1 of 2 slides it lists do not exist", "gone.svs"]),
    ("mpp-csv", "slides:\n  mpp_csv: {tmp}/mpp.csv\n", 2, "slides.mpp_csv", ["mpp.csv", "file not found"]),
    ("pretrain-on", "region:\n  pretrain_on: unlabeled\n", 2, "region.pretrain_on",
     ["slides.pretrain_inputs is empty"]),
    # labels
    ("labels-missing", "mil:\n  labels: {tmp}/nope.csv\n", 2, "mil.labels", ["nope.csv", "file not found"]),
    ("labels-empty", "mil:\n  labels: {empty_csv}\n", 2, "mil.labels",
     ["empty.csv", "empty labels file", "patient_id,slide_id,<label>"]),
    ("labels-no-slide-id", "mil:\n  labels: {no_slide_id}\n", 2, "mil.labels", ["missing column(s) ['slide_id']"]),
    ("labels-folder", "mil:\n  labels: {slides}\n", 2, "mil.labels", ["is a folder"]),
    ("labels-match-none", "slides:\n  inputs: [{slides}]\nmil:\n  labels: {other_labels}\n", 4, "mil.labels",
     ["none of its 2 labelled slides", "'x1'", "slide_id"]),
    ("labels-match-some", "slides:\n  inputs: [{slides}]\nmil:\n  labels: {extra_labels}\n", 4, "mil.labels",
     ["1 of 4 labelled slides", "'ghost'", "allow_missing_slides"]),
    ("targets", "mil:\n  labels: {labels}\n  targets: [stage]\n", 3, "mil.targets", ["'stage'", "not in the labels"]),
    # the other files a stage reads
    ("splits", "evaluate:\n  splits: {tmp}/splits.csv\n", 2, "evaluate.splits", ["splits.csv", "file not found"]),
    ("region-labels", "evaluate:\n  region_labels: {tmp}/regions.csv\n", 2, "evaluate.region_labels",
     ["regions.csv", "file not found"]),
    ("checkpoint", "mil:\n  checkpoints:\n    mem: {tmp}/pretrain/mem\n", 3, "mil.checkpoints.mem",
     ["pretrain/mem", "file not found"]),
    ("external-inputs", "external:\n  inputs: [{tmp}/new]\n", 2, "external.inputs[0]", ["new", "does not exist"]),
    ("external-labels", "external:\n  inputs: [{slides}]\n  labels: {tmp}/new.csv\n", 3, "external.labels",
     ["new.csv", "file not found"]),
]


@pytest.mark.parametrize(("body", "line", "key", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_config_show_rejects_with_file_line_key_and_culprit(files: dict[str, str], tmp_path: Path, body: str,
                                                            line: int, key: str, words: list[str]) -> None:
    path, result = _show(tmp_path, body.format(**files))
    assert result.exit_code == 2, result.output
    errors = _errors(result)
    assert len(errors) == 1, result.output
    assert errors[0].startswith(f"error: {path}:{line + 1}: '{key}'"), errors[0]
    for word in words:
        assert word in errors[0], (word, errors[0])


def test_every_problem_is_reported_at_once(files: dict[str, str], tmp_path: Path) -> None:
    body = ("slides:\n  inputs: [/nonexistent]\ntiling:\n  magnifications: [7x]\nembed:\n  encoder: unii\n"
            "region:\n  objectives: [mam]\nmil:\n  labels: /nonexistent.csv\n  methods: [mix-mam]\n")
    path, result = _show(tmp_path, body)
    assert result.exit_code == 2
    errors = _errors(result)
    expected = [(3, "slides.inputs[0]"), (5, "tiling.magnifications"), (7, "embed.encoder"),
                (9, "region.objectives[0]"), (11, "mil.labels"), (12, "mil.methods[0]")]
    assert [e.split(" = ")[0] for e in errors] == [f"error: {path}:{n}: '{k}'" for n, k in expected]


def test_a_good_config_passes_and_warnings_do_not_fail(files: dict[str, str], tmp_path: Path) -> None:
    body = "slides:\n  inputs: [{slides}]\nmil:\n  labels: {labels}\n  targets: [label]\n"
    _, result = _show(tmp_path, body.format(**files))
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["mil"]["targets"] == ["label"] and not result.stderr
    body = "slides:\n  inputs: [{slides}]\nmil:\n  labels: {extra_labels}\n  allow_missing_slides: true\n"
    path, result = _show(tmp_path, body.format(**files))
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["mil"]["allow_missing_slides"] is True
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(f"warning: {path}:5: 'mil.labels'") and "'ghost'" in warning


def test_set_and_named_options_are_blamed_and_worded_like_the_file(files: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["config", "show", "--set", "embed.encoder=unii",
                                              "--set", f"mil.labels={files['empty_csv']}"])
    assert result.exit_code == 2
    assert [e.split(" = ")[0] for e in _errors(result)] == [
        "error: --set embed.encoder=unii: 'embed.encoder'", f"error: --set mil.labels={files['empty_csv']}: 'mil.labels'"]
    # `--magnifications foo` of `mixmag tile` says what the config file would
    path, from_file = _show(tmp_path, "tiling:\n  magnifications: [foo]\n")
    from_option = CliRunner().invoke(build_app(), ["tile", files["slides"], "--out", str(tmp_path / "o"),
                                                   "--magnifications", "foo"])
    assert from_option.exit_code == 2
    (file_line,), (option_line,) = _errors(from_file), _errors(from_option)
    assert file_line.removeprefix(f"error: {path}:3: ") == option_line.removeprefix("error: --magnifications: ")
    assert "could not convert" not in option_line


def test_stage_commands_check_their_inputs(files: dict[str, str], tmp_path: Path) -> None:
    app = build_app()
    res = CliRunner().invoke(app, ["tile", str(tmp_path / "nope"), files["empty"], "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert [e.split(" = ")[0] for e in _errors(res)] == ["error: INPUTS: 'slides.inputs[0]'",
                                                         "error: INPUTS: 'slides.inputs[1]'"]
    res = CliRunner().invoke(app, ["embed", str(tmp_path), "--out", str(tmp_path / "f"), "--encoder", "tiny.d16",
                                   "--weights", "weights/uni.bin"])
    assert res.exit_code == 2
    (line,) = _errors(res)
    assert line.startswith("error: --weights: 'embed.weights' = weights/uni.bin: file not found")
    features = tmp_path / "features"
    features.mkdir()
    for sid in "ab":
        (features / f"{sid}.h5").touch()
    res = CliRunner().invoke(app, ["train", str(features), "--out", str(tmp_path / "m"),
                                   "--labels", files["empty_csv"]])
    assert res.exit_code == 2 and "No columns to parse" not in res.output
    (line,) = _errors(res)
    assert line.startswith("error: --labels: 'mil.labels'") and "empty labels file" in line
    res = CliRunner().invoke(app, ["train", str(features), "--out", str(tmp_path / "m"), "--labels", files["labels"]])
    (line,) = _errors(res)  # c has no feature file here
    assert "1 of 3 labelled slides are not among the feature files" in line and "'c'" in line
    # `mixmag demo --slides` checks your slides before it generates the cohort
    res = CliRunner().invoke(app, ["demo", "--slides", str(tmp_path / "nope"), "--out", str(tmp_path / "demo")])
    assert res.exit_code == 2 and not (tmp_path / "demo").exists()
    assert [e.split(" = ")[0] for e in _errors(res)] == ["error: --slides: 'slides.inputs[0]'"]


def test_the_study_checks_before_its_first_stage(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        mixmag.run_study({"out": str(out), "slides": {"inputs": [str(tmp_path / "nope")]},
                          "mil": {"labels": files["empty_csv"]}}, progress=False)
    lines = str(info.value).splitlines()
    assert [ln.split(" = ")[0] for ln in lines] == ["'slides.inputs[0]'", "'mil.labels'"]
    assert not (out / "stages.json").exists() and not (out / "config.resolved.yaml").exists()
    # `mixmag run` says the same with the file's lines, and needs slides
    path = tmp_path / "study.yaml"
    path.write_text(f"out: {out}\n", encoding="utf-8")
    res = CliRunner().invoke(build_app(), ["run", str(path)])
    assert res.exit_code == 2
    assert _errors(res) == [f"error: {path}: 'slides.inputs': no slides: list slide files, folders or CSV lists"]


def test_preflight_returns_problems_with_levels(files: dict[str, str], tmp_path: Path) -> None:
    config = PipelineConfig.model_validate({"out": str(tmp_path / "run"), "slides": {"inputs": [files["slides"]]},
                                            "mil": {"labels": files["extra_labels"], "allow_missing_slides": True,
                                                    "checkpoints": {"mam": files["slides"]}}})
    problems = preflight(config)
    assert [(p.key, p.level) for p in problems] == [("mil.labels", "warning"), ("mil.checkpoints.mam", "warning")]
    assert preflight(config, stages=("embed",)) == []
    assert Problem("a.b", "bad", value="x").line("f.yaml:3: ") == "f.yaml:3: 'a.b' = x: bad"
    with pytest.raises(PreflightError) as info:
        check_config(None, [f"mil.labels={files['empty_csv']}", "embed.encoder=unii"])
    assert len(info.value.errors) == 2 and info.value.warnings == []
    with pytest.raises(ValueError, match="unknown stages"):
        preflight(config, stages=("tiles",))


# ------------------------------------------------------------------ light key lists, weights rule
@pytest.mark.parametrize(("known", "registry"), [
    (ENCODER_KEYS, "mixmag.encoders:ENCODERS"), (METHOD_KEYS, "mixmag.mil.methods:METHODS"),
    (OBJECTIVE_KEYS, "mixmag.region.objectives:OBJECTIVES"), (PRESET_KEYS, "mixmag.region.model:REGION_ENCODERS"),
    (READER_KEYS, "mixmag.slides:READERS"),
], ids=lambda v: getattr(v, "kind", ""))
def test_known_keys_are_the_registry_keys(known: KnownKeys, registry: str) -> None:
    import importlib

    module, attr = registry.split(":")
    live: Registry[object] = getattr(importlib.import_module(module), attr)
    assert sorted(known.builtin) == live.keys(), (
        f"the light key list of the {known.kind} registry differs from {registry}: keep them equal")


def test_light_choice_lists_match_the_model_code() -> None:
    from mixmag.mil.labels import BAG_LEVELS as LABEL_BAG_LEVELS
    from mixmag.region.model import POSITIONS as MODEL_POSITIONS
    from mixmag.region.objectives import RECONSTRUCTION_LOSSES as OBJECTIVE_LOSSES

    assert (POSITIONS, RECONSTRUCTION_LOSSES, BAG_LEVELS) == (MODEL_POSITIONS, OBJECTIVE_LOSSES, LABEL_BAG_LEVELS)


def test_known_keys_ask_the_live_registry_about_other_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    live: Registry[object] = Registry("thing")
    live.add("alpha", object())
    known = KnownKeys("thing", ("alpha",), "fake_registry_module:THINGS")
    with pytest.raises(MixmagValueError, match=r"unknown thing 'beta'\. Available: alpha\."):
        known.check("beta")
    monkeypatch.setitem(sys.modules, "fake_registry_module", SimpleNamespace(THINGS=live))  # type: ignore[arg-type]
    live.add("beta", object())  # added at runtime, e.g. METHODS.add(...)
    assert known.check("beta") == "beta" and known.keys() == ["alpha", "beta"]
    with pytest.raises(MixmagValueError, match="Did you mean: alpha"):
        known.check("alpah")


def test_weights_paths_and_hub_ids_are_told_apart_the_same_way(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    from mixmag.encoders import ENCODERS
    from mixmag.encoders import weights as weights_mod
    from mixmag.encoders.weights import WeightsError, looks_like_path, resolve_weights

    hubs = ["MahmoodLab/UNI", "hf-hub:MahmoodLab/UNI", "org/name.v2", "hf_hub:a/b"]
    paths = ["weights/uni.bin", "/abs/model", "./m", "~/m", "a/b/c", "C:\\w\\x", "uni_weights", "org/", "m.pth"]
    assert [weights_kind(s) for s in hubs] == ["hub"] * len(hubs)
    assert [weights_kind(s) for s in paths] == ["path"] * len(paths)
    assert [looks_like_path(s) for s in hubs + paths] == [False] * len(hubs) + [True] * len(paths)

    def no_download(*args: object) -> None:
        raise AssertionError("a local path must not be looked up on the hub")

    monkeypatch.setattr(weights_mod, "_download", no_download)
    with pytest.raises(WeightsError, match="weights file not found"):
        resolve_weights(ENCODERS.meta("tiny.d16"), ENCODERS.get("tiny.d16"), str(tmp_path / "weights" / "uni.bin"))


def test_checking_a_config_imports_no_torch(tmp_path: Path) -> None:
    code = ("import sys\n"
            "from mixmag.preflight import check_config\n"
            "from mixmag.cli.app import build_app\n"
            "build_app()\n"
            "try:\n"
            "    check_config(None, ['embed.encoder=unii', 'mil.methods=[mix-mam]', 'region.objectives=[mam]',\n"
            "                        'region.preset=bse', 'slides.reader=x', 'embed.weights=w/x.pt'])\n"
            "except Exception as exc:\n"
            "    assert str(exc).count('\\n') == 5, exc\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    env = {**os.environ, "PYTHONPATH": str(Path(mixmag.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
