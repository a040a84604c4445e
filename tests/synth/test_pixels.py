"""The synthetic label needs both scales: checked quantitatively on generated pixels.

* the nuclear property (atypical chromatin) is obvious at 0.5 µm/px but a 2x/4x box-downsample
  (10x/5x) of an atypical unit equals that of the same unit with normal nuclei, even after JPEG;
* ring architecture is read perfectly from a 5x-scale mask of each 448-µm region;
* single 112-µm 20x tiles of ring walls and of broken-ring arcs have the same simple statistics.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tifffile
from scipy.ndimage import uniform_filter
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mixmag.synth.layout import ATYPICAL, NORMAL, RING, knobs_from_difficulty, plan_slide
from mixmag.synth.painter import render_slide
from mixmag.synth.tiff import write_pyramidal_tiff

SIZE = (2688, 1792)  # 3 x 2 full regions at 0.5 µm/px


def box(img: np.ndarray, f: int) -> np.ndarray:
    """f x f box-downsample (how 10x/5x tiles are made from the 0.5 µm/px mosaic)."""
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    x = img[:h, :w].astype(np.float64)
    return x.reshape(h // f, f, w // f, f, -1).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def slides() -> list:
    out = []
    for s in np.random.SeedSequence(7).spawn(2):
        plan_seed, paint_seed = s.spawn(2)
        plan = plan_slide(np.random.default_rng(plan_seed), label=0, width_px=SIZE[0], height_px=SIZE[1],
                          mpp=0.5, region_um=448.0, knobs=knobs_from_difficulty(0.5))
        out.append((plan, render_slide(plan, paint_seed).rgb))
    return out


def _jpeg_roundtrip(tmp_path, name: str, rgb: np.ndarray) -> np.ndarray:
    path = write_pyramidal_tiff(tmp_path / f"{name}.tiff", rgb, mpp=0.5, n_levels=1)
    return tifffile.imread(path)


def test_atypia_visible_at_20x_erased_at_10x_and_5x(tmp_path) -> None:
    plan_seed, paint_seed = np.random.SeedSequence(11).spawn(2)
    plan = plan_slide(np.random.default_rng(plan_seed), label=0, width_px=1792, height_px=1792, mpp=0.5,
                      region_um=448.0, knobs=knobs_from_difficulty(0.5))
    atyp, norm = copy.deepcopy(plan), copy.deepcopy(plan)
    for r in atyp.regions:
        r.nuclei = ATYPICAL
    for r in norm.regions:
        r.nuclei = NORMAL
    a_r = render_slide(atyp, paint_seed)
    b_r = render_slide(norm, paint_seed)
    mask = a_r.kind == 2  # interiors of atypical nuclei
    assert mask.mean() > 0.005
    assert np.array_equal(a_r.kind > 0, b_r.kind > 0)  # same nuclei: size, count and position
    a = _jpeg_roundtrip(tmp_path, "a", a_r.rgb)
    b = _jpeg_roundtrip(tmp_path, "b", b_r.rgb)
    diff20 = np.abs(a.astype(float) - b.astype(float)).mean(-1)[mask].mean()
    # 20x: the chromatin grain changes atypical nuclei by tens of grey levels per pixel
    assert diff20 > 15
    # and their pixel-level texture: local std inside nuclei is several times larger
    grey_a, grey_b = a.astype(float).mean(-1), b.astype(float).mean(-1)
    assert grey_a[mask].std() > 2.5 * grey_b[mask].std()
    for f in (2, 4):  # 10x and 5x
        cover = box(mask[..., None].astype(float), f)[..., 0] > 0.99
        da, db = box(a, f)[cover], box(b, f)[cover]
        assert np.abs(da - db).mean() < 2.0  # grey levels, vs > 15 at 20x
        assert np.abs(da.mean(0) - db.mean(0)).max() < 1.0  # same mean colour per channel
        assert 0.9 < da.std() / db.std() < 1.1  # same spread


def _ring_score(region_rgb: np.ndarray) -> float:
    """Residual of a circle fit to the nest mask of the 5x image (small = nests on one circle)."""
    x5 = box(region_rgb, 4)
    sm = uniform_filter(x5, (7, 7, 1))
    m = (sm[..., 2] > sm[..., 0]) & (sm.mean(-1) < 200)  # haematoxylin-rich nests, not background
    yy, xx = np.nonzero(m)
    a = np.stack([xx, yy, np.ones_like(xx)], 1).astype(float)
    c = np.linalg.lstsq(a, (xx**2 + yy**2).astype(float), rcond=None)[0]
    cx, cy = c[0] / 2, c[1] / 2
    radius = np.sqrt(c[2] + cx**2 + cy**2)
    return float(np.sqrt(((np.hypot(xx - cx, yy - cy) - radius) ** 2).mean()) / radius)


def test_ring_architecture_is_read_from_5x(slides) -> None:
    ring, other = [], []
    for plan, rgb in slides:
        for r in plan.regions:
            score = _ring_score(rgb[r.y_px: r.y_px + 896, r.x_px: r.x_px + 896])
            (ring if r.architecture == RING else other).append(score)
    assert ring and other
    assert max(ring) < 0.16 < min(other)  # perfectly separable at 5x


def _tile_features(tile: np.ndarray) -> list[float]:
    t = tile.astype(float)
    nest = t[..., 2] > t[..., 0]
    white = t.min(-1) > 225
    coarse = box(nest[..., None].astype(float), 28)[..., 0] > 0.2
    return [nest.mean(), white.mean(), coarse.mean(), *t.reshape(-1, 3).mean(0), *t.reshape(-1, 3).std(0)]


def test_single_20x_tile_cannot_tell_ring_wall(slides) -> None:
    feats, labels = [], []
    for plan, rgb in slides:
        for r in plan.regions:
            reg = rgb[r.y_px: r.y_px + 896, r.x_px: r.x_px + 896]
            for i in range(4):
                for j in range(4):
                    tile = reg[i * 224: (i + 1) * 224, j * 224: (j + 1) * 224]
                    f = _tile_features(tile)
                    if f[0] > 0.01:  # tiles showing epithelial nests
                        feats.append(f)
                        labels.append(r.architecture == RING)
    x, y = np.array(feats), np.array(labels)
    assert 0.2 < y.mean() < 0.8
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    proba = cross_val_predict(model, x, y, cv=5, method="predict_proba")[:, 1]
    auc = roc_auc_score(y, proba)
    assert auc < 0.7, f"20x tile statistics separate ring walls from arcs (AUROC {auc:.2f})"
