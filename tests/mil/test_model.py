"""Instance sources and the MIL model: which instances each method sees, and end-to-end gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixmag.geometry import RegionSpec
from mixmag.mil.data import BagRegions
from mixmag.mil.estimator import MILClassifier
from mixmag.mil.methods import METHODS, PAPER_METHODS
from mixmag.region.model import build_region_encoder

SPEC = RegionSpec()


def _bag(r: int = 3, d: int = 4, seed: int = 0) -> BagRegions:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((r, 21, d)).astype(np.float32)
    feats[:, :, 0] = np.arange(21)  # feature 0 = token slot, to check what each source picks
    valid = np.ones((r, 21), bool)
    valid[0, 5:9] = False  # four invalid 20x tiles in region 0
    valid[1, 1] = False  # one invalid 10x tile in region 1
    return BagRegions.from_array(feats, valid, spec=SPEC)


def test_every_paper_method_is_registered_with_a_source() -> None:
    assert set(PAPER_METHODS) <= set(METHODS.keys())
    for key in PAPER_METHODS:
        METHODS.get(key).build_source()


@pytest.mark.parametrize(("method", "n_per_region", "slots"), [
    ("abmil-5x", 1, range(0, 1)), ("abmil-10x", 4, range(1, 5)), ("abmil-20x", 16, range(5, 21))])
def test_tile_sources_pick_valid_tiles_of_their_magnification(method: str, n_per_region: int, slots: range) -> None:
    bag = _bag()
    inp = METHODS.get(method).build_source().prepare(bag)
    expected = 3 * n_per_region - int((~bag.valid[:, slots.start:slots.stop]).sum())
    assert inp.x.shape == (expected, 4)
    assert set(inp.x[:, 0].int().tolist()) <= set(slots)
    assert bag.valid[inp.region, inp.token].all()
    np.testing.assert_array_equal(inp.x[:, 0].numpy(), inp.token)


def test_training_subsample_respects_limit_and_evaluation_uses_all() -> None:
    src = METHODS.get("abmil-20x").build_source()
    bag = _bag(r=10)
    assert src.prepare(bag, limit=7, rng=np.random.default_rng(0)).x.shape[0] == 7
    assert src.prepare(bag, limit=7).x.shape[0] == int(bag.valid[:, 5:].sum())  # no rng: evaluation
    region_src = METHODS.get("mix-mem").build_source()
    assert region_src.prepare(bag, limit=4, rng=np.random.default_rng(0)).x.shape[:2] == (4, 21)


def test_region_sources_with_a_real_tiny_encoder() -> None:
    torch.manual_seed(0)
    enc = build_region_encoder(tile_dim=4, spec=SPEC, preset="tiny").eval()
    bag = _bag()
    tok = METHODS.get("mix-mem").build_source()
    inst = tok.instances(tok.prepare(bag), enc)
    assert inst.x.shape == (int(bag.valid.sum()), enc.width)
    assert bag.valid[inst.region.numpy(), inst.token.numpy()].all()
    cls = METHODS.get("mix-mem-cls").build_source()
    inst_cls = cls.instances(cls.prepare(bag), enc, chunk=2)  # chunked encoding == one call
    assert inst_cls.x.shape == (3, enc.width) and (inst_cls.token == -1).all()
    torch.testing.assert_close(inst_cls.x, cls.instances(cls.prepare(bag), enc).x)


def test_encoder_is_fine_tuned_end_to_end_unless_frozen() -> None:
    torch.manual_seed(0)
    enc = build_region_encoder(tile_dim=4, spec=SPEC, preset="tiny")
    bags, y = [_bag(seed=i) for i in range(4)], [0, 1, 0, 1]
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    tuned = MILClassifier("mix-mem", encoder=enc, hidden_dim=8, attention_dim=4, epochs=1, device="cpu").fit(bags, y)
    frozen = MILClassifier("mix-mem", encoder=enc, hidden_dim=8, attention_dim=4, epochs=1, device="cpu",
                           freeze_encoder=True).fit(bags, y)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items()), "the estimator parameter is untouched"
    changed = [k for k, v in tuned.model_.encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert "proj.weight" in changed
    assert all(torch.equal(v, before[k]) for k, v in frozen.model_.encoder.state_dict().items())
    assert not torch.equal(frozen.model_.head.classifier.weight, tuned.model_.head.classifier.weight)


def test_mix_method_without_encoder_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs a region encoder"):
        MILClassifier("mix-mem", epochs=1).fit([_bag()] * 2, [0, 1])


@pytest.mark.parametrize("method", ["abmil-20x", "mix-mem", "mix-mem-cls"])
def test_a_padded_batch_gives_each_bag_its_own_logits(method: str) -> None:
    # bags of different lengths in one forward pass == each bag alone (padding is masked out)
    torch.manual_seed(0)
    enc = build_region_encoder(tile_dim=4, spec=SPEC, preset="tiny")
    clf = MILClassifier(method, encoder=enc, hidden_dim=8, attention_dim=4, dropout=0.0)
    model = clf.build_model(4, 2).eval()
    bags = [_bag(r=r, seed=r) for r in (2, 5, 3)]
    inputs = [model.source.prepare(b) for b in bags]
    with torch.no_grad():
        batched = model.forward_batch(inputs)
        alone = torch.stack([model(inp).logits for inp in inputs])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def test_instance_standardizer_fits_training_bags_and_rides_with_the_weights() -> None:
    from mixmag.mil.model import InstanceStandardizer

    rng = np.random.default_rng(0)
    x = rng.normal(loc=[5.0, -2.0, 0.0], scale=[10.0, 0.1, 1.0], size=(4000, 3))
    norm = InstanceStandardizer(3).fit_(torch.from_numpy(c) for c in np.array_split(x, 7))
    np.testing.assert_allclose(norm.mean.numpy(), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.std.numpy(), x.std(0), rtol=1e-5)
    z = norm(torch.from_numpy(x).float())
    np.testing.assert_allclose(z.std(0).numpy(), 1.0, rtol=1e-3)
    const = InstanceStandardizer(2).fit_([torch.tensor([[3.0, 1.0], [3.0, 2.0], [3.0, 4.0]])])
    assert float(const.std[0]) == 1.0  # a constant dimension is centred, not blown up

    bags, y = [_bag(seed=i) for i in range(4)], [0, 1, 0, 1]
    for b in bags:
        b.feats[..., 1] *= 1000.0  # one dominant dimension, as in real FM embeddings
    fitted = MILClassifier("abmil-20x", hidden_dim=8, attention_dim=4, epochs=1, device="cpu").fit(bags, y)
    seen = np.concatenate([b.feats[:, 5:][b.valid[:, 5:]] for b in bags])
    np.testing.assert_allclose(fitted.model_.instance_norm.mean.numpy(), seen.mean(0), rtol=1e-4, atol=1e-4)
    assert "instance_norm.std" in fitted.model_.state_dict()
    raw = MILClassifier("abmil-20x", standardize=False, hidden_dim=8, attention_dim=4, epochs=1,
                        device="cpu").fit(bags, y)
    assert torch.equal(raw.model_.instance_norm.std, torch.ones(4))
    assert MILClassifier("mix-mem", encoder=build_region_encoder(tile_dim=4, spec=SPEC, preset="tiny"),
                         hidden_dim=8, attention_dim=4).build_model(4, 2).instance_norm is None


def test_class_weights_reach_one_bag_steps() -> None:
    # cross_entropy(weight=w) on a single sample divides by w, cancelling it; the engine must not
    from mixmag.mil.train import TrainParams, train_one_epoch

    def loss_with(weights: list[float] | None) -> float:
        torch.manual_seed(0)
        clf = MILClassifier("abmil-20x", hidden_dim=8, attention_dim=4, dropout=0.0)
        model = clf.build_model(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        cw = None if weights is None else torch.tensor(weights)
        return train_one_epoch(model, [_bag(seed=1)], np.array([1]), opt, params=TrainParams(),
                               device=torch.device("cpu"), rng=np.random.default_rng(0), class_weight=cw)

    assert loss_with([1.0, 3.0]) == pytest.approx(3.0 * loss_with(None), rel=1e-6)


def test_grouped_prediction_equals_one_bag_at_a_time() -> None:
    from mixmag.mil.train import predict

    torch.manual_seed(0)
    enc = build_region_encoder(tile_dim=4, spec=SPEC, preset="tiny")
    bags = [_bag(r=r, seed=r) for r in (2, 5, 3, 4)]
    for method in ("abmil-20x", "mix-mem"):
        model = MILClassifier(method, encoder=enc, hidden_dim=8, attention_dim=4).build_model(4, 2)
        model.eval_chunk = 9  # groups of (2, 5), (3, 4)
        grouped = predict(model, bags, device=torch.device("cpu"))
        alone = predict(model, bags, device=torch.device("cpu"), attention=True)
        np.testing.assert_allclose(np.stack([p.prob for p in grouped]), np.stack([p.prob for p in alone]),
                                   rtol=1e-5, atol=1e-6)
