"""Thread policy ``split``: each batch as one single-threaded sub-batch per core; same features whatever the count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixmag.embed import embed_slides
from mixmag.embed.split import SplitForward, single_threaded
from mixmag.encoders import build_encoder
from mixmag.io.features import FeatureFile
from mixmag.utils.cpus import POLICY_ENV


def _features(path):
    with FeatureFile(path) as ff:
        return ff.read()[0], ff.attrs["embed_cpu_threads"]


@pytest.mark.parametrize("key", ["tiny.d16", "tiny.vit-d32"])
def test_the_worker_count_does_not_change_a_bit(key: str) -> None:
    enc = build_encoder(key, random_weights=True)
    tiles = torch.randint(0, 255, (13, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with single_threaded():
        assert torch.get_num_threads() == 1
        one = SplitForward(enc, 1, sub_batch=4)
        reference = one(tiles)  # sub-batches of 4, 4, 4, 1 one after the other
        assert torch.equal(reference, torch.cat([enc.encode(p) for p in tiles.split(4)]))
        for workers in (2, 3, 5):  # more workers than sub-batches too
            split = SplitForward(enc, workers, sub_batch=4)
            try:
                assert torch.equal(split(tiles), reference), workers
            finally:
                split.close()


def test_single_threaded_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with single_threaded():
        pass
    assert torch.get_num_threads() == before


def test_split_runs_are_bit_identical_for_any_worker_count(tmp_path, kit, monkeypatch) -> None:
    monkeypatch.setenv(POLICY_ENV, "split")
    src = kit.write_regions(tmp_path / "tiles", {"a": 3, "b": 4})
    threads_before = torch.get_num_threads()
    runs = {}
    for n in (1, 2, 3):
        out = tmp_path / f"split{n}"
        summary = embed_slides(src, out, **{**kit.run, "threads": n})
        assert sorted(summary.ok) == ["a", "b"] and summary.threads == n
        runs[n] = {s: _features(out / f"{s}.h5") for s in "ab"}
    assert torch.get_num_threads() == threads_before  # the run's single-threading did not leak
    for s in "ab":
        for n in (2, 3):
            np.testing.assert_array_equal(runs[n][s][0], runs[1][s][0])
        assert runs[3][s][1]["policy"] == "split" and runs[3][s][1]["threads"] == 3
