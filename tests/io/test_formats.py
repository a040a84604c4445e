from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from mixmag.geometry import RegionSpec
from mixmag.io.features import FeatureFile, FeatureWriter, is_complete_feature_file
from mixmag.io.h5common import FormatError
from mixmag.io.manifest import Manifest, Status
from mixmag.io.regions import RegionIndex, read_region_index, write_region_index


def _index(n: int = 3) -> RegionIndex:
    rng = np.random.default_rng(0)
    return RegionIndex(
        coords=np.arange(n * 2).reshape(n, 2) * 900, tile_valid=rng.random((n, 21)) > 0.2,
        tissue_fraction=rng.random((n, 21)), spec=RegionSpec(), mpp_level0=0.25,
        attrs={"slide_id": "s1", "level0_width": 4000, "level0_height": 3000},
    )


def test_region_index_roundtrip_with_trident_attrs(tmp_path: Path) -> None:
    idx = _index()
    path = write_region_index(tmp_path / "s1.h5", idx)
    back = read_region_index(path)
    np.testing.assert_array_equal(back.coords, idx.coords)
    np.testing.assert_array_equal(back.tile_valid, idx.tile_valid)
    assert back.spec == idx.spec and back.mpp_level0 == 0.25
    with h5py.File(path) as f:
        attrs = dict(f["coords"].attrs)
        assert attrs["patch_size_level0"] == 1792 and attrs["level0_magnification"] == 40.0
        assert f["token_offset_level0"][5 + 5].tolist() == [448, 448]
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left


def test_feature_writer_is_atomic_and_validates(tmp_path: Path) -> None:
    idx = _index()
    path = tmp_path / "f.h5"
    with pytest.raises(RuntimeError), FeatureWriter(path, idx, embed_dim=4, attrs={"encoder": "t"}) as w:
        w.write(0, np.zeros((1, 21, 4)))
        raise RuntimeError("killed")
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(FormatError, match="NaN"), FeatureWriter(path, idx, embed_dim=4, attrs={}) as w:
        w.write(0, np.full((3, 21, 4), np.nan))
    with pytest.raises(FormatError, match="never written"), FeatureWriter(path, idx, embed_dim=4, attrs={}) as w:
        w.write(0, np.zeros((2, 21, 4)))
    assert not path.exists()
    feats = np.random.default_rng(1).normal(size=(3, 21, 4)).astype(np.float32)
    with FeatureWriter(path, idx, embed_dim=4, attrs={"encoder": "t"}) as w:
        w.write(0, feats[:2])
        w.write(2, feats[2:])
    ff = FeatureFile(path)
    got, valid = ff.read([2, 0, 2])
    np.testing.assert_allclose(got, feats[[2, 0, 2]], atol=1e-2)
    np.testing.assert_array_equal(valid, idx.tile_valid[[2, 0, 2]])
    assert is_complete_feature_file(path, {"encoder": "t"})
    assert not is_complete_feature_file(path, {"encoder": "other"})


def test_reading_wrong_artifact_names_the_fix(tmp_path: Path) -> None:
    path = write_region_index(tmp_path / "s1.h5", _index())
    with pytest.raises(FormatError, match="mixmag embed"):
        FeatureFile(tmp_path / "missing.h5")
    with pytest.raises(FormatError, match="expected a mixmag 'feature_store'"):
        FeatureFile(path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(FormatError, match="format_version 99"):
        read_region_index(path)


def test_manifest_updates_rows(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "manifest.csv")
    m.update("a", status=Status.OK, n_items=3)
    m.update("b", status="error", error="bad\nfile")
    m.update("a", status=Status.SKIPPED)
    rows = m.rows()
    assert rows["a"]["status"] == "skipped" and rows["b"]["error"] == "bad file"
    assert m.count("error") == 1
