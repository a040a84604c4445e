"""``mixmag demo``: the whole study on an embedded synthetic cohort, on a CPU, in minutes.

The cohort (:mod:`mixmag.synth`) hides its label in the co-occurrence of a 5x architecture and a
20x nuclear texture inside one region, so single-magnification AB-MIL cannot read it and the
mixing encoder can. A second cohort from the same generator with another seed, never trained on,
is scored by the trained models (the study's ``external`` stage), so the cross-validated AUROC
stands next to an external one. Everything is generated locally: no download, no GPU, no file
outside the installed package. The settings below are scaled for a 2-core CPU; ``mixmag run``
with ``mixmag config init`` defaults is the real-size study.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mixmag.config import ExternalConfig, PipelineConfig
from mixmag.pipeline.study import Study, StudyResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSize:
    """Cohort and training sizes of one demo flavour."""

    n_slides: int
    n_unlabeled: int
    difficulty: float
    pretrain_steps: int
    epochs: int
    folds: int
    n_external: int = 0
    """Labelled patients of the external cohort (0 = no external stage)."""


DEMO_SIZES = {
    # measured: 6.5-7.2 min on the 2-core CPU machine (docs/performance.md, "Demo"), before the
    # external cohort. Its 36 patients add about a minute (measured against the quick demo's runs on
    # the busy 2-core machine: 60 s, painting 9 s and the external stage 52 s, ~20 s of which draw
    # the heatmaps of 7 runs x report.heatmap_slides whatever the cohort size; 48 patients: 77 s)
    "full": DemoSize(n_slides=144, n_unlabeled=48, difficulty=0.3, pretrain_steps=300, epochs=30, folds=5,
                     n_external=36),
    # for CI and a first look: same pipeline, smaller everything
    "quick": DemoSize(n_slides=24, n_unlabeled=8, difficulty=0.3, pretrain_steps=20, epochs=4, folds=3,
                      n_external=8),
}

#: Folder of the external cohort inside the demo cohort's folder.
EXTERNAL_COHORT = "external"
#: The external cohort's seed is the training cohort's plus this: same generator, other patients.
EXTERNAL_SEED_OFFSET = 1000

# Two regions of 448 µm per slide (1792 x 896 px at 0.5 µm/px). With two cells the generator's
# layout is the cleanest form of the task: a positive slide holds one ring + atypical region and
# one scattered + normal region, a negative one ring + normal and one scattered + atypical; both
# classes show one ring and one atypical region, so no single magnification can tell them apart.
# Many small slides buy more patients (training bags) per CPU minute than a few large ones.
DEMO_SLIDE_PX = (1792, 896)


#: The paper's claim the demo cohort is built to show: these beat both single-magnification baselines.
PRETRAINED_MIXING = ("mix-mem", "mix-cmem", "mix-mem-cls")
SINGLE_MAGNIFICATION = ("abmil-20x", "abmil-5x")


def mixing_gaps(comparison: pd.DataFrame) -> dict[str, float]:
    """Mean-AUROC gap of each pretrained mixing method over the best of abmil-20x / abmil-5x.

    Args:
        comparison: The table of :func:`mixmag.evaluate.compare.compare_runs` (per-target rows are
            averaged over targets; the ``Average`` rows are ignored).

    Returns:
        ``{method: gap}`` for the methods of :data:`PRETRAINED_MIXING` present in the table;
        empty when a baseline is missing.
    """
    per_method = comparison[comparison["target"] != "Average"].groupby("method")["mean_auroc"].mean()
    if not all(m in per_method.index for m in SINGLE_MAGNIFICATION):
        return {}
    baseline = max(float(per_method[m]) for m in SINGLE_MAGNIFICATION)
    return {m: float(per_method[m]) - baseline for m in PRETRAINED_MIXING if m in per_method.index}


def study_config(out: Path, cohort_dir: Path, *, folds: int, seed: int = 0, epochs: int = 30,
                 pretrain_steps: int = 300, extra_inputs: list[Path] | None = None) -> PipelineConfig:
    """The CPU-scaled study recipe on a synthetic cohort (the demo's and ``benchmarks/validity.py``'s).

    Args:
        out: Study run folder.
        cohort_dir: Folder written by :func:`mixmag.synth.make_synthetic_cohort`.
        folds: Outer cross-validation folds.
        seed: Seed of pretraining, splits and MIL.
        epochs: Maximum MIL epochs per fold.
        pretrain_steps: Region-encoder pretraining steps.
        extra_inputs: More slide files/folders to tile and embed with the cohort (no labels).
    """
    return PipelineConfig.model_validate({
        "out": str(out),
        "slides": {"inputs": [str(cohort_dir / "slides"), *map(str, extra_inputs or [])],
                   "pretrain_inputs": [str(cohort_dir / "unlabeled")]},
        "tiling": {"thumbnail_px": 1024},
        # bf16 halves the CPU embedding time; for this ImageNet baseline it keeps a mean cosine of
        # 0.999 to fp32 on real tiles (minimum 0.995, below the 0.999 that `auto` demands)
        "embed": {"encoder": "efficientnet-lite0-imagenet", "batch_size": 32, "workers": "auto",
                  "precision": "bf16"},
        "region": {"preset": "small", "steps": pretrain_steps, "batch_size": 64, "lr": 5e-4,
                   "regions_per_slide": 8, "checkpoint_every": 0, "num_workers": 0, "seed": seed,
                   # Self-supervised pretraining sees every slide (never a label): the unlabeled
                   # pool alone is too small on a CPU budget. The report states this.
                   "pretrain_on": "all", "objectives": ["mem", "cmem"]},
        # Mini-batches of 4 bags (lr doubled) make an epoch ~3x cheaper on a CPU than one-bag steps
        # at the same AUROC (measured; docs/performance.md, "Demo").
        "mil": {"labels": str(cohort_dir / "labels.csv"), "epochs": epochs, "patience": 10,
                "batch_size": 4, "lr": 1e-3, "encoder_lr_scale": 0.3, "hidden_dim": 128, "attention_dim": 64,
                "region_preset": "small", "bag_level": "patient", "device": "cpu", "seed": seed},
        # the cohort's ground truth lets the report show where the signal is (probes, ceiling, attention)
        "evaluate": {"folds": folds, "bootstrap": 500, "seed": seed,
                     "region_labels": str(cohort_dir / "region_labels.csv")},
        "report": {"heatmap_slides": 4, "top_k": 3},
    })


def demo_config(out: Path, cohort_dir: Path, *, size: DemoSize, user_slides: list[Path]) -> PipelineConfig:
    """The study config the demo runs (also written to ``<out>/config.resolved.yaml``).

    With ``size.n_external`` the ``external`` section points at the external cohort that
    :func:`run_demo` writes to ``<cohort_dir>/external``.
    """
    config = study_config(out, cohort_dir, folds=size.folds, epochs=size.epochs, pretrain_steps=size.pretrain_steps,
                          extra_inputs=user_slides)
    if size.n_external:
        external = cohort_dir / EXTERNAL_COHORT
        config.external = ExternalConfig(inputs=[external / "slides"], labels=external / "labels.csv")
    return config


def run_demo(out_dir: str | Path = "mixmag-demo", *, user_slides: list[Path] | None = None, quick: bool = False,
             seed: int = 0, progress: bool = True) -> StudyResult:
    """Generate (or reuse) the demo cohort and run the whole study on it.

    Args:
        out_dir: Demo folder; the cohort is cached in ``<out>/cohort`` and reused by later runs.
        user_slides: Extra slide files/folders: tiled, QC'd and embedded with the cohort; after
            training they get heatmaps from a trained model (no labels needed).
        quick: Smaller cohort and shorter training (CI smoke run, about a minute).
        seed: Cohort seed (the external cohort's is ``seed + EXTERNAL_SEED_OFFSET``).
        progress: Progress bars.
    """
    from mixmag.synth.cohort import make_synthetic_cohort

    out = Path(out_dir).resolve()
    size = DEMO_SIZES["quick" if quick else "full"]
    cohort = make_synthetic_cohort(out / "cohort", n_slides=size.n_slides, n_unlabeled=size.n_unlabeled,
                                   difficulty=size.difficulty, slide_px=DEMO_SLIDE_PX, seed=seed, workers=2,
                                   progress=progress)
    if size.n_external:
        # same generator and difficulty, other patients: what a second hospital's cohort is to a real study
        make_synthetic_cohort(cohort.out_dir / EXTERNAL_COHORT, n_slides=size.n_external, n_unlabeled=0,
                              difficulty=size.difficulty, slide_px=DEMO_SLIDE_PX, seed=seed + EXTERNAL_SEED_OFFSET,
                              workers=2, progress=progress)
    config = demo_config(out / "study", cohort.out_dir, size=size, user_slides=list(user_slides or []))
    study = Study(config, progress=progress)
    result = study.run()
    if user_slides:
        _user_slide_heatmaps(study, result)
    return result


def _user_slide_heatmaps(study: Study, result: StudyResult) -> None:
    """Heatmaps of the user's own (unlabeled) slides from fold 0 of the best mixing method."""
    from mixmag.io.features import FeatureFile
    from mixmag.mil.artifacts import predict_bag
    from mixmag.pipeline.heatmaps import draw_slide_attention, pick_method, token_scores
    from mixmag.tiling.inputs import collect_slides

    if result.comparison is None:
        return
    picked = pick_method(result.comparison)
    if picked is None:
        return
    target, method, run_dir = picked
    model = run_dir / "folds" / "fold_0" / "model.pt"
    user_ids = {j.slide_id for j in collect_slides(study.config.slides.inputs[1:], exclude=study.out)}
    for slide_id in sorted(user_ids):
        features = study.features_dir / f"{slide_id}.h5"
        if not features.exists():
            logger.warning("your slide %s was not embedded (see the tiling/embedding manifests)", slide_id)
            continue
        expl = predict_bag(model, features)
        attn = expl.slides[0]
        with FeatureFile(features) as ff:
            n_regions, n_tokens = ff.index.n_regions, ff.index.spec.n_tokens
        scores = token_scores({"instance_region": attn.instance_region, "instance_token": attn.instance_token,
                               "attention": attn.attention}, n_regions, n_tokens)
        draw_slide_attention(features, attn.region_attention, study.out / "heatmaps", name=f"yours_{slide_id}",
                             settings=study.config.report, token_attention=scores)
        logger.info("your slide %s: P(%s=%s) = %.3f (%s, fold 0)", slide_id, target, expl.classes[-1],
                    float(expl.prob[-1]), method)
