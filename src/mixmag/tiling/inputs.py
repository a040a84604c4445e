"""Turn user inputs (files, folders, CSV lists) into slide jobs with unique ids and mpp overrides.

- A folder is searched recursively for files with a known slide extension (hidden files and the
  output folder itself are skipped).
- A ``.csv`` file lists slides in a ``path`` column (relative paths are relative to the CSV), with
  optional ``mpp`` and ``slide_id`` columns.
- Any other file is taken as a slide as is (an unsupported one fails later with a clear message).

Slide ids are file stems. When two different files share a stem, each gets its parent folder
names prepended (``caseA__slide``, ``caseB__slide``) until the ids are unique, and a warning says so.

mpp precedence per slide: the input CSV's ``mpp`` column, then the ``--mpp-csv`` table, then the
global ``--mpp``, then the file's own metadata.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError
from mixmag.slides.opener import known_extensions, slide_stem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TilingJob:
    """One slide to process.

    Attributes:
        path: Absolute slide path.
        slide_id: Unique id (output file names).
        mpp_override: Level-0 µm/px to use instead of the file's metadata, or None.
    """

    path: Path
    slide_id: str
    mpp_override: float | None = None


def _parse_mpp(value: str, where: str) -> float | None:
    text = (value or "").strip()
    if not text:
        return None
    try:
        mpp = float(text)
    except ValueError:
        raise MixmagValueError(f"{where}: mpp {text!r} is not a number (give µm per pixel, e.g. 0.25)") from None
    if not math.isfinite(mpp) or mpp <= 0:
        raise MixmagValueError(f"{where}: mpp must be a positive number of µm per pixel, got {text!r}")
    return mpp


def read_mpp_csv(path: str | os.PathLike[str]) -> dict[str, float]:
    """Read a ``slide,mpp`` table; keys are as written (file name, stem or slide id)."""
    p = Path(path)
    if not p.is_file():
        raise MixmagFileNotFoundError(f"mpp table {p} not found")
    with open(p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "slide" not in fields or "mpp" not in fields:
            raise MixmagValueError(f"{p}: the mpp table needs columns 'slide' and 'mpp' (found {fields})")
        table: dict[str, float] = {}
        for i, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "") for k, v in row.items() if k}
            mpp = _parse_mpp(row["mpp"], f"{p} line {i}")
            if row["slide"].strip() and mpp is not None:
                table[row["slide"].strip()] = mpp
    return table


def _read_input_csv(path: Path) -> list[tuple[Path, float | None, str | None]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        column = fields.get("path") or fields.get("slide_path")
        if column is None:
            raise MixmagValueError(f"{path}: a slide list CSV needs a 'path' column (found {list(fields)})")
        rows = []
        for i, row in enumerate(reader, start=2):
            raw = (row.get(column) or "").strip()
            if not raw:
                continue
            slide = Path(raw).expanduser()
            slide = slide if slide.is_absolute() else path.parent / slide
            mpp = _parse_mpp(row.get(fields["mpp"], "") if "mpp" in fields else "", f"{path} line {i}")
            sid = (row.get(fields["slide_id"], "") if "slide_id" in fields else "").strip() or None
            rows.append((slide, mpp, sid))
    return rows


def _scan_folder(folder: Path, exclude: Path | None) -> list[Path]:
    extensions = set(known_extensions())
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        if exclude is not None and (root_path == exclude or exclude in root_path.parents):
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [root_path / f for f in sorted(files) if not f.startswith(".") and Path(f).suffix.lower() in extensions]
    return found


def _unique_ids(paths: list[Path], wanted: list[str | None]) -> list[str]:
    ids = [w or slide_stem(p) for p, w in zip(paths, wanted, strict=True)]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, sid in enumerate(ids):
        groups[sid].append(i)
    for sid, members in groups.items():
        if len(members) < 2:
            continue
        depth = 1
        while True:
            candidates = ["__".join([*paths[i].parent.parts[-depth:], sid]) for i in members]
            if len(set(candidates)) == len(candidates) or depth > max(len(paths[i].parts) for i in members):
                break
            depth += 1
        if len(set(candidates)) != len(candidates):  # same names all the way up: number them
            candidates = [f"{sid}__{k}" for k in range(len(members))]
        logger.warning(
            "%d slides share the id %r; using %s (see the manifest's path column)",
            len(members), sid, ", ".join(candidates),
        )
        for i, new in zip(members, candidates, strict=True):
            ids[i] = new
    return ids


def collect_slides(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    mpp_override: float | None = None,
    mpp_table: dict[str, float] | None = None,
    exclude: str | os.PathLike[str] | None = None,
) -> list[TilingJob]:
    """Expand inputs into unique slide jobs (see the module docstring for the rules).

    Args:
        inputs: Files, folders and/or CSV slide lists.
        mpp_override: Global level-0 µm/px override.
        mpp_table: Per-slide overrides keyed by file name, stem or slide id.
        exclude: Folder never scanned (the run's output folder).

    Raises:
        FileNotFoundError: An input path does not exist.
        ValueError: A CSV is malformed.
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    entries: list[tuple[Path, float | None, str | None]] = []
    for item in inputs:
        p = Path(item).expanduser()
        if not p.exists():
            raise MixmagFileNotFoundError(f"input {p} does not exist")
        if p.is_dir():
            entries += [(f, None, None) for f in _scan_folder(p.resolve(), excluded)]
        elif p.suffix.lower() == ".csv":
            entries += _read_input_csv(p.resolve())
        else:
            entries.append((p, None, None))
    # the same file listed twice is processed once, keeping any mpp / id given by either listing
    merged: dict[Path, tuple[Path, float | None, str | None]] = {}
    for path, mpp, sid in entries:
        resolved = path.resolve()
        _, old_mpp, old_sid = merged.get(resolved, (resolved, None, None))
        merged[resolved] = (resolved, old_mpp if old_mpp is not None else mpp, old_sid or sid)
    unique = list(merged.values())
    ids = _unique_ids([u[0] for u in unique], [u[2] for u in unique])
    table = mpp_table or {}
    used: set[str] = set()
    jobs = []
    for (path, mpp, _), sid in zip(unique, ids, strict=True):
        if mpp is None:
            key = next((k for k in (path.name, slide_stem(path), sid) if k in table), None)
            if key is not None:
                used.add(key)
                mpp = table[key]
        jobs.append(TilingJob(path=path, slide_id=sid, mpp_override=mpp if mpp is not None else mpp_override))
    unused = sorted(set(table) - used)
    if unused:
        logger.warning("mpp table rows match no input slide: %s", ", ".join(unused[:10]))
    return jobs
