"""Write the golden files of mixmag's on-disk formats (see README.md in this folder).

    python tests/data/formats/make_golden.py             # current versions: missing files only
    python tests/data/formats/make_golden.py --legacy    # also the older versions (needs git history)
    python tests/data/formats/make_golden.py --out DIR   # into another folder (e.g. to diff a writer)

A golden file is **never regenerated**: a target that exists is left alone and reported. When a
writer changes an artifact's layout, bump its ``format_version``; the target names below follow
the version constants, so this script then adds the new version's file next to the old one.

Current-version files are made by today's writers with fixed seeds, mostly through the real stages
(a synthetic slide is tiled and embedded with the ``tiny.d16`` tile encoder; the region encoder is
the ``tiny`` preset). Older versions are made by the *old* writers: the source tree of the last
commit that wrote them is taken from git history (``git archive``) and run in a subprocess
(:data:`LEGACY`). Files whose values a reader must reproduce (model outputs) come with a
``<name>.expected.json`` holding the outputs computed when the file was written.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SEED = 0
SLIDE_ID = "golden"
TILE_ENCODER = "tiny.d16"  # 16-d tile embeddings
MIL_KW: dict[str, Any] = {"hidden_dim": 8, "attention_dim": 8, "dropout": 0.0, "epochs": 2, "device": "cpu",
                          "precision": "fp32", "seed": SEED}

# Older layouts, made by the writers of the last commit that wrote them (see README.md):
#   name -> (commit, snippet key, what it is)
LEGACY: dict[str, tuple[str, str, str]] = {
    "region_checkpoint/v1_pre_input_stats": (
        "82ea7f3", "checkpoint",
        "region_checkpoint v1 as written before input standardisation existed (no encoder.input_*)"),
    "region_checkpoint/v1": (
        "2d6adea", "checkpoint",
        "region_checkpoint v1 as written from ece22c8 (input standardisation) until the bump to v2"),
    "mil_model/v1_pre_standardisation_abmil-20x.pt": (
        "82ea7f3", "mil:abmil-20x",
        "mil_model v1 as written before instance standardisation existed (no instance_norm.*)"),
    "mil_model/v1_pre_standardisation_mix-mem.pt": (
        "82ea7f3", "mil:mix-mem",
        "mil_model v1 as written before input standardisation existed (no encoder.input_*)"),
}


# ----------------------------------------------------------------------------- helpers
def _size_report(root: Path) -> None:
    total = 0
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix != ".py" and p.name != "README.md":
            size = p.stat().st_size
            total += size
            flag = "  <-- over 100 KB" if size > 100_000 else ""
            print(f"  {p.relative_to(root)}  {size / 1024:.1f} KB{flag}")
    print(f"  total {total / 1024:.1f} KB")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _missing(root: Path, *names: str) -> bool:
    todo = [n for n in names if not (root / n).exists()]
    for n in names:
        if n not in todo:
            print(f"  {n}: exists, left alone (golden files are never regenerated)")
    return bool(todo)


def _copy_new(src: Path, dst: Path) -> None:
    if dst.exists():
        print(f"  {dst}: exists, left alone")
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    print(f"  wrote {dst}")


def target_stats(feats: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean/std of the valid tokens (constant dimensions keep std 1), as float32."""
    x = feats[valid].astype(np.float64)
    std = x.std(0, ddof=1)
    return x.mean(0).astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def training_bags(tile_dim: int, n_tokens: int) -> tuple[list[np.ndarray], list[int]]:
    """Six seeded (3, T, D) bags; positives are shifted, so the tiny models learn something."""
    rng = np.random.default_rng(SEED)
    y = [0, 1, 0, 1, 0, 1]
    bags = [(rng.normal(size=(3, n_tokens, tile_dim)) + 0.5 * label).astype(np.float32) for label in y]
    return bags, y


