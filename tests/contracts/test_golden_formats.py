"""Golden files: today's readers must read every version of every artifact mixmag ever wrote.

The files live in ``tests/data/formats/`` (see its README.md) and are never regenerated. A reader
change that breaks one of these tests breaks users' files on disk: keep the old version readable
(an explicit upgrade in the reader) and bump the writer's ``format_version`` instead.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from mixmag.evaluate.metrics import auroc
from mixmag.evaluate.splits import read_splits
from mixmag.geometry import RegionSpec
from mixmag.io.features import FEATURE_VERSION, FeatureFile, is_complete_feature_file
from mixmag.io.h5common import FormatError
from mixmag.io.manifest import Manifest, Status, read_manifest
from mixmag.io.region_embeddings import (
    REGION_EMBEDDINGS_VERSION,
    RegionEmbeddingFile,
    is_complete_region_embeddings,
)
from mixmag.io.regions import REGION_INDEX_VERSION, read_region_index
from mixmag.mil.artifacts import (
    ATTENTION_VERSION,
    MODEL_VERSION,
    load_fold_model,
    predict_bag,
    read_attention,
)
from mixmag.mil.runfolder import METRICS_VERSION, prob_matrix, read_metrics_json, read_predictions
from mixmag.pipeline.ledger import StageLedger
from mixmag.region.checkpoints import (
    CHECKPOINT_VERSION,
    SUPPORTED_CHECKPOINT_VERSIONS,
    check_layout,
    load_checkpoint_tensors,
    load_region_encoder,
    read_checkpoint_config,
)
from mixmag.utils.hashing import sha256_file

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "formats"
FEATURES = GOLDEN / "feature_store" / "v1.h5"
COORDS = [[104, 102], [1000, 102]]  # the two regions of the golden slide, level-0 px
INVALID = {0: [5, 17], 1: [8, 20]}  # token slots without enough tissue, per region
CHECKPOINTS = {  # golden folder -> (format_version in config.json, has encoder.input_* on disk)
    "v2": (2, True),
    "v1": (1, True),  # written from ece22c8 (input standardisation) until the bump to v2
    "v1_pre_input_stats": (1, False),  # written before ece22c8 by the old writer (commit 82ea7f3)
}
MIL_MODELS = ["v1_abmil-20x", "v1_mix-mem", "v1_pre_standardisation_abmil-20x", "v1_pre_standardisation_mix-mem"]


@pytest.fixture(autouse=True)
def _visible_logs() -> None:
    torch.set_num_threads(1)
    # a CLI test may have run configure_logging(), which stops propagation to caplog's root handler
    logging.getLogger("mixmag").propagate = True


def _expected(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.with_name(path.name + ".expected.json").read_text(encoding="utf-8"))
    return data


def _golden_features() -> tuple[np.ndarray, np.ndarray]:
    with FeatureFile(FEATURES) as ff:
        return ff.read()


def _slide_folder(tmp_path: Path) -> Path:
    """A folder holding only the golden slide's feature file (what ``predict_bag`` reads)."""
    folder = tmp_path / "features"
    folder.mkdir()
    shutil.copy2(FEATURES, folder / "golden.h5")
    return folder / "golden.h5"


def test_every_current_format_version_has_a_golden_file() -> None:
    """Bumping a format_version without adding its golden file fails here (see the README)."""
    required = [
        f"region_index/v{REGION_INDEX_VERSION}.h5", f"feature_store/v{FEATURE_VERSION}.h5",
        f"region_embeddings/v{REGION_EMBEDDINGS_VERSION}_cls.h5", f"region_embeddings/v{REGION_EMBEDDINGS_VERSION}_tokens.h5",
        *(f"region_checkpoint/v{v}/config.json" for v in SUPPORTED_CHECKPOINT_VERSIONS),
        f"mil_model/v{MODEL_VERSION}_abmil-20x.pt", f"mil_model/v{MODEL_VERSION}_mix-mem.pt",
        f"mil_attention/v{ATTENTION_VERSION}.h5", f"mil_metrics/v{METRICS_VERSION}.json",
    ]
    missing = [name for name in required if not (GOLDEN / name).is_file()]
    assert not missing, f"no golden file for {missing}: run tests/data/formats/make_golden.py"
    assert max(SUPPORTED_CHECKPOINT_VERSIONS) == CHECKPOINT_VERSION
    total = sum(p.stat().st_size for p in GOLDEN.rglob("*") if p.is_file())
    assert total < 1_500_000, "golden files are meant to be tiny"


