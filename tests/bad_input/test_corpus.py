"""Bad input never costs a run (#18): a corpus of bad slides, labels, configs, feature files,
checkpoints, weights and command-line options, each run through the real CLI in-process.

Two kinds of case:

* a *usage* case (one bad input a command cannot go on without) must exit 2 (docs/cli/exit-codes.md)
  with exactly one output line, ``error: ...``, that names the culprit (the file, slide, key or
  option it was given), says how to fix it, and shows no traceback and no library advice;
* a *batch* case (several inputs, one or more bad) must finish: the good inputs are written, each
  bad one is recorded with a one-line reason in the stage's manifest / ``problems.csv`` /
  ``excluded.csv``; a batch command (tile, embed, encode, predict) also lists it on stderr with
  that reason, and its exit status and summary line follow the table of docs/cli/exit-codes.md (3
  when some failed, 1 when every one did); ``train`` and ``pretrain`` leave it out and finish (0).

The bad inputs come from the generators of ``conftest.py``, applied to copies of the session's
good inputs (``study``). Case ids read ``<class>/<what is wrong>``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from typer.testing import Result

from mixmag.cli.common import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE

# Text that must never reach a user: a traceback, a bug report, PyTorch's advice to load pickled
# code, raw library exception names and log lines, download retries.
NEVER = ("Traceback", "internal error", "weights_only", "safe_globals", "SafetensorError", "WeightsUnpickler",
         "<tifffile.", "Retrying in", "Error(s) in loading state_dict")
# A line "says how to fix it" when it tells what to do (a verb of fixing, a command to run) or what
# was expected instead ("file not found (a CSV with columns slide,mpp)", "one of ...")
HINT = re.compile(
    r"\b(use|pass|give|set|save|fix|fill|add|list|remove|delete|rerun|re-run|re-copy|re-download|re-save|download|"
    r"copy|run|choose|convert|correct|keep|write|check|create|rename|leave|fetch|select|did you mean|see|"
    r"expected|needs?|must|should|one of|available|e\.g\.)\b|\(an? |`mixmag \w+", re.IGNORECASE)
SUMMARY = re.compile(r"^(\d+) of (\d+) slides failed; see (.+)$")


@dataclass
class Env:
    """What a case builds its input from: a private folder, the generators, the good inputs (lazily)."""

    tmp: Path
    bad: SimpleNamespace
    request: pytest.FixtureRequest

    @property
    def study(self) -> Any:
        return self.request.getfixturevalue("study")

    def yaml(self, body: str, name: str = "study.yaml") -> Path:
        path = self.tmp / name
        path.write_text(body, encoding="utf-8")
        return path

    def csv(self, text: str, name: str = "labels.csv") -> Path:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    def train(self, *extra: object, labels: Path | None = None, features: Path | None = None) -> list[object]:
        """``mixmag train`` on the good features (or ``features``) with ``labels`` (default: the good ones)."""
        return ["train", features or self.study.features, "--labels", labels or self.study.labels,
                "--out", self.tmp / "mil", *self.bad.fast_train, *extra]

    def embed(self, *extra: object, regions: Path | None = None) -> list[object]:
        return ["embed", regions or self.study.tiles, "--out", self.tmp / "features", "--encoder", self.bad.encoder,
                "--workers", "0", "--device", "cpu", "--no-progress", *extra]

    def predict(self, *extra: object, run: Path | None = None, inputs: Path | None = None) -> list[object]:
        return ["predict", run or self.study.trained, inputs or self.study.features, "--out", self.tmp / "predict",
                "--bootstrap", "0", "--no-report", "--no-progress", "--device", "cpu", *extra]


@pytest.fixture
def env(tmp_path: Path, bad: SimpleNamespace, request: pytest.FixtureRequest) -> Env:
    return Env(tmp_path, bad, request)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ================================================================================ usage cases
Make = Callable[[Env], tuple[list[object], "str | tuple[str, ...]"]]


@dataclass(frozen=True)
class Usage:
    """A bad input that must stop the command with one line and exit 2.

    Attributes:
        make: Builds the bad input under ``env.tmp``; returns the CLI arguments and the culprit the
            line must name (a path, slide id, config key or option; or several, all named).
        words: What the line must say besides (a did-you-mean, the option that fixes it ...).
    """

    make: Make
    words: tuple[str, ...] = ()


def _labels_text(rows: list[tuple[str, str, str]], header: str = "patient_id,slide_id,label") -> str:
    return header + "\n" + "".join(",".join(r) + "\n" for r in rows)


def _good_rows() -> list[tuple[str, str, str]]:
    return [(f"p{i}", f"s{i}", str(i % 2)) for i in range(8)]


def _with_labels(text: str, *extra: object) -> Make:
    def make(e: Env) -> tuple[list[object], str]:
        path = e.csv(text)
        return e.train(*extra, labels=path), str(path)
    return make


def _labelled(text: str, culprit: str) -> Make:
    """Labels whose values are wrong for a target: the line names the rows' ids or the column, not the file."""
    def make(e: Env) -> tuple[list[object], str]:
        return e.train(labels=e.csv(text)), culprit
    return make


