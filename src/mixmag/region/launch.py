"""Pretraining as a torchrun job started by another process (the pretraining stage of ``mixmag run``).

The parent writes the corpus to ``<run>/features.txt`` (one feature file per line), starts::

    python -m torch.distributed.run --nnodes M --nproc_per_node N \\
        (--standalone | --rdzv_backend c10d --rdzv_endpoint HOST:PORT --rdzv_id ID) \\
        -m mixmag pretrain <run>/features.txt --out <run> --config <study config> \\
        --objective OBJ --no-progress [--yes]

waits for it, and reads the result from the run folder: the same :class:`PretrainResult` that
:func:`~mixmag.region.pretrain.pretrain_region_encoder` returns in process (DDP with the same
global batch trains the same model, see :mod:`mixmag.region.distributed`).

Several nodes: c10d rendezvous accepts the very same command on every node, so while the job runs
it is written to ``<run>/join-command.sh``; each of the other ``M - 1`` nodes runs that script to
join (docs/cluster.md). The file is removed when the job ends, and every launch has a new
rendezvous id, so a script found later never joins a job that is gone.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mixmag.errors import MixmagRuntimeError
from mixmag.io.features import write_feature_list
from mixmag.io.manifest import read_manifest
from mixmag.region.checkpoints import CONFIG_FILE, read_checkpoint_config
from mixmag.region.objectives import OBJECTIVES
from mixmag.region.pretrain import PretrainResult, latest_checkpoint
from mixmag.region.runlog import MetricsLog
from mixmag.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

#: The corpus of a launched run: absolute feature-file paths, one per line (``mixmag pretrain`` FEATURES).
FEATURE_LIST = "features.txt"
#: The command the other nodes run to join a multi-node job (exists while the job runs).
JOIN_COMMAND = "join-command.sh"
#: Seconds a stopped parent gives the torchrun agent to end its workers before killing it.
_TERMINATE_GRACE_S = 60


@dataclass(frozen=True)
class TorchrunLaunch:
    """The process layout of one torchrun job.

    Attributes:
        nproc_per_node: Processes on each node (one per GPU).
        nnodes: Nodes; above 1 needs ``rdzv_endpoint``.
        rdzv_endpoint: ``HOST:PORT`` of the c10d rendezvous; None runs ``--standalone`` (one node,
            a free local port).
        rdzv_id: Rendezvous id shared by the nodes of this job (None: a new random one per launch).
    """

    nproc_per_node: int
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None

    def __post_init__(self) -> None:
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError("a torchrun job over several nodes needs a rendezvous endpoint")

    @property
    def world_size(self) -> int:
        """Processes of the whole job."""
        return self.nproc_per_node * self.nnodes

    def options(self) -> list[str]:
        """The torchrun options (before the program)."""
        opts = ["--nnodes", str(self.nnodes), "--nproc_per_node", str(self.nproc_per_node)]
        if self.rdzv_endpoint is None:
            return [*opts, "--standalone"]
        return [*opts, "--rdzv_backend", "c10d", "--rdzv_endpoint", self.rdzv_endpoint,
                "--rdzv_id", self.rdzv_id or "mixmag"]


def pretrain_command(features: Path, out: Path, *, config: Path, objective: str, launch: TorchrunLaunch,
                     assume_yes: bool, python: str = sys.executable) -> list[str]:
    """The argv of ``torchrun ... -m mixmag pretrain`` for one objective (the same on every node).

    Args:
        features: Feature folder or list file (``mixmag pretrain`` FEATURES).
        out: Run folder.
        config: Study config whose ``region`` section gives the settings.
        objective: Pretraining objective key.
        launch: Process layout.
        assume_yes: Pass ``--yes``: the run never stops at its duration estimate.
        python: Interpreter the nodes run (this one: the same environment).
    """
    cmd = [python, "-m", "torch.distributed.run", *launch.options(), "-m", "mixmag", "pretrain", str(features),
           "--out", str(out), "--config", str(config), "--objective", objective, "--no-progress"]
    return [*cmd, "--yes"] if assume_yes else cmd


def _join_script(cmd: list[str], launch: TorchrunLaunch, out: Path) -> str:
    return (f"#!/bin/sh\n# Joins pretraining run {out} ({launch.nnodes} nodes x {launch.nproc_per_node} "
            f"processes, c10d rendezvous {launch.rdzv_endpoint}, id {launch.rdzv_id}).\n"
            f"# Run it once on each of the other {launch.nnodes - 1} node(s) while the run waits for them;\n"
            "# written by `mixmag run` and removed when the run ends (docs/cluster.md).\n"
            f"exec {shlex.join(cmd)}\n")


def _wait(cmd: list[str]) -> int:
    """Run ``cmd`` to the end (its output goes where this process's goes); return its exit status.

    stdin is not passed on: no rank may wait for an answer. If this process is interrupted, the
    torchrun agent is asked to stop its workers (SIGTERM) and killed after a grace period.
    """
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)  # noqa: S603 - our own interpreter and arguments
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def launch_pretraining(files: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                       config: str | os.PathLike[str], objective: str, launch: TorchrunLaunch,
                       assume_yes: bool) -> PretrainResult:
    """Pretrain ``objective`` on ``files`` as a torchrun job; wait for it and return its result.

    Writes ``<out>/features.txt`` and, with several nodes, ``<out>/join-command.sh`` for the time
    the job runs (both commands are logged at INFO). The job resumes from the newest checkpoint in
    ``out``, like an in-process run, and takes its settings from the ``region`` section of ``config``.

    Args:
        files: Feature files of the corpus (on a filesystem every node reads).
        out: Run folder (shared by every node; rank 0 writes it).
        config: Study config file (``config.resolved.yaml`` of the study).
        objective: A training objective (``mem``, ``cmem``).
        launch: Process layout.
        assume_yes: Pass ``--yes``, so the run never stops at its duration estimate; without it the
            run stops when the estimate exceeds ``region.confirm_above_minutes`` (no one is asked).

    Raises:
        MixmagRuntimeError: The job failed (one line naming the run's ``run.log``).
    """
    out = Path(out).resolve()
    if launch.rdzv_id is None:  # a new rendezvous per launch: a stale join script never matches it
        launch = replace(launch, rdzv_id=f"mixmag-{objective}-{secrets.token_hex(4)}")
    out.mkdir(parents=True, exist_ok=True)
    features = write_feature_list(files, out / FEATURE_LIST)
    cmd = pretrain_command(features, out, config=Path(config).resolve(), objective=objective, launch=launch,
                           assume_yes=assume_yes)
    latest = latest_checkpoint(out)  # what the in-process run reports as `resumed_from`
    resumed_from = None if latest is None else int(read_checkpoint_config(latest).get("step", 0))
    join = out / JOIN_COMMAND
    logger.info("pretraining %s with torchrun, %d process(es): %s", objective, launch.world_size, shlex.join(cmd))
    if launch.nnodes > 1:
        atomic_write_text(join, _join_script(cmd, launch, out))
        join.chmod(0o755)
        logger.info("waiting for %d more node(s) at %s: run `sh %s` on each of them (the same command)",
                    launch.nnodes - 1, launch.rdzv_endpoint, join)
    try:
        status = _wait(cmd)
    finally:
        join.unlink(missing_ok=True)
    if status != 0:
        hint = f"; did the other {launch.nnodes - 1} node(s) run {join.name}?" if launch.nnodes > 1 else ""
        raise MixmagRuntimeError(f"pretraining {objective} with torchrun failed (exit status {status}): see "
                                 f"{out / 'run.log'} and the torchrun output above{hint}")
    return read_pretrain_result(out, resumed_from=resumed_from)


def read_pretrain_result(out: str | os.PathLike[str], *, resumed_from: int | None = None) -> PretrainResult:
    """The :class:`PretrainResult` of the finished run in ``out``, read from its files.

    It equals what :func:`~mixmag.region.pretrain.pretrain_region_encoder` returned to the process
    that ran it: ``final_loss`` is the loss of the last step when this run trained up to it (None
    for ``random`` and for a run found finished, ``resumed_from == steps``).

    Args:
        out: Run folder of a finished run.
        resumed_from: The step the run started from (None: from scratch).

    Raises:
        MixmagRuntimeError: ``out`` holds no finished run.
    """
    out = Path(out)
    if not (out / "final" / CONFIG_FILE).is_file():
        raise MixmagRuntimeError(f"{out} holds no finished pretraining run (no final/{CONFIG_FILE}); see "
                                 f"{out / 'run.log'}")
    meta = json.loads((out / "config.resolved.json").read_text(encoding="utf-8"))
    steps, objective = int(meta["settings"]["steps"]), str(meta["settings"]["objective"])
    metrics = MetricsLog(out / "metrics.jsonl")
    records = metrics.records()
    final_loss = None
    if OBJECTIVES.get(objective).trains and resumed_from != steps and records and records[-1].get("step") == steps:
        final_loss = float(records[-1]["loss"])
    # slides the run used have their usable-region count in n_items; skipped files have none
    rows = list(read_manifest(out / "manifest.csv").values())
    used = [row for row in rows if row.get("n_items")]
    plot = out / "loss_curve.png"
    return PretrainResult(
        checkpoint=out / "final", final_loss=final_loss, metrics_path=metrics.path,
        plot_path=plot if plot.exists() else None, steps=steps, objective=objective, out_dir=out,
        resumed_from=resumed_from, n_slides=int(meta["n_slides"]), n_regions=int(meta["n_regions"]),
        n_skipped=len(rows) - len(used), n_nonfinite=sum(row.get("status") == "error" for row in used))
