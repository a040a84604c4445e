"""Label tables: bags per patient/slide and clear errors for every kind of bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mixmag.mil.labels import build_bags, label_columns, read_labels


def _write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


SLIDES = {f"S{i}" for i in range(10)}


def test_patient_bags_pool_slides_and_slide_bags_do_not(tmp_path: Path) -> None:
    df = read_labels(_write(tmp_path, "patient_id,slide_id,msi\nA,S0,1\nA,S1,1\nB,S2,0\nC,S3,0\n"))
    tb = build_bags(df, "msi", available_slides=SLIDES)
    assert [(b.bag_id, b.slide_ids, b.label) for b in tb.bags] == [("A", ("S0", "S1"), 1), ("B", ("S2",), 0),
                                                                   ("C", ("S3",), 0)]
    assert tb.classes == ["0", "1"]
    slide = build_bags(df, "msi", available_slides=SLIDES, bag_level="slide")
    assert [b.bag_id for b in slide.bags] == ["S0", "S1", "S2", "S3"]
    assert {b.patient_id for b in slide.bags if b.bag_id in ("S0", "S1")} == {"A"}


def test_tsv_and_string_classes(tmp_path: Path) -> None:
    df = read_labels(_write(tmp_path, "patient_id\tslide_id\tstatus\nA\tS0\tMSS\nB\tS1\tMSI\n", "l.tsv"))
    tb = build_bags(df, "status", available_slides=SLIDES)
    assert tb.classes == ["MSI", "MSS"] and [b.label for b in tb.bags] == [1, 0]
    assert label_columns(df) == ["status"]
    with pytest.raises(ValueError, match="not in the labels table"):
        label_columns(df, ["kras"])


def test_unknown_slides_are_an_error_listing_a_few_and_the_count(tmp_path: Path) -> None:
    rows = "".join(f"P{i},X{i},{i % 2}\n" for i in range(8))
    df = read_labels(_write(tmp_path, "patient_id,slide_id,y\nA,S0,1\nB,S1,0\n" + rows))
    with pytest.raises(ValueError, match=r"8 labelled slides have no feature file: 'X0', .* \.\.\. \(8 in total\)"):
        build_bags(df, "y", available_slides=SLIDES)


def test_missing_slides_can_be_excluded_and_are_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    df = read_labels(_write(tmp_path, "patient_id,slide_id,y\nA,S0,1\nB,S1,0\nC,X9,1\n"))
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        tb = build_bags(df, "y", available_slides=SLIDES, allow_missing_slides=True)
    assert [b.bag_id for b in tb.bags] == ["A", "B"]
    assert [(e.slide_id, e.reason) for e in tb.exclusions] == [("X9", "no feature file")]
    assert "no feature file" in caplog.text


def test_missing_values_are_dropped_with_a_logged_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    df = read_labels(_write(tmp_path, "patient_id,slide_id,y,z\nA,S0,1,a\nB,S1,0,\nC,S2,,b\nD,S3,0,b\n"))
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        tb = build_bags(df, "y", available_slides=SLIDES)
    assert [b.bag_id for b in tb.bags] == ["A", "B", "D"]
    assert [(e.patient_id, e.reason) for e in tb.exclusions] == [("C", "missing label")]
    assert "1 of 4 slides have no label" in caplog.text
    assert len(build_bags(df, "z", available_slides=SLIDES).bags) == 3


def test_conflicting_labels_within_a_patient(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    df = read_labels(_write(tmp_path, "patient_id,slide_id,y\nA,S0,1\nA,S1,0\nB,S2,0\n"))
    with pytest.raises(ValueError, match=r"patients whose slides have different labels: 'A'"):
        build_bags(df, "y", available_slides=SLIDES)
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        tb = build_bags(df, "y", available_slides=SLIDES, bag_level="slide")
    assert len(tb.bags) == 3 and "different labels" in caplog.text


def test_table_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing column"):
        read_labels(_write(tmp_path, "patient,slide_id,y\nA,S0,1\n"))
    with pytest.raises(ValueError, match="more than one patient"):
        read_labels(_write(tmp_path, "patient_id,slide_id,y\nA,S0,1\nB,S0,1\n"))
    with pytest.raises(ValueError, match="listed twice with different labels"):
        read_labels(_write(tmp_path, "patient_id,slide_id,y\nA,S0,1\nA,S0,0\n"))
    with pytest.raises(ValueError, match="empty slide_id"):
        read_labels(_write(tmp_path, "patient_id,slide_id,y\nA,,1\n"))
    with pytest.raises(FileNotFoundError):
        read_labels(tmp_path / "nope.csv")
    assert len(read_labels(_write(tmp_path, "patient_id,slide_id,y\nA,S0,1\nA,S0,1\n"))) == 1


def test_single_class_target_is_an_error(tmp_path: Path) -> None:
    df = read_labels(_write(tmp_path, "patient_id,slide_id,y\nA,S0,1\nB,S1,1\nC,S2,\n"))
    with pytest.raises(ValueError, match="single class"):
        build_bags(df, "y", available_slides=SLIDES)


def test_a_rare_undeclared_third_class_is_flagged_as_a_probable_typo(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from mixmag.mil.labels import warn_rare_classes

    rows = [f"P{i},T{i},{i % 2}" for i in range(40)] + ["P40,T40,yes", "P41,T41,yes"]
    df = read_labels(_write(tmp_path, "patient_id,slide_id,msi\n" + "\n".join(rows) + "\n"))
    slides = {f"T{i}" for i in range(42)}
    tb = build_bags(df, "msi", available_slides=slides)
    assert tb.classes == ["0", "1", "yes"]  # still trained as asked: only a warning
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        assert warn_rare_classes(tb, declared=None) == {"yes": 2}
    flagged = [r.getMessage() for r in caplog.records if "typo" in r.getMessage()]
    assert len(flagged) == 1 and "'yes'" in flagged[0] and "2 of 42" in flagged[0]
    assert "--target-type msi=multiclass" in flagged[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        assert warn_rare_classes(tb, declared="multiclass") == {}  # declared: the user meant it
        balanced = [f"P{i},T{i},{'abc'[i % 3]}" for i in range(42)]  # a real three-class column
        df = read_labels(_write(tmp_path, "patient_id,slide_id,grade\n" + "\n".join(balanced) + "\n", "g.csv"))
        assert warn_rare_classes(build_bags(df, "grade", available_slides=slides), declared=None) == {}
        binary = build_bags(read_labels(_write(tmp_path, "patient_id,slide_id,y\n" + "\n".join(
            f"P{i},T{i},{int(i == 0)}" for i in range(42)) + "\n", "b.csv")), "y", available_slides=slides)
        assert warn_rare_classes(binary, declared=None) == {}  # a rare class of a binary target is no typo
    assert not [r for r in caplog.records if "typo" in r.getMessage()]
