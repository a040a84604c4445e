"""TRIDENT/CLAM export of one magnification: rows, level-0 tile coordinates, attrs, values."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from mixmag.embed import embed_slides, export_features
from mixmag.errors import MixmagValueError
from mixmag.io.features import FeatureFile

TRIDENT_COORD_ATTRS = {"patch_size", "patch_size_level0", "level0_magnification", "target_magnification",
                       "overlap", "level0_width", "level0_height", "name", "savetodir"}


@pytest.fixture
def feature_dir(tmp_path_factory, kit):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("export")
    src = kit.write_regions(tmp / "tiles", {"a": 3, "b": 5})
    embed_slides(src, tmp / "feats", **kit.run)
    return tmp / "feats"


@pytest.mark.parametrize(("mag", "mpp", "per_side"), [("20", 0.5, 4), ("10x", 1.0, 2), ("5", 2.0, 1)])
def test_trident_export_rows_coords_and_attrs(feature_dir, tmp_path, mag: str, mpp: float, per_side: int) -> None:
    summary = export_features(feature_dir, tmp_path, fmt="trident", mag=mag, progress=False)
    assert sorted(summary.written) == ["a", "b"] and not summary.errors
    ff = FeatureFile(feature_dir / "b.h5")
    feats, valid = ff.read()
    sl = ff.index.spec.token_slices()[mpp]
    tile_l0 = 224 * mpp / 0.5  # level-0 px of one tile (slide at 0.5 µm/px)
    with h5py.File(tmp_path / "b.h5", "r") as f:
        out_feats, coords = f["features"][()], f["coords"][()]
        attrs = dict(f["coords"].attrs)
        assert f.attrs["encoder"] == "tiny.d16" and f.attrs["name"] == "b"
    keep = valid[:, sl].reshape(-1)
    assert out_feats.dtype == np.float32 and coords.dtype == np.int64
    np.testing.assert_array_equal(out_feats, feats[:, sl].reshape(-1, 16)[keep])
    # each tile's own top-left: region origin + (col, row) * tile size, row-major inside the region
    expected = []
    for x0, y0 in ff.index.coords:
        expected += [(x0 + c * tile_l0, y0 + r * tile_l0) for r in range(per_side) for c in range(per_side)]
    np.testing.assert_array_equal(coords, np.asarray(expected, dtype=np.int64)[keep])
    assert set(attrs) >= TRIDENT_COORD_ATTRS
    assert attrs["patch_size"] == 224 and attrs["patch_size_level0"] == round(tile_l0)
    assert attrs["target_magnification"] == pytest.approx(10 / mpp) and attrs["level0_magnification"] == 20
    assert attrs["overlap"] == 0 and attrs["level0_width"] == 4 * 896


def test_all_tiles_and_resume(feature_dir, tmp_path) -> None:
    export_features(feature_dir, tmp_path, mag="20x", all_tiles=True, progress=False)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["features"].shape == (3 * 16, 16)
    again = export_features(feature_dir, tmp_path, mag="20x", progress=False)
    assert sorted(again.skipped) == ["a", "b"] and not again.written


def test_clam_export(feature_dir, tmp_path) -> None:
    export_features(feature_dir, tmp_path, fmt="clam", mag="20", progress=False)
    with h5py.File(tmp_path / "h5_files" / "a.h5", "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    assert coords.dtype == np.int32 and feats.shape[1] == 16 and len(coords) == len(feats)
    pt = torch.load(tmp_path / "pt_files" / "a.pt", weights_only=True)
    np.testing.assert_array_equal(pt.numpy(), feats)


def test_unknown_format_and_magnification(feature_dir, tmp_path) -> None:
    with pytest.raises(KeyError, match="export format"):
        export_features(feature_dir, tmp_path, fmt="stamp", progress=False)
    with pytest.raises(MixmagValueError, match="--mag 40x: the features in .* hold 5x, 10x, 20x; choose one"):
        export_features(feature_dir, tmp_path / "x", mag="40", progress=False)  # up front, not once per slide
    assert not (tmp_path / "x").exists()


def test_cli_export_and_embed_errors(feature_dir, tmp_path) -> None:
    from typer.testing import CliRunner

    from mixmag.cli.app import build_app

    runner = CliRunner()
    res = runner.invoke(build_app(), ["export", str(feature_dir), "--out", str(tmp_path / "t"), "--format",
                                      "trident", "--mag", "10", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "2 exported" in res.output and (tmp_path / "t" / "a.h5").exists()
    res = runner.invoke(build_app(), ["embed", str(feature_dir), "--out", str(tmp_path / "f"), "--encoder",
                                      "virchow", "--no-progress"])
    assert res.exit_code == 2 and "Did you mean: virchow2" in res.output
