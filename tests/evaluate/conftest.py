"""Keep mixmag log records visible to caplog even after a CLI test configured logging."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _visible_logs() -> None:
    logging.getLogger("mixmag").propagate = True