# ----------------------------------------------------------------------------- current versions
def make_slide_stages(root: Path, work: Path) -> None:
    """Region index, tiling manifest, feature file and TRIDENT/CLAM exports from one synthetic slide."""
    from mixmag.embed.engine import embed_slides
    from mixmag.embed.export import export_features
    from mixmag.io.features import FEATURE_VERSION
    from mixmag.io.regions import REGION_INDEX_VERSION
    from mixmag.synth.tiff import draw_tissue_layout, write_pyramidal_tiff
    from mixmag.tiling.tile import tile_slides

    targets = {"region_index": f"region_index/v{REGION_INDEX_VERSION}.h5", "manifest": "manifest/manifest.csv",
               "features": f"feature_store/v{FEATURE_VERSION}.h5", "trident": "trident_export/trident.h5",
               "clam_h5": "trident_export/clam.h5", "clam_pt": "trident_export/clam.pt"}
    if not _missing(root, *targets.values()):
        return
    rgb, _ = draw_tissue_layout((2000, 1100), [(1000, 550, 900, 420)], seed=SEED)
    slide = write_pyramidal_tiff(work / "slides" / f"{SLIDE_ID}.tiff", rgb, mpp=0.5, n_levels=2, tile_px=256)
    (work / "slides" / "broken.svs").write_bytes(b"")  # gives the manifest an error row
    tile_slides([slide, work / "slides" / "broken.svs"], work / "tiles", thumbnail_px=512, progress=False)
    embed_slides(work / "tiles", work / "features", encoder=TILE_ENCODER, batch_size=32, precision="fp32",
                 device="cpu", workers=0, progress=False)
    export_features(work / "features", work / "trident", fmt="trident", mag="20x", progress=False)
    export_features(work / "features", work / "clam", fmt="clam", mag="20x", progress=False)
    made = {"region_index": work / "tiles" / "regions" / f"{SLIDE_ID}.h5",
            "manifest": work / "tiles" / "regions" / "manifest.csv",
            "features": work / "features" / f"{SLIDE_ID}.h5", "trident": work / "trident" / f"{SLIDE_ID}.h5",
            "clam_h5": work / "clam" / "h5_files" / f"{SLIDE_ID}.h5",
            "clam_pt": work / "clam" / "pt_files" / f"{SLIDE_ID}.pt"}
    for key, src in made.items():
        _copy_new(src, root / targets[key])


