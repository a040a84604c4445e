"""A labelled synthetic cohort: properties planted in one magnification's tokens, annotated as boxes.

8 slides x 60 regions, D = 8, the default 21-token layout. Tile embeddings are N(0, 1) noise;
``ring`` regions (only on the 4 positive slides) get +1.5 along a fixed direction on their *20x*
tokens, ``atypical`` regions (every slide) +3 along it on their *5x* token. A probe on the
20x tile mean must find ``ring`` and one on the 5x tile must not (and vice versa for ``atypical``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mixmag.geometry import RegionSpec
from mixmag.io.features import FeatureWriter
from mixmag.io.regions import RegionIndex

MPP0 = 0.25
D = 8
N_SLIDES, N_REGIONS, COLS = 8, 60, 8
SHIFT = 1.5  # on the mean of ~14 valid 20x tiles: well separated
SHIFT_5X = 3.0  # one 5x tile has no averaging, so it needs a larger shift for AUROC > 0.9


@dataclass(frozen=True)
class LabelledCohort:
    """Paths and ground truth of the labelled cohort."""

    features_dir: Path
    boxes_csv: Path
    slide_labels_csv: Path
    truth: dict[str, dict[str, np.ndarray]]  # slide -> property -> (R,) bool
    side: float  # region side, level-0 px


@pytest.fixture(autouse=True)
def _one_thread_and_visible_logs() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared CPU cores; tiny models gain nothing from threads
    logging.getLogger("mixmag").propagate = True  # a CLI test may have configured logging
    yield
    torch.set_num_threads(before)


def write_labelled_cohort(folder: Path, *, seed: int = 0) -> LabelledCohort:
    """Write the cohort described in the module docstring into ``folder``."""
    spec = RegionSpec()
    layout = spec.layout()
    fine = np.isclose(spec.layout().mpps, spec.finest_mpp)
    coarse = layout.mag_index == 0
    rng = np.random.default_rng(seed)
    direction = np.linalg.qr(rng.standard_normal((D, D)))[0][0]
    side = spec.region_size_level0(MPP0)
    feats_dir = folder / "features"
    boxes, slides = [], []
    truth: dict[str, dict[str, np.ndarray]] = {}
    for s in range(N_SLIDES):
        sid = f"S{s:02d}"
        positive = s % 2 == 1
        ring = (rng.random(N_REGIONS) < 0.3) & positive
        atypical = rng.random(N_REGIONS) < 0.3
        x = rng.standard_normal((N_REGIONS, spec.n_tokens, D)).astype(np.float32)
        x[ring[:, None] & fine[None, :]] += SHIFT * direction
        x[atypical[:, None] & coarse[None, :]] += SHIFT_5X * direction
        valid = rng.random((N_REGIONS, spec.n_tokens)) > 0.15
        valid[:, coarse] = True
        idx = np.arange(N_REGIONS)
        coords = np.stack([idx % COLS, idx // COLS], axis=1) * int(round(side))
        index = RegionIndex(coords=coords, tile_valid=valid, tissue_fraction=valid.astype(np.float32), spec=spec,
                            mpp_level0=MPP0, attrs={"slide_id": sid, "level0_width": COLS * 1792,
                                                    "level0_height": 8 * 1792})
        with FeatureWriter(feats_dir / f"{sid}.h5", index, embed_dim=D, attrs={"encoder": "synthetic"}) as w:
            w.write(0, x)
        truth[sid] = {"ring": ring, "atypical": atypical}
        for r in np.flatnonzero(ring | atypical):  # one box exactly covering each annotated region
            x0, y0 = coords[r]
            boxes.append({"slide_id": sid, "x0": x0, "y0": y0, "x1": x0 + side, "y1": y0 + side,
                          "ring": int(ring[r]), "atypical": int(atypical[r])})
        slides.append({"patient_id": f"P{s:02d}", "slide_id": sid, "label": int(positive)})
    boxes.append({"slide_id": "NOFEATURES", "x0": 0, "y0": 0, "x1": 10, "y1": 10, "ring": 1, "atypical": 0})
    pd.DataFrame(boxes).to_csv(folder / "boxes.csv", index=False)
    pd.DataFrame(slides).to_csv(folder / "slides.csv", index=False)
    return LabelledCohort(feats_dir, folder / "boxes.csv", folder / "slides.csv", truth, side)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> LabelledCohort:
    """The labelled cohort (written once per session)."""
    return write_labelled_cohort(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="session")
def mem_run(cohort: LabelledCohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MEM pretraining run folder (3 steps: checkpoint with decoder head + metrics.jsonl)."""
    from mixmag.region.pretrain import pretrain_region_encoder

    out = tmp_path_factory.mktemp("mem_run")
    torch.set_num_threads(1)
    pretrain_region_encoder(cohort.features_dir, out, objective="mem", preset="tiny", steps=3, batch_size=8,
                            num_workers=0, progress=False, device="cpu", checkpoint_every=0)
    return out


@pytest.fixture(scope="session")
def mil_runs(cohort: LabelledCohort, mem_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mixmag train`` output with a tile method (abmil-20x) and a region method (mix-mem-cls)."""
    from mixmag.mil.experiment import train_methods

    out = tmp_path_factory.mktemp("mil")
    torch.set_num_threads(1)
    train_methods(cohort.features_dir, cohort.slide_labels_csv, out, methods=["abmil-20x", "mix-mem-cls"],
                  checkpoints={"mem": mem_run}, folds=2, epochs=2, patience=2, lr=1e-3, hidden_dim=8,
                  attention_dim=4, bootstrap=20, region_preset="tiny", device="cpu", progress=False)
    return out
