"""The reviewers' baselines as registered methods (docs/concepts/evaluation.md#baselines).

``abmil-20x-context`` (pseudo-10x/5x context pooled from 20x features), ``mix-mem-frozen`` /
``mix-cmem-frozen`` (pretrained encoder kept fixed) and ``transmil-20x`` (the TransMIL head over
20x tiles): their instances, their heads, and a cross-validated run through ``train_methods`` and
``compare_runs``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import StratifiedKFold

from mixmag.errors import MixmagValueError
from mixmag.evaluate.compare import compare_runs, methods_in_order
from mixmag.evaluate.metrics import auroc
from mixmag.geometry import RegionSpec
from mixmag.mil.abmil import HEADS
from mixmag.mil.artifacts import predict_bag, read_attention
from mixmag.mil.data import BagDataset, BagRegions, FeatureStore
from mixmag.mil.estimator import MILClassifier
from mixmag.mil.experiment import train_methods
from mixmag.mil.instances import INSTANCE_SOURCES, ContextSource
from mixmag.mil.labels import build_bags, read_labels
from mixmag.mil.methods import BASELINE_METHODS, METHODS, PAPER_METHODS
from mixmag.mil.settings import METHOD_KEYS
from mixmag.mil.transmil import TransMIL, n_heads
from mixmag.region.model import build_region_encoder
from mixmag.synth.mil_features import SyntheticCohort

# (spec, first 20x token slot, 20x tiles per side): the default three levels, two levels, 20x alone
SPECS = [(RegionSpec(), 5, 4), (RegionSpec(mpps=(1.0, 0.5)), 4, 4), (RegionSpec(region_um=896, mpps=(0.5,)), 0, 8)]


def _dataset(cohort: SyntheticCohort) -> BagDataset:
    store = FeatureStore(cohort.features_dir)
    assert store.check(cohort.labels["slide_id"]) == {}
    tb = build_bags(read_labels(cohort.labels_csv), "label", available_slides=store.paths)
    return BagDataset(store, tb.bags)


def _bag(spec: RegionSpec, offset: int, n: int, *, seed: int = 0) -> BagRegions:
    """Three regions of 2-D features; region 0 has background 20x tiles (NaN), region 2 has none valid."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((3, spec.n_tokens, 2)).astype(np.float32)
    valid = np.ones((3, spec.n_tokens), bool)
    valid[0, [offset, offset + 1, offset + n + 1]] = False  # a whole 2x2 block but one tile, in region 0
    valid[0, offset + n * n - 1] = False  # and the last tile
    valid[2, offset:] = False  # region 2: no valid 20x tile (its coarser tokens stay valid)
    feats[~valid] = np.nan  # background may hold anything
    return BagRegions.from_array(feats, valid, spec=spec)


def _by_hand(bag: BagRegions, offset: int, n: int) -> tuple[list[int], list[int], np.ndarray]:
    """[tile, mean of its valid 2x2 block, mean of its region's valid 20x tiles] per valid 20x tile, by loops."""
    regions, tokens, rows = [], [], []
    for reg in range(bag.feats.shape[0]):
        ok = [offset + i for i in range(n * n) if bag.valid[reg, offset + i]]
        for r in range(n):
            for c in range(n):
                slot = offset + r * n + c
                if not bag.valid[reg, slot]:
                    continue
                block = [offset + rr * n + cc for rr in (r - r % 2, r - r % 2 + 1) for cc in (c - c % 2, c - c % 2 + 1)]
                block = [s for s in block if bag.valid[reg, s]]
                regions.append(reg)
                tokens.append(slot)
                rows.append(np.concatenate([bag.feats[reg, slot], bag.feats[reg, block].mean(axis=0),
                                            bag.feats[reg, ok].mean(axis=0)]))
    return regions, tokens, np.asarray(rows)


def test_baselines_are_registered_but_not_run_by_default() -> None:
    assert set(BASELINE_METHODS) <= set(METHODS.keys()) and not set(BASELINE_METHODS) & set(PAPER_METHODS)
    assert INSTANCE_SOURCES.get("context") is ContextSource and HEADS.get("transmil") is TransMIL
    ctx = METHODS.get("abmil-20x-context")
    assert ctx.encoder is None and ctx.build_source().instance_dim(8, None) == 24
    for key, role in (("mix-mem-frozen", "mem"), ("mix-cmem-frozen", "cmem")):
        spec = METHODS.get(key)
        assert spec.source == "tokens" and spec.encoder == role and spec.freeze_encoder
    tm = METHODS.get("transmil-20x")
    assert (tm.source, tm.magnification, tm.head, tm.encoder) == ("tiles", "20x", "transmil", None)


