"""The ray backend of `mixmag tile` and `mixmag embed` on a real three-node Ray cluster on 127.0.0.1.

The cluster (a head and two worker nodes of one CPU each, `ray start`-ed by the fixture in
conftest.py) runs the real sample slides through the CLI, as a user would: region indexes and
features must equal those of the local backend (features bit for bit); a worker node SIGKILLed in
the middle of a run must leave every slide embedded or recorded, and a rerun must skip them all.
The first tests need no cluster: without Ray, `--backend ray` is one line naming the extra.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.cluster.runtime import RAY_INSTALL, RayUnavailableError
from mixmag.embed.settings import EmbedSettings
from mixmag.errors import MixmagValueError
from mixmag.io.features import FeatureFile
from mixmag.io.manifest import read_manifest
from mixmag.tiling.settings import TilingSettings

CMU = "CMU-1-Small-Region"
# fast and deterministic: a random 16-d conv net, no weights to fetch, fp32 on one thread
TINY = ["--encoder", "tiny.d16", "--random-weights", "--precision", "fp32", "--batch-size", "32"]
THUMB = ["--set", "tiling.thumbnail_px=1024"]
# provenance attrs that must match between backends (times, paths and thread plans may differ)
SAME_ATTRS = ("encoder", "embed_dim", "weights_hash", "weights_source", "pooling", "slide_hash", "precision",
              "format_version", "artifact", "complete", "slide_id", "mpp_level0", "tile_px")


# ------------------------------------------------------------------------- without Ray installed
@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import ray`` fail as it does when the extra is not installed."""
    monkeypatch.setitem(sys.modules, "ray", None)


