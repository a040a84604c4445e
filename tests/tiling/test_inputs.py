"""Input expansion: folders, CSV lists, unique slide ids, mpp tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixmag.tiling.inputs import collect_slides, read_mpp_csv


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folders_csv_ids_and_mpp_precedence(tmp_path: Path) -> None:
    a = _touch(tmp_path / "site1" / "case" / "s.svs")
    b = _touch(tmp_path / "site2" / "case" / "s.svs")
    c = _touch(tmp_path / "site1" / "other.ome.tiff")
    _touch(tmp_path / "site1" / ".hidden.svs")
    _touch(tmp_path / "site1" / "notes.txt")
    _touch(tmp_path / "out" / "qc" / "x.png")  # output folder: never scanned
    listing = tmp_path / "list.csv"
    listing.write_text("path,mpp,slide_id\nsite1/other.ome.tiff,0.3,\nmissing.svs,,renamed\n")
    jobs = collect_slides([tmp_path / "site1", tmp_path / "site2", listing, a], mpp_override=0.5,
                          mpp_table={"site1__case__s": 0.9}, exclude=tmp_path / "out")
    by_id = {j.slide_id: j for j in jobs}
    assert set(by_id) == {"site1__case__s", "site2__case__s", "other", "renamed"}
    assert by_id["site1__case__s"].path == a.resolve() and by_id["site2__case__s"].path == b.resolve()
    assert by_id["other"].path == c.resolve() and by_id["other"].mpp_override == 0.3  # CSV column first
    assert by_id["site1__case__s"].mpp_override == 0.9  # then the mpp table
    assert by_id["site2__case__s"].mpp_override == 0.5  # then the global override
    assert by_id["renamed"].path == (tmp_path / "missing.svs").resolve()  # fails later, per slide


def test_bad_tables_and_inputs_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "mpp.csv"
    bad.write_text("name,resolution\na,0.5\n")
    with pytest.raises(ValueError, match="columns 'slide' and 'mpp'"):
        read_mpp_csv(bad)
    bad.write_text("slide,mpp\na,fast\n")
    with pytest.raises(ValueError, match="line 2.*not a number"):
        read_mpp_csv(bad)
    listing = tmp_path / "list.csv"
    listing.write_text("file\na.svs\n")
    with pytest.raises(ValueError, match="'path' column"):
        collect_slides([listing])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_slides([tmp_path / "nope"])
