"""Environment capture written into every run folder (``env.json``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mixmag._version import __version__
from mixmag.utils.cpus import thread_policy, usable_cpus

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
    """Versions, platform, device, git sha and CPU budget as a JSON-serialisable dict.

    ``cpu_budget`` is :func:`~mixmag.utils.cpus.usable_cpus` (cores and the constraint that set
    them), ``thread_policy`` the :class:`~mixmag.utils.cpus.ThreadPolicy` in use and
    ``omp_wait_policy`` the OpenMP wait policy of the environment (None: libgomp's default).
    """
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
        "cpu_budget": usable_cpus().to_dict(),
        "thread_policy": thread_policy().value,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
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