@pytest.mark.parametrize(("name", "reader"), [
    ("region_index/v1.h5", read_region_index), ("feature_store/v1.h5", FeatureFile),
    ("region_embeddings/v1_cls.h5", RegionEmbeddingFile), ("mil_attention/v1.h5", read_attention)])
def test_hdf5_readers_refuse_files_of_a_newer_version(name: str, reader: Any, tmp_path: Path) -> None:
    path = shutil.copy2(GOLDEN / name, tmp_path / "future.h5")
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(FormatError, match="format_version 99 is not supported.*newer mixmag"):
        reader(path)


# ----------------------------------------------------------------------------- tiling and embedding
def test_region_index_v1() -> None:
    index = read_region_index(GOLDEN / "region_index" / "v1.h5")
    assert index.n_regions == 2 and index.coords.tolist() == COORDS
    assert index.spec == RegionSpec() and index.mpp_level0 == 0.5 and index.slide_id == "golden"
    assert index.tile_valid.shape == index.tissue_fraction.shape == (2, 21)
    assert {r: np.flatnonzero(~index.tile_valid[r]).tolist() for r in (0, 1)} == INVALID
    assert index.tissue_fraction.min() >= 0 and index.tissue_fraction.max() <= 1
    np.testing.assert_allclose(index.tissue_fraction[0, :3], [0.7439214, 0.58617663, 0.9016263], rtol=1e-6)
    attrs = index.attrs
    assert (attrs["artifact"], attrs["format_version"]) == ("region_index", 1)
    assert (attrs["reader"], attrs["level0_width"], attrs["level0_height"]) == ("openslide", 2000, 1100)
    assert attrs["region_size_level0_px"] == 896 and attrs["target_mpps"] == [2.0, 1.0, 0.5]
    assert attrs["tissue_params"]["min_tissue"] == 0.25 and attrs["slide_hash"].startswith("q1:")
    # the 20x tile grid of the first region starts at its top-left corner
    assert index.tile_coords_level0(0.5)[0].tolist() == COORDS[0]
    with h5py.File(GOLDEN / "region_index" / "v1.h5") as f:  # what TRIDENT/CLAM loaders read
        c = f["coords"].attrs
        assert (c["patch_size"], c["patch_size_level0"], c["level0_magnification"]) == (896, 896, 20.0)
        assert f["token_mag"][()].tolist() == [5.0] + [10.0] * 4 + [20.0] * 16


def test_feature_store_v1() -> None:
    ff = FeatureFile(FEATURES)
    assert ff.shape == (2, 21, 16) and ff.embed_dim == 16 and ff.encoder == "tiny.d16"
    assert (ff.attrs["artifact"], ff.attrs["format_version"], ff.attrs["complete"]) == ("feature_store", 1, True)
    assert ff.attrs["weights_hash"] == "random" and ff.attrs["transform"]["input_px"] == 224
    assert ff.index.coords.tolist() == COORDS
    np.testing.assert_array_equal(ff.index.tile_valid, read_region_index(GOLDEN / "region_index" / "v1.h5").tile_valid)
    feats, valid = ff.read()
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    np.testing.assert_array_equal(feats[0, 0, :4], np.float16([-0.24414062, -0.04129028, 0.18811035, 0.02410889]))
    np.testing.assert_array_equal(feats[1, 20, -2:], np.float16([0.19616699, -0.02964783]))
    back, valid_back = ff.read([1, 0])
    np.testing.assert_array_equal(back, feats[::-1])
    np.testing.assert_array_equal(valid_back, valid[::-1])
    ff.close()
    assert is_complete_feature_file(FEATURES, {"encoder": "tiny.d16"})


