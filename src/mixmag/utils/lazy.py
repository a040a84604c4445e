"""Lazy re-exports for package ``__init__`` modules (PEP 562 module ``__getattr__``).

Sub-packages re-export their public API without importing torch, h5py or sklearn at
``import mixmag.x`` time; the defining module is imported on first attribute access.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """Build a module-level ``__getattr__`` resolving ``exports`` (public name -> defining module)."""

    def __getattr__(name: str) -> Any:  # noqa: N807 - the PEP 562 hook name
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