@pytest.mark.usefixtures("no_ray")
@pytest.mark.parametrize("command", ["tile", "embed"])
def test_backend_ray_without_ray_is_one_line_naming_the_extra(command: str, tmp_path: Path,
                                                             shared_wsi: Path) -> None:
    source = shared_wsi / f"{CMU}.svs" if command == "tile" else tmp_path / "tiles"
    res = CliRunner().invoke(build_app(), [command, str(source), "--out", str(tmp_path / "out"), "--backend", "ray"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and RAY_INSTALL in lines[0], res.output
    assert not (tmp_path / "out" / "regions" / "manifest.csv").exists()  # nothing was started


@pytest.mark.usefixtures("no_ray")
def test_the_python_api_raises_the_same_error(tmp_path: Path) -> None:
    from mixmag.embed import embed_slides

    with pytest.raises(RayUnavailableError, match=r'pip install "mixmag\[ray\]"'):
        embed_slides(tmp_path, tmp_path / "out", backend="ray", encoder="tiny.d16", random_weights=True)


@pytest.mark.usefixtures("no_ray")
def test_the_local_backend_needs_no_ray(tmp_path: Path, shared_wsi: Path) -> None:
    from mixmag.tiling.tile import tile_slides

    summary = tile_slides([shared_wsi / "openslide-python_small.svs"], tmp_path / "out", progress=False)
    assert summary.count("empty") == 1 and summary.workers == []


@pytest.mark.parametrize("address", ["auto", "10.0.0.1:6379", "head.cluster:6379", "ray://10.0.0.1:10001"])
def test_ray_addresses_are_checked(address: str) -> None:
    assert EmbedSettings(ray_address=address).ray_address == address
    assert TilingSettings(ray_address=address).ray_address == address


@pytest.mark.parametrize("address", ["", "local", "10.0.0.1", "10.0.0.1:99999", "http://h:1"])
def test_bad_ray_addresses_are_one_message(address: str) -> None:
    with pytest.raises(MixmagValueError, match="a Ray address is auto or HOST:PORT"):
        EmbedSettings.from_options(ray_address=address)


def test_an_address_where_no_head_answers_is_one_line() -> None:
    """Ray's own client would retry an unreachable head for minutes; the backend says so at once."""
    pytest.importorskip("ray")
    from mixmag.cluster.runtime import ray_session

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(RayUnavailableError, match=rf"no Ray head answers at 127.0.0.1:{port} .*ray start --head"), \
            ray_session(f"127.0.0.1:{port}"):
        pass
    assert time.monotonic() - start < 5


# ----------------------------------------------------------------------------- on a Ray cluster
def _mixmag(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mixmag", *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def _index_arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}


@pytest.fixture(scope="module")
def local_tiles(shared_wsi: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The six sample slides tiled by the local backend (3 ok, 1 empty, 2 errors)."""
    out = tmp_path_factory.mktemp("local") / "tiles"
    res = _mixmag(["tile", str(shared_wsi), "--out", str(out), "--no-progress", *THUMB], dict(os.environ))
    assert res.returncode == 3, res.stderr  # two samples have no usable resolution
    return out


@pytest.mark.ray
def test_tiling_on_ray_writes_what_the_local_backend_writes(ray_cluster, shared_wsi, local_tiles, tmp_path) -> None:
    out = tmp_path / "tiles"
    res = _mixmag(["tile", str(shared_wsi), "--out", str(out), "--no-progress", *THUMB, "--backend", "ray",
                   "--address", ray_cluster.address], ray_cluster.env)
    assert res.returncode == 3, res.stderr  # the same two failures, the same exit code
    assert "Ray worker process(es)" in res.stdout
    ray_rows, local_rows = read_manifest(out / "regions" / "manifest.csv"), read_manifest(
        local_tiles / "regions" / "manifest.csv")
    assert ray_rows.keys() == local_rows.keys() and len(ray_rows) == 6
    for slide_id, row in local_rows.items():
        for column in ("status", "n_items", "error", "warnings", "slide_hash", "params_hash"):
            assert ray_rows[slide_id][column] == row[column], (slide_id, column)
    done = sorted(p.name for p in (local_tiles / "regions").glob("*.h5"))
    assert done == sorted(p.name for p in (out / "regions").glob("*.h5")) and len(done) == 3
    for name in done:
        want, got = _index_arrays(local_tiles / "regions" / name), _index_arrays(out / "regions" / name)
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}:{key}")
    rerun = _mixmag(["tile", str(shared_wsi), "--out", str(out), "--no-progress", *THUMB, "--backend", "ray",
                     "--address", ray_cluster.address], ray_cluster.env)
    assert rerun.returncode == 3 and "3 skipped" in rerun.stdout, rerun.stdout


@pytest.mark.ray
def test_embedding_on_ray_equals_the_local_backend_bit_for_bit(ray_cluster, local_tiles, tmp_path) -> None:
    from mixmag.embed import embed_slides

    local = embed_slides(local_tiles, tmp_path / "local", encoder="tiny.d16", random_weights=True, precision="fp32",
                         batch_size=32, device="cpu", progress=False)
    assert len(local.ok) == 3
    out = tmp_path / "ray"
    res = _mixmag(["embed", str(local_tiles), "--out", str(out), "--no-progress", *TINY, "--backend", "ray",
                   "--address", ray_cluster.address], ray_cluster.env)
    assert res.returncode == 0, res.stderr
    assert "3 embedded, 0 already done" in res.stdout and "Ray worker process(es)" in res.stdout
    for slide_id in local.ok:
        with FeatureFile(tmp_path / "local" / f"{slide_id}.h5") as want, FeatureFile(out / f"{slide_id}.h5") as got:
            np.testing.assert_array_equal(got.read()[0], want.read()[0])  # bit for bit
            np.testing.assert_array_equal(got.index.coords, want.index.coords)
            assert {k: got.attrs.get(k) for k in SAME_ATTRS} == {k: want.attrs.get(k) for k in SAME_ATTRS}
    rows, want_rows = read_manifest(out / "manifest.csv"), read_manifest(tmp_path / "local" / "manifest.csv")
    assert {k: (r["status"], r["n_items"], r["n_tiles"]) for k, r in rows.items()} == {
        k: (r["status"], r["n_items"], r["n_tiles"]) for k, r in want_rows.items()}
    assert not list(out.glob(".*.tmp")) and not list((out / ".claims").glob("*.claim"))
    # the local backend resumes what the ray backend wrote (the same provenance): nothing to do
    again = embed_slides(local_tiles, out, encoder="tiny.d16", random_weights=True, precision="fp32", batch_size=32,
                         device="cpu", progress=False)
    assert sorted(again.skipped) == sorted(local.ok) and not again.ok


@pytest.mark.ray
def test_a_failing_slide_is_recorded_and_fail_fast_stops_the_batch(ray_cluster, local_tiles, tmp_path) -> None:
    tiles = tmp_path / "tiles" / "regions"
    tiles.mkdir(parents=True)
    for region_file in (local_tiles / "regions").glob("*.h5"):
        shutil.copyfile(region_file, tiles / region_file.name)
    (tiles / "broken.h5").write_bytes(b"not an HDF5 file")
    ray = ["--backend", "ray", "--address", ray_cluster.address, "--no-progress", *TINY]
    res = _mixmag(["embed", str(tmp_path / "tiles"), "--out", str(tmp_path / "out"), *ray], ray_cluster.env)
    assert res.returncode == 3, res.stderr  # the batch finished; one slide failed and is recorded
    assert "1 of 4 slides failed" in res.stderr
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert {k: r["status"] for k, r in rows.items()} == {**{k: "ok" for k in rows if k != "broken"}, "broken": "error"}
    assert rows["broken"]["error"]
    stop = _mixmag(["embed", str(tmp_path / "tiles"), "--out", str(tmp_path / "stop"), "--fail-fast", *ray],
                   ray_cluster.env)
    assert stop.returncode == 2 and "error: slide broken: " in stop.stderr, stop.stderr
    assert read_manifest(tmp_path / "stop" / "manifest.csv")["broken"]["status"] == "error"


@pytest.fixture(scope="module")
def copies_tiled(shared_wsi: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nine copies of one sample (2 MB each) tiled locally: enough work to kill a node in the middle."""
    root = tmp_path_factory.mktemp("copies")
    slides = root / "slides"
    slides.mkdir()
    for i in range(9):
        shutil.copyfile(shared_wsi / f"{CMU}.svs", slides / f"s{i:02d}.svs")
    res = _mixmag(["tile", str(slides), "--out", str(root / "tiles"), "--no-progress", *THUMB], dict(os.environ))
    assert res.returncode == 0, res.stderr
    return root / "tiles"


def _claimed_on_node(cluster, out: Path, node: int) -> list[str]:
    """Slides whose claim was made by a Ray worker process of worker node ``node``."""
    pids = cluster.worker_processes(node)
    found = []
    for claim in (out / ".claims").glob("*.claim"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(claim.read_text(encoding="utf-8")).get("pid") in pids:
                found.append(claim.stem)
    return found


def _kill_mid_slide(cluster, out: Path, proc: subprocess.Popen[str], killed: list[str], node: int = 0) -> None:
    """SIGKILL worker node ``node`` once one slide is done and another is being embedded on that node."""
    while proc.poll() is None:
        if list(out.glob("s*.h5")) and (busy := _claimed_on_node(cluster, out, node)):
            cluster.kill_worker(node)
            killed.extend(busy)
            return
        time.sleep(0.05)


@pytest.mark.ray
def test_a_worker_node_killed_mid_run_leaves_every_slide_done_or_recorded(ray_cluster, copies_tiled,
                                                                          tmp_path) -> None:
    from mixmag.embed import embed_slides

    # a real model (EfficientNet-Lite0, packaged ImageNet weights) makes a slide last seconds on one thread
    model = ["--encoder", "efficientnet-lite0-imagenet", "--precision", "fp32", "--batch-size", "32"]
    reference = embed_slides([copies_tiled / "regions" / "s00.h5"], tmp_path / "local",
                             encoder="efficientnet-lite0-imagenet", precision="fp32", batch_size=32, device="cpu",
                             threads=1, progress=False)
    assert reference.ok == ["s00"]
    out = tmp_path / "ray"
    args = ["embed", str(copies_tiled), "--out", str(out), "--no-progress", *model, "--backend", "ray",
            "--address", ray_cluster.address, "--max-retries", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "mixmag", *args], env=ray_cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed: list[str] = []
    killer = threading.Thread(target=_kill_mid_slide, args=(ray_cluster, out, proc, killed))
    killer.start()
    stdout, stderr = proc.communicate(timeout=300)
    killer.join()
    assert killed, f"the run ended before a worker node could be killed:\n{stdout}\n{stderr}"
    logged = " ".join((stdout + stderr).split())  # log lines are wrapped at the terminal width
    # the node had a slide in flight (it may have finished that one and taken the next meanwhile)
    assert "a Ray worker was lost while processing s0" in logged and "retrying s0" in logged, logged
    assert proc.returncode in (0, 3), stderr  # done, or done with the lost slides recorded
    rows = read_manifest(out / "manifest.csv")
    assert sorted(rows) == [f"s{i:02d}" for i in range(9)]
    assert {r["status"] for r in rows.values()} <= {"ok", "error"}
    ok = [k for k, r in rows.items() if r["status"] == "ok"]
    assert len(ok) >= 8, rows  # two retries on two live nodes: the lost slide is normally redone
    with FeatureFile(tmp_path / "local" / "s00.h5") as want:
        expected = want.read()[0]
    for slide_id in ok:  # also the retried one: bit for bit the local backend's features
        with FeatureFile(out / f"{slide_id}.h5") as got:
            np.testing.assert_array_equal(got.read()[0], expected)
    assert not list(out.glob(".*.tmp")) and not list((out / ".claims").glob("*.claim"))

    rerun = _mixmag(args, ray_cluster.env)  # finished slides are skipped, a recorded one is tried again
    assert rerun.returncode == 0, rerun.stderr
    assert f"{9 - len(ok)} embedded, {len(ok)} already done" in rerun.stdout, rerun.stdout


@pytest.mark.ray
def test_a_slide_whose_worker_dies_past_its_retries_is_recorded_and_a_rerun_redoes_it(ray_cluster, copies_tiled,
                                                                                     tmp_path) -> None:
    """With --max-retries 0 the slide in flight on the killed node is recorded at once; the batch goes on."""
    out = tmp_path / "ray"
    args = ["embed", str(copies_tiled), "--out", str(out), "--no-progress", "--encoder", "efficientnet-lite0-imagenet",
            "--precision", "fp32", "--batch-size", "32", "--backend", "ray", "--address", ray_cluster.address,
            "--max-retries", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "mixmag", *args], env=ray_cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed: list[str] = []
    killer = threading.Thread(target=_kill_mid_slide, args=(ray_cluster, out, proc, killed, 1))
    killer.start()
    stdout, stderr = proc.communicate(timeout=300)
    killer.join()
    assert killed, f"the run ended before a worker node could be killed:\n{stdout}\n{stderr}"
    assert proc.returncode == 3, stderr  # finished, one slide recorded as failed
    rows = read_manifest(out / "manifest.csv")
    failed = {k: r["error"] for k, r in rows.items() if r["status"] == "error"}
    assert len(failed) == 1 and len(rows) == 9, rows
    (slide_id, error), = failed.items()
    assert error.startswith("its Ray worker failed 1 time(s): ActorDiedError"), error
    assert "1 of 9 slides failed" in stderr
    rerun = _mixmag(args, ray_cluster.env)  # on the head alone now: the failed slide is redone, the rest skipped
    assert rerun.returncode == 0, rerun.stderr
    assert "1 embedded, 8 already done" in rerun.stdout, rerun.stdout
    assert read_manifest(out / "manifest.csv")[slide_id]["status"] == "ok"
