"""Stage work on a Ray cluster: the ``ray`` backend of ``mixmag tile`` and ``mixmag embed`` (docs/cluster.md).

The stages keep their own per-slide code (:func:`mixmag.tiling.tile.tile_one_slide`,
:func:`mixmag.embed.engine.embed_jobs`); this package only connects to Ray and schedules that
code: :mod:`~mixmag.cluster.settings` (the backend choice and the address, pydantic only),
:mod:`~mixmag.cluster.runtime` (importing Ray, joining a cluster, per-worker memory) and
:mod:`~mixmag.cluster.scheduler` (slides as tasks, or as calls to a pool of actors, with retries);
:mod:`~mixmag.cluster.local` starts a throw-away cluster on 127.0.0.1 (trying the backend on one
machine, tests, benchmarks).
Ray is an optional extra (``pip install "mixmag[ray]"``) and is imported only when a run uses it.
"""

from __future__ import annotations

from mixmag.utils.lazy import lazy_getattr

_LAZY: dict[str, str] = {
    "Backend": "mixmag.cluster.settings",
    "LocalRayCluster": "mixmag.cluster.local",
    "RayUnavailableError": "mixmag.cluster.runtime",
    "WorkerUsage": "mixmag.cluster.runtime",
    "import_ray": "mixmag.cluster.runtime",
    "ray_session": "mixmag.cluster.runtime",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
