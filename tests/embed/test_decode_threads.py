"""Where regions are decoded: the "auto" plan, and inline decoding on several threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from mixmag.embed import embed_slides
from mixmag.embed.engine import DecodePlan, plan_decoding
from mixmag.io.features import FeatureFile


def _features(path):
    with FeatureFile(path) as ff:
        return ff.read()[0]


def test_auto_decodes_inline_on_a_cpu_and_in_processes_next_to_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)
    assert plan_decoding("auto", torch.device("cpu")) == DecodePlan(workers=0, threads=6)
    # next to a GPU: decoding processes sized from the usable cores (not the machine), one kept for the loop
    assert plan_decoding("auto", torch.device("cuda"), cpus=16) == DecodePlan(workers=8, threads=1)
    assert plan_decoding("auto", torch.device("cuda"), cpus=2) == DecodePlan(workers=1, threads=1)
    assert plan_decoding(0, torch.device("cpu")) == DecodePlan(workers=0, threads=6)
    assert plan_decoding("3", torch.device("cpu")) == DecodePlan(workers=3, threads=1)
    assert plan_decoding(0, torch.device("cpu"), threads=2) == DecodePlan(workers=0, threads=2)
    for bad in ("many", -1):
        with pytest.raises(ValueError, match="workers must be 'auto' or a number"):
            plan_decoding(bad, torch.device("cpu"))
    with pytest.raises(ValueError, match="decode threads"):
        plan_decoding(0, torch.device("cpu"), threads=0)


class _Tracked:
    """Wraps the fake source: counts opens and fails if two threads ever read one source at once."""

    opened: list[_Tracked] = []
    thread_safe = False

    def __init__(self, index, inner_cls) -> None:
        self.inner = inner_cls(index)
        self.busy = threading.Lock()
        self.threads: set[int] = set()
        _Tracked.opened.append(self)

    def read_region_tiles(self, region: int) -> np.ndarray:
        if not self.busy.acquire(blocking=False):
            if not self.thread_safe:
                raise AssertionError("a thread-unsafe source was read by two threads at once")
            self.busy.acquire()
        try:
            self.threads.add(threading.get_ident())
            time.sleep(0.002)  # widen the window in which an overlap would be caught
            return self.inner.read_region_tiles(region)
        finally:
            self.busy.release()

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("thread_safe", [False, True])
def test_inline_decoding_on_threads_gives_the_same_files(tmp_path, kit, thread_safe) -> None:
    """Chunks of 3 regions decoded on 3 threads: same bytes as one thread; unsafe sources are never shared."""
    src = kit.write_regions(tmp_path / "tiles", {"a": 7, "b": 4})
    embed_slides(src, tmp_path / "serial", **kit.run)
    _Tracked.opened = []

    class Source(_Tracked):
        def __init__(self, index) -> None:
            super().__init__(index, kit.FakeTiles)

    Source.thread_safe = thread_safe
    summary = embed_slides(src, tmp_path / "threads", **{**kit.run, "open_tiles": Source, "decode_threads": 3})
    assert sorted(summary.ok) == ["a", "b"]
    for s in "ab":
        np.testing.assert_array_equal(_features(tmp_path / "serial" / f"{s}.h5"),
                                      _features(tmp_path / "threads" / f"{s}.h5"))
    # one source per slide when it is thread-safe, else one per decode thread
    assert len(_Tracked.opened) == (2 if thread_safe else 6)
    if thread_safe:
        assert max(len(t.threads) for t in _Tracked.opened) > 1  # really read from several threads


def test_a_corrupt_region_on_a_decode_thread_fails_only_its_slide(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"corrupt": 9, "fine": 5})
    summary = embed_slides(src, tmp_path / "feats", **{**kit.run, "decode_threads": 2})
    assert summary.ok == ["fine"] and "JPEG decode error" in summary.errors["corrupt"]
    assert not (tmp_path / "feats" / "corrupt.h5").exists() and not list((tmp_path / "feats").glob(".*.tmp"))


def test_sources_are_closed_only_after_every_decode_thread_is_done(tmp_path, kit) -> None:
    """A region failing on one thread while another thread still reads: nothing is closed under it."""
    events: list[str] = []

    class Slow:
        thread_safe = False

        def __init__(self, index) -> None:
            self.closed = False

        def read_region_tiles(self, region: int) -> np.ndarray:
            if region == 0:
                raise OSError("JPEG decode error in region 0")
            time.sleep(0.2)  # the other thread is still reading when region 0 fails
            events.append("closed under a reader" if self.closed else "read finished")
            return kit.fake_region_tiles("x", region)

        def close(self) -> None:
            self.closed = True

    src = kit.write_regions(tmp_path / "tiles", {"x": 2})
    summary = embed_slides(src, tmp_path / "feats", **{**kit.run, "open_tiles": Slow, "decode_threads": 2})
    assert "JPEG decode error in region 0" in summary.errors["x"]
    assert events == ["read finished"]


def test_a_bad_workers_value_fails_before_anything_is_written(tmp_path, kit) -> None:
    src = kit.write_regions(tmp_path / "tiles", {"a": 1})
    with pytest.raises(ValueError, match="workers must be 'auto' or a number"):
        embed_slides(src, tmp_path / "feats", **{**kit.run, "workers": "many"})
    assert not (tmp_path / "feats").exists()  # no folder stamp claiming the folder for this encoder
