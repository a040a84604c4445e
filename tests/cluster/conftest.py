"""A throw-away Ray cluster on 127.0.0.1 for the tests of the ``ray`` backend (:mod:`mixmag.cluster.local`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mixmag.cluster.local import LocalRayCluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    """A head and two worker nodes of one CPU each on 127.0.0.1, torn down after the module.

    Killed nodes are declared dead within seconds; each node's object store is 100 MiB.
    """
    pytest.importorskip("ray", reason="the Ray backend is an extra: pip install 'mixmag[ray]'")
    with LocalRayCluster(n_workers=2, num_cpus=1, fast_health_checks=True, object_store_mb=100) as cluster:
        yield cluster
