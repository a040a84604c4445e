"""Matplotlib plumbing shared by the report figures: Agg figures without pyplot, atomic PNG output.

Figures are built with :class:`matplotlib.figure.Figure` and an explicit Agg canvas, so importing
mixmag never switches the global pyplot backend and nothing needs a display.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mixmag.utils.atomic import atomic_path

DEFAULT_DPI = 100

def new_figure(width_in: float, height_in: float) -> Figure:
    """A Figure of exactly ``width_in`` x ``height_in`` inches with an Agg canvas attached.

    matplotlib's global rcParams are never changed (an ``rc_context`` around figure creation would
    not reach the axes drawn later, and could leak into figures drawn at the same time in other
    threads); a figure that needs another look sets it on its own axes.
    """
    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = DEFAULT_DPI, *, crop: bool = False) -> bytes:
    """PNG encoding of ``fig``.

    Args:
        fig: The figure.
        dpi: Pixels per inch.
        crop: Crop the margins to the drawn content (matplotlib's ``bbox_inches="tight"``); the
            pixel size then depends on the content. Default: exactly ``figsize * dpi`` pixels.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if crop else None)
    return buf.getvalue()


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = DEFAULT_DPI, *, crop: bool = False) -> Path:
    """Write ``fig`` as a PNG atomically (``crop`` as in :func:`png_bytes`) and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(fig, dpi, crop=crop))
    return Path(path)


def figure_pixels(fig: Figure, dpi: int = DEFAULT_DPI) -> np.ndarray:
    """Render ``fig`` to a uint8 (H, W, 3) array (as the PNG would look)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png_bytes(fig, dpi))).convert("RGB"))
