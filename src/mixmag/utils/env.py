"""Environment capture written into every run folder (``env.json``)."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mixmag._version import __version__

_PACKAGES = ("torch", "torchvision", "timm", "numpy", "h5py", "openslide-python", "openslide-bin",
             "tiffslide", "tifffile", "scikit-learn", "pydantic")


def git_sha(path: str | Path | None = None) -> str | None:
    """Git commit of the mixmag source tree, or None when not running from a checkout."""
    here = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment_info() -> dict[str, Any]:
    """Versions, platform, device and git sha as a JSON-serialisable dict."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "mixmag": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": versions,
        "git_sha": git_sha(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return info
