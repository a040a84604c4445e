"""``mixmag train`` (cross-validated AB-MIL comparison) and ``mixmag compare`` (paper-style table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

Opt = typer.Option


def _split_list(values: list[str] | None) -> list[str] | None:
    """Accept ``--methods a,b --methods c`` as well as repeated options."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def print_comparison(table: Any, *, reference: str = "abmil-20x", console: Any = None) -> None:
    """Print the AUROC and Δ tables of a :func:`~mixmag.evaluate.compare.compare_runs` result (rich)."""
    from rich.console import Console
    from rich.table import Table

    from mixmag.evaluate.compare import format_tables

    console = console or Console()
    auc, delta = format_tables(table, reference=reference)
    for title, frame in (("AUROC: mean ± sd over folds (95% CI of the pooled AUROC)", auc),
                         (f"Δ AUROC vs {reference} (paired bootstrap p)", delta)):
        # one row per method: seven methods fit an 80-column terminal, seven columns do not
        t = Table(title=title)
        t.add_column("method", no_wrap=True)
        for task in frame.index:
            t.add_column(str(task))
        for method in frame.columns:
            t.add_row(str(method), *map(str, frame[method].tolist()))
        console.print(t)


def register(app: typer.Typer) -> None:
    """Add the ``train`` and ``compare`` commands to ``app``."""

    @app.command("train")
    def train(
        features_dir: Annotated[Path, typer.Argument(help="Folder of <slide_id>.h5 feature files (mixmag embed).")],
        labels: Annotated[Path, Opt("--labels", help="CSV/TSV with patient_id, slide_id and label columns.")],
        out: Annotated[Path, Opt("--out", help="Output folder: <out>/<target>/<method>/ per run.")],
        methods: Annotated[list[str] | None, Opt("--methods", help="Comma-separated methods (default: all seven).")]
        = None,
        targets: Annotated[list[str] | None, Opt("--targets", help="Label columns (default: all).")] = None,
        mem_checkpoint: Annotated[Path | None, Opt("--mem-checkpoint", help="MEM-pretrained region encoder.")]
        = None,
        cmem_checkpoint: Annotated[Path | None, Opt("--cmem-checkpoint", help="CMEM-pretrained region encoder.")]
        = None,
        random_checkpoint: Annotated[Path | None, Opt(
            "--random-checkpoint", help="Untrained encoder for mix-random (default: fresh, seeded).")] = None,
        folds: Annotated[int, Opt("--folds", min=2, help="Outer cross-validation folds.")] = 5,
        val_frac: Annotated[float, Opt("--val-frac", help="Validation share of each fold's training patients.")]
        = 0.2,
        epochs: Annotated[int, Opt("--epochs", min=1, help="Maximum epochs per fold.")] = 30,
        patience: Annotated[int, Opt("--patience", min=1, help="Early-stopping patience in epochs.")] = 8,
        lr: Annotated[float, Opt("--lr", help="Learning rate of the AB-MIL head.")] = 2e-4,
        encoder_lr_scale: Annotated[float, Opt("--encoder-lr-scale", help="Encoder lr = lr x this.")] = 0.1,
        freeze_encoder: Annotated[bool, Opt("--freeze-encoder", help="Do not fine-tune region encoders.")] = False,
        max_instances: Annotated[int, Opt("--max-instances", help="Tiles per bag per training step.")] = 4096,
        max_regions: Annotated[int, Opt("--max-regions", help="Regions per bag per training step (mix-*).")] = 256,
        batch_size: Annotated[int, Opt("--batch-size", min=1, help="Bags per training step (padded).")] = 1,
        standardize: Annotated[bool, Opt("--standardize/--no-standardize",
                                         help="Standardise abmil-* tile features (training-fold statistics).")] = True,
        region_preset: Annotated[str, Opt("--region-preset",
                                          help="Architecture of a fresh encoder when no checkpoint is given.")]
        = "base",
        bag_level: Annotated[str, Opt("--bag-level", help="patient (pool a patient's slides) or slide.")]
        = "patient",
        splits: Annotated[Path | None, Opt("--splits", help="Reuse this splits.csv (identical folds).")] = None,
        allow_missing_slides: Annotated[bool, Opt(
            "--allow-missing-slides", help="Exclude labelled slides without features (recorded).")] = False,
        bootstrap: Annotated[int, Opt("--bootstrap", min=0, help="Bootstrap resamples for CIs.")] = 1000,
        seed: Annotated[int, Opt("--seed", help="Seed of splits, training and bootstrap.")] = 0,
        device: Annotated[str, Opt("--device", help="auto, cpu, cuda, cuda:1 ...")] = "auto",
        precision: Annotated[str, Opt("--precision", help="auto, fp32, bf16 or fp16.")] = "auto",
        overwrite: Annotated[bool, Opt("--overwrite", help="Replace runs made with other settings.")] = False,
        progress: Annotated[bool, Opt("--progress/--no-progress", help="Progress bars.")] = True,
    ) -> None:
        """Cross-validate AB-MIL baselines and mixing-encoder methods on every label column."""
        import logging

        from rich.console import Console

        from mixmag.cli.common import friendly_errors
        from mixmag.utils.logging import add_file_handler

        with friendly_errors():
            from mixmag.mil.experiment import train_methods

            out.mkdir(parents=True, exist_ok=True)
            handler = add_file_handler(out / "run.log")
            checkpoints = {"mem": mem_checkpoint, "cmem": cmem_checkpoint, "random": random_checkpoint}
            try:
                summary = train_methods(
                    features_dir, labels, out, methods=_split_list(methods), targets=_split_list(targets),
                    checkpoints={k: v for k, v in checkpoints.items() if v is not None}, folds=folds,
                    val_frac=val_frac, seed=seed, epochs=epochs, patience=patience, lr=lr,
                    encoder_lr_scale=encoder_lr_scale, freeze_encoder=freeze_encoder, max_instances=max_instances,
                    max_regions=max_regions, batch_size=batch_size, standardize=standardize,
                    region_preset=region_preset, bag_level=bag_level,
                    allow_missing_slides=allow_missing_slides, bootstrap=bootstrap, splits=splits, device=device,
                    precision=precision, overwrite=overwrite, progress=progress)
            finally:
                logging.getLogger("mixmag").removeHandler(handler)
                handler.close()
        console = Console()
        for s in summary.skipped:
            console.print(f"[yellow]skipped {s.method}:[/yellow] {s.reason}")
        if summary.runs:
            console.print(summary.table()[["target", "method", "mean_auroc", "sd_auroc", "ci_lo", "ci_hi"]]
                          .round(3).to_string(index=False))
        console.print(f"runs written to {out}; compare them with `mixmag compare {out}`")

    @app.command("compare")
    def compare(
        run_dirs: Annotated[list[Path], typer.Argument(help="Run folders, or the --out folder of mixmag train.")],
        out: Annotated[Path | None, Opt("--out", help="Write comparison.md/.csv/.png here.")] = None,
        reference: Annotated[str, Opt("--reference", help="Method the Δ column compares with.")] = "abmil-20x",
        bootstrap: Annotated[int, Opt("--bootstrap", min=0, help="Paired bootstrap resamples.")] = 1000,
        seed: Annotated[int, Opt("--seed", help="Bootstrap seed.")] = 0,
    ) -> None:
        """Print (and write) the tasks x methods AUROC table with CIs and paired Δ vs a reference."""
        from rich.console import Console

        from mixmag.cli.common import friendly_errors

        with friendly_errors():
            from mixmag.evaluate.compare import compare_runs

            table = compare_runs(run_dirs, out, reference=reference, n_boot=bootstrap, seed=seed)
        console = Console()
        print_comparison(table, reference=reference, console=console)
        if out is not None:
            console.print(f"written: {out / 'comparison.md'}, {out / 'comparison.csv'}, {out / 'comparison.png'}")
