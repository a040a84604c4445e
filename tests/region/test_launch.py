"""Launch settings of `mixmag run`'s pretraining stage, the torchrun command and feature-list inputs.

The launched jobs themselves run in tests/region/test_ddp.py and tests/integration/test_study_torchrun.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.errors import MixmagValueError
from mixmag.region.data import feature_paths, scan_feature_cohort
from mixmag.region.launch import TorchrunLaunch, pretrain_command
from mixmag.region.settings import RegionSettings


@pytest.mark.parametrize("endpoint", ["node001:29500", "10.0.0.5:29500", "[::1]:29500", "gpu-a.cluster.org:1"])
def test_a_host_port_endpoint_is_accepted(endpoint: str) -> None:
    s = RegionSettings.from_options(nnodes=2, rdzv_endpoint=endpoint)
    assert s.rdzv_endpoint == endpoint and s.launches_torchrun


@pytest.mark.parametrize("endpoint", ["node001", "node001:0", "node001:70000", "tcp://node001:29500", ":29500",
                                      "node 1:29500"])
def test_a_malformed_endpoint_is_one_line(endpoint: str) -> None:
    with pytest.raises(MixmagValueError, match="is not HOST:PORT") as info:
        RegionSettings.from_options(rdzv_endpoint=endpoint)
    assert "\n" not in str(info.value)


def test_several_nodes_need_an_endpoint() -> None:
    with pytest.raises(MixmagValueError, match="rdzv_endpoint"):
        RegionSettings.from_options(nnodes=2)
    assert not RegionSettings().launches_torchrun
    assert RegionSettings(nproc_per_node=4).launches_torchrun
    with pytest.raises(MixmagValueError, match="divisible by the 3 pretraining processes"):
        RegionSettings.from_options(nproc_per_node=3, batch_size=256)
    # launch settings are runtime: the pretraining run itself (and its checkpoints) never sees them
    assert RegionSettings(nproc_per_node=4).run_settings("mem") == RegionSettings().run_settings("mem")


def test_torchrun_command_on_one_and_on_several_nodes(tmp_path: Path) -> None:
    one = pretrain_command(tmp_path / "f.txt", tmp_path / "run", config=tmp_path / "c.yaml", objective="cmem",
                           launch=TorchrunLaunch(nproc_per_node=4), assume_yes=True)
    assert one == [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "4",
                   "--standalone", "-m", "mixmag", "pretrain", str(tmp_path / "f.txt"), "--out", str(tmp_path / "run"),
                   "--config", str(tmp_path / "c.yaml"), "--objective", "cmem", "--no-progress", "--yes"]
    many = pretrain_command(tmp_path / "f.txt", tmp_path / "run", config=tmp_path / "c.yaml", objective="mem",
                            launch=TorchrunLaunch(nproc_per_node=8, nnodes=3, rdzv_endpoint="n1:29500", rdzv_id="x"),
                            assume_yes=False)
    assert many[3:13] == ["--nnodes", "3", "--nproc_per_node", "8", "--rdzv_backend", "c10d",
                          "--rdzv_endpoint", "n1:29500", "--rdzv_id", "x"]
    assert "--yes" not in many
    with pytest.raises(ValueError, match="rendezvous endpoint"):
        TorchrunLaunch(nproc_per_node=1, nnodes=2)


def test_a_feature_list_names_the_files_to_pretrain_on(small_features: Path, tmp_path: Path) -> None:
    files = sorted(small_features.glob("*.h5"))
    shutil.copy(files[0], tmp_path / files[0].name)
    listing = tmp_path / "corpus.txt"
    # a header, a comment, a relative path (to the list's folder), absolute paths and a missing file
    listing.write_text(f"path\n# chosen slides\n{files[0].name}\n{files[1]}\n\n{files[2]}\n{tmp_path / 'gone.h5'}\n")
    assert feature_paths(listing) == sorted([tmp_path / files[0].name, files[1], files[2], tmp_path / "gone.h5"])
    cohort = scan_feature_cohort(listing)
    assert len(cohort.slides) == 3
    assert [(sid, status) for sid, _, status, _ in cohort.skipped] == [("gone", "error")]  # recorded, not dropped
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    with pytest.raises(MixmagValueError, match="names no feature file"):
        feature_paths(tmp_path / "empty.txt")


def test_mixmag_pretrain_reads_a_feature_list(small_features: Path, tmp_path: Path) -> None:
    listing = tmp_path / "corpus.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(small_features.glob("*.h5"))[:2]))
    app = build_app()
    res = CliRunner().invoke(app, ["pretrain", str(listing), "--out", str(tmp_path / "run"), "--objective", "random",
                                   "--preset", "tiny", "--device", "cpu", "--set", "region.num_workers=0"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "config.resolved.json").read_text())["n_slides"] == 2
    (tmp_path / "empty.txt").write_text("\n")
    res = CliRunner().invoke(app, ["pretrain", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "names no feature file" in res.output
    # a list is a pretraining input only: `mixmag train` still wants the feature folder
    res = CliRunner().invoke(app, ["train", str(listing), "--labels", str(tmp_path / "l.csv"), "--out",
                                   str(tmp_path / "t")])
    assert res.exit_code == 2 and "folder not found" in res.output