def test_config_and_cli_know_the_baselines_without_importing_torch() -> None:
    # `mixmag train --methods` and a study's `mil.methods` are checked against the built-in list
    # before the method registry (torch) is imported
    assert set(METHODS.keys()) <= set(METHOD_KEYS.builtin)


@pytest.mark.parametrize(("spec", "offset", "n"), SPECS, ids=["5x-10x-20x", "10x-20x", "20x-896um"])
def test_context_instances_match_a_hand_computation(spec: RegionSpec, offset: int, n: int) -> None:
    bag = _bag(spec, offset, n)
    inp = METHODS.get("abmil-20x-context").build_source().prepare(bag)
    regions, tokens, expected = _by_hand(bag, offset, n)
    np.testing.assert_array_equal(inp.region, regions)
    np.testing.assert_array_equal(inp.token, tokens)
    assert 2 not in inp.region  # a region without a valid 20x tile has no instance
    assert inp.x.shape == (len(tokens), 6) and torch.isfinite(inp.x).all()
    np.testing.assert_allclose(inp.x.numpy(), expected, rtol=1e-6)


def test_context_ignores_the_coarser_tokens_and_keeps_context_under_subsampling() -> None:
    spec, offset, n = SPECS[0]
    bag = _bag(spec, offset, n)
    src = METHODS.get("abmil-20x-context").build_source()
    full = src.prepare(bag)
    other = BagRegions.from_array(bag.feats.copy(), bag.valid.copy(), spec=spec)
    other.feats[:, :offset] = np.random.default_rng(1).standard_normal(other.feats[:, :offset].shape) * 1e6
    other.valid[:, :offset] = ~other.valid[:, :offset]  # even their validity does not matter
    changed = src.prepare(other)
    torch.testing.assert_close(changed.x, full.x, rtol=0, atol=0)
    np.testing.assert_array_equal(changed.token, full.token)
    sub = src.prepare(bag, limit=5, rng=np.random.default_rng(0))  # training: a subset, same context
    assert len(sub.region) == 5
    pos = {(r, t): i for i, (r, t) in enumerate(zip(full.region, full.token, strict=True))}
    keep = [pos[(r, t)] for r, t in zip(sub.region, sub.token, strict=True)]
    torch.testing.assert_close(sub.x, full.x[keep], rtol=0, atol=0)


@pytest.mark.parametrize(("spec", "match"), [
    (RegionSpec(mpps=(2.0, 1.0)), "no 20x tokens"),  # no 20x level at all
    (RegionSpec(region_um=336, mpps=(0.5,)), "3x3 20x tiles"),  # 2x2 blocks do not tile a 3x3 grid
    (RegionSpec(region_um=112, mpps=(0.5,)), "1x1 20x tiles"),  # one tile: nothing to pool
])
def test_context_refuses_a_spec_it_cannot_pool(spec: RegionSpec, match: str) -> None:
    bag = BagRegions.from_array(np.zeros((1, spec.n_tokens, 2), np.float32), spec=spec)
    with pytest.raises(MixmagValueError, match=match):
        METHODS.get("abmil-20x-context").build_source().prepare(bag)


def test_frozen_methods_leave_the_encoder_unchanged(small_cohort: SyntheticCohort) -> None:
    ds = _dataset(small_cohort)
    torch.manual_seed(0)
    encoder = build_region_encoder(tile_dim=8, spec=RegionSpec(), preset="tiny")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    fitted = {}
    for method in ("mix-mem-frozen", "mix-mem"):  # mix-mem: the control that fine-tunes it
        clf = MILClassifier(method, encoder=encoder, hidden_dim=8, attention_dim=4, epochs=2, lr=1e-2,
                            device="cpu").fit(ds, ds.labels)
        fitted[method] = clf.model_.encoder.state_dict()
    for key, value in before.items():
        torch.testing.assert_close(fitted["mix-mem-frozen"][key], value, rtol=0, atol=0)
    assert any(not torch.equal(fitted["mix-mem"][k], v) for k, v in before.items())


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(4, 11, 12)
    mask = torch.zeros(4, 11, dtype=torch.bool)
    for b, n in enumerate((11, 6, 1, 3)):  # 1 and 3 instances: PPEG grids of 1x1 and 2x2 (wrapped)
        mask[b, :n] = True
    x[~mask] = float("nan")  # padding may hold anything
    return x, mask


