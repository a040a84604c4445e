"""``mixmag run`` (a whole study from a config) and ``mixmag demo`` (the same on embedded data)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mixmag.cli.options import AssumeYes


def _print_outcome(result: object, started: float) -> None:
    from rich.console import Console

    from mixmag.pipeline.study import StudyResult

    assert isinstance(result, StudyResult)
    console = Console()
    if result.comparison is not None:
        from mixmag.cli.train_cmd import print_comparison

        print_comparison(result.comparison, console=console)
    _print_external(result, console)
    reused = ", ".join(result.skipped) or "none"
    console.print(f"\nstages reused from an earlier run: {reused}")
    console.print(f"finished in {time.perf_counter() - started:.0f} s")
    if result.report is not None:
        console.print(f"[bold green]report:[/bold green] {result.report}")


def _print_external(result: object, console: Any) -> None:
    """The external cohort's metric per run beside the cross-validated one (after the CV tables)."""
    from rich.table import Table

    from mixmag.pipeline.study import StudyResult
    from mixmag.report.external import external_table, metric_label

    assert isinstance(result, StudyResult)
    if result.external is None:
        return
    folder = result.run_dir / "external"
    if result.external.empty:
        console.print(f"external cohort scored without labels (no metric): {folder / 'predictions.csv'}")
        return
    frame = external_table(result.external, result.comparison)
    if result.comparison is not None:  # the CV tables' method order
        order = {m: i for i, m in enumerate(dict.fromkeys(result.comparison["method"]))}
        frame = frame.sort_values("method", key=lambda col: col.map(order), kind="stable")
    several = frame["target"].nunique() > 1
    t = Table(title=f"External validation: {metric_label(result.external)} on a cohort never trained on (95% CI)")
    columns = [c for c in frame.columns if c not in ("target", "model")]
    for column in columns:
        t.add_column(column, no_wrap=column == "method")
    for _, row in frame.iterrows():
        cells = [str(row[c]) for c in columns]
        if several:
            cells[0] = f"{row['target']} · {cells[0]}"
        t.add_row(*cells)
    console.print(t)
    console.print(f"external predictions: {folder / 'predictions.csv'}")


def _print_demo_verdict(result: object) -> None:
    """One line on what the demo cohort is built to show (the numbers, not a claim)."""
    from rich.console import Console

    from mixmag.pipeline.demo import mixing_gaps
    from mixmag.pipeline.study import StudyResult

    assert isinstance(result, StudyResult)
    gaps = mixing_gaps(result.comparison) if result.comparison is not None else {}
    if gaps:
        listed = ", ".join(f"{m} {g:+.3f}" for m, g in gaps.items())
        Console().print(f"pretrained mixing vs the best single-magnification baseline (mean AUROC): {listed}")


def _failed_inputs(result: object) -> tuple[int, int, list[str]]:
    """Slides of the study (and its external cohort), how many failed, and the files that say why.

    Read from what the run left on disk, so a stage reused from an earlier run still counts: the
    ``status=error`` rows of the tile and embed manifests, and ``external/problems.csv``.
    """
    import pandas as pd

    from mixmag.cli.predict_cmd import count_slides
    from mixmag.io.manifest import Status, read_manifest
    from mixmag.pipeline.study import StudyResult

    assert isinstance(result, StudyResult)
    manifests = []
    if (tile := result.stages.get("tile")) is not None and tile.outputs.get("manifest"):
        manifests.append(Path(tile.outputs["manifest"]))
    if (embed := result.stages.get("embed")) is not None and embed.outputs.get("features"):
        manifests.append(Path(embed.outputs["features"]) / "manifest.csv")
    seen: set[str] = set()
    failed: set[str] = set()
    where: list[str] = []
    for path in manifests:
        rows = read_manifest(path)
        seen.update(rows)
        bad = {sid for sid, row in rows.items() if row.get("status") == Status.ERROR.value}
        if bad:
            failed |= bad
            where.append(str(path))
    n_total, n_failed = len(seen), len(failed)
    external = result.stages.get("external")
    if external is not None and external.outputs.get("external"):
        folder = Path(external.outputs["external"])
        problems, predictions = folder / "problems.csv", folder / "predictions.csv"
        if problems.is_file() and predictions.is_file():
            more_total, more_failed = count_slides(pd.read_csv(predictions), pd.read_csv(problems))
            n_total, n_failed = n_total + more_total, n_failed + more_failed
            if more_failed:
                where.append(str(problems))
    return n_total, n_failed, where


