"""Declaring and inferring a target's endpoint, and the one-line errors for label types that do not fit."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.mil.labels import build_bags, read_labels
from mixmag.mil.targets import LabelTypeError, check_values, resolve_targets
from mixmag.synth.mil_features import SyntheticCohort


def _table(tmp_path: Path, columns: dict[str, list[object]], n: int = 12) -> pd.DataFrame:
    df = pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "slide_id": [f"S{i}" for i in range(n)],
                       **columns})
    path = tmp_path / "labels.csv"
    df.to_csv(path, index=False)
    return read_labels(path)


def test_inference_with_a_logged_decision(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    df = _table(tmp_path, {"grade": ["a", "b", "c"] * 4, "ki67": list(np.linspace(1, 60, 12)),
                           "msi": [0, 1] * 6, "os_time": list(range(1, 13)), "os_event": [1, 0] * 6})
    with caplog.at_level(logging.INFO, logger="mixmag.mil.targets"):
        specs = resolve_targets(df)
    got = {s.name: (s.endpoint, s.columns) for s in specs}
    assert got == {"grade": ("classification", ("grade",)), "ki67": ("regression", ("ki67",)),
                   "msi": ("classification", ("msi",)), "os": ("survival", ("os_time", "os_event"))}
    assert [s.name for s in specs] == ["grade", "ki67", "msi", "os"]  # table order, the pair as one target
    assert "target 'ki67': 12 distinct numeric values -> regression (inferred" in caplog.text
    assert "target 'os': columns 'os_time' and 'os_event' -> survival (inferred" in caplog.text


def test_declared_types_and_explicit_survival_columns(tmp_path: Path) -> None:
    df = _table(tmp_path, {"score": list(range(12)), "months": list(range(1, 13)), "dead": [1, 0] * 6})
    specs = resolve_targets(df, ["score", "os"], target_types={"score": "classification"},
                            survival_columns={"os": ["months", "dead"]})
    assert [(s.name, s.endpoint, s.columns, s.declared) for s in specs] == [
        ("score", "classification", ("score",), "classification"), ("os", "survival", ("months", "dead"), "survival")]
    # a declared regression column with few distinct values stays regression
    assert resolve_targets(df, ["dead"], target_types={"dead": "regression"})[0].endpoint == "regression"


@pytest.mark.parametrize(("columns", "targets", "types", "expected"), [
    ({"ki67": ["12", "high"] * 6}, ["ki67"], {"ki67": "regression"},
     "target 'ki67' is declared regression but column 'ki67' holds values that are not finite numbers: 'high' "
     "(line 3)"),
    ({"os_time": list(range(12)), "os_event": ["1", "dead"] * 6}, ["os"], {},
     "survival target 'os': column 'os_event' must hold 0 (censored) or 1 (event observed), found 'dead' (line 3)"),
    ({"os_time": [5, -2] * 6, "os_event": [1, 0] * 6}, ["os"], {},
     "survival target 'os': column 'os_time' has negative times: '-2' (line 3)"),
    ({"os_time": list(range(12))}, ["os"], {"os": "survival"},
     "survival target 'os' needs a time column 'os_time' and an event column 'os_event'"),
    ({"os_time": ["3", ""] * 6, "os_event": [1, 0] * 6}, ["os"], {},
     "survival target 'os': 6 rows have only one of 'os_time' and 'os_event' (first at line 3)"),
])
def test_wrong_label_types_are_one_clear_error(tmp_path: Path, columns: dict[str, list[object]], targets: list[str],
                                               types: dict[str, str], expected: str) -> None:
    df = _table(tmp_path, columns)
    with pytest.raises(LabelTypeError) as info:
        for spec in resolve_targets(df, targets, target_types=types):
            check_values(df, spec)
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_bags_of_regression_and_survival_targets(tmp_path: Path) -> None:
    df = _table(tmp_path, {"ki67": [str(v) for v in range(10, 22)], "os_time": list(range(1, 13)),
                           "os_event": [1, 1, 0] * 4})
    df.loc[0, "ki67"] = np.nan  # missing: excluded for that target only
    reg, surv = (build_bags(df, s, available_slides=df["slide_id"]) for s in
                 resolve_targets(df, ["ki67", "os"], target_types={"ki67": "regression"}))
    assert reg.endpoint == "regression" and reg.classes == [] and len(reg.bags) == 11
    assert sorted(reg.truth.tolist()) == [float(v) for v in range(11, 22)] and len(reg.exclusions) == 1
    assert {b.patient_id: b.value for b in reg.bags}["P3"] == (13.0,)
    assert surv.truth.shape == (12, 2) and surv.truth[:, 1].sum() == 8
    assert [b.label for b in surv.bags] == [int(e) for e in surv.truth[:, 1]]  # the event is the split stratum
    strata, names = surv.patient_strata(folds=3)
    assert names == ["censored", "event"] and sorted(strata.unique().tolist()) == [0, 1]
    strata, names = reg.patient_strata(folds=2)  # 11 patients, 2 folds: 2 bins (each >= 2 patients per fold)
    assert names == ["value 11-16", "value 17-21"] and strata.value_counts().sort_index().tolist() == [6, 5]


def test_a_survival_target_without_events_is_an_error(tmp_path: Path) -> None:
    df = _table(tmp_path, {"os_time": list(range(1, 13)), "os_event": [0] * 12})
    with pytest.raises(ValueError, match="has no event among 12 usable slides"):
        build_bags(df, resolve_targets(df)[0], available_slides=df["slide_id"])


def test_train_cli_stops_on_a_wrong_label_type_with_one_line(small_cohort: SyntheticCohort, tmp_path: Path) -> None:
    labels = small_cohort.labels.assign(os_time=[5.0] * 16, os_event=["yes"] * 16)
    path = tmp_path / "labels.csv"
    labels.to_csv(path, index=False)
    res = CliRunner().invoke(build_app(), ["train", str(small_cohort.features_dir), "--labels", str(path),
                                           "--out", str(tmp_path / "out"), "--targets", "os", "--no-progress"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "'os_event' must hold 0 (censored) or 1" in errors[0], res.output
    assert "Traceback" not in res.output
