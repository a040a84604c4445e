"""Importing Ray, joining a cluster for one run, and what each Ray worker reports about itself.

Ray is the optional ``ray`` extra: :func:`import_ray` is the one place that imports it, and turns a
missing installation into one line naming the extra to install. :func:`ray_session` connects for
the duration of a run (and disconnects only what it connected itself), after checking that a
``HOST:PORT`` head answers at all: Ray's own client retries an unreachable address for minutes.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import resource
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, TypeVar

from mixmag.cluster.settings import split_address
from mixmag.errors import MixmagRuntimeError, one_line

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: The command that installs the extra (quoted for shells that expand brackets).
RAY_INSTALL = 'pip install "mixmag[ray]"'
#: Seconds to wait for a ``HOST:PORT`` head to accept a TCP connection before giving up.
CONNECT_TIMEOUT_S = 10.0


class RayUnavailableError(MixmagRuntimeError):
    """The ray backend was asked for, but Ray is not installed or no cluster answers."""


def import_ray() -> ModuleType:
    """The ``ray`` module.

    Raises:
        RayUnavailableError: Ray is not installed (one line naming the extra to install).
    """
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise RayUnavailableError(f"the ray backend needs Ray, which is not installed ({exc}); "
                                  f"install it with {RAY_INSTALL}") from None


def _check_reachable(address: str) -> None:
    parts = split_address(address)
    if parts is None:
        return
    host, port = parts
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RayUnavailableError(
            f"no Ray head answers at {host}:{port} ({exc.strerror or exc}); start one with "
            f"`ray start --head --port {port}` (docs/cluster.md) or give its address with --address") from None


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[ModuleType]:
    """Connect to the Ray cluster at ``address`` for the ``with`` block; yield the ``ray`` module.

    When this process is already connected (``ray.init`` called by the caller), that connection
    is used as it is and kept afterwards; otherwise the connection made here is closed at the end,
    which also ends the run's actors.

    Raises:
        RayUnavailableError: Ray is missing, or no cluster answers at ``address``.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    _check_reachable(address)
    try:
        # configure_logging=False: the CLI configures mixmag's handlers; Ray's own go to its log files
        ray.init(address=address, logging_level=logging.WARNING, configure_logging=False, log_to_driver=True)
    except ConnectionError as exc:
        hint = "start one with `ray start --head` (docs/cluster.md) or give its --address"
        raise RayUnavailableError(f"cannot join a Ray cluster at {address!r}: {' '.join(str(exc).split())}; "
                                  f"{hint}") from None
    try:
        resources = ray.cluster_resources()
        logger.info("joined Ray cluster at %s: %g CPUs, %g GPUs, %d nodes", address, resources.get("CPU", 0),
                    resources.get("GPU", 0), sum(1 for n in ray.nodes() if n.get("Alive")))
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class WorkerUsage:
    """What one Ray worker process did, and its memory high-water mark.

    Attributes:
        host: Host name of the worker's node.
        pid: Process id of the worker.
        items: Slides it processed.
        peak_rss_mb: Peak resident memory of the process (MiB; without child processes).
    """

    host: str
    pid: int
    items: int = 1
    peak_rss_mb: float = 0.0


def current_usage() -> WorkerUsage:
    """The calling process's :class:`WorkerUsage` for one item (called inside a Ray worker)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return WorkerUsage(host=socket.gethostname(), pid=os.getpid(), items=1, peak_rss_mb=round(peak_mb, 1))


def call_with_usage(fn: Callable[..., R], *args: Any) -> tuple[R, WorkerUsage]:
    """``fn(*args)`` and the calling worker's :class:`WorkerUsage` (the body of a Ray task)."""
    return fn(*args), current_usage()


def merge_usage(reports: Iterable[WorkerUsage]) -> list[WorkerUsage]:
    """One entry per worker process (host, pid): items summed, the highest peak kept."""
    merged: dict[tuple[str, int], WorkerUsage] = {}
    for r in reports:
        key = (r.host, r.pid)
        old = merged.get(key)
        merged[key] = r if old is None else replace(old, items=old.items + r.items,
                                                    peak_rss_mb=max(old.peak_rss_mb, r.peak_rss_mb))
    return sorted(merged.values(), key=lambda u: (u.host, u.pid))


def describe_workers(workers: Sequence[WorkerUsage]) -> str:
    """One line: how many Ray worker processes on how many nodes, their slides and peak memory."""
    if not workers:
        return "no Ray worker reported"
    peaks = [w.peak_rss_mb for w in workers]
    hosts = len({w.host for w in workers})
    return (f"{len(workers)} Ray worker process(es) on {hosts} host(s): {sum(w.items for w in workers)} slides, "
            f"peak memory {min(peaks):.0f}-{max(peaks):.0f} MiB per worker")


def describe_failure(exc: BaseException) -> str:
    """One line for a failed Ray task or actor call: the task's own exception, or why its worker died."""
    cause: Any = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        exc = cause
    text = one_line(exc)
    if len(text) > 400:  # Ray's messages carry ids and advice; the manifest keeps one readable line
        text = text[:397] + "..."
    return text
