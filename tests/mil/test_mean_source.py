"""The ``mean`` instance source (mix-mem-mean, mix-random-mean): one masked mean output token per region."""

from __future__ import annotations

import json
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
from mixmag.mil.instances import INSTANCE_SOURCES, TokenMeanSource
from mixmag.mil.methods import METHODS
from mixmag.region.model import RegionEncoder, build_region_encoder
from mixmag.synth.mil_features import SyntheticCohort

SPEC = RegionSpec()


def _bag(r: int = 4, d: int = 4, seed: int = 0) -> BagRegions:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((r, SPEC.n_tokens, d)).astype(np.float32)
    valid = np.ones((r, SPEC.n_tokens), bool)
    valid[0, 5:9] = False  # four invalid 20x tiles in region 0
    valid[1, 1] = False  # one invalid 10x tile in region 1
    valid[2] = False  # region 2 has no tissue: no instance
    return BagRegions.from_array(feats, valid, spec=SPEC)


@pytest.fixture(scope="module")
def encoder() -> RegionEncoder:
    torch.manual_seed(0)
    return build_region_encoder(tile_dim=4, spec=SPEC, preset="tiny").eval()


def test_registered_as_mean_with_two_methods() -> None:
    assert INSTANCE_SOURCES.get("mean") is TokenMeanSource
    for method, encoder in (("mix-mem-mean", "mem"), ("mix-random-mean", "random")):
        spec = METHODS.get(method)
        assert spec.source == "mean" and spec.encoder == encoder
        src = spec.build_source()
        assert isinstance(src, TokenMeanSource) and src.needs_encoder
    with pytest.raises(ValueError, match="every magnification"):
        TokenMeanSource(magnification="20x")


def test_one_masked_mean_of_valid_output_tokens_per_kept_region(encoder: RegionEncoder) -> None:
    bag = _bag()
    src = METHODS.get("mix-mem-mean").build_source()
    inp = src.prepare(bag)
    assert inp.valid is not None
    np.testing.assert_array_equal(inp.region, [0, 1, 3])  # the region without a valid token is dropped
    with torch.no_grad():
        inst = src.instances(inp, encoder)
        _, tokens = encoder.forward_features(inp.x, inp.valid)
    assert inst.x.shape == (3, encoder.width)
    assert inst.region.tolist() == [0, 1, 3] and inst.token.tolist() == [-1, -1, -1]
    for i, row in enumerate(inp.region):
        keep = torch.from_numpy(bag.valid[row])
        torch.testing.assert_close(inst.x[i], tokens[i][keep].mean(dim=0))
    # the invalid slots' outputs are not zero, so an unmasked mean would differ where tokens are missing
    assert not torch.allclose(inst.x[0], tokens[0].mean(dim=0), atol=1e-4)
    torch.testing.assert_close(inst.x[2], tokens[2].mean(dim=0))  # region 3 is fully valid


def test_equals_the_per_region_mean_of_the_token_source(encoder: RegionEncoder) -> None:
    # the same encoder outputs through the `tokens` source, averaged per region by hand
    bag = _bag(r=6, seed=1)
    mean_src, tok_src = METHODS.get("mix-mem-mean").build_source(), METHODS.get("mix-mem").build_source()
    with torch.no_grad():
        mean = mean_src.instances(mean_src.prepare(bag), encoder, chunk=2)  # chunked == one call
        tok = tok_src.instances(tok_src.prepare(bag), encoder)
    for i, row in enumerate(mean.region.tolist()):
        torch.testing.assert_close(mean.x[i], tok.x[tok.region == row].mean(dim=0), rtol=1e-5, atol=1e-6)
    assert set(tok.region.tolist()) == set(mean.region.tolist())


def test_padded_batch_gives_each_bag_its_own_logits() -> None:
    torch.manual_seed(0)
    enc = build_region_encoder(tile_dim=4, spec=SPEC, preset="tiny")
    model = MILClassifier("mix-mem-mean", encoder=enc, hidden_dim=8, attention_dim=4, dropout=0.0).build_model(
        4, 2).eval()
    inputs = [model.source.prepare(_bag(r=r, seed=r)) for r in (3, 6, 4)]
    with torch.no_grad():
        batched = model.forward_batch(inputs)
        alone = torch.stack([model(inp).logits for inp in inputs])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def test_tiny_mix_random_mean_run(small_cohort: SyntheticCohort, tmp_path: Path) -> None:
    summary = train_methods(small_cohort.features_dir, small_cohort.labels_csv, tmp_path, methods=["mix-random-mean"],
                            folds=2, epochs=2, patience=2, lr=1e-3, hidden_dim=8, attention_dim=4, bootstrap=20,
                            region_preset="tiny", device="cpu", progress=False)
    assert [(r.target, r.method) for r in summary.runs] == [("label", "mix-random-mean")] and not summary.skipped
    run = tmp_path / "label" / "mix-random-mean"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_bags"] == 16 and set(metrics["fold_auroc"]) == {"0", "1"}
    assert 0.0 <= metrics["pooled_auroc"] <= 1.0
    preds = pd.read_csv(run / "predictions.csv", dtype={"slide_ids": str})
    assert len(preds) == 16 and preds["prob"].between(0, 1).all()
    att = next(iter(read_attention(next((run / "attention").glob("*.h5"))).values()))
    assert (att["instance_token"] == -1).all() and np.isnan(att["instance_mpp"]).all()  # like the CLS methods
    assert len(np.unique(att["instance_region"])) == len(att["instance_region"])  # one instance per region
    assert att["region_attention"].sum() == pytest.approx(1.0, abs=1e-5)
    row = preds.iloc[0]  # the saved fold model rebuilds the mean source and reproduces its prediction
    expl = predict_bag(run / "folds" / f"fold_{row['fold']}" / "model.pt",
                       small_cohort.features_dir / f"{row['slide_ids']}.h5", device="cpu")
    assert expl.prob[1] == pytest.approx(row["prob"], abs=1e-5)
