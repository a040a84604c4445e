"""HDF5 helpers shared by the region-index, feature-store and region-embedding formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mixmag.errors import MixmagValueError


class FormatError(MixmagValueError):
    """An artifact is missing, of another format/version, or internally inconsistent."""


def to_attr(value: Any) -> Any:
    """Make a Python value storable as an HDF5 attribute (dicts/lists of mixed types -> JSON; None -> 'None').

    ``None`` is stored as the string ``'None'``, as TRIDENT does, so its readers accept our files.
    """
    if value is None:
        return "None"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value) and value:
            return np.asarray(value)
        return json.dumps(list(value), default=str)
    if isinstance(value, Path):
        return str(value)
    return value


def from_attr(value: Any) -> Any:
    """Inverse of :func:`to_attr` for strings holding JSON; numpy scalars become Python scalars."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        if value == "None":
            return None
        if value[:1] in "[{":
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    """All attributes of an HDF5 object, decoded with :func:`from_attr`."""
    return {k: from_attr(v) for k, v in obj.attrs.items()}


def write_attrs(obj: h5py.HLObject, attrs: dict[str, Any]) -> None:
    """Write a dict of attributes with :func:`to_attr` encoding."""
    for k, v in attrs.items():
        obj.attrs[k] = to_attr(v)


def check_format(f: h5py.File, path: str | Path, artifact: str, supported_versions: tuple[int, ...]) -> int:
    """Validate the ``artifact`` and ``format_version`` attrs of an open file; return the version."""
    found = from_attr(f.attrs.get("artifact"))
    if found != artifact:
        raise FormatError(
            f"{path}: expected a mixmag {artifact!r} file but found artifact={found!r}; "
            f"point the command at the right folder or regenerate the file"
        )
    version = int(f.attrs.get("format_version", -1))
    if version not in supported_versions:
        hint = ("it was written by a newer mixmag; upgrade mixmag to read it" if version > max(supported_versions)
                else "re-run the stage that made it with this version")
        raise FormatError(
            f"{path}: {artifact} format_version {version} is not supported by this mixmag "
            f"(supports {list(supported_versions)}); {hint}"
        )
    return version
