"""``mixmag synth``: write a synthetic H&E-like cohort whose label needs 5x and 20x together."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mixmag.errors import MixmagValueError


def _parse_size(text: str) -> tuple[int, int]:
    """``"2688x1792"`` -> (2688, 1792)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise MixmagValueError(f"--size must look like WIDTHxHEIGHT in level-0 pixels (e.g. 2688x1792), got {text!r}") from None
    return w, h


def _parse_per_patient(text: str) -> int | tuple[int, int]:
    """``"2"`` -> 2, ``"1-3"`` -> (1, 3)."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            return lo, hi
        return int(text)
    except ValueError:
        raise MixmagValueError(f"--slides-per-patient must be N or LO-HI (e.g. 1-3), got {text!r}") from None


def _parse_mpp(text: str) -> float | list[float]:
    """``"0.5"`` -> 0.5, ``"0.25,0.5"`` -> [0.25, 0.5]."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise MixmagValueError(f"--mpp must be a number or a comma-separated list (e.g. 0.25,0.5), got {text!r}") from None
    return values[0] if len(values) == 1 else values


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command to ``app``."""

    @app.command("synth")
    def synth(
        out: Annotated[Path, typer.Argument(help="Output folder (slides/, unlabeled/, labels.csv, cohort.json).")],
        n_slides: Annotated[int, typer.Option("--n-slides", "-n", min=1, help="Labeled slides.")] = 40,
        prevalence: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction of positive patients.")] = 0.5,
        difficulty: Annotated[float, typer.Option(min=0.0, max=1.0, help="0 = easy ... 1 = hard.")] = 0.5,
        seed: Annotated[int, typer.Option(help="Same seed and options give byte-identical files.")] = 0,
        size: Annotated[str, typer.Option(help="Level-0 WIDTHxHEIGHT in pixels (multiples of 896 keep the region grid at 0,0).")] = "2688x1792",
        mpp: Annotated[str, typer.Option(help="Level-0 µm/px written in the TIFF resolution tags; with --regions a comma list (0.25,0.5) that each slide draws from.")] = "0.5",
        regions: Annotated[int | None, typer.Option(min=6, help="Realistic layout: about N regions per slide at a random offset to the tiling grid (overrides --size).")] = None,
        informative_fraction: Annotated[float | None, typer.Option(min=0.0, max=0.5, help="Share of a positive slide's regions that are ring + atypical (default: from --difficulty).")] = None,
        distractor_fraction: Annotated[float | None, typer.Option(min=0.0, max=0.5, help="Share of regions in each distractor kind (ring + normal, scattered + atypical); default = --informative-fraction.")] = None,
        stain_jitter: Annotated[float | None, typer.Option(min=0.0, max=0.5, help="Per-slide relative stain variation (default: from --difficulty).")] = None,
        structure: Annotated[str, typer.Option(help="5x property of the realistic layout: 'rosette' (one ring per cell vs a broken ring) or 'cords' (parallel rows of nests filling the cell vs the same runs scattered; survives any offset of the region grid).")] = "rosette",
        cell_regions: Annotated[int, typer.Option(min=1, help="Side of a structure cell in regions (realistic layout); 2 = every unit spans 2x2 regions.")] = 1,
        unlabeled: Annotated[int, typer.Option(min=0, help="Slides in the unlabeled pretraining pool.")] = 0,
        slides_per_patient: Annotated[str, typer.Option(help="N, or a range LO-HI.")] = "1",
        levels: Annotated[int, typer.Option(min=1, help="Pyramid levels.")] = 3,
        workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Slides painted in parallel processes.")] = 1,
        overwrite: Annotated[bool, typer.Option(help="Replace a cohort made with other options.")] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")] = False,
    ) -> None:
        """Generate pyramidal TIFF slides whose label is readable only by combining 5x and 20x."""
        from mixmag.cli.common import friendly_errors
        from mixmag.synth.cohort import make_synthetic_cohort

        with friendly_errors():
            info = make_synthetic_cohort(
                out, n_slides=n_slides, prevalence=prevalence, difficulty=difficulty, seed=seed,
                slide_px=_parse_size(size), mpp=_parse_mpp(mpp), regions=regions,
                informative_fraction=informative_fraction, distractor_fraction=distractor_fraction,
                stain_jitter=stain_jitter, structure=structure, cell_regions=cell_regions,
                slides_per_patient=_parse_per_patient(slides_per_patient),
                n_unlabeled=unlabeled, n_levels=levels, workers=workers, overwrite=overwrite,
                progress=not no_progress,
            )
        state = "reused existing" if info.reused else "wrote"
        typer.echo(f"{state} {len(info.slides)} slides ({info.n_positive} positive) and "
                   f"{len(info.unlabeled)} unlabeled in {info.out_dir}")
        typer.echo(f"labels: {info.labels_csv}\nground truth: {info.cohort_json}")
