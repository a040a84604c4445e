"""The backend choice of a stage and the address of a Ray cluster (pydantic only, no Ray).

:class:`Backend` is the type of ``tiling.backend`` and ``embed.backend``; :data:`RayAddress` the
type of their ``ray_address``: ``auto`` (Ray's own discovery: the ``RAY_ADDRESS`` variable, else
the cluster started on this machine with ``ray start``), ``HOST:PORT`` of a head node, or
``ray://HOST:PORT`` (Ray client, needs ``ray[client]``).
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated

from pydantic import AfterValidator


class Backend(str, Enum):
    """Where a stage's slides are processed."""

    LOCAL = "local"
    """Processes on this machine (several runs or Slurm tasks may share one folder through claims)."""
    RAY = "ray"
    """Tasks and actors on a Ray cluster (docs/cluster.md)."""


#: ``ray_address`` values that are not a host and port.
ADDRESS_WORDS = ("auto",)
_HOST_PORT = re.compile(r"^(ray://)?(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")


def split_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` (or ``ray://HOST:PORT``) address; None for ``auto``."""
    match = _HOST_PORT.match(address)
    if match is None:
        return None
    return match["host"].strip("[]"), int(match["port"])


def check_ray_address(value: str) -> str:
    """``value`` when it is ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``.

    Raises:
        ValueError: Anything else (pydantic reports it with the key that holds it).
    """
    if value in ADDRESS_WORDS:
        return value
    parts = split_address(value)
    if parts is None or not 0 < parts[1] < 65536:
        raise ValueError(f"a Ray address is auto or HOST:PORT of the head node (e.g. 10.0.0.1:6379), "
                         f"got {value!r}")
    return value


#: A checked Ray cluster address (see the module docstring).
RayAddress = Annotated[str, AfterValidator(check_ray_address)]
