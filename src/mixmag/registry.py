"""One generic registry used for slide readers, tile encoders, region encoders and MIL heads.

Entries are registered with a decorator next to their implementation and carry a frozen metadata
object. Looking up an unknown key raises a :class:`~mixmag.errors.MixmagKeyError` (a ``KeyError``)
that lists close matches, so a typo in a config file produces one actionable message instead of a
stack trace. Registering a malformed or duplicate key is a programming error and stays a builtin
``ValueError``.
Third-party packages can add entries through ``importlib.metadata`` entry points
(e.g. group ``"mixmag.encoders"``); they are loaded lazily on the first lookup miss or listing.
:class:`KnownKeys` checks a key against a registry whose module is heavy (torch) without importing
it, with the same message (:func:`unknown_key_message`): what a study config's validation uses.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, is_dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from mixmag.errors import MixmagKeyError, MixmagValueError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def unknown_key_message(kind: str, key: str, available: Iterable[str], *,
                        entry_point_group: str | None = None) -> str:
    """The message for an unknown registry key: close matches, every key, where plugins come from.

    Args:
        kind: What is registered ("tile encoder").
        key: The unknown key.
        available: Every valid key.
        entry_point_group: Group scanned for third-party entries, named in the message.
    """
    keys = sorted(available)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    text = f"unknown {kind} {key!r}.{hint} Available: {', '.join(keys)}."
    if entry_point_group:
        text += (f" Third-party {kind}s are found through the '{entry_point_group}' entry point group once "
                 f"their package is installed.")
    return text


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
            raise MixmagKeyError(unknown_key_message(self.kind, key, self.keys(),
                                                     entry_point_group=self.entry_point_group)) from None

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


@dataclass(frozen=True)
class KnownKeys:
    """The keys of a registry that lives in a heavy module, checked without importing that module.

    A config is validated long before any model is built, and ``mixmag config show`` must not load
    torch to do it. The package's own entries are listed in ``builtin`` (a contract test keeps the
    list equal to the registry's keys); the live registry is asked only about other keys, when its
    module is already imported (entries added at runtime) or plugins of ``entry_point_group`` are
    installed (then the module is imported, as building one of their entries would).

    Attributes:
        kind: What is registered, for messages ("tile encoder").
        builtin: The keys the package registers itself.
        registry: ``"module:attribute"`` of the live :class:`Registry`.
        entry_point_group: Plugin group of the registry, if any.
    """

    kind: str
    builtin: tuple[str, ...]
    registry: str
    entry_point_group: str | None = None

    def _live(self) -> Registry[Any] | None:
        module_name, _, attr = self.registry.partition(":")
        module = sys.modules.get(module_name)
        if module is None and self.entry_point_group and any(True for _ in entry_points(group=self.entry_point_group)):
            module = importlib.import_module(module_name)
        live = getattr(module, attr, None) if module is not None else None
        return live if isinstance(live, Registry) else None

    def keys(self) -> list[str]:
        """Every known key, sorted: the built-in ones plus those of the live registry (when consulted)."""
        live = self._live()
        return sorted(set(self.builtin) | set(live.keys() if live is not None else ()))

    def check(self, key: str) -> str:
        """Return ``key`` if it is a known key.

        Raises:
            MixmagValueError: An unknown key; the message lists close matches and every key (a
                ``ValueError``, so a pydantic validator reports it as an invalid value).
        """
        if key in self.builtin:
            return key
        live = self._live()
        if live is not None and key in live:
            return key
        available = set(self.builtin) | set(live.keys() if live is not None else ())
        raise MixmagValueError(unknown_key_message(self.kind, key, available,
                                                   entry_point_group=self.entry_point_group))