def golden_features(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The golden feature file of the current feature-store version, with its features and validity."""
    from mixmag.io.features import FEATURE_VERSION, FeatureFile

    path = root / "feature_store" / f"v{FEATURE_VERSION}.h5"
    with FeatureFile(path) as ff:
        feats, valid = ff.read()
    return path, feats, valid


def encoder_outputs(encoder: Any, feats: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """CLS (R, W) and output tokens of slots 0, 5 and 20 (R, 3, W) on the golden features."""
    import torch

    with torch.no_grad():
        cls, tokens = encoder.forward_features(torch.from_numpy(feats), torch.from_numpy(valid))
    return {"cls": cls.numpy().round(7).tolist(), "token_slots": [0, 5, 20],
            "tokens": tokens[:, [0, 5, 20]].numpy().round(7).tolist()}


def make_checkpoint(root: Path) -> None:
    """A ``mem`` checkpoint of the ``tiny`` preset: encoder + MEM decoder head + statistics."""
    import torch

    from mixmag.geometry import RegionSpec
    from mixmag.region.checkpoints import (
        CHECKPOINT_VERSION,
        load_region_encoder,
        save_region_checkpoint,
    )
    from mixmag.region.distributed import DistContext
    from mixmag.region.model import build_region_encoder
    from mixmag.region.objectives import OBJECTIVES, RegionPretrainer

    name = f"region_checkpoint/v{CHECKPOINT_VERSION}"
    if not _missing(root, name):
        return
    feat_path, feats, valid = golden_features(root)
    torch.manual_seed(SEED)
    encoder = build_region_encoder(tile_dim=feats.shape[2], spec=RegionSpec(), preset="tiny")
    model = RegionPretrainer(encoder, objective=OBJECTIVES.get("mem"), ctx=DistContext())
    mean, std = target_stats(feats, valid)
    encoder.set_input_stats(mean, std)
    save_region_checkpoint(root / name, model=model, step=0, objective="mem", spec=RegionSpec(),
                           target_mean=mean, target_std=std, extra={"golden": True},
                           config={"settings": {"preset": "tiny", "objective": "mem", "seed": SEED},
                                   "tile_encoder": TILE_ENCODER})
    loaded, _ = load_region_encoder(root / name)
    _write_json(root / f"{name}.expected.json", {
        "input": str(feat_path.relative_to(root)), "atol": 1e-5, **encoder_outputs(loaded, feats, valid)})
    print(f"  wrote {root / name}")


def make_region_embeddings(root: Path) -> None:
    """``mixmag encode`` of the golden features with the golden checkpoint, in both modes."""
    from mixmag.io.region_embeddings import REGION_EMBEDDINGS_VERSION
    from mixmag.region.checkpoints import CHECKPOINT_VERSION
    from mixmag.region.encode import encode_regions

    names = {mode: f"region_embeddings/v{REGION_EMBEDDINGS_VERSION}_{mode}.h5" for mode in ("cls", "tokens")}
    if not _missing(root, *names.values()):
        return
    feat_path, _, _ = golden_features(root)
    cwd = Path.cwd()
    os.chdir(root)  # relative provenance paths in the files' attrs
    try:
        for mode, name in names.items():
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                encode_regions(str(feat_path.relative_to(root)), f"region_checkpoint/v{CHECKPOINT_VERSION}",
                               Path(tmp).relative_to(root), mode=mode, device="cpu", precision="fp32",
                               progress=False)
                _copy_new(Path(tmp) / f"{SLIDE_ID}.h5", root / name)
    finally:
        os.chdir(cwd)


def _predict_expected(model_path: Path, feat_path: Path, work: Path) -> dict[str, Any]:
    from mixmag.mil.artifacts import predict_bag

    work.mkdir(parents=True, exist_ok=True)
    shutil.copy2(feat_path, work / f"{SLIDE_ID}.h5")  # a folder holding only this slide
    expl = predict_bag(model_path, work / f"{SLIDE_ID}.h5", device="cpu")
    s = expl.slides[0]
    return {"classes": expl.classes, "prob": np.round(expl.prob, 7).tolist(),
            "attention": np.round(s.attention, 7).tolist(), "instance_token": s.instance_token.tolist(),
            "instance_region": s.instance_region.tolist(), "atol": 1e-5}


def make_mil_run(root: Path, work: Path) -> None:
    """Fold models (a tile method and a region-encoder method), attention, metrics, predictions, splits."""
    import pandas as pd
    import torch

    from mixmag.evaluate.splits import make_splits, write_splits
    from mixmag.geometry import RegionSpec
    from mixmag.mil.artifacts import (
        ATTENTION_VERSION,
        MODEL_VERSION,
        predict_bag,
        save_fold_model,
        write_attention,
    )
    from mixmag.mil.encoders import RegionEncoderRecipe
    from mixmag.mil.estimator import MILClassifier
    from mixmag.mil.labels import Bag
    from mixmag.mil.runfolder import METRICS_VERSION, predictions_frame, summarize_run
    from mixmag.region.checkpoints import CHECKPOINT_VERSION, load_region_encoder

    spec = RegionSpec()
    feat_path, feats, _ = golden_features(root)
    bags, y = training_bags(feats.shape[2], spec.n_tokens)
    models = {m: f"mil_model/v{MODEL_VERSION}_{m}.pt" for m in ("abmil-20x", "mix-mem")}
    others = {"attention": f"mil_attention/v{ATTENTION_VERSION}.h5", "metrics": f"mil_metrics/v{METRICS_VERSION}.json",
              "predictions": "mil_predictions/predictions.csv", "splits": "splits/splits.csv"}
    if not _missing(root, *models.values(), *others.values()):
        return
    ckpt = root / f"region_checkpoint/v{CHECKPOINT_VERSION}"
    encoder, info = load_region_encoder(ckpt)
    fitted: dict[str, MILClassifier] = {}
    for method, name in models.items():
        torch.manual_seed(SEED)
        recipe = None
        if method == "mix-mem":
            recipe = RegionEncoderRecipe(role="mem", checkpoint=str(ckpt.relative_to(root)),
                                   checkpoint_hash=info["checkpoint_hash"], objective="mem", preset="tiny",
                                   seed=SEED, tile_dim=feats.shape[2], spec=spec.to_dict())
        clf = MILClassifier(method, encoder=encoder if recipe else None, **MIL_KW).fit(bags, y)
        fitted[method] = clf
        if (root / name).exists():
            print(f"  {name}: exists, left alone")
            continue
        extra = {"best_epoch": int(clf.best_epoch_), "criterion": clf.criterion_, "epochs_run": len(clf.history_),
                 "n_train": len(bags), "n_val": 0, "n_test": 0}
        save_fold_model(root / name, clf, spec=spec, recipe=recipe, extra=extra)
        _write_json(root / f"{name}.expected.json",
                    {"input": str(feat_path.relative_to(root)), **_predict_expected(root / name, feat_path, work / method)})
        print(f"  wrote {root / name}")

    # run-folder files of a 2-fold "run" over the six training bags (fold = bag index // 3)
    classes = ["0", "1"]
    run_bags = [Bag(f"p{i}", f"p{i}", (f"s{i}",), label) for i, label in enumerate(y)]
    clf = fitted["abmil-20x"]
    probs = clf.predict_proba(bags)
    oof = pd.concat([predictions_frame(run_bags[f * 3:(f + 1) * 3], probs[f * 3:(f + 1) * 3], f, classes)
                     for f in (0, 1)], ignore_index=True)
    fold_info = {f: {"best_epoch": int(clf.best_epoch_), "criterion": clf.criterion_, "epochs_run": 2,
                     "n_train": 3, "n_val": 0, "n_test": 3} for f in (0, 1)}
    run = work / "run"
    summarize_run(run, oof, target="label", method="abmil-20x", classes=classes, fold_info=fold_info, n_boot=20,
                  seed=SEED, extra={"config_hash": "golden"})
    _copy_new(run / "metrics.json", root / others["metrics"])
    _copy_new(run / "predictions.csv", root / others["predictions"])
    splits = make_splits(pd.Series(y, index=[b.patient_id for b in run_bags]), folds=2, seed=SEED)
    write_splits(splits, run / "splits.csv")
    _copy_new(run / "splits.csv", root / others["splits"])
    # attention of the golden slide under the region-encoder model (tokens of every magnification)
    (work / "attn").mkdir(parents=True, exist_ok=True)
    shutil.copy2(feat_path, work / "attn" / f"{SLIDE_ID}.h5")
    expl = predict_bag(fitted["mix-mem"], work / "attn" / f"{SLIDE_ID}.h5", device="cpu")
    write_attention(run / "attention.h5", expl, {"bag_id": SLIDE_ID, "patient_id": f"patient-{SLIDE_ID}",
                                                  "method": "mix-mem", "target": "label", "fold": 0, "label": "1"})
    _copy_new(run / "attention.h5", root / others["attention"])


def make_ledger(root: Path, work: Path) -> None:
    """``stages.json`` of a run folder whose tile and embed stages finished."""
    from mixmag.pipeline.ledger import LEDGER_NAME, StageLedger, fingerprint

    if not _missing(root, "stage_ledger/stages.json"):
        return
    run = work / "study"
    ledger = StageLedger(run)
    fp_tile = fingerprint({"tiling": {"min_tissue": 0.25}})
    ledger.run("tile", fp_tile, lambda: {"regions": str(run / "tiles" / "regions"), "n_ok": 1})
    ledger.run("embed", fingerprint({"embed": {"encoder": TILE_ENCODER}}, [fp_tile]),
               lambda: {"features": str(run / "features" / TILE_ENCODER), "n_ok": 1})
    _copy_new(run / LEDGER_NAME, root / "stage_ledger" / "stages.json")


# ----------------------------------------------------------------------------- older versions
# Run with the *old* source tree on PYTHONPATH; argv[1] is a JSON object of arguments. Only APIs
# that existed at both legacy commits are used (imports are resolved for either layout).
_COMMON = r'''
import json, sys
from pathlib import Path
import h5py, numpy as np, torch
args = json.loads(sys.argv[1])
with h5py.File(args["features"], "r") as f:
    feats = f["tile_features"][()].astype(np.float32)
    valid = f["tile_valid"][()].astype(bool)
try:
    from mixmag.geometry import RegionSpec
except ImportError:
    from mixmag.tiling.spec import RegionSpec
try:
    from mixmag.region.checkpoints import load_region_encoder, save_region_checkpoint
except ImportError:
    from mixmag.io.checkpoints import load_region_encoder, save_region_checkpoint
def out(obj):
    Path(args["expected"]).write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
'''

_SNIPPETS = {
    "checkpoint": _COMMON + r'''
from mixmag.region.distributed import DistContext
from mixmag.region.model import build_region_encoder
from mixmag.region.objectives import OBJECTIVES, RegionPretrainer
x = feats[valid].astype(np.float64)
std = x.std(0, ddof=1)
mean, std = x.mean(0).astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)
torch.manual_seed(0)
encoder = build_region_encoder(tile_dim=feats.shape[2], spec=RegionSpec(), preset="tiny")
model = RegionPretrainer(encoder, objective=OBJECTIVES.get("mem"), ctx=DistContext())
if hasattr(encoder, "set_input_stats"):  # pretraining standardised the encoder's inputs from ece22c8 on
    encoder.set_input_stats(mean, std)
save_region_checkpoint(args["out"], model=model, step=0, objective="mem", spec=RegionSpec(), target_mean=mean,
                       target_std=std, extra={"golden": True},
                       config={"settings": {"preset": "tiny", "objective": "mem", "seed": 0},
                               "tile_encoder": "tiny.d16"})
loaded, _ = load_region_encoder(args["out"])
with torch.no_grad():
    cls, tokens = loaded.forward_features(torch.from_numpy(feats), torch.from_numpy(valid))
out({"input": args["input"], "atol": 1e-5, "commit": args["commit"], "cls": cls.numpy().round(7).tolist(),
     "token_slots": [0, 5, 20], "tokens": tokens[:, [0, 5, 20]].numpy().round(7).tolist()})
''',
    "mil": _COMMON + r'''
import shutil
from mixmag.mil.artifacts import predict_bag, save_fold_model
from mixmag.mil.estimator import MILClassifier
rng = np.random.default_rng(0)
y = [0, 1, 0, 1, 0, 1]
bags = [(rng.normal(size=(3, feats.shape[1], feats.shape[2])) + 0.5 * label).astype(np.float32) for label in y]
encoder = load_region_encoder(args["checkpoint"])[0] if args["method"] != "abmil-20x" else None
torch.manual_seed(0)
clf = MILClassifier(args["method"], encoder=encoder, hidden_dim=8, attention_dim=8, dropout=0.0, epochs=2,
                    device="cpu", precision="fp32", seed=0).fit(bags, y)
save_fold_model(args["out"], clf, spec=RegionSpec(),
                extra={"best_epoch": int(clf.best_epoch_), "criterion": clf.criterion_,
                       "epochs_run": len(clf.history_), "n_train": len(bags), "n_val": 0, "n_test": 0})
work = Path(args["work"])
work.mkdir(parents=True, exist_ok=True)
shutil.copy2(args["features"], work / "golden.h5")
expl = predict_bag(args["out"], work / "golden.h5", device="cpu")
s = expl.slides[0]
out({"input": args["input"], "atol": 1e-5, "commit": args["commit"], "classes": expl.classes,
     "prob": np.round(expl.prob, 7).tolist(), "attention": np.round(s.attention, 7).tolist(),
     "instance_token": s.instance_token.tolist(), "instance_region": s.instance_region.tolist()})
''',
}


def _old_source(commit: str, cache: dict[str, Path], work: Path) -> Path:
    if commit not in cache:
        data = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "src"],
                              check=True, capture_output=True).stdout
        dest = work / f"src-{commit}"
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)
        cache[commit] = dest / "src"
    return cache[commit]


def make_legacy(root: Path, work: Path) -> None:
    """The files of :data:`LEGACY`, each written by the source tree of its commit."""
    _, _, _ = golden_features(root)  # fail early when the inputs are missing
    from mixmag.io.features import FEATURE_VERSION

    features = root / "feature_store" / f"v{FEATURE_VERSION}.h5"
    cache: dict[str, Path] = {}
    for name, (commit, kind, what) in LEGACY.items():
        if (root / name).exists():
            print(f"  {name}: exists, left alone (golden files are never regenerated)")
            continue
        snippet, _, method = kind.partition(":")
        src = _old_source(commit, cache, work)
        args = {"features": str(features), "input": str(features.relative_to(root)), "out": str(root / name),
                "expected": str(root / f"{name}.expected.json"), "commit": commit, "method": method,
                "checkpoint": str(root / "region_checkpoint" / "v1_pre_input_stats"),
                "work": str(work / f"legacy-{name.replace('/', '_')}")}
        env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-c", _SNIPPETS[snippet], json.dumps(args)], check=True, env=env,
                       cwd=work)
        print(f"  wrote {root / name} ({what}; writer of {commit})")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="golden folder (default: this folder)")
    parser.add_argument("--legacy", action="store_true", help="also write the older versions of LEGACY")
    ns = parser.parse_args(argv)
    root = ns.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(1)
    steps: list[tuple[str, Callable[[Path, Path], None]]] = [
        ("slide stages", make_slide_stages), ("checkpoint", lambda r, w: make_checkpoint(r)),
        ("region embeddings", lambda r, w: make_region_embeddings(r)), ("MIL run", make_mil_run),
        ("stage ledger", make_ledger)]
    if ns.legacy:
        steps.append(("older versions", make_legacy))
    with tempfile.TemporaryDirectory(prefix="mixmag-golden-") as tmp:
        for label, step in steps:
            print(f"{label}:")
            work = Path(tmp) / label.replace(" ", "_")
            work.mkdir(parents=True)
            step(root, work)
    print("sizes:")
    _size_report(root)


if __name__ == "__main__":
    main()
