"""``mixmag train`` (cross-validated AB-MIL comparison) and ``mixmag compare`` (paper-style table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from mixmag.cli.options import (
    ConfigFile,
    SetItems,
    given_settings,
    load_study_config,
    named_items,
    setting_option,
    split_list,
)
from mixmag.evaluate.settings import REFERENCE_METHOD, EvaluateSettings
from mixmag.mil.settings import MilSettings
from mixmag.utils.settings import Precision, field_default

Opt = typer.Option
# The `mil` and `evaluate` sections: each named setting option below is one of their fields, with
# the field's docstring as help and its default (read from these instances) as default.
M, E = MilSettings, EvaluateSettings
_MIL, _EVALUATE = MilSettings(), EvaluateSettings()
#: The config sections whose fields the named options set, in priority order (`--seed` is mil.seed).
#: Of `evaluate`, training reads the fields marked CROSS_VALIDATION (mixmag.evaluate.settings).
SECTIONS: dict[str, type[BaseModel]] = {"mil": MilSettings, "evaluate": EvaluateSettings}


def print_comparison(table: Any, *, reference: str = REFERENCE_METHOD, console: Any = None) -> None:
    """Print the metric (AUROC, or each task's own) and Δ tables of a
    :func:`~mixmag.evaluate.compare.compare_runs` result (rich)."""
    from rich.console import Console
    from rich.table import Table

    from mixmag.evaluate.compare import format_tables, table_titles

    console = console or Console()
    auc, delta = format_tables(table, reference=reference)
    for title, frame in zip(table_titles(table, reference), (auc, delta), strict=True):
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
        ctx: typer.Context,
        features_dir: Annotated[Path, typer.Argument(help="Folder of <slide_id>.h5 feature files (mixmag embed).")],
        out: Annotated[Path, Opt("--out", help="Output folder: <out>/<target>/<method>/ per run.")],
        labels: Annotated[Path | None, setting_option(M, "labels", help="CSV/TSV with patient_id, slide_id and label "
                                                      "columns (required unless the --config file sets mil.labels).")]
        = _MIL.labels,
        config: ConfigFile = None,
        overrides: SetItems = None,
        methods: Annotated[list[str], setting_option(M, "methods", help="Comma-separated methods (repeatable).")]
        = _MIL.methods,
        targets: Annotated[list[str], setting_option(M, "targets", help="Comma-separated label columns "
                                                     "(default: all).")] = _MIL.targets,
        mem_checkpoint: Annotated[Path | None, Opt("--mem-checkpoint", help="MEM-pretrained region encoder "
                                                   "(mil.checkpoints.mem).")] = None,
        cmem_checkpoint: Annotated[Path | None, Opt("--cmem-checkpoint", help="CMEM-pretrained region encoder "
                                                    "(mil.checkpoints.cmem).")] = None,
        random_checkpoint: Annotated[Path | None, Opt(
            "--random-checkpoint", help="Untrained encoder for mix-random (mil.checkpoints.random; default: fresh, "
                                        "seeded).")] = None,
        target_type_items: Annotated[list[str] | None, Opt(
            "--target-type", metavar="NAME=TYPE",
            help="How to read a label column: TYPE is binary, multiclass, regression or survival (repeatable; "
                 "sets mil.target_types.NAME; default: inferred from the values and logged).")] = None,
        survival_column_items: Annotated[list[str] | None, Opt(
            "--survival-columns", metavar="NAME=TIME,EVENT",
            help="The time and event columns of survival target NAME (repeatable; sets "
                 "mil.survival_columns.NAME; default: NAME_time and NAME_event).")] = None,
        splits: Annotated[Path | None, setting_option(E, "splits")] = _EVALUATE.splits,
        folds: Annotated[int, setting_option(E, "folds")] = _EVALUATE.folds,
        bootstrap: Annotated[int, setting_option(E, "bootstrap")] = _EVALUATE.bootstrap,
        epochs: Annotated[int, setting_option(M, "epochs")] = _MIL.epochs,
        lr: Annotated[float, setting_option(M, "lr")] = _MIL.lr,
        batch_size: Annotated[int, setting_option(M, "batch_size")] = _MIL.batch_size,
        seed: Annotated[int, setting_option(M, "seed")] = _MIL.seed,
        device: Annotated[str, setting_option(M, "device")] = _MIL.device,
        threads: Annotated[int | None, setting_option(M, "threads")] = _MIL.threads,
        precision: Annotated[Precision, setting_option(M, "precision")] = _MIL.precision,
        refit_all: Annotated[bool, setting_option(M, "refit_all")] = _MIL.refit_all,
        overwrite: Annotated[bool, Opt("--overwrite", help="Replace runs made with other settings.")] = False,
        progress: Annotated[bool, Opt("--progress/--no-progress", help="Progress bars.")] = True,
    ) -> None:
        """Cross-validate AB-MIL baselines and mixing-encoder methods on every label column.

        Settings come from the `mil` section (and evaluate.folds/val_frac/bootstrap/splits) of
        --config FILE, then --set section.KEY=VALUE, then the options below; e.g.
        --set mil.hidden_dim=256 --set mil.freeze_encoder=true.
        """
        import logging

        from rich.console import Console

        from mixmag.cli.common import fail, friendly_errors
        from mixmag.utils.logging import add_file_handler

        values, sources = given_settings(ctx, SECTIONS)
        for key in ("mil.methods", "mil.targets"):
            if key in values:
                values[key] = split_list(values[key])

        # one dotted key per target: a config file's other targets keep their declarations
        for option, setting, items in (
                ("--target-type", "target_types", named_items(target_type_items, "--target-type", value="TYPE")),
                ("--survival-columns", "survival_columns",
                 named_items(survival_column_items, "--survival-columns", value="TIME,EVENT", as_list=True))):
            for name, value in items.items():
                values[f"mil.{setting}.{name}"] = value
                sources[f"mil.{setting}.{name}"] = option
            if items:  # the model checks the whole mapping: its messages name the parent key
                sources[f"mil.{setting}"] = option
        for role, path in (("mem", mem_checkpoint), ("cmem", cmem_checkpoint), ("random", random_checkpoint)):
            if path is not None:
                values[f"mil.checkpoints.{role}"] = path
                sources[f"mil.checkpoints.{role}"] = f"--{role}-checkpoint"
        cfg = load_study_config(config, overrides, values, sources, stages=("train",), features=features_dir)
        m, ev = cfg.mil, cfg.evaluate
        if m.labels is None:
            fail("no labels table: pass --labels CSV, or set mil.labels in the --config file")
        with friendly_errors():
            from mixmag.mil.experiment import train_methods

            out.mkdir(parents=True, exist_ok=True)
            handler = add_file_handler(out / "run.log")
            try:
                summary = train_methods(features_dir, m.labels, out, settings=m, evaluation=ev, overwrite=overwrite,
                                        progress=progress)
            finally:
                logging.getLogger("mixmag").removeHandler(handler)
                handler.close()
        console = Console()
        for s in summary.skipped:
            console.print(f"[yellow]skipped {s.method}:[/yellow] {s.reason}")
        if summary.runs:
            runs = summary.table()
            if "metric" in runs.columns:  # tasks of several endpoints: each in its own metric
                from mixmag.evaluate.compare import comparison_view

                runs = comparison_view(runs)[["target", "method", "metric", "mean", "sd", "ci_lo", "ci_hi"]]
            else:
                runs = runs[["target", "method", "mean_auroc", "sd_auroc", "ci_lo", "ci_hi"]]
            console.print(runs.round(3).to_string(index=False))
        console.print(f"runs written to {out}; compare them with `mixmag compare {out}`")

    @app.command("compare")
    def compare(
        run_dirs: Annotated[list[Path], typer.Argument(help="Run folders, or the --out folder of mixmag train.")],
        out: Annotated[Path | None, Opt("--out", help="Write comparison.md/.csv/.png here.")] = None,
        reference: Annotated[str, Opt("--reference", help="Method the Δ column compares with.")] = REFERENCE_METHOD,
        bootstrap: Annotated[int, Opt("--bootstrap", min=0, help="Paired bootstrap resamples.")]
        = field_default(EvaluateSettings, "bootstrap"),
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
