"""Which slides an embedding run works on, and what a finished slide must look like (provenance).

Inputs are region indexes written by ``mixmag tile``: a tiling output folder (``<dir>/regions/*.h5``,
plus the slides its ``manifest.csv`` reports as tiled), a folder of region files, a text file listing
region-file paths (one per line), or a list of paths. Listed paths that do not exist become
per-slide errors instead of silently shrinking the cohort.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixmag.embed.errors import EmbedConfigError
from mixmag.errors import MixmagFileNotFoundError, MixmagValueError
from mixmag.io.features import is_complete_feature_file
from mixmag.io.h5common import read_attrs
from mixmag.io.manifest import Status, read_manifest
from mixmag.utils.atomic import atomic_write_json

logger = logging.getLogger(__name__)

FOLDER_STAMP = "embed.json"
# Attrs that must match for an existing feature file to count as done (resume by provenance).
RESUME_KEYS = ("encoder", "weights_hash", "pooling", "slide_hash", "source_region_index_hash")
# Attrs that must agree across all files in one output folder.
FOLDER_KEYS = ("encoder", "embed_dim", "weights_hash", "pooling")

_TILED = (Status.OK.value, Status.SKIPPED.value)

RegionSource = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@dataclass(frozen=True)
class EmbedJob:
    """One slide to embed.

    Attributes:
        slide_id: Identifier (region-file stem); the feature file is ``<out>/<slide_id>.h5``.
        region_path: Region index file.
        out_path: Feature file to produce.
    """

    slide_id: str
    region_path: Path
    out_path: Path


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``"i/n"`` (0-based ``i`` < ``n``) into ``(i, n)``; None passes through."""
    if text is None:
        return None
    try:
        i_s, n_s = str(text).split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise MixmagValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise MixmagValueError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0, like SLURM_ARRAY_TASK_ID)")
    return i, n


def _region_paths(source: RegionSource) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            folder = p / "regions" if (p / "regions").is_dir() else p
            found = {x.stem: x for x in folder.glob("*.h5") if not x.name.startswith(".")}
            # slides the tiler reported as done must have a region file: a missing one is an error
            for slide_id, row in read_manifest(p / "manifest.csv").items():
                if row.get("status") in _TILED and row.get("output") and slide_id not in found:
                    found[slide_id] = Path(row["output"])
            return [found[k] for k in sorted(found)]
        if p.is_file() and p.suffix in (".txt", ".lst", ".csv"):
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
            return [Path(ln) if Path(ln).is_absolute() else p.parent / ln
                    for ln in lines if ln and not ln.startswith("#") and ln != "path"]
        if p.suffix == ".h5":
            return [p]
        raise MixmagFileNotFoundError(f"region input {p} is not a folder, a .h5 region file or a list of paths; "
                                      "pass the output folder of `mixmag tile`")
    return [Path(x) for x in source]


def discover_jobs(source: RegionSource, out_dir: str | os.PathLike[str],
                  shard: tuple[int, int] | None = None) -> list[EmbedJob]:
    """List the slides of a run, sorted by slide id, restricted to ``shard`` = (i, n) if given.

    Raises:
        FileNotFoundError: The source folder holds no region files.
        ValueError: Two region files map to the same slide id.
    """
    paths = _region_paths(source)
    if not paths:
        raise MixmagFileNotFoundError(f"no region files (*.h5) found in {source}; run `mixmag tile` first")
    out = Path(out_dir)
    jobs: dict[str, EmbedJob] = {}
    for p in paths:
        slide_id = p.stem
        if slide_id in jobs:
            raise MixmagValueError(f"two region files for slide {slide_id!r}: {jobs[slide_id].region_path} and {p}")
        jobs[slide_id] = EmbedJob(slide_id=slide_id, region_path=p, out_path=out / f"{slide_id}.h5")
    ordered = [jobs[k] for k in sorted(jobs)]
    if shard is not None:
        i, n = shard
        ordered = ordered[i::n]
    return ordered


def expected_provenance(encoder_attrs: dict[str, Any], index_attrs: dict[str, Any],
                        region_index_hash: str) -> dict[str, Any]:
    """Attrs an up-to-date feature file must carry for this encoder and this region index."""
    attrs = {k: encoder_attrs[k] for k in ("encoder", "weights_hash", "pooling")}
    attrs["slide_hash"] = index_attrs.get("slide_hash")
    attrs["source_region_index_hash"] = region_index_hash
    return attrs


def is_done(out_path: Path, expected: dict[str, Any]) -> bool:
    """True when ``out_path`` is a complete feature file whose provenance matches ``expected``."""
    return out_path.exists() and is_complete_feature_file(out_path, expected)


def existing_encoder(out_path: Path) -> tuple[str, int] | None:
    """(encoder, embed_dim) of an existing complete feature file, else None."""
    import h5py

    if not out_path.exists():
        return None
    try:
        with h5py.File(out_path, "r") as f:
            attrs = read_attrs(f)
    except OSError:
        return None
    if not attrs.get("complete"):
        return None
    return str(attrs.get("encoder")), int(attrs.get("embed_dim", -1))


def check_folder(out_dir: Path, encoder_attrs: dict[str, Any], *, overwrite: bool) -> None:
    """Refuse to mix encoders/weights in one output folder; write the folder stamp ``embed.json``.

    Raises:
        EmbedConfigError: The folder already holds features of another encoder, dimension, weights
            or pooling (and ``overwrite`` is False).
    """
    stamp_path = out_dir / FOLDER_STAMP
    wanted = {k: encoder_attrs[k] for k in FOLDER_KEYS}
    found: dict[str, Any] | None = None
    if stamp_path.exists():
        try:
            found = {k: json.loads(stamp_path.read_text(encoding="utf-8")).get(k) for k in FOLDER_KEYS}
        except ValueError:
            found = None
    else:
        for p in sorted(out_dir.glob("*.h5")):
            enc = existing_encoder(p)
            if enc is not None:
                found = {"encoder": enc[0], "embed_dim": enc[1], "weights_hash": None, "pooling": None}
                wanted_cmp = {"encoder": wanted["encoder"], "embed_dim": wanted["embed_dim"]}
                if {k: found[k] for k in wanted_cmp} == wanted_cmp:
                    found = None  # same encoder: fine (stamp written below)
                break
    if found is not None and found != wanted and not overwrite:
        diff = ", ".join(f"{k}: folder has {found.get(k)!r}, this run {wanted[k]!r}"
                         for k in FOLDER_KEYS if found.get(k) != wanted[k] and found.get(k) is not None)
        raise EmbedConfigError(
            f"{out_dir} already holds features from another encoder setup ({diff}). One folder holds one "
            f"encoder: choose another --out folder (e.g. {out_dir.parent / wanted['encoder']}) or pass "
            f"--overwrite to replace them"
        )
    if found != wanted or not stamp_path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(stamp_path, {**wanted, "weights_source": encoder_attrs.get("weights_source")})