def _config(body: str, culprit: str, *, command: tuple[str, ...] = ("config", "show")) -> Make:
    """``mixmag config show FILE`` (or another command with ``--config FILE``) on ``body``; the line
    must name the file (``FILE:<line>:``) and ``culprit``, the key."""
    def make(e: Env) -> tuple[list[object], tuple[str, ...]]:
        path = e.yaml(body.format(tmp=e.tmp))
        args: list[object] = [*command, path] if command == ("config", "show") else [*command, "--config", path]
        return args, (f"{path}:", culprit)
    return make


def _train_config(e: Env) -> tuple[str, ...]:
    return ("train", str(e.study.features), "--out", str(e.tmp / "mil"), "--labels", str(e.study.labels))


def _train_on_damaged(kind: str) -> Make:
    """Train on the good features with slide s3's file damaged: the line names the slide."""
    def make(e: Env) -> tuple[list[object], str]:
        return e.train(features=e.bad.damaged_features(e.tmp, e.study.features, kind, victim="s3")), "'s3'"
    return make


def _folder_with(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("x", encoding="utf-8")
    return folder


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _other_encoder_stamp(e: Env) -> tuple[list[object], str]:
    features = e.bad.damaged_features(e.tmp, e.study.features, "other-encoder-stamp", victim="s3")
    return e.train(features=features), "'s3'"


def _every_file_bad(e: Env) -> tuple[list[object], str]:
    features = e.bad.damaged_features(e.tmp, e.study.features, "not-hdf5", victim="s0")
    for path in features.glob("*.h5"):
        path.write_bytes(b"not hdf5")
    return e.predict(inputs=features), str(features)


def _damaged_run(kind: str) -> Make:
    def make(e: Env) -> tuple[list[object], str]:
        run = e.bad.damaged_mil_run(e.tmp, e.study.trained, kind)
        return e.predict(run=run), str(run)
    return make


SLIDES: dict[str, Usage] = {
    "info-corrupt": Usage(lambda e: (["info", p := e.bad.corrupt_slide(e.tmp)], str(p))),
    "info-zero-byte": Usage(lambda e: (["info", p := e.bad.zero_byte_slide(e.tmp)], str(p)), ("0 bytes",)),
    "info-not-an-image": Usage(lambda e: (["info", p := e.bad.text_as_slide(e.tmp)], str(p))),
    "info-unknown-extension": Usage(
        lambda e: (["info", p := e.bad.unknown_extension(e.tmp, e.study.slides / "s0.tiff")], str(p)),
        (".xyz", "--reader")),
    "tile-missing-path": Usage(lambda e: (["tile", e.tmp / "nope", "--out", e.tmp / "o"], str(e.tmp / "nope"))),
    "tile-folder-without-slides": Usage(
        lambda e: (["tile", _folder_with(e.tmp / "docs", "notes.txt"), "--out", e.tmp / "o"], str(e.tmp / "docs")),
        (".svs",)),
    "tile-slide-list-names-missing-file": Usage(
        lambda e: (["tile", e.csv(f"path\n{e.study.slides / 's0.tiff'}\n{e.tmp / 'gone.svs'}\n", "list.csv"),
                    "--out", e.tmp / "o"], "gone.svs")),
}


_ROWS = _good_rows()
# labels tables, and the other table whose cells must be numbers (--mpp-csv)
LABELS: dict[str, Usage] = {
    "empty-file": Usage(_with_labels(""), ("patient_id",)),
    "header-only": Usage(_with_labels(_labels_text([]))),
    "missing-slide-id-column": Usage(_with_labels(_labels_text(_ROWS, "patient_id,slide,label")), ("slide_id",)),
    "no-label-column": Usage(_with_labels("patient_id,slide_id\n" + "".join(f"p{i},s{i}\n" for i in range(8))),
                             ("label",)),
    "duplicate-slide-conflicting-labels": Usage(_with_labels(_labels_text([*_ROWS, ("p0", "s0", "1")])), ("'s0'",)),
    "slide-under-two-patients": Usage(_with_labels(_labels_text([*_ROWS, ("p9", "s0", "0")])), ("'s0'",)),
    "patient-with-conflicting-labels": Usage(
        _labelled(_labels_text([("p0", "s0", "0"), ("p0", "s1", "1"), *_ROWS[2:]]), "'p0'"), ("bag_level",)),
    "labels-for-no-slide": Usage(_with_labels(_labels_text([("x1", "nope1", "0"), ("x2", "nope2", "1")])),
                                 ("'nope1'", "slide_id")),
    "labelled-slide-without-features": Usage(_with_labels(_labels_text([*_ROWS, ("p9", "ghost", "1")])),
                                             ("'ghost'", "allow_missing_slides")),
    "empty-slide-id-cell": Usage(_with_labels(_labels_text([*_ROWS, ("p9", "", "1")])), ("slide_id",)),
    "unknown-label-value": Usage(_labelled(_labels_text([("p0", "s0", "yes"), *_ROWS[1:]]), "'yes'"),
                                 ("p0", "'label'")),
    "single-class": Usage(_labelled(_labels_text([(p, s, "1") for p, s, _ in _ROWS]), "'label'"), ("--targets",)),
    "unknown-target-column": Usage(lambda e: (e.train("--targets", "stage"), "--targets"), ("'stage'", "'label'")),
    "not-utf8": Usage(lambda e: (e.train(labels=_bytes(e.tmp / "labels.csv", b"\xff\xfe\x00\x01" * 40)),
                                 str(e.tmp / "labels.csv"))),
    "malformed-csv": Usage(_with_labels('patient_id,slide_id,label\np0,"s0,0\n')),
    "path-is-a-folder": Usage(lambda e: (e.train(labels=e.tmp), str(e.tmp)), ("folder",)),
    "predict-label-not-a-training-class": Usage(
        lambda e: (e.predict("--labels", e.csv(_labels_text([("p0", "s0", "7"), *_ROWS[1:]]))), "'7'"), ("'0'",)),
    "predict-labels-missing": Usage(lambda e: (e.predict("--labels", e.tmp / "nope.csv"), str(e.tmp / "nope.csv"))),
    "mpp-table-not-a-number": Usage(
        lambda e: (["tile", e.study.slides, "--out", e.tmp / "o", "--mpp-csv",
                    p := e.csv("slide,mpp\ns0.tiff,abc\n", "mpp.csv")], str(p)), ("'abc'", "line 2")),
    "mpp-table-negative": Usage(
        lambda e: (["tile", e.study.slides, "--out", e.tmp / "o", "--mpp-csv",
                    p := e.csv("slide,mpp\ns0.tiff,-1\n", "mpp.csv")], str(p)), ("'-1'",)),
    "mpp-table-wrong-columns": Usage(
        lambda e: (["tile", e.study.slides, "--out", e.tmp / "o", "--mpp-csv",
                    p := e.csv("name,res\ns0.tiff,0.5\n", "mpp.csv")], str(p)), ("'slide'", "'mpp'")),
}


CONFIGS: dict[str, Usage] = {
    "typo-key": Usage(_config("mil:\n  epoch: 3\n", "'mil.epoch'"), ("did you mean 'mil.epochs'",)),
    "typo-section": Usage(_config("evaluat:\n  folds: 3\n", "'evaluat'"), ("did you mean 'evaluate'",)),
    "bad-magnification": Usage(_config("tiling:\n  magnifications: [20x, banana]\n", "'tiling.magnifications[1]'"),
                               ("banana", "0.5mpp")),
    "unknown-encoder": Usage(_config("embed:\n  encoder: unii\n", "'embed.encoder'"), ("did you mean: uni",)),
    "unknown-method": Usage(_config("mil:\n  methods: [abmil-20x, mix-mam]\n", "'mil.methods[1]'"),
                            ("did you mean: mix-mem",)),
    "val-frac-out-of-range": Usage(_config("evaluate:\n  val_frac: 1.5\n", "'evaluate.val_frac'"), ("1.5",)),
    "negative-epochs": Usage(_config("mil:\n  epochs: -1\n", "'mil.epochs'")),
    "number-as-text": Usage(_config("mil:\n  epochs: three\n", "'mil.epochs'"), ("whole number",)),
    "word-where-list": Usage(_config("mil:\n  methods: abmil-20x\n", "'mil.methods'"), ("list",)),
    "value-where-section": Usage(_config("mil: 5\n", "'mil'"), ("mapping",)),
    "not-a-boolean": Usage(_config("mil:\n  refit_all: maybe\n", "'mil.refit_all'"), ("true or false",)),
    "malformed-yaml": Usage(_config("mil:\n  epochs: [3\n  lr: 1\n", "study.yaml:3"), ("invalid YAML",)),
    "tab-indentation": Usage(_config("mil:\n\tepochs: 3\n", "study.yaml:2"), ("invalid YAML",)),
    "top-level-list": Usage(_config("- mil\n- tiling\n", "study.yaml"), ("mapping",)),
    "duplicate-key": Usage(_config("mil:\n  epochs: 3\n  epochs: 30\n", "'mil.epochs'"), ("study.yaml:3", "line 2")),
    "config-missing": Usage(lambda e: (["config", "show", e.tmp / "nope.yaml"], str(e.tmp / "nope.yaml")),
                            ("mixmag config init",)),
    "config-is-a-folder": Usage(lambda e: (["config", "show", e.tmp], str(e.tmp)), ("folder",)),
    "config-not-text": Usage(lambda e: (["config", "show", _bytes(e.tmp / "study.yaml", b"\xff\xfe\x00garbage")],
                                        str(e.tmp / "study.yaml"))),
    "missing-labels-file": Usage(_config("mil:\n  labels: {tmp}/nope.csv\n", "'mil.labels'"), ("nope.csv",)),
    "missing-slides-folder": Usage(_config("slides:\n  inputs: [{tmp}/nope]\n", "'slides.inputs[0]'"), ("nope",)),
    "missing-checkpoint": Usage(_config("mil:\n  checkpoints:\n    mem: {tmp}/pretrain/mem\n",
                                        "'mil.checkpoints.mem'"), ("pretrain/mem",)),
    "missing-mpp-table": Usage(_config("slides:\n  mpp_csv: {tmp}/mpp.csv\n", "'slides.mpp_csv'"), ("mpp.csv",)),
    "region-not-whole-tiles": Usage(_config("tiling:\n  region_um: 300\n", "'tiling.region_um'"), ("448",)),
    "unknown-device": Usage(_config("mil:\n  device: gpu\n", "'mil.device'"), ("cuda",)),
    "typo-key-of-stage-command": Usage(
        lambda e: _config("mil:\n  epoch: 3\n", "'mil.epoch'", command=_train_config(e))(e),
        ("did you mean 'mil.epochs'",)),
}

FEATURES: dict[str, Usage] = {
    **{f"train-{kind}": Usage(_train_on_damaged(kind), ("allow_missing_slides",))
       for kind in ("incomplete-flag", "rows-vs-coords", "nan-value", "inf-value", "wrong-dim", "no-encoder-stamp",
                    "not-hdf5", "truncated")},
    "train-other-encoder-stamp": Usage(_other_encoder_stamp, ("'uni'",)),
    "predict-every-file-bad": Usage(_every_file_bad, ("problems.csv",)),
    "folder-missing": Usage(lambda e: (e.train(features=e.tmp / "nope"), str(e.tmp / "nope")), ("mixmag embed",)),
    "folder-without-feature-files": Usage(
        lambda e: (e.train(features=_folder_with(e.tmp / "f", "a.txt")), str(e.tmp / "f")), ("mixmag embed",)),
}


def _mem(e: Env, checkpoint: Path) -> list[object]:
    return e.train("--methods", "mix-mem", "--mem-checkpoint", checkpoint, "--set", "mil.region_preset=tiny")


def _encode(e: Env, checkpoint: Path) -> list[object]:
    return ["encode", e.study.features, "--checkpoint", checkpoint, "--out", e.tmp / "enc", "--device", "cpu",
            "--no-progress"]


CHECKPOINTS: dict[str, Usage] = {
    "train-truncated": Usage(lambda e: (_mem(e, c := e.bad.truncated_checkpoint(e.tmp, e.study.checkpoint)),
                                        str(c)), ("truncated",)),
    "train-text-as-weights": Usage(
        lambda e: (_mem(e, c := e.bad.text_as_checkpoint_weights(e.tmp, e.study.checkpoint)), str(c))),
    "train-no-config": Usage(lambda e: (_mem(e, c := e.bad.checkpoint_without_config(e.tmp, e.study.checkpoint)),
                                        str(c)), ("mixmag pretrain",)),
    "train-bad-config-json": Usage(lambda e: (_mem(e, c := e.bad.checkpoint_bad_json(e.tmp, e.study.checkpoint)),
                                              str(c / "config.json"))),
    "train-wrong-file-type": Usage(lambda e: (_mem(e, c := e.bad.file_as_checkpoint(e.tmp)), str(c))),
    "train-wrong-architecture-dim": Usage(lambda e: (_mem(e, c := e.bad.checkpoint_of_other_dim(e.tmp)), str(c)),
                                          (str(16), str(8))),
    "train-wrong-architecture-weights": Usage(
        lambda e: (_mem(e, c := e.bad.checkpoint_mixed_weights(e.tmp, e.study.checkpoint)), str(c))),
    "train-missing": Usage(lambda e: (_mem(e, e.tmp / "nope"), str(e.tmp / "nope"))),
    "encode-truncated": Usage(lambda e: (_encode(e, c := e.bad.truncated_checkpoint(e.tmp, e.study.checkpoint)),
                                         str(c))),
    "encode-wrong-architecture": Usage(lambda e: (_encode(e, c := e.bad.checkpoint_of_other_dim(e.tmp)), str(c))),
    "predict-truncated-model": Usage(
        _damaged_run("truncated"),
        ("model.pt",)),
    "predict-foreign-model": Usage(
        _damaged_run("foreign"),
        ("model.pt",)),
    "predict-wrong-architecture-model": Usage(
        _damaged_run("wrong-architecture"),
        ("model.pt",)),
}


def _weights(kind: str, *words: str) -> Usage:
    def make(e: Env) -> tuple[list[object], str]:
        path = e.bad.weights_file(e.tmp / "w", kind)
        return e.embed("--weights", path), path.name
    return Usage(make, words)


WEIGHTS: dict[str, Usage] = {
    "missing-local-file": Usage(lambda e: (e.embed("--weights", e.tmp / "nope" / "uni.bin"),
                                           str(e.tmp / "nope" / "uni.bin")), ("org/name",)),
    "missing-relative-path": Usage(lambda e: (e.embed("--weights", "weights/uni.bin"), "weights/uni.bin")),
    "hub-id-with-space": Usage(lambda e: (e.embed("--weights", "hf-hub:not/a/valid id"), "hf-hub:not/a/valid id"),
                               ("hf-hub:org/name",)),
    "hub-prefix-only": Usage(lambda e: (e.embed("--weights", "hf-hub:"), "hf-hub:"), ("hf-hub:org/name",)),
    "hub-id-double-slash": Usage(lambda e: (e.embed("--weights", "org//name"), "org//name"), ("org/name",)),
    "empty-pt": _weights("empty-pt", "0 bytes"),
    "truncated-pt": _weights("truncated-pt", "truncated"),
    "truncated-safetensors": _weights("truncated-safetensors", "truncated"),
    "pickled-objects": _weights("pickled-objects", "argparse.Namespace", "state_dict()"),
    "lfs-pointer": _weights("lfs-pointer", "git lfs pull"),
    "html-page": _weights("html-page", "HTML"),
    "weights-of-another-model": _weights("other-model", "tiny.d16"),
    "empty-folder": _weights("empty-folder"),
}


OPTIONS: dict[str, Usage] = {
    "negative-epochs": Usage(lambda e: (e.train("--epochs", "-3"), "--epochs")),
    "one-fold": Usage(lambda e: (e.train("--folds", "1"), "--folds")),
    "learning-rate-not-a-number": Usage(lambda e: (e.train("--lr", "fast"), "--lr"), ("mixmag train --help",)),
    "precision-bad-choice": Usage(lambda e: (e.train("--precision", "fp8"), "--precision"), ("bf16",)),
    "device-bad-choice": Usage(lambda e: (e.train("--device", "gpu"), "--device"), ("cuda",)),
    "method-typo": Usage(lambda e: (e.train("--methods", "abmil-20"), "--methods"), ("did you mean: abmil-20x",)),
    "splits-file-missing": Usage(lambda e: (e.train("--splits", e.tmp / "s.csv"), "--splits")),
    "negative-mpp": Usage(lambda e: (["tile", e.study.slides, "--out", e.tmp / "o", "--mpp", "-0.5"], "--mpp")),
    "min-tissue-above-one": Usage(lambda e: (["tile", e.study.slides, "--out", e.tmp / "o", "--min-tissue", "1.5"],
                                             "--min-tissue")),
    "zero-workers": Usage(lambda e: (["tile", e.study.slides, "--out", e.tmp / "o", "--workers", "0"], "--workers")),
    "reader-typo": Usage(lambda e: (["tile", e.study.slides, "--out", e.tmp / "o", "--reader", "openslid"],
                                    "--reader"), ("did you mean: openslide",)),
    "magnification-typo": Usage(lambda e: (["tile", e.study.slides, "--out", e.tmp / "o", "--magnifications",
                                            "20x,banana"], "--magnifications"), ("banana",)),
    "missing-required-option": Usage(lambda e: (["tile", e.study.slides], "--out")),
    "unknown-option": Usage(lambda e: (["tile", e.study.slides, "--out", e.tmp / "o", "--bogus"], "--bogus")),
    "set-key-typo": Usage(lambda e: (["tile", e.study.slides, "--out", e.tmp / "o", "--set", "tiling.min_tisue=0.3"],
                                     "tiling.min_tisue"), ("did you mean 'tiling.min_tissue'",)),
    "set-without-value": Usage(lambda e: (["config", "show", "--set", "mil.epochs"], "mil.epochs"),
                               ("section.key=value",)),
    "no-slides-given": Usage(lambda e: (["tile", "--out", e.tmp / "o"], "slides.inputs")),
    "weights-and-random-weights": Usage(lambda e: (e.embed("--weights", e.tmp, "--random-weights"),
                                                   "--random-weights"), ("not both",)),
    "shard-out-of-range": Usage(lambda e: (e.embed("--random-weights", "--shard", "3/2"), "--shard")),
    "workers-not-a-number": Usage(lambda e: (e.embed("--random-weights", "--workers", "many"), "--workers")),
    "zero-batch-size": Usage(lambda e: (e.embed("--random-weights", "--batch-size", "0"), "--batch-size")),
    "region-folder-missing": Usage(lambda e: (e.embed("--random-weights", regions=e.tmp / "nope"),
                                              str(e.tmp / "nope")), ("mixmag tile",)),
    "predict-zero-workers": Usage(lambda e: (e.predict("--workers", "0"), "--workers")),
    "predict-device-typo": Usage(lambda e: (e.predict("--device", "gpu"), "'gpu'"), ("cuda",)),
    "predict-untrained-method": Usage(lambda e: (e.predict("--method", "mix-mem"), "mix-mem"), ("abmil-20x",)),
    "predict-run-missing": Usage(lambda e: (e.predict(run=e.tmp / "nope"), str(e.tmp / "nope"))),
    "encode-mode-typo": Usage(lambda e: (["encode", e.study.features, "--checkpoint", e.study.checkpoint, "--out",
                                          e.tmp / "enc", "--mode", "clss"], "'clss'"), ("cls",)),
    "compare-reference-typo": Usage(lambda e: (["compare", e.study.trained, "--reference", "abmil-21x"],
                                               "'abmil-21x'"), ("did you mean 'abmil-20x'",)),
    "info-implausible-mpp": Usage(lambda e: (["info", e.study.slides / "s0.tiff", "--mpp", "-1"], "mpp"),
                                  ("0.25",)),
    "diagnose-features-missing": Usage(lambda e: (["diagnose", e.tmp / "nope", "--out", e.tmp / "d"],
                                                  str(e.tmp / "nope")), ("mixmag embed",)),
    "unknown-command": Usage(lambda e: (["tilee"], "tilee"), ("did you mean 'tile'",)),
    "unknown-log-level": Usage(lambda e: (["list", "readers"], "--log-level"), ("DEBUG",)),
    "list-unknown-registry": Usage(lambda e: (["list", "encodrs"], "'encodrs'"), ("encoders",)),
    "export-magnification-not-in-files": Usage(
        lambda e: (["export", e.study.features, "--out", e.tmp / "x", "--mag", "7"], "--mag"), ("20x",)),
    "report-folder-without-run": Usage(
        lambda e: (["report", _folder_with(e.tmp / "nothing", "a.txt")], str(e.tmp / "nothing")), ("--out",)),
}

#: log level per case where the default (WARNING) is itself the bad input
LOG_LEVEL = {"options/unknown-log-level": "LOUD"}

USAGE: dict[str, Any] = {f"{group}/{name}": case for group, cases in (
    ("slides", SLIDES), ("labels", LABELS), ("configs", CONFIGS), ("features", FEATURES),
    ("checkpoints", CHECKPOINTS), ("weights", WEIGHTS), ("options", OPTIONS)) for name, case in cases.items()}


def _usage_params() -> list[Any]:
    params = []
    for case_id, case in USAGE.items():
        if isinstance(case, Usage):
            params.append(pytest.param(case_id, case, id=case_id))
        else:  # a pytest.param carrying marks
            params.append(pytest.param(case_id, *case.values, id=case_id, marks=case.marks))
    return params


def assert_one_line_error(result: Result, culprit: str | tuple[str, ...], words: tuple[str, ...]) -> None:
    """Exit 2, a single ``error:`` line naming ``culprit``, with a hint and ``words``, nothing else."""
    lines = _lines(result.output)
    for text in NEVER:
        assert text not in result.output, f"{text!r} reached the user:\n{result.output}"
    assert result.exit_code == EXIT_USAGE, f"exit {result.exit_code}, expected 2:\n{result.output}"
    assert len(lines) == 1, f"{len(lines)} lines, expected one:\n{result.output}"
    (line,) = lines
    assert line.startswith("error: "), line
    for name in (culprit,) if isinstance(culprit, str) else culprit:
        assert name in line, f"the line does not name {name!r}: {line}"
    assert HINT.search(line.removeprefix("error: ")), f"the line does not say how to fix it: {line}"
    for word in words:
        assert word.lower() in line.lower(), f"the line does not say {word!r}: {line}"


@pytest.mark.parametrize(("case_id", "case"), _usage_params())
def test_bad_input_stops_with_one_line(case_id: str, case: Usage, env: Env) -> None:
    args, culprit = case.make(env)
    result = env.bad.invoke(args, log_level=LOG_LEVEL.get(case_id, "WARNING"))
    assert_one_line_error(result, culprit, case.words)


# ================================================================================ batch cases
@dataclass
class Outcome:
    """What a batch must show: its record of failures, which inputs failed, what the good ones wrote.

    Attributes:
        args: CLI arguments.
        record: The file the failures are recorded in (manifest, problems.csv, excluded.csv).
        failed: Ids of the bad inputs, each with a word its recorded reason must hold.
        written: Files the good inputs must have produced.
        summary: The batch ends with ``N of M slides failed; see <record>`` (not ``train``: it records
            exclusions, it does not count failures).
    """

    args: list[object]
    record: Path
    failed: dict[str, str]
    written: list[Path] = field(default_factory=list)
    summary: bool = True


@dataclass(frozen=True)
class Batch:
    """A batch with bad inputs: ``make`` builds them, ``code`` is the exit status it must end with.

    ``xfail``: why the case fails today, where the fix belongs to a module being changed elsewhere.
    """

    make: Callable[[Env], Outcome]
    code: int
    xfail: str | None = None


def _tile_with_good(make_bad: Callable[[Env, Path], Path], reason: str, *, good: int = 1,
                    named: bool = False) -> Batch:
    """Tile a folder of ``good`` good slides plus one bad one: the good ones written, the bad one recorded.

    ``named``: the bad file is given by name beside the folder (a folder search skips extensions no
    reader claims, as it skips ``notes.txt``).
    """
    def make(e: Env) -> Outcome:
        folder = e.tmp / "slides"
        folder.mkdir()
        for i in range(good):
            shutil.copy(e.study.slides / f"s{i}.tiff", folder)
        bad_path = make_bad(e, e.tmp if named else folder)
        out = e.tmp / "tiles"
        inputs = [folder, bad_path] if named else [folder]
        return Outcome(["tile", *inputs, "--out", out, "--no-progress"], out / "regions" / "manifest.csv",
                       {bad_path.stem: reason}, [out / "regions" / f"s{i}.h5" for i in range(good)])
    return Batch(make, EXIT_PARTIAL if good else EXIT_FAILED)


def _mixed_folder(e: Env) -> Outcome:
    folder = e.tmp / "slides"
    for i in range(2):
        e.bad.slide(folder, f"s{i}.tiff", seed=i)
    bad = {e.bad.corrupt_slide(folder).stem: "corrupt", e.bad.rgb16_slide(folder).stem: "8-bit",
           e.bad.no_mpp_slide(folder).stem: "--mpp"}
    out = e.tmp / "tiles"
    return Outcome(["tile", folder, "--out", out, "--no-progress"], out / "regions" / "manifest.csv", bad,
                   [out / "regions" / "s0.h5", out / "regions" / "s1.h5"])



def _embed_with_bad_region_file(e: Env) -> Outcome:
    regions = e.tmp / "regions"
    regions.mkdir()
    for sid in ("s0", "s1"):
        shutil.copy(e.study.tiles / "regions" / f"{sid}.h5", regions)
    (regions / "s9.h5").write_bytes(b"not hdf5" * 10)
    out = e.tmp / "features"
    return Outcome(e.embed("--random-weights", regions=regions), out / "manifest.csv", {"s9": "HDF5"},
                   [out / "s0.h5", out / "s1.h5"])


def _embed_with_unreadable_slide(e: Env) -> Outcome:
    import h5py

    regions = e.tmp / "regions"
    regions.mkdir()
    for sid in ("s0", "s1"):
        shutil.copy(e.study.tiles / "regions" / f"{sid}.h5", regions / f"{sid}.h5")
    shutil.copy(e.study.tiles / "regions" / "s2.h5", regions / "moved.h5")
    with h5py.File(regions / "moved.h5", "r+") as f:  # its slide is now a damaged file
        f.attrs["slide_path"] = str(e.bad.corrupt_slide(e.tmp))
        f.attrs["slide_id"] = "moved"
    out = e.tmp / "features"
    return Outcome(e.embed("--random-weights", regions=regions), out / "manifest.csv", {"moved": "corrupt"},
                   [out / "s0.h5", out / "s1.h5"])


def _predict_features(kind: str, reason: str) -> Batch:
    def make(e: Env) -> Outcome:
        features = e.bad.damaged_features(e.tmp, e.study.features, kind, victim="s3")
        out = e.tmp / "predict"
        return Outcome(e.predict(inputs=features), out / "problems.csv", {"s3": reason}, [out / "predictions.csv"])
    return Batch(make, EXIT_PARTIAL)


def _predict_slides(e: Env) -> Outcome:
    folder = e.tmp / "new"
    folder.mkdir()
    shutil.copy(e.study.slides / "s0.tiff", folder / "n0.tiff")
    shutil.copy(e.study.slides / "s1.tiff", folder / "n1.tiff")
    e.bad.truncated_slide(folder, e.study.slides / "s2.tiff")
    out = e.tmp / "predict"
    return Outcome(e.predict(inputs=folder), out / "problems.csv", {"truncated": "truncated"},
                   [out / "predictions.csv"])


def _train_excluding(kind: str, reason: str) -> Batch:
    def make(e: Env) -> Outcome:
        features = e.bad.damaged_features(e.tmp, e.study.features, kind, victim="s3")
        out = e.tmp / "mil"
        return Outcome(e.train("--set", "mil.allow_missing_slides=true", features=features),
                       out / "label" / "excluded.csv", {"s3": reason},
                       [out / "label" / "abmil-20x" / "predictions.csv"], summary=False)
    return Batch(make, EXIT_OK)


def _pretrain_with_bad_file(e: Env) -> Outcome:
    features = e.bad.damaged_features(e.tmp, e.study.features, "not-hdf5", victim="s3")
    out = e.tmp / "pretrain"
    return Outcome(["pretrain", features, "--out", out, "--steps", "1", "--preset", "tiny", "--batch-size", "4",
                    "--device", "cpu", "--no-progress"], out / "manifest.csv", {"s3": "HDF5"},
                   [out / "final" / "model.safetensors"], summary=False)


def _encode_with_bad_file(e: Env) -> Outcome:
    features = e.bad.damaged_features(e.tmp, e.study.features, "truncated", victim="s3")
    out = e.tmp / "enc"
    return Outcome(["encode", features, "--checkpoint", e.study.checkpoint, "--out", out, "--device", "cpu",
                    "--no-progress"], out / "manifest.csv", {"s3": "HDF5"}, [out / "s0.h5", out / "s7.h5"])


BATCHES: dict[str, Batch] = {
    "slides/tile-truncated": _tile_with_good(lambda e, f: e.bad.truncated_slide(f, e.study.slides / "s1.tiff"),
                                             "truncated"),
    "slides/tile-corrupt": _tile_with_good(lambda e, f: e.bad.corrupt_slide(f), "corrupt"),
    "slides/tile-zero-byte": _tile_with_good(lambda e, f: e.bad.zero_byte_slide(f), "0 bytes"),
    "slides/tile-not-an-image": _tile_with_good(lambda e, f: e.bad.text_as_slide(f), "not an image"),
    "slides/tile-16-bit": _tile_with_good(lambda e, f: e.bad.rgb16_slide(f), "8-bit"),
    "slides/tile-multichannel": _tile_with_good(lambda e, f: e.bad.multiplex_slide(f), "multi-channel"),
    "slides/tile-missing-mpp": _tile_with_good(lambda e, f: e.bad.no_mpp_slide(f), "--mpp"),
    "slides/tile-unknown-extension": _tile_with_good(
        lambda e, f: e.bad.unknown_extension(f, e.study.slides / "s1.tiff"), "--reader", named=True),
    "slides/tile-every-slide-bad": _tile_with_good(lambda e, f: e.bad.corrupt_slide(f), "corrupt", good=0),
    "slides/tile-folder-mixing-good-and-bad": Batch(_mixed_folder, EXIT_PARTIAL),
    "slides/embed-region-file-not-hdf5": Batch(_embed_with_bad_region_file, EXIT_PARTIAL),
    "slides/embed-slide-now-unreadable": Batch(_embed_with_unreadable_slide, EXIT_PARTIAL),
    "slides/predict-new-slides-one-truncated": Batch(_predict_slides, EXIT_PARTIAL),
    "features/predict-one-not-hdf5": _predict_features("not-hdf5", "HDF5"),
    "features/predict-one-nan": _predict_features("nan-value", "NaN"),
    "features/predict-one-incomplete": _predict_features("incomplete-flag", "incomplete"),
    "features/predict-one-wrong-dim": _predict_features("wrong-dim", "dimension"),
    "features/train-excludes-incomplete": _train_excluding("incomplete-flag", "incomplete"),
    "features/train-excludes-inf": _train_excluding("inf-value", "NaN/inf"),
    "features/encode-one-truncated": Batch(_encode_with_bad_file, EXIT_PARTIAL),
    "features/pretrain-skips-not-hdf5": Batch(_pretrain_with_bad_file, EXIT_OK),
}


def _recorded(record: Path) -> dict[str, str]:
    """Reason per failed input in a manifest (status=error), problems.csv or excluded.csv."""
    table = pd.read_csv(record, dtype=str, keep_default_na=False)
    if "status" in table.columns:
        table = table[table["status"] == "error"]
        return dict(zip(table["slide_id"], table["error"], strict=True))
    reason = "reason"
    return dict(zip(table["slide_id"], table[reason], strict=True))


def _mixmag_error_names() -> str:
    """``FormatError|SlideError|...``: every error class of mixmag (their messages are written for people)."""
    import mixmag.config_errors
    import mixmag.encoders.weights
    import mixmag.io.h5common
    import mixmag.slides.base  # noqa: F401  (the modules define the subclasses)
    from mixmag.errors import MixmagError

    names, todo = set(), [MixmagError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return "|".join(sorted(names))


def _batch_params() -> list[Any]:
    return [pytest.param(case_id, id=case_id, marks=[pytest.mark.xfail(strict=True, reason=b.xfail)] if b.xfail else [])
            for case_id, b in BATCHES.items()]


@pytest.mark.parametrize("case_id", _batch_params())
def test_batch_records_the_bad_input_and_keeps_the_good(case_id: str, env: Env) -> None:
    batch = BATCHES[case_id]
    outcome = batch.make(env)
    result = env.bad.invoke(outcome.args, log_level="ERROR")
    for text in NEVER:
        assert text not in result.output, f"{text!r} reached the user:\n{result.output}"
    assert result.exit_code == batch.code, f"exit {result.exit_code}, expected {batch.code}:\n{result.output}"
    for path in outcome.written:
        assert path.is_file(), f"the good input's output {path} is missing:\n{result.output}"
    recorded = _recorded(outcome.record)
    assert set(recorded) == set(outcome.failed), (recorded, result.output)
    errors = _lines(result.stderr)
    class_name = re.compile(rf"\b({_mixmag_error_names()}): ")
    for input_id, word in outcome.failed.items():
        reason = recorded[input_id]
        assert reason and "\n" not in reason and word.lower() in reason.lower(), (input_id, reason)
        assert not class_name.search(reason), f"the reason shows an exception class: {reason}"
        if outcome.summary:  # listed on stderr with its reason, on one line
            listed = [ln for ln in errors if input_id in ln and reason[:40] in ln]
            assert len(listed) == 1, f"{input_id} is not listed once with its reason:\n{result.stderr}"
    if outcome.summary:
        found = SUMMARY.match(errors[-1])
        assert found, f"no summary line at the end:\n{result.stderr}"
        assert int(found[1]) == len(outcome.failed) and found[3] == str(outcome.record), errors[-1]