def _exit_on_failed_inputs(result: object) -> None:
    """Exit 3 (``EXIT_PARTIAL``) after a finished study in which some slides failed (see exit-codes.md)."""
    from mixmag.cli.common import EXIT_OK, EXIT_PARTIAL, finish_batch

    n_total, n_failed, where = _failed_inputs(result)
    # the study finished, so something succeeded: never EXIT_FAILED, whatever the counts say
    if finish_batch(n_total, n_failed, ", ".join(where)) != EXIT_OK:
        raise typer.Exit(EXIT_PARTIAL)


def register(app: typer.Typer) -> None:
    """Add the ``run`` and ``demo`` commands to ``app``."""

    @app.command("run")
    def run(
        config: Annotated[Path | None, typer.Argument(
            help="Study config YAML (`mixmag config init study.yaml`); or give it with --config.")] = None,
        config_option: Annotated[Path | None, typer.Option(
            "--config", help="The study config YAML, as the stage commands take it (instead of the argument).")]
        = None,
        overrides: Annotated[list[str] | None, typer.Option(
            "--set", help="Override a key: section.key=value (repeatable).")] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
        yes: AssumeYes = False,
    ) -> None:
        """Run the whole study: tile -> embed -> pretrain -> MIL -> heatmaps -> diagnostics -> report.

        Finished stages are skipped (see stages.json in the run folder); interrupted stages resume.
        Exits 3 when the study finished but some slides failed (tile/embed manifests, external/problems.csv).
        """
        from mixmag.cli.common import fail, friendly_errors, terminal_ask
        from mixmag.cli.options import load_study_config
        from mixmag.pipeline.study import run_study

        if config is not None and config_option is not None and config != config_option:
            fail(f"two study configs: {config} and --config {config_option}; give one")
        config = config or config_option
        if config is None:
            fail("no study config: give it as `mixmag run study.yaml` (or --config study.yaml); "
                 "`mixmag config init study.yaml` writes one")

        # every problem of the config and its files, with file:line, before any stage starts (the
        # study checks again, for the API; its warnings go to the run's log, so none are printed here)
        cfg = load_study_config(config, overrides, stages="study", warn=False)
        started = time.perf_counter()
        with friendly_errors():
            result = run_study(cfg, progress=progress, ask=terminal_ask(yes))
        _print_outcome(result, started)
        _exit_on_failed_inputs(result)

    @app.command("demo")
    def demo(
        out: Annotated[Path, typer.Option("--out", help="Demo folder (cohort cached inside).")] = Path("mixmag-demo"),
        slides: Annotated[list[Path] | None, typer.Option(
            "--slides", help="Your own slide files/folders to tile, QC and get heatmaps for.")] = None,
        quick: Annotated[bool, typer.Option("--quick", help="Small cohort, short training (~1-2 min).")] = False,
        seed: Annotated[int, typer.Option(help="Cohort seed.")] = 0,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    ) -> None:
        """Generate a synthetic multi-scale cohort and run the whole study on it (CPU, no download)."""
        from mixmag.cli.common import EXIT_USAGE, friendly_errors
        from mixmag.cli.options import load_study_config, print_problems
        from mixmag.pipeline.demo import run_demo
        from mixmag.preflight import PreflightError

        if slides:  # your slides are checked before the cohort is generated (minutes)
            load_study_config(None, [], {"slides.inputs": list(slides)}, {"slides.inputs": "--slides"},
                              stages=("tile",))
        started = time.perf_counter()
        with friendly_errors():
            try:
                result = run_demo(out, user_slides=slides, quick=quick, seed=seed, progress=progress)
            except PreflightError as exc:  # e.g. a --slides path that does not exist: one line each
                print_problems(exc.errors, exc.warnings)
                raise typer.Exit(EXIT_USAGE) from None
        _print_outcome(result, started)
        _print_demo_verdict(result)
        _exit_on_failed_inputs(result)
