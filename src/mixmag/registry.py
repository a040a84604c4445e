"""One generic registry used for slide readers, tile encoders, region encoders and MIL heads.

Entries are registered with a decorator next to their implementation and carry a frozen metadata
object. Looking up an unknown key raises a :class:`~mixmag.errors.MixmagKeyError` (a ``KeyError``)
that lists close matches, so a typo in a config file produces one actionable message instead of a
stack trace. Registering a malformed or duplicate key is a programming error and stays a builtin
``ValueError``.
Third-party packages can add entries through ``importlib.metadata`` entry points
(e.g. group ``"mixmag.encoders"``); they are loaded lazily on the first lookup miss or listing.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, is_dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from mixmag.errors import MixmagKeyError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """A registered object (usually a class or builder function) plus its metadata."""

    key: str
    obj: T
    meta: Any = None


class Registry(Generic[T]):
    """A name -> object mapping with metadata, helpful errors and plugin discovery.

    Args:
        kind: Human-readable name of what is registered ("tile encoder", "slide reader").
        entry_point_group: Optional ``importlib.metadata`` group scanned for plugins.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, RegistryEntry[T]] = {}
        self._plugins_loaded = entry_point_group is None

    def register(self, key: str, meta: Any = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``key``; duplicate keys raise ``ValueError``."""

        def decorator(obj: T) -> T:
            self.add(key, obj, meta)
            return obj

        return decorator

    def add(self, key: str, obj: T, meta: Any = None) -> None:
        """Register ``obj`` under ``key`` (non-decorator form)."""
        if key != key.lower() or not key:
            raise ValueError(f"{self.kind} keys must be non-empty lowercase strings, got {key!r}")
        if key in self._entries:
            raise ValueError(f"duplicate {self.kind} key {key!r}")
        self._entries[key] = RegistryEntry(key=key, obj=obj, meta=meta)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        assert self.entry_point_group is not None
        for ep in entry_points(group=self.entry_point_group):
            try:
                ep.load()  # importing the module runs its @register decorators
            except Exception as exc:  # a broken plugin must not break the core package
                logger.warning("could not load %s plugin %r: %s", self.kind, ep.name, exc)

    def entry(self, key: str) -> RegistryEntry[T]:
        """Return the entry for ``key`` or raise :class:`~mixmag.errors.MixmagKeyError` listing close matches."""
        if key not in self._entries:
            self._load_plugins()
        try:
            return self._entries[key]
        except KeyError:
            close = difflib.get_close_matches(key, list(self._entries), n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise MixmagKeyError(
                f"unknown {self.kind} {key!r}.{hint} Available: {', '.join(self.keys())}. "
                f"Third-party {self.kind}s are found through the "
                f"'{self.entry_point_group}' entry point group once their package is installed."
                if self.entry_point_group
                else f"unknown {self.kind} {key!r}.{hint} Available: {', '.join(self.keys())}."
            ) from None

    def get(self, key: str) -> T:
        """Return the object registered under ``key``."""
        return self.entry(key).obj

    def meta(self, key: str) -> Any:
        """Return the metadata registered with ``key``."""
        return self.entry(key).meta

    def keys(self) -> list[str]:
        """Sorted registered keys (plugins included)."""
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, key: object) -> bool:
        self._load_plugins()
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def describe(self) -> list[dict[str, Any]]:
        """One dict per entry: the key plus its metadata fields (dataclass metadata is expanded)."""
        rows = []
        for key in self.keys():
            meta = self._entries[key].meta
            row: dict[str, Any] = {"key": key}
            if is_dataclass(meta) and not isinstance(meta, type):
                row.update(asdict(meta))
            elif isinstance(meta, dict):
                row.update(meta)
            rows.append(row)
        return rows
