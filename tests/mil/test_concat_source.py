"""The ``concat`` instance source (abmil-ms-concat): per region, the mean valid tile of each scale side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mixmag.geometry import RegionSpec
from mixmag.mil.artifacts import predict_bag, read_attention
from mixmag.mil.data import BagRegions
from mixmag.mil.estimator import MILClassifier
from mixmag.mil.experiment import train_methods
from mixmag.mil.instances import INSTANCE_SOURCES, ScaleConcatSource
from mixmag.mil.methods import METHODS
from mixmag.synth.mil_features import SyntheticCohort

SPEC = RegionSpec()


def _bag(r: int = 4, d: int = 3, seed: int = 0) -> BagRegions:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((r, SPEC.n_tokens, d)).astype(np.float32)
    valid = np.ones((r, SPEC.n_tokens), bool)
    return BagRegions.from_array(feats, valid, spec=SPEC)


def test_registered_without_encoder() -> None:
    assert INSTANCE_SOURCES.get("concat") is ScaleConcatSource
    spec = METHODS.get("abmil-ms-concat")
    src = spec.build_source()
    assert isinstance(src, ScaleConcatSource) and not src.needs_encoder and spec.encoder is None
    assert src.instance_dim(7, None) == 21
    for bad in (None, "20x"):
        with pytest.raises(ValueError, match="joined by"):
            ScaleConcatSource(magnification=bad)


def test_masked_means_per_scale_in_order() -> None:
    bag = _bag()
    slices = [SPEC.token_slices()[m] for m in (2.0, 1.0, 0.5)]
    bag.valid[0, slices[2].start:slices[2].start + 4] = False  # four 20x tiles of region 0 are background
    bag.valid[1, slices[1]] = False  # region 1 has no valid 10x tile: all four are averaged
    bag.valid[2] = False  # region 2 has no tissue at all: dropped
    src = METHODS.get("abmil-ms-concat").build_source()
    inp = src.prepare(bag)
    np.testing.assert_array_equal(inp.region, [0, 1, 3])
    assert inp.x.shape == (3, 9) and inp.token is not None and (inp.token == -1).all()
    for i, row in enumerate(inp.region):
        expected = []
        for sl in slices:
            keep = bag.valid[row, sl] if bag.valid[row, sl].any() else np.ones(sl.stop - sl.start, bool)
            expected.append(bag.feats[row, sl][keep].mean(axis=0))
        np.testing.assert_allclose(inp.x[i].numpy(), np.concatenate(expected), rtol=1e-6)
    # training subsamples whole regions
    sub = src.prepare(bag, limit=2, rng=np.random.default_rng(0))
    assert len(sub.region) == 2 and set(sub.region) <= {0, 1, 3}


def test_padded_batch_gives_each_bag_its_own_logits() -> None:
    torch.manual_seed(0)
    model = MILClassifier("abmil-ms-concat", hidden_dim=8, attention_dim=4, dropout=0.0).build_model(3, 2).eval()
    bags = [_bag(r=r, seed=r) for r in (3, 6, 4)]
    model.fit_instance_norm(bags)
    inputs = [model.source.prepare(b) for b in bags]
    with torch.no_grad():
        batched = model.forward_batch(inputs)
        alone = torch.stack([model(inp).logits for inp in inputs])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def test_tiny_run_saves_a_model_that_reproduces_its_predictions(small_cohort: SyntheticCohort,
                                                                 tmp_path: Path) -> None:
    summary = train_methods(small_cohort.features_dir, small_cohort.labels_csv, tmp_path, methods=["abmil-ms-concat"],
                            folds=2, epochs=2, patience=2, lr=1e-3, hidden_dim=8, attention_dim=4, bootstrap=20,
                            device="cpu", progress=False)
    assert [(r.target, r.method) for r in summary.runs] == [("label", "abmil-ms-concat")] and not summary.skipped
    run = tmp_path / "label" / "abmil-ms-concat"
    preds = pd.read_csv(run / "predictions.csv", dtype={"slide_ids": str})
    att = next(iter(read_attention(next((run / "attention").glob("*.h5"))).values()))
    assert (att["instance_token"] == -1).all()  # one instance per region, like the CLS methods
    assert len(np.unique(att["instance_region"])) == len(att["instance_region"])
    row = preds.iloc[0]  # the saved fold model rebuilds the concat source (and its standardiser)
    expl = predict_bag(run / "folds" / f"fold_{row['fold']}" / "model.pt",
                       small_cohort.features_dir / f"{row['slide_ids']}.h5", device="cpu")
    assert expl.prob[1] == pytest.approx(row["prob"], abs=1e-5)
