"""Corrupt or incomplete feature files: one reason per file, never a traceback, never fatal to the others.

Covers :func:`mixmag.io.features.feature_file_problem` (each kind of damage and its reason text),
:meth:`mixmag.mil.data.FeatureStore.check`, and ``train_methods`` / ``mixmag train``: by default one
error up front naming the slide; with ``allow_missing_slides`` the slide is excluded, recorded in
``excluded.csv`` and counted in ``summary.json`` while every method trains on the others.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from mixmag.cli import train_cmd
from mixmag.errors import MixmagError
from mixmag.io.features import FeatureFile, feature_file_problem
from mixmag.io.h5common import FormatError
from mixmag.mil.data import FeatureStore
from mixmag.mil.experiment import train_methods
from mixmag.synth.mil_features import SyntheticCohort

FAST = {"folds": 2, "epochs": 1, "patience": 1, "lr": 1e-3, "hidden_dim": 8, "attention_dim": 4, "bootstrap": 20,
        "region_preset": "tiny", "device": "cpu", "progress": False}
BAD = "P003-S0"  # the slide every train test corrupts


def _replace(f: h5py.File, name: str, data: np.ndarray) -> None:
    del f[name]
    f.create_dataset(name, data=data)


def _set_valid_token(f: h5py.File, value: float) -> None:
    r, t = np.argwhere(f["tile_valid"][()])[0]  # a *valid* token: invalid ones are never checked
    f["tile_features"][r, t, 0] = value


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _with_h5(edit: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        with h5py.File(path, "a") as f:
            edit(f)
    return apply


#: kind -> (damage, a fragment of the one-line reason)
CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncate, "not a readable HDF5 file, truncated or not HDF5"),
    "not-hdf5": (lambda p: p.write_bytes(b"this is not an HDF5 file"), "not a readable HDF5 file"),
    "complete-false": (_with_h5(lambda f: f.attrs.__setitem__("complete", False)),
                       "incomplete (a killed embedding run?)"),
    "complete-missing": (_with_h5(lambda f: f.attrs.__delitem__("complete")), "incomplete (a killed embedding run?)"),
    "rows-vs-coords": (_with_h5(lambda f: _replace(f, "coords", f["coords"][:-1])), "but coords has shape"),
    "tile-valid-shape": (_with_h5(lambda f: _replace(f, "tile_valid", f["tile_valid"][:, :-1])),
                         "tile_valid has shape"),
    "nan": (_with_h5(lambda f: _set_valid_token(f, np.nan)), "non-finite (NaN/inf) values in valid tokens of 1 of"),
    "inf": (_with_h5(lambda f: _set_valid_token(f, np.inf)), "non-finite (NaN/inf) values in valid tokens of 1 of"),
    "embed-dim-attr": (_with_h5(lambda f: f.attrs.__setitem__("embed_dim", 9)), "but the embed_dim attr is 9"),
    "wrong-artifact": (_with_h5(lambda f: f.attrs.__setitem__("artifact", "region_index")),
                       "expected a mixmag 'feature_store' file"),
    "tokens-vs-spec": (_with_h5(lambda f: _replace(f, "tile_features", f["tile_features"][:, :-1])),
                       "20 tokens per region but its region_spec has 21"),
    "no-encoder-stamp": (_with_h5(lambda f: f.attrs.__setitem__("encoder", "")), "no encoder stamp"),
}


@pytest.fixture
def cohort_copy(small_cohort: SyntheticCohort, tmp_path: Path) -> SyntheticCohort:
    """A private copy of the session cohort, free to damage."""
    features = tmp_path / "features"
    shutil.copytree(small_cohort.features_dir, features)
    return SyntheticCohort(features, small_cohort.labels_csv, small_cohort.labels)


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_each_kind_of_damage_has_its_reason(kind: str, cohort_copy: SyntheticCohort) -> None:
    path = cohort_copy.features_dir / f"{BAD}.h5"
    assert feature_file_problem(path) is None
    damage, expected = CORRUPTIONS[kind]
    damage(path)
    reason = feature_file_problem(path)
    assert reason is not None and expected in reason and "\n" not in reason
    assert str(path) not in reason  # callers name the slide
    if kind not in ("nan", "inf"):  # header problems: FeatureFile itself refuses, with the path
        assert feature_file_problem(path, check_values=False) == reason
        with pytest.raises(FormatError, match=str(path)):
            FeatureFile(path)
    else:  # values are read only when asked for; an invalid token may hold anything
        assert feature_file_problem(path, check_values=False) is None
    problems = FeatureStore(cohort_copy.features_dir).check(cohort_copy.labels["slide_id"])
    assert problems == {BAD: reason}


def test_nonfinite_values_in_invalid_tokens_are_not_a_problem(cohort_copy: SyntheticCohort) -> None:
    path = cohort_copy.features_dir / f"{BAD}.h5"
    with h5py.File(path, "a") as f:
        valid = f["tile_valid"][()]
        valid[0, :5] = False
        f["tile_valid"][...] = valid
        f["tile_features"][0, :5, 0] = np.nan  # background filler: masked by every consumer
    assert feature_file_problem(path) is None


def test_train_stops_up_front_naming_the_slide(cohort_copy: SyntheticCohort, tmp_path: Path) -> None:
    CORRUPTIONS["rows-vs-coords"][0](cohort_copy.features_dir / f"{BAD}.h5")
    CORRUPTIONS["not-hdf5"][0](cohort_copy.features_dir / "P005-S0.h5")
    with pytest.raises(MixmagError) as info:
        train_methods(cohort_copy.features_dir, cohort_copy.labels_csv, tmp_path / "o", methods=["abmil-5x"], **FAST)
    message = str(info.value)
    assert f"'{BAD}': tile_features has" in message and "'P005-S0': not a readable HDF5 file" in message
    assert "2 labelled slides have an unusable feature file" in message and "mil.allow_missing_slides" in message
    assert not (tmp_path / "o" / "label").exists()  # nothing trained


def test_nan_features_never_reach_training(cohort_copy: SyntheticCohort, tmp_path: Path) -> None:
    CORRUPTIONS["nan"][0](cohort_copy.features_dir / f"{BAD}.h5")
    with pytest.raises(MixmagError, match=f"'{BAD}': non-finite \\(NaN/inf\\) values"):
        train_methods(cohort_copy.features_dir, cohort_copy.labels_csv, tmp_path / "o", methods=["abmil-5x"], **FAST)


def test_allow_missing_slides_excludes_records_and_counts(cohort_copy: SyntheticCohort, tmp_path: Path,
                                                          tiny_checkpoint: Callable[..., Path]) -> None:
    CORRUPTIONS["complete-false"][0](cohort_copy.features_dir / f"{BAD}.h5")
    CORRUPTIONS["inf"][0](cohort_copy.features_dir / "P006-S0.h5")
    out = tmp_path / "o"
    ckpt = tiny_checkpoint(tmp_path / "mem", tile_dim=8)
    summary = train_methods(cohort_copy.features_dir, cohort_copy.labels_csv, out,
                            methods=["abmil-5x", "mix-mem-cls"], checkpoints={"mem": ckpt},
                            allow_missing_slides=True, **FAST)
    assert [r.method for r in summary.runs] == ["abmil-5x", "mix-mem-cls"]
    assert all(r.n_bags == 14 for r in summary.runs)  # 16 patients, one slide each, two excluded
    excluded = pd.read_csv(out / "label" / "excluded.csv")
    reasons = dict(zip(excluded["slide_id"], excluded["reason"], strict=True))
    assert sorted(reasons) == [BAD, "P006-S0"]
    assert reasons[BAD].startswith("incomplete (a killed embedding run?)")
    assert reasons["P006-S0"].startswith("non-finite (NaN/inf) values in valid tokens")
    counts = {"slides": 2, "patients": 2, "missing_label": 0, "no_usable_features": 2}
    assert summary.excluded == {"label": counts}
    assert json.loads((out / "summary.json").read_text())["excluded"] == {"label": counts}
    for method in ("abmil-5x", "mix-mem-cls"):  # neither slide was predicted by any fold
        preds = pd.concat(pd.read_csv(p) for p in (out / "label" / method / "folds").glob("*/predictions.csv"))
        assert not {BAD, "P006-S0"} & set(preds["bag_id"]) and len(preds) == 14


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    train_cmd.register(app)
    return app


def test_cli_train_gives_one_line_and_exit_2(cli: typer.Typer, cohort_copy: SyntheticCohort, tmp_path: Path) -> None:
    CORRUPTIONS["truncated"][0](cohort_copy.features_dir / f"{BAD}.h5")
    res = CliRunner().invoke(cli, ["train", str(cohort_copy.features_dir), "--labels", str(cohort_copy.labels_csv),
                                   "--out", str(tmp_path / "o"), "--methods", "abmil-5x", "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if BAD in ln]
    assert len(errors) == 1 and "not a readable HDF5 file" in errors[0], res.output


def _stamp(path: Path, encoder: str) -> None:
    with h5py.File(path, "a") as f:
        f.attrs["encoder"] = encoder


def test_a_file_of_another_encoder_is_one_unusable_slide_not_a_stop(cohort_copy: SyntheticCohort) -> None:
    """The majority's encoder and geometry are the folder's; a stray file is excluded with its reason."""
    _stamp(cohort_copy.features_dir / f"{BAD}.h5", "uni")
    store = FeatureStore(cohort_copy.features_dir)
    problems = store.check(cohort_copy.labels["slide_id"])
    assert set(problems) == {BAD} and store.encoder != "uni"
    reason = problems[BAD]
    assert reason.startswith("features of encoder 'uni' where the") and "re-embed it" in reason
    assert "dim" not in reason and "\n" not in reason  # only what differs


def test_no_majority_between_two_encoders_is_one_error(cohort_copy: SyntheticCohort) -> None:
    files = sorted(cohort_copy.features_dir.glob("*.h5"))
    for path in files[: len(files) // 2]:
        _stamp(path, "uni")
    if len(files) % 2:
        files[-1].unlink()
    store = FeatureStore(cohort_copy.features_dir)
    with pytest.raises(MixmagError, match="keep one encoder and one region geometry per features folder") as info:
        store.check(p.stem for p in cohort_copy.features_dir.glob("*.h5"))
    assert "\n" not in str(info.value) and "'uni'" in str(info.value)
