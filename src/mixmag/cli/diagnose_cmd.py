"""``mixmag diagnose``: where is the signal lost? (probes, slide ceiling, pretraining and attention diagnostics)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mixmag.errors import MixmagValueError

if TYPE_CHECKING:
    import pandas as pd

Opt = typer.Option


def parse_checkpoints(values: list[str] | None) -> dict[str, Path]:
    """``["mem=runs/mem", "runs/cmem"]`` -> ``{"mem": ..., "region": ...}`` (a bare path gets role ``region``)."""
    out: dict[str, Path] = {}
    for value in values or []:
        role, sep, path = value.partition("=")
        role, path = (role.strip().lower(), path.strip()) if sep else ("region", value.strip())
        if not role or not path:
            raise MixmagValueError(f"--checkpoint {value!r}: use ROLE=PATH, e.g. mem=pretrain/mem")
        if role in out:
            raise MixmagValueError(f"--checkpoint: role {role!r} given twice")
        out[role] = Path(path)
    return out


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _table(title: str, df: pd.DataFrame) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in df.columns:
        t.add_column(str(col), no_wrap=True)
    for row in df.itertuples(index=False):
        t.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    return t


def ceiling_table(ceiling: pd.DataFrame) -> pd.DataFrame:
    """Feature set (x probe, when several) x property -> ``slide_auroc_max`` as text, ``skipped`` for skipped rows."""
    cell = ceiling["slide_auroc_max"].map("{:.2f}".format).where(ceiling["slide_auroc_max"].notna(), "skipped")
    index = ["feature_set", "probe"] if ceiling["probe"].nunique() > 1 else ["feature_set"]
    wide = ceiling.assign(cell=cell).pivot_table(index=index, columns="property", values="cell", aggfunc="first",
                                                 sort=False)
    wide.columns.name = None
    return wide.reset_index()


def print_diagnostics(result: Any, console: Any = None) -> None:
    """Print compact tables of a :class:`~mixmag.diagnose.api.DiagnosticsResult`."""
    from rich.console import Console

    console = console or Console()
    if result.probes is not None and not result.probes.empty:
        p = result.probes
        cell = p["auroc"].map("{:.2f}".format) + " (" + p["auroc_shuffled"].map("{:.2f}".format) + ")"
        wide = p.assign(cell=cell.where(p["auroc"].notna(), "skipped")).pivot_table(
            index=["feature_set", "probe"], columns="property", values="cell", aggfunc="first", sort=False)
        console.print(_table("probe AUROC (shuffled control)", wide.reset_index()))
    if result.ceiling is not None and not result.ceiling.empty:
        c = result.ceiling
        console.print(_table("slide AUROC ceiling (best region)", ceiling_table(c)))
        for (prop, note), _ in c[c["note"].astype(bool)].groupby(["property", "note"], sort=False):
            console.print(f"[dim]ceiling {prop} skipped: {note}[/dim]")
    if result.pretraining is not None:
        cols = {"checkpoint": "ckpt", "pattern": "pattern", "magnification": "mag", "n_tokens": "tokens",
                "mse_model": "mse", "ratio_zero": "/ mean", "ratio_region_mean": "/ region mean"}
        console.print(_table("masked reconstruction MSE; model / baseline (< 1 = learned)",
                             result.pretraining[list(cols)].rename(columns=cols)))
    if result.attention_summary is not None and not result.attention_summary.empty:
        s = result.attention_summary
        cols = {"method": "method", "property": "property", "bags": "bags", "n_bags": "n",
                "attention_share": "share", "uniform_share": "uniform", "rank_auroc": "rank AUROC"}
        console.print(_table("attention on labelled regions (share vs uniform)",
                             s[s["bags"] != "all"][list(cols)].rename(columns=cols)))
    for what, why in result.skipped.items():
        console.print(f"[dim]skipped {what}: {why}[/dim]")
    console.print(f"written to {result.out_dir}")


def register(app: typer.Typer) -> None:
    """Add the ``diagnose`` command to ``app``."""

    @app.command("diagnose")
    def diagnose(
        features: Annotated[Path, typer.Argument(help="Folder of per-slide feature files (mixmag embed).")],
        out: Annotated[Path, Opt("--out", "-o", help="Output folder (CSV tables, PNG figures, diagnostics.json).")],
        region_labels: Annotated[Path | None, Opt(
            "--region-labels", help="CSV of boxes (slide_id,x0,y0,x1,y1) or regions (slide_id,x,y) + 0/1 "
                                    "property columns, level-0 px.")] = None,
        properties: Annotated[str | None, Opt(
            "--properties", help="Comma-separated property columns (default: every 0/1 column).")] = None,
        checkpoint: Annotated[list[str] | None, Opt(
            "--checkpoint", "-c", help="ROLE=PATH region-encoder checkpoint or pretrain run folder "
                                       "(repeatable, e.g. mem=pretrain/mem).")] = None,
        mil: Annotated[Path | None, Opt("--mil", help="MIL run folder (or the --out of mixmag train).")] = None,
        probes: Annotated[str, Opt("--probes", help="Comma-separated probes: linear, mlp.")] = "linear,mlp",
        ceiling: Annotated[bool, Opt(
            "--ceiling/--no-ceiling", help="Slide AUROC ceiling of the linear probe's best regions "
                                           "(runs with the probes).")] = True,
        slide_labels: Annotated[Path | None, Opt(
            "--slide-labels", exists=True, dir_okay=False,
            help="Labels table (patient_id,slide_id,<label>) for the ceiling; default: a slide is "
                 "positive when any of its regions holds the property.")] = None,
        label_column: Annotated[str | None, Opt(
            "--label-column", help="Label column of --slide-labels (when it has several).")] = None,
        max_regions: Annotated[int, Opt("--max-regions", min=10, help="Most labelled regions probed.")] = 20000,
        max_tiles: Annotated[int, Opt("--max-tiles", min=0, help="Most tiles per magnification for the single-tile ceiling (0 = off).")] = 12000,
        pretraining_regions: Annotated[int, Opt(
            "--pretraining-regions", min=1, help="Regions sampled for the reconstruction diagnostics.")] = 1024,
        min_overlap: Annotated[float, Opt(
            "--min-overlap", min=0.0, max=1.0, help="Box coverage from which a region holds a property.")] = 0.5,
        seed: Annotated[int, Opt("--seed", help="Seed of samples, permutations and probes.")] = 0,
    ) -> None:
        """Diagnose where the signal is lost: feature probes, slide ceiling, pretraining, MIL attention."""
        from mixmag.cli.common import friendly_errors

        with friendly_errors():
            from mixmag.diagnose.api import run_diagnostics
            from mixmag.utils.logging import add_file_handler

            checkpoints = parse_checkpoints(checkpoint)
            out.mkdir(parents=True, exist_ok=True)
            add_file_handler(out / "run.log")
            result = run_diagnostics(features, out_dir=out, region_labels=region_labels,
                                     properties=_split(properties) if properties else None, checkpoints=checkpoints,
                                     mil_dir=mil, probes=_split(probes), ceiling=ceiling,
                                     slide_labels=slide_labels, slide_label_column=label_column,
                                     max_regions=max_regions, max_tiles=max_tiles,
                                     pretraining_regions=pretraining_regions,
                                     min_overlap=min_overlap, seed=seed)
        print_diagnostics(result)
