"""``mixmag predict``: apply trained runs to a new cohort (external validation, deployment)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mixmag.cli.options import setting_option, split_list
from mixmag.evaluate.settings import EvaluateSettings
from mixmag.report.settings import ReportSettings
from mixmag.utils.settings import field_default

if TYPE_CHECKING:
    import pandas as pd

Opt = typer.Option
R = ReportSettings


def register(app: typer.Typer) -> None:
    """Add ``predict`` to ``app``."""

    @app.command("predict")
    def predict(
        run: Annotated[Path, typer.Argument(help="A `mixmag run` study folder, a `mixmag train --out` folder, one "
                                            "<target>/<method> run folder, or one model.pt inside a run folder.")],
        inputs: Annotated[list[Path], typer.Argument(help="Slide files/folders/CSV lists (tiled and embedded like "
                                                     "the training features), or one folder of feature files.")],
        out: Annotated[Path, Opt("--out", "-o", help="Output folder.")],
        labels: Annotated[Path | None, Opt(help="Labels table (patient_id, slide_id, label columns) of the new "
                                           "cohort: groups slides into patients and gives the AUROC (C-index, Spearman's ρ).")] = None,
        method: Annotated[list[str] | None, Opt("--method", help="Methods to apply, comma-separated or repeated "
                                                "(default: every trained one).")] = None,
        target: Annotated[list[str] | None, Opt("--target", help="Targets to apply (default: all).")] = None,
        weights: Annotated[str | None, Opt(help="Tile-encoder weights (file or hub id) when the training run's "
                                           "source is not reachable here; must hash like the training weights.")]
        = None,
        device: Annotated[str, Opt(help="auto, cpu, cuda ...")] = "auto",
        workers: Annotated[int, Opt(min=1, help="Tiling processes.")] = 1,
        bootstrap: Annotated[int, Opt(min=0, help="Bootstrap resamples of the AUROC CI.")]
        = field_default(EvaluateSettings, "bootstrap"),
        heatmap_slides: Annotated[int, setting_option(R, "heatmap_slides", min=0)]
        = field_default(ReportSettings, "heatmap_slides"),
        no_report: Annotated[bool, Opt("--no-report", help="Do not write report.html.")] = False,
        no_progress: Annotated[bool, Opt("--no-progress", help="No progress bars.")] = False,
    ) -> None:
        """Score new slides or features with trained models; predictions.csv, AUROC when labelled, heatmaps."""
        from rich.console import Console

        from mixmag.cli.common import exit_batch, friendly_errors

        with friendly_errors():
            from mixmag.pipeline.predict import predict_cohort

            result = predict_cohort(run, inputs, out, labels=labels, methods=split_list(method) or None,
                                    targets=split_list(target) or None, weights=weights, device=device,
                                    workers=workers, n_boot=bootstrap,
                                    report=ReportSettings(heatmap_slides=heatmap_slides),
                                    write_report=not no_report, progress=not no_progress)
        console = Console()
        if len(result.metrics):
            shown = result.metrics
            if "metric" in shown.columns:  # regression/survival runs: each in its own metric (ρ, C-index)
                metric = shown["metric"].fillna("auroc")
                value = [row.get(m) for m, (_, row) in zip(metric, shown.iterrows(), strict=True)]
                shown = shown.assign(metric=metric, value=value)[
                    ["target", "method", "model", "n_bags", "metric", "value", "ci_lo", "ci_hi"]]
            else:
                shown = shown[["target", "method", "model", "n_bags", "auroc", "ci_lo", "ci_hi"]]
            console.print(shown.round(3).to_string(index=False))
        n = result.predictions[["bag_id"]].drop_duplicates().shape[0]
        console.print(f"{n} bags scored; predictions: {out / 'predictions.csv'}"
                      + (f"; report: {result.report}" if result.report else ""))
        for row in result.problems.itertuples():  # each left-out slide with its reason, above the summary
            typer.secho(f"  {row.slide_id} ({row.stage}): {row.reason}", err=True, fg=typer.colors.RED)
        n_total, n_failed = count_slides(result.predictions, result.problems)
        exit_batch(n_total, n_failed, out / "problems.csv")


def count_slides(predictions: pd.DataFrame, problems: pd.DataFrame) -> tuple[int, int]:
    """Slides of a prediction run and how many were left out (``problems.csv``), each counted once.

    The slides are those scored (``slide_ids`` of the predictions, ``;``-joined per bag) plus those
    left out; a slide listed in ``problems.csv`` counts as failed even if some run scored it.
    """
    failed = set(problems["slide_id"].astype(str)) if len(problems) else set()
    scored: set[str] = set()
    if "slide_ids" in predictions.columns:
        for joined in predictions["slide_ids"].astype(str):
            scored.update(s for s in joined.split(";") if s)
    return len(scored | failed), len(failed)
