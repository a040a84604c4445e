"""Heap trimming during long inference loops (keeps `embed` RSS flat without slowing it)."""

from __future__ import annotations

import sys

import pytest

from mixmag.utils.malloc import HeapTrimmer


def test_trims_every_nth_tick() -> None:
    trimmer = HeapTrimmer(every=3)
    for _ in range(7):
        trimmer.tick()
    assert trimmer.ticks == 7
    assert trimmer.trims == (2 if trimmer.active else 0)
    if sys.platform.startswith("linux"):
        assert trimmer.active  # glibc on the CI image


def test_rejects_a_zero_period() -> None:
    with pytest.raises(ValueError, match="every"):
        HeapTrimmer(every=0)