def test_trident_and_clam_exports() -> None:
    """Exports have no format_version: their layout is TRIDENT's/CLAM's, and must not drift."""
    feats, valid = _golden_features()
    sl = RegionSpec().token_slices()[0.5]
    keep = valid[:, sl].reshape(-1)
    rows = feats[:, sl].reshape(-1, 16)[keep]  # the valid 20x tiles, region-major
    coords = read_region_index(GOLDEN / "region_index" / "v1.h5").tile_coords_level0(0.5)[keep]
    with h5py.File(GOLDEN / "trident_export" / "trident.h5") as f:
        assert f["features"].dtype == np.float32 and f["coords"].dtype == np.int64
        np.testing.assert_array_equal(f["features"][()], rows)
        assert f["coords"].shape == (28, 2) and f["coords"][0].tolist() == [328, 102]  # slot 5 has no tissue
        np.testing.assert_array_equal(f["coords"][()], coords)
        c = f["coords"].attrs
        assert (c["patch_size"], c["patch_size_level0"], c["target_magnification"]) == (224, 224, 20.0)
        assert f.attrs["name"] == "golden" and f.attrs["encoder"] == "tiny.d16"
    with h5py.File(GOLDEN / "trident_export" / "clam.h5") as f:
        assert f["coords"].dtype == np.int32 and not f["coords"].attrs
        np.testing.assert_array_equal(f["features"][()], rows)
        np.testing.assert_array_equal(f["coords"][()], coords)
    pt = torch.load(GOLDEN / "trident_export" / "clam.pt", weights_only=True)
    np.testing.assert_array_equal(pt.numpy(), rows)


# ----------------------------------------------------------------------------- region encoder
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_region_checkpoint_loads_and_reproduces_its_outputs(name: str, caplog: pytest.LogCaptureFixture) -> None:
    folder = GOLDEN / "region_checkpoint" / name
    version, has_stats = CHECKPOINTS[name]
    assert read_checkpoint_config(folder)["format_version"] == version
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        encoder, info = load_region_encoder(folder / "model.safetensors")
    upgraded = [r for r in caplog.records if "before input standardisation" in r.getMessage()]
    assert bool(upgraded) == (not has_stats)  # the upgrade is logged, and only when it does something
    assert (info["format_version"], info["objective"], info["step"]) == (version, "mem", 0)
    assert (info["tile_dim"], info["width"], info["n_tokens"]) == (16, 32, 21) and info["spec"] == RegionSpec()
    assert info["checkpoint_hash"] == sha256_file(folder / "model.safetensors")
    assert info["target_mean"].shape == info["target_std"].shape == (16,)
    if has_stats:  # pretraining standardises the encoder's inputs with the target statistics
        np.testing.assert_array_equal(encoder.input_mean.numpy(), info["target_mean"])
        np.testing.assert_array_equal(encoder.input_std.numpy(), info["target_std"])
    else:  # v1 -> v2 upgrade: the encoder was trained on raw embeddings -> identity
        assert not encoder.input_mean.any() and bool((encoder.input_std == 1).all())
    tensors = load_checkpoint_tensors(folder)
    assert {"encoder.input_mean", "encoder.input_std", "stats.target_mean", "stats.target_std"} <= set(tensors)
    assert any(k.startswith("head.decoder.") for k in tensors)
    ff = FeatureFile(FEATURES)
    check_layout(info, tile_dim=ff.embed_dim, spec=ff.index.spec, source="golden features")

    expected = _expected(folder)
    feats, valid = _golden_features()
    with torch.no_grad():
        cls, tokens = encoder.forward_features(torch.from_numpy(feats), torch.from_numpy(valid))
    np.testing.assert_allclose(cls.numpy(), expected["cls"], atol=expected["atol"], rtol=0)
    np.testing.assert_allclose(tokens[:, expected["token_slots"]].numpy(), expected["tokens"],
                               atol=expected["atol"], rtol=0)


def test_v1_checkpoint_without_statistics_keeps_its_own_outputs() -> None:
    """The upgrade must reproduce the old encoder, not apply the (never used) target statistics."""
    old = _expected(GOLDEN / "region_checkpoint" / "v1_pre_input_stats")
    new = _expected(GOLDEN / "region_checkpoint" / "v2")
    assert old["commit"] == "82ea7f3"  # outputs computed by the writer's own code
    assert np.abs(np.asarray(old["cls"]) - np.asarray(new["cls"])).max() > 0.1


def test_checkpoint_versions_outside_the_supported_range_are_refused(tmp_path: Path) -> None:
    future = shutil.copytree(GOLDEN / "region_checkpoint" / "v2", tmp_path / "future")
    meta = json.loads((future / "config.json").read_text(encoding="utf-8"))
    (future / "config.json").write_text(json.dumps({**meta, "format_version": CHECKPOINT_VERSION + 1}))
    with pytest.raises(FormatError, match="newer mixmag"):
        load_region_encoder(future)
    # a current-version folder must hold what the version guarantees: no silent identity
    damaged = shutil.copytree(GOLDEN / "region_checkpoint" / "v1_pre_input_stats", tmp_path / "damaged")
    (damaged / "config.json").write_text(json.dumps({**meta, "format_version": CHECKPOINT_VERSION}))
    with pytest.raises(FormatError, match="input_mean"):
        load_region_encoder(damaged)


