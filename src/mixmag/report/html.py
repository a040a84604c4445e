"""A self-contained HTML report: one file, inline CSS, every image embedded as a data URI.

:class:`Report` is a small builder (sections of text, tables, figures, key/value lists, code);
nothing in the output references an external resource, so the file can be mailed, archived or
opened offline. Text is HTML-escaped; only :meth:`Section.raw` inserts markup as given.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mixmag._version import __version__
from mixmag.errors import MixmagValueError
from mixmag.report.figures import png_bytes
from mixmag.utils.atomic import atomic_write_text

ImageLike: TypeAlias = Figure | bytes | np.ndarray | str | os.PathLike

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".svg": "image/svg+xml", ".webp": "image/webp"}

CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--zebra:#f6f8fa;--accent:#0969da;--bg:#fff}
*{box-sizing:border-box}
body{margin:0;font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:var(--fg);background:var(--bg);display:grid;grid-template-columns:230px minmax(0,1fr)}
nav{position:sticky;top:0;height:100vh;overflow-y:auto;padding:28px 18px;border-right:1px solid var(--line);
 background:#fbfcfd}
nav .brand{font-weight:700;font-size:16px;margin-bottom:4px}
nav .version{color:var(--muted);font-size:12px;margin-bottom:18px}
nav a{display:block;color:var(--fg);text-decoration:none;padding:5px 8px;border-radius:6px;font-size:14px}
nav a:hover{background:#eef2f6;color:var(--accent)}
main{padding:32px 48px 64px;max-width:1180px}
header h1{font-size:30px;line-height:1.2;margin:0 0 6px}
header .subtitle{color:var(--muted);margin:0 0 4px}
header .meta{color:var(--muted);font-size:13px}
section{margin-top:38px;padding-top:8px;border-top:1px solid var(--line)}
h2{font-size:22px;margin:10px 0 14px}
h3{font-size:17px;margin:22px 0 8px}
p{margin:8px 0;max-width:80ch}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
p code{background:var(--zebra);padding:1px 5px;border-radius:4px}
pre{background:var(--zebra);border:1px solid var(--line);border-radius:8px;padding:12px 14px;overflow:auto;
 max-height:480px}
.table-wrap{overflow-x:auto;margin:10px 0 18px}
table{border-collapse:collapse;font-size:14px;min-width:50%}
caption{caption-side:bottom;text-align:left;color:var(--muted);font-size:13px;padding-top:6px}
th,td{padding:6px 12px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#eef2f6;font-weight:600;position:sticky;top:0}
tbody tr:nth-child(even){background:var(--zebra)}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{font-weight:700}
figure{margin:14px 0 22px}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px;background:#fff}
figcaption{color:var(--muted);font-size:13px;margin-top:6px;max-width:90ch}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:18px}
.grid figure{margin:0}
.cards{display:flex;flex-wrap:wrap;gap:14px;margin:14px 0}
.card{border:1px solid var(--line);border-radius:10px;padding:12px 16px;min-width:160px}
.card .value{font-size:22px;font-weight:700}
.card .label{color:var(--muted);font-size:13px}
.note{border-left:4px solid var(--accent);background:#f0f6ff;padding:8px 14px;border-radius:4px;margin:10px 0}
details summary{cursor:pointer;color:var(--accent);margin:8px 0}
@media (max-width:900px){body{display:block}nav{position:static;height:auto;border-right:0;
 border-bottom:1px solid var(--line)}main{padding:20px}}
@media print{nav{display:none}body{display:block}}
"""


