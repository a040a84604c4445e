"""Per-slide claims: several processes (or Slurm array tasks on several nodes) share one output folder.

A claim is a small JSON file ``<out>/.claims/<slide_id>.claim`` created with
``O_CREAT | O_EXCL``, which is atomic on local filesystems and on NFSv3+/Lustre/GPFS: exactly one
creator wins. It records the owner (host, pid, a random run token) and is *touched* while the slide
is being processed (heartbeat). A claim is **stale**, and may be taken over, when

* its owner ran on this host and that pid is gone (or the pid now belongs to another run),
* it has not been touched for ``stale_after_s`` seconds (owner on another node died or hung), or
* it was made for the same Ray run (``ClaimOwner.run``) by another worker: the Ray driver hands a
  slide to one attempt at a time, so that attempt's worker died (possibly with its node, where
  neither the pid test nor, for 15 minutes, the heartbeat test would see it).

Take-over renames the stale file to a unique name first (rename is atomic, so only one of several
contenders succeeds), deletes it, and retries the exclusive create.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mixmag.utils.atomic import pid_alive

logger = logging.getLogger(__name__)

CLAIM_DIR = ".claims"
CLAIM_SUFFIX = ".claim"
DEFAULT_STALE_AFTER_S = 900.0
HEARTBEAT_EVERY_S = 30.0


@dataclass(frozen=True)
class ClaimOwner:
    """Identity written into claim files.

    Attributes:
        host: Hostname of the owning process.
        pid: Process id of the owning (main) process.
        token: Random per-run token: distinguishes a new run that reuses a dead run's pid.
        run: Id of the Ray run (backend ray) the owner works for; empty for a local run.
    """

    host: str
    pid: int
    token: str
    run: str = ""

    @classmethod
    def current(cls, run: str = "") -> ClaimOwner:
        """Owner identity of the calling process (a fresh token per call), working for Ray run ``run``."""
        return cls(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex, run=run)


class ClaimBoard:
    """Acquire/refresh/release per-slide claims in one output folder.

    Args:
        folder: The output folder (claims live in ``folder/.claims``).
        owner: Identity of the process that will do the work (the main embedding process, also
            when a DataLoader worker makes the claim on its behalf).
        stale_after_s: Age (since last heartbeat) after which any claim is considered abandoned.
    """

    def __init__(self, folder: str | os.PathLike[str], owner: ClaimOwner,
                 *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> None:
        self.dir = Path(folder) / CLAIM_DIR
        self.owner = owner
        self.stale_after_s = float(stale_after_s)
        self._last_touch: dict[str, float] = {}

    def path(self, slide_id: str) -> Path:
        """Claim file of ``slide_id``."""
        return self.dir / f"{slide_id}{CLAIM_SUFFIX}"

    def _read(self, path: Path) -> dict[str, object] | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_stale(self, path: Path) -> bool:
        """True when the claim at ``path`` belongs to a dead or silent owner (see module docstring)."""
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        info = self._read(path)
        if info is None:
            # unreadable: either being written right now (fresh) or garbage (old)
            return age > min(self.stale_after_s, 60.0)
        if self.owner.run and info.get("run") == self.owner.run and info.get("token") != self.owner.token:
            return True  # an earlier attempt of this Ray run, which the driver saw fail
        if info.get("host") == self.owner.host:
            pid = int(info.get("pid", -1))  # type: ignore[call-overload]
            if pid == self.owner.pid:
                # our pid: ours if the token matches, otherwise a dead run whose pid we inherited
                return info.get("token") != self.owner.token
            if not pid_alive(pid):
                return True
        return age > self.stale_after_s

    def try_acquire(self, slide_id: str) -> bool:
        """Atomically claim ``slide_id``; False if another live owner holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(slide_id)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self.is_stale(path):
                    return False
                self._break(path)
                continue
            info: dict[str, object] = {"host": self.owner.host, "pid": self.owner.pid, "token": self.owner.token,
                                       "claimed_at": time.time()}
            if self.owner.run:
                info["run"] = self.owner.run
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(info, fh)
            self._last_touch[slide_id] = time.monotonic()
            return True
        return False

    def _break(self, path: Path) -> None:
        stale = self._read(path)
        # rename first: of several processes breaking the same stale claim only one rename succeeds
        grave = path.with_name(f"{path.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return
        moved = self._read(grave)
        if moved is not None and (stale is None or moved.get("token") != stale.get("token")):
            # another process broke the stale claim and made a fresh one between our read and our
            # rename: put its claim back (link fails if a third process already claimed meanwhile)
            with contextlib.suppress(OSError):  # FileExistsError, or no hard links on this filesystem
                os.link(grave, path)
        else:
            logger.warning("recovered stale claim %s (owner died or stopped heartbeating)", path.name)
        with contextlib.suppress(FileNotFoundError):
            grave.unlink()

    def clear_stale(self, slide_id: str) -> None:
        """Remove the claim of ``slide_id`` if it is stale (owner killed after finishing the file)."""
        path = self.path(slide_id)
        if path.exists() and self.is_stale(path):
            self._break(path)

    def holds(self, slide_id: str) -> bool:
        """True when the claim file exists and carries this owner's token."""
        info = self._read(self.path(slide_id))
        return bool(info) and info.get("token") == self.owner.token  # type: ignore[union-attr]

    def heartbeat(self, slide_id: str, *, force: bool = False) -> None:
        """Touch the claim (at most every ``HEARTBEAT_EVERY_S`` seconds) so it never looks stale."""
        now = time.monotonic()
        if force or now - self._last_touch.get(slide_id, 0.0) >= HEARTBEAT_EVERY_S:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path(slide_id))
            self._last_touch[slide_id] = now

    def release(self, slide_id: str) -> None:
        """Remove our claim on ``slide_id`` (no-op if it is not ours)."""
        if self.holds(slide_id):
            with contextlib.suppress(FileNotFoundError):
                self.path(slide_id).unlink()
        self._last_touch.pop(slide_id, None)