def test_region_embeddings_v1_cls() -> None:
    path = GOLDEN / "region_embeddings" / "v1_cls.h5"
    f = RegionEmbeddingFile(path)
    assert (f.mode, f.width, f.n_regions, f.spec) == ("cls", 32, 2, RegionSpec())
    assert f.region_coords.tolist() == COORDS
    a = f.attrs
    assert (a["artifact"], a["format_version"], a["objective"], a["tile_encoder"]) == (
        "region_embeddings", 1, "mem", "tiny.d16")
    assert a["checkpoint_path"] == "region_checkpoint/v2" and a["source_feature_file"] == "feature_store/v1.h5"
    assert a["checkpoint_hash"] == sha256_file(GOLDEN / "region_checkpoint" / "v2" / "model.safetensors")
    assert a["encoder_config"]["width"] == 32 and a["tile_embed_dim"] == 16
    cls, valid = f.read()
    assert cls.shape == (2, 32) and valid.tolist() == [True, True]
    expected = _expected(GOLDEN / "region_checkpoint" / "v2")  # encoded with the golden v2 checkpoint
    np.testing.assert_allclose(cls, expected["cls"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(f.read([1])[0], cls[1:])
    assert is_complete_region_embeddings(path, {"mode": "cls", "checkpoint_hash": a["checkpoint_hash"]})
    with h5py.File(path) as h:  # the TRIDENT view: features + coords, region_coords the same dataset
        assert h["features"].shape == (2, 32) and h["coords"][()].tolist() == h["region_coords"][()].tolist()


def test_region_embeddings_v1_tokens() -> None:
    path = GOLDEN / "region_embeddings" / "v1_tokens.h5"
    f = RegionEmbeddingFile(path)
    assert (f.mode, f.width, f.n_regions) == ("tokens", 32, 2)
    tokens, valid = f.read()
    assert tokens.shape == (2, 21, 32) and valid.shape == (2, 21)
    assert {r: np.flatnonzero(~valid[r]).tolist() for r in (0, 1)} == INVALID
    expected = _expected(GOLDEN / "region_checkpoint" / "v2")
    np.testing.assert_allclose(tokens[:, expected["token_slots"]], expected["tokens"], atol=2e-2, rtol=0)  # float16
    with h5py.File(path) as h:
        assert h["features"].is_virtual and h["features"].shape == (42, 32)
        np.testing.assert_array_equal(h["features"][()], h["tokens"][()].reshape(42, 32))
        assert h["coords"].shape == (42, 2) and h["coords"][0].tolist() == COORDS[0]
        assert h["valid"][()].tolist() == valid.reshape(-1).tolist()
        assert h["region_coords"][()].tolist() == COORDS


# ----------------------------------------------------------------------------- MIL run folder
@pytest.mark.parametrize("name", MIL_MODELS)
def test_mil_model_loads_and_reproduces_its_predictions(name: str, tmp_path: Path) -> None:
    path = GOLDEN / "mil_model" / f"{name}.pt"
    method = name.rsplit("_", 1)[-1]
    clf, spec = load_fold_model(path)
    assert (clf.method, clf.classes_.tolist(), clf.n_features_in_, spec) == (method, ["0", "1"], 16, RegionSpec())
    assert (clf.hidden_dim, clf.attention_dim) == (8, 8)
    model = clf.model_
    if method == "abmil-20x":
        assert model.encoder is None and model.instance_norm is not None
        fitted = bool((model.instance_norm.std != 1).any())
        assert fitted == ("pre_standardisation" not in name)  # older files: identity standardisation
    else:
        assert model.encoder is not None and model.instance_norm is None
        assert bool(model.encoder.input_mean.any()) == ("pre_standardisation" not in name)
    expected = _expected(path)
    expl = predict_bag(path, _slide_folder(tmp_path), device="cpu")
    assert expl.classes == expected["classes"]
    np.testing.assert_allclose(expl.prob, expected["prob"], atol=expected["atol"], rtol=0)
    s = expl.slides[0]
    assert s.instance_token.tolist() == expected["instance_token"]
    assert s.instance_region.tolist() == expected["instance_region"]
    np.testing.assert_allclose(s.attention, expected["attention"], atol=expected["atol"], rtol=0)


def test_mil_attention_v1() -> None:
    path = GOLDEN / "mil_attention" / "v1.h5"
    slides = read_attention(path)
    assert list(slides) == ["golden"]
    a = slides["golden"]
    assert set(a) == {"coords", "region_attention", "instance_region", "instance_token", "instance_mpp", "attention"}
    assert a["coords"].tolist() == COORDS
    assert a["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(a["region_attention"], np.bincount(a["instance_region"], a["attention"]), atol=1e-6)
    mpps = RegionSpec().layout().mpps
    tok = a["instance_token"]
    assert (tok >= 0).all() and len(tok) == 38  # mix-mem: every valid token of both regions
    np.testing.assert_array_equal(a["instance_mpp"], mpps[tok].astype(np.float32))
    expected = _expected(GOLDEN / "mil_model" / "v1_mix-mem.pt")  # written by that model's predict_bag
    np.testing.assert_allclose(a["attention"], expected["attention"], atol=1e-5, rtol=0)
    with h5py.File(path) as f:
        assert (f.attrs["bag_id"], f.attrs["method"], f.attrs["label"]) == ("golden", "mix-mem", "1")
        np.testing.assert_allclose(f.attrs["prob"], expected["prob"], atol=1e-5)


def test_mil_metrics_v1_and_predictions() -> None:
    metrics = read_metrics_json(GOLDEN / "mil_metrics" / "v1.json")
    assert (metrics["artifact"], metrics["format_version"], metrics["method"]) == ("mil_metrics", 1, "abmil-20x")
    assert metrics["classes"] == ["0", "1"] and metrics["n_bags"] == 6 and metrics["n_patients"] == 6
    assert set(metrics["fold_auroc"]) == {"0", "1"} and metrics["folds"]["0"]["n_test"] == 3
    assert metrics["config_hash"] == "golden" and metrics["ci_level"] == 0.95
    pred = read_predictions(GOLDEN / "mil_predictions" / "predictions.csv")
    assert list(pred.columns) == ["bag_id", "patient_id", "slide_ids", "fold", "label", "label_name", "prob"]
    assert pred["bag_id"].tolist() == [f"p{i}" for i in range(6)] and pred["slide_ids"].tolist()[0] == "s0"
    prob = prob_matrix(pred)
    assert prob.shape == (6,)
    assert auroc(pred["label"].to_numpy(), prob) == pytest.approx(metrics["pooled_auroc"])


def test_splits_csv() -> None:
    splits = read_splits(GOLDEN / "splits" / "splits.csv")
    assert set(splits.columns) >= {"patient_id", "fold", "role"} and len(splits) == 12
    tests = splits[splits["role"] == "test"]
    assert sorted(tests["patient_id"]) == [f"p{i}" for i in range(6)]  # each patient is tested once


# ----------------------------------------------------------------------------- bookkeeping
def test_manifest_csv(tmp_path: Path) -> None:
    rows = read_manifest(GOLDEN / "manifest" / "manifest.csv")
    assert {k: r["status"] for k, r in rows.items()} == {"golden": "ok", "broken": "error"}
    assert rows["golden"]["n_items"] == "2" and rows["golden"]["reader"] == "openslide"
    assert "empty (0 bytes)" in rows["broken"]["error"]
    # an old manifest keeps being updated in place (later stages / reruns append rows)
    path = shutil.copy2(GOLDEN / "manifest" / "manifest.csv", tmp_path / "manifest.csv")
    m = Manifest(path)
    m.update("new", status=Status.OK, n_items=1)
    assert m.count(Status.OK) == 2 and m.rows()["golden"]["slide_hash"] == rows["golden"]["slide_hash"]


def test_stage_ledger(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy2(GOLDEN / "stage_ledger" / "stages.json", run / "stages.json")
    ledger = StageLedger(run)
    assert list(ledger.records) == ["embed", "tile"]
    rec = ledger.records["tile"]
    assert (rec.status, rec.fingerprint, rec.skipped) == ("done", "c11be18ae6358576", False)
    assert not ledger.is_fresh("tile", rec.fingerprint)  # its outputs (temporary paths) are gone
