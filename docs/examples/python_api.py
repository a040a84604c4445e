"""The Python API of mixmag, end to end on a tiny synthetic cohort (docs/python-api.md).

Runs offline on a CPU in well under a minute: 8 synthetic slides, the 16-d random test encoder
``tiny.d16``, a tiny region encoder pretrained for a few steps and two MIL methods over 2 folds.
The numbers it prints are meaningless (random tile weights, 3 pretraining steps); the calls are the
ones a real study makes, with a real foundation model in place of ``tiny.d16``::

    python docs/examples/python_api.py [OUT_DIR]       # default: ./python-api-example
"""

from __future__ import annotations

import sys
from pathlib import Path

import mixmag as mm
from mixmag.synth import make_synthetic_cohort  # test data: slides and labels, not part of the API

ENCODER = "tiny.d16"  # a real study: "uni", "virchow2", ... (mm.list_encoders())


def main(out: Path) -> None:
    cohort = make_synthetic_cohort(out / "cohort", n_slides=8, slide_px=(1792, 896), seed=3, progress=False)

    # 1. the encoder zoo, from the registry (nothing is built or downloaded)
    zoo = mm.list_encoders()
    print(zoo[["key", "embed_dim", "input_px", "native_mpp", "gated"]].to_string(index=False))

    # 2. the stages, folder to folder (each one resumable; rerunning skips finished slides)
    tiles = mm.tile_slides([cohort.out_dir / "slides"], out / "tiles", thumbnail_px=512, progress=False)
    print(f"tiled {len(tiles.results)} slides: {tiles.n_regions} regions")
    features = out / "features" / ENCODER
    mm.embed_slides(out / "tiles", features, encoder=ENCODER, batch_size=16, workers=0, progress=False)
    mem = mm.pretrain_region_encoder(features, out / "pretrain" / "mem", objective="mem", preset="tiny",
                                     steps=3, batch_size=8, checkpoint_every=0, num_workers=0, progress=False)
    encoded = mm.encode_regions(features, mem.checkpoint, out / "regions-cls", mode="cls", progress=False)
    print(f"region embeddings of {encoded.n_ok} slides in {encoded.out_dir}")
    summary = mm.train_mil(features, cohort.labels_csv, out / "mil", pretrained={"mem": mem.checkpoint},
                           methods=["abmil-20x", "mix-mem"], epochs=2, patience=2, hidden_dim=16,
                           attention_dim=8, device="cpu", folds=2, bootstrap=20, progress=False)
    print(summary.table()[["target", "method", "mean_auroc"]].to_string(index=False))
    table = mm.compare_runs([out / "mil"], out / "evaluate", n_boot=20)
    print(table[["target", "method", "mean_auroc", "delta"]].to_string(index=False))
    print("report:", mm.build_report(out))
    # a second cohort ("another hospital"): tiled, embedded and scored like the training features
    other = make_synthetic_cohort(out / "external", n_slides=4, slide_px=(1792, 896), seed=4, progress=False)
    preds = mm.predict(out / "mil", [other.out_dir / "slides"], out / "external-predictions",
                       labels=other.labels_csv, n_boot=20, progress=False)
    print(preds[["bag_id", "method", "label", "prob"]].to_string(index=False))

    # 3. one slide in memory: no file written
    emb = mm.embed_slide(cohort.slides[0].path, ENCODER, region_encoder=mem.checkpoint, thumbnail_px=512,
                         progress=False)
    print(f"{emb.slide_id}: coords {emb.coords.shape}, tile_valid {emb.tile_valid.shape}, "
          f"features {emb.features.shape}, cls {emb.cls.shape}, tokens {emb.tokens.shape}")

    # 4. or the whole study from one config (a YAML path, a mapping or mm.PipelineConfig)
    config = {
        "out": str(out / "study"),
        "slides": {"inputs": [str(cohort.out_dir / "slides")]},
        "tiling": {"thumbnail_px": 512},
        "embed": {"encoder": ENCODER, "batch_size": 16, "workers": 0},
        "region": {"preset": "tiny", "objectives": ["mem"], "steps": 3, "batch_size": 8, "checkpoint_every": 0,
                   "num_workers": 0},
        "mil": {"labels": str(cohort.labels_csv), "methods": ["abmil-20x", "mix-mem-cls"], "epochs": 2,
                "patience": 2, "hidden_dim": 16, "attention_dim": 8, "device": "cpu"},
        "evaluate": {"folds": 2, "bootstrap": 20, "diagnostics": False},
        "report": {"heatmap_slides": 1, "top_k": 2},
    }
    result = mm.run_study(config, overrides={"mil.seed": 1}, progress=False)
    print(f"study: {len(result.stages)} stages ({', '.join(result.stages)}), report {result.report}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "python-api-example"))