def test_transmil_shapes_attention_and_padding() -> None:
    torch.manual_seed(0)
    head = HEADS.get("transmil")(12, n_classes=3, hidden_dim=16, attention_dim=8, dropout=0.1).eval()
    x, mask = _padded_batch()
    out = head(x, mask)
    assert out.logits.shape == (4, 3) and out.attention.shape == (4, 11)
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.attention.sum(dim=1), torch.ones(4))
    assert (out.attention[~mask] == 0).all() and (out.attention[mask] > 0).all()
    for b in range(4):  # each bag alone, without padding: the same logits and attention
        n = int(mask[b].sum())
        alone = head(x[b:b + 1, :n])
        torch.testing.assert_close(alone.logits[0], out.logits[b], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(alone.attention[0], out.attention[b, :n], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least one valid instance"):
        head(x, torch.zeros_like(mask))


def test_transmil_runs_under_half_precision_autocast() -> None:
    # CUDA training runs in bf16/fp16 autocast; the CPU autocast exercises the same dtype paths
    torch.manual_seed(0)
    head = HEADS.get("transmil")(12, n_classes=2, hidden_dim=16, attention_dim=16, dropout=0.0)
    x, mask = _padded_batch()
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            out = head(x, mask)
        out.logits.float().sum().backward()
        assert torch.isfinite(out.logits.float()).all() and (out.attention[~mask] == 0).all()
        torch.testing.assert_close(out.attention.sum(dim=1), torch.ones(4))


def test_transmil_splits_layers_into_heads_of_at_least_8_dimensions() -> None:
    assert [n_heads(w) for w in (512, 256, 64, 32, 24, 16, 12, 4)] == [8, 8, 8, 4, 2, 2, 1, 1]


def test_transmil_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    head = HEADS.get("transmil")(12, n_classes=2, hidden_dim=16, attention_dim=8, dropout=0.0)
    x, mask = _padded_batch()
    head(x, mask).logits.sum().backward()
    missing = [name for name, p in head.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_transmil_finds_a_rare_instance_type(rare_cohort: SyntheticCohort) -> None:
    """Positives hold 1-2 rare 20x tiles among ~75: out-of-fold AUROC must exceed 0.9.

    Observed on the reference machine: AUROC 0.96 (2-fold, 10 epochs, ~5 s; 0.96-1.00 over model
    seeds 0-4). With 8 heads of 2 dimensions instead of 2 of 8 (``transmil.MIN_HEAD_DIM``) some
    seeds stayed below 0.75.
    """
    ds = _dataset(rare_cohort)
    y = ds.labels
    oof = np.zeros(len(y))
    for train, test in StratifiedKFold(2, shuffle=True, random_state=0).split(y, y):
        clf = MILClassifier("transmil-20x", hidden_dim=32, attention_dim=16, epochs=10, lr=1e-3, device="cpu")
        clf.fit([ds[i] for i in train], y[train])
        oof[test] = clf.predict_proba([ds[i] for i in test])[:, 1]
    score = auroc(y, oof)
    assert score > 0.9, f"TransMIL AUROC on the rare-instance task: {score:.3f}"


def test_train_methods_runs_the_baselines_into_the_comparison(small_cohort: SyntheticCohort, tmp_path: Path,
                                                             tiny_checkpoint: Callable[..., Path]) -> None:
    ckpts = {role: tiny_checkpoint(tmp_path / f"ckpt_{role}", tile_dim=8, objective=role) for role in ("mem", "cmem")}
    out = tmp_path / "runs"
    methods = ["abmil-20x", *BASELINE_METHODS]
    summary = train_methods(small_cohort.features_dir, small_cohort.labels_csv, out, methods=methods,
                            checkpoints=ckpts, folds=2, epochs=2, patience=2, lr=1e-3, hidden_dim=8, attention_dim=4,
                            bootstrap=20, region_preset="tiny", device="cpu", progress=False)
    assert [r.method for r in summary.runs] == methods and not summary.skipped
    table = compare_runs([out], n_boot=20)
    assert methods_in_order(table) == ["abmil-20x", "abmil-20x-context", "transmil-20x", "mix-mem-frozen",
                                       "mix-cmem-frozen"]
    rows = table[table["target"] == "label"].set_index("method")
    assert rows.loc[list(BASELINE_METHODS), "delta"].notna().all()  # each compared with abmil-20x
    for method in ("abmil-20x-context", "transmil-20x"):  # saved fold models rebuild source and head
        run = out / "label" / method
        preds = pd.read_csv(run / "predictions.csv", dtype={"slide_ids": str})
        row = preds.iloc[0]
        expl = predict_bag(run / "folds" / f"fold_{row['fold']}" / "model.pt",
                           small_cohort.features_dir / f"{row['slide_ids']}.h5", device="cpu")
        assert expl.prob[1] == pytest.approx(row["prob"], abs=1e-5)
        att = next(iter(read_attention(next((run / "attention").glob("*.h5"))).values()))
        assert (att["instance_token"] >= 5).all()  # 20x tiles only
        assert att["attention"].sum() == pytest.approx(1.0, abs=1e-4)