def image_data_uri(image: ImageLike, dpi: int = 100) -> str:
    """``data:`` URI of a figure, PNG/JPEG bytes, uint8 array (H, W[, 3|4]) or image file."""
    if isinstance(image, Figure):
        data, mime = png_bytes(image, dpi), "image/png"
    elif isinstance(image, np.ndarray):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
        mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    else:
        path = Path(image)
        if path.suffix.lower() not in _MIME:
            raise MixmagValueError(f"cannot embed {path}: unsupported image type {path.suffix!r}")
        data, mime = path.read_bytes(), _MIME[path.suffix.lower()]
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _inline(text: str) -> str:
    """Escape ``text``; `backticks` become <code>, **stars** become <strong>."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _cell(value: Any, float_format: str) -> tuple[str, bool]:
    """(escaped text, is_numeric) of one table cell."""
    if value is pd.NA or value is pd.NaT:
        return "–", True
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "–", True
        return html.escape(float_format.format(value)), True
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}", True
    return html.escape("" if value is None else str(value)), False


@dataclass
class Section:
    """One titled part of a report; methods append blocks and return the section (chainable)."""

    title: str
    anchor: str
    blocks: list[str] = field(default_factory=list)

    def text(self, text: str) -> Section:
        """Paragraphs (blank-line separated); `code` and **bold** are supported, HTML escaped."""
        for para in re.split(r"\n\s*\n", text.strip()):
            self.blocks.append(f"<p>{_inline(' '.join(para.split()))}</p>")
        return self

    def heading(self, text: str) -> Section:
        """A sub-heading."""
        self.blocks.append(f"<h3>{html.escape(text)}</h3>")
        return self

    def note(self, text: str) -> Section:
        """A highlighted remark."""
        self.blocks.append(f'<div class="note">{_inline(text)}</div>')
        return self

    def raw(self, markup: str) -> Section:
        """Trusted HTML inserted as is (must not reference external resources)."""
        self.blocks.append(markup)
        return self

    def cards(self, items: Mapping[str, Any]) -> Section:
        """Headline numbers as cards: ``{label: value}``."""
        cards = "".join(f'<div class="card"><div class="value">{html.escape(str(v))}</div>'
                        f'<div class="label">{html.escape(k)}</div></div>' for k, v in items.items())
        self.blocks.append(f'<div class="cards">{cards}</div>')
        return self

    def table(self, data: pd.DataFrame | Sequence[Mapping[str, Any]], *, caption: str | None = None,
              float_format: str = "{:.3f}", highlight_max: str | None = None, max_rows: int = 500,
              collapsed: str | None = None) -> Section:
        """A table with a header row, zebra rows and right-aligned numbers.

        Args:
            data: DataFrame or list of row dicts.
            caption: Shown under the table.
            float_format: ``str.format`` pattern for floats.
            highlight_max: Column whose highest value marks the row in bold (e.g. the best AUROC).
            max_rows: Rows beyond this are cut (a note says how many).
            collapsed: Put the table in a closed ``<details>`` block with this summary line.
        """
        df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))
        best = None
        if highlight_max is not None and highlight_max in df.columns and df[highlight_max].notna().any():
            best = df[highlight_max].astype(float).idxmax()
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
        rows = []
        for idx, row in df.head(max_rows).iterrows():
            cells = []
            for value in row.tolist():
                text, numeric = _cell(value, float_format)
                cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
            cls = ' class="best"' if best is not None and idx == best else ""
            rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
        cap = _inline(caption) if caption else ""
        if len(df) > max_rows:
            cap += f" (first {max_rows} of {len(df)} rows)"
        cap_html = f"<caption>{cap}</caption>" if cap else ""
        markup = (f'<div class="table-wrap"><table>{cap_html}<thead><tr>{head}</tr></thead>'
                  f"<tbody>{''.join(rows)}</tbody></table></div>")
        if collapsed is not None:
            markup = f"<details><summary>{html.escape(collapsed)}</summary>{markup}</details>"
        self.blocks.append(markup)
        return self

    def key_values(self, mapping: Mapping[str, Any], *, caption: str | None = None) -> Section:
        """A two-column table of a (nested) mapping, nested keys joined with dots."""
        # values as text: a key/value list reads best left-aligned, whatever the value type
        rows = [{"key": k, "value": "" if v is None else str(v)} for k, v in flatten(mapping).items()]
        return self.table(rows, caption=caption, float_format="{:g}")

    def figure(self, image: ImageLike, *, caption: str | None = None, alt: str | None = None,
               width: str | None = None) -> Section:
        """An embedded image with a caption (``width`` is a CSS width such as ``"70%"``)."""
        self.blocks.append(_figure_html(image, caption, alt, width))
        return self

    def figures(self, items: Sequence[tuple[ImageLike, str | None]], *, min_px: int = 320) -> Section:
        """Several images in a responsive grid, each ``(image, caption)``; columns >= ``min_px`` wide."""
        inner = "".join(_figure_html(img, cap, None, None) for img, cap in items)
        style = f' style="grid-template-columns:repeat(auto-fill,minmax({int(min_px)}px,1fr))"'
        self.blocks.append(f'<div class="grid"{style}>{inner}</div>')
        return self

    def code(self, text: str, *, summary: str | None = None) -> Section:
        """Preformatted text; with ``summary`` it is collapsed behind that line."""
        pre = f"<pre>{html.escape(text)}</pre>"
        self.blocks.append(f"<details><summary>{html.escape(summary)}</summary>{pre}</details>" if summary else pre)
        return self


def _figure_html(image: ImageLike, caption: str | None, alt: str | None, width: str | None) -> str:
    style = f' style="width:{html.escape(width)}"' if width else ""
    alt_text = html.escape(alt or caption or "figure")
    cap = f"<figcaption>{_inline(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{image_data_uri(image)}" alt="{alt_text}"{style}>{cap}</figure>'


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become comma-separated text."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = ", ".join(str(v) for v in value)
        else:
            out[name] = value
    return out


class Report:
    """Builder of a self-contained HTML report.

    Args:
        title: Page title and main heading.
        subtitle: Optional line under the title.

    Example:
        >>> r = Report("Study")
        >>> _ = r.section("Results").text("AUROC of every method.")
        >>> "<h2>Results</h2>" in r.to_html()
        True
    """

    def __init__(self, title: str, *, subtitle: str | None = None) -> None:
        self.title = title
        self.subtitle = subtitle
        self.sections: list[Section] = []

    def section(self, title: str, *, anchor: str | None = None) -> Section:
        """Append and return a new section (listed in the navigation)."""
        base = anchor or _slug(title)
        used = {s.anchor for s in self.sections}
        slug, i = base, 2
        while slug in used:
            slug, i = f"{base}-{i}", i + 1
        sec = Section(title, slug)
        self.sections.append(sec)
        return sec

    def to_html(self) -> str:
        """The complete HTML document."""
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self.sections)
        body = "".join(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{"".join(s.blocks)}</section>'
                       for s in self.sections)
        sub = f'<p class="subtitle">{_inline(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>"
            f'<nav><div class="brand">mixmag</div><div class="version">v{html.escape(__version__)}</div>{nav}</nav>'
            f"<main><header><h1>{html.escape(self.title)}</h1>{sub}"
            f'<div class="meta">Generated {now} by mixmag {html.escape(__version__)}</div></header>'
            f"{body}</main></body></html>\n"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the HTML file atomically and return its path."""
        atomic_write_text(path, self.to_html())
        return Path(path)
