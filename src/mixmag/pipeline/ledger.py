"""The stage ledger: which pipeline stages of a run folder are finished, and with which inputs.

``<run>/stages.json`` maps each stage name to its fingerprint (a hash of the stage's settings and
of the fingerprints of the stages it consumes), status, wall time and outputs. A stage whose
fingerprint is unchanged and whose outputs still exist is skipped by ``mixmag run``; changing any
upstream setting changes every downstream fingerprint, so stale results are never reused.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mixmag._version import __version__
from mixmag.utils.atomic import atomic_write_json
from mixmag.utils.hashing import sha256_text

logger = logging.getLogger(__name__)

LEDGER_NAME = "stages.json"


def fingerprint(settings: dict[str, Any], upstream: list[str] | None = None) -> str:
    """Stable hash of a stage's settings plus the fingerprints of the stages it depends on."""
    payload = json.dumps(
        {"settings": settings, "upstream": upstream or [], "mixmag": __version__},
        sort_keys=True, default=str,
    )
    return sha256_text(payload)[:16]


@dataclass
class StageRecord:
    """One stage's entry in the ledger."""

    name: str
    fingerprint: str
    status: str  # "done" | "failed"
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)
    finished_at: str = ""
    skipped: bool = False


class StageLedger:
    """Read/update ``stages.json`` of a run folder.

    Args:
        run_dir: The study's run folder.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LEDGER_NAME
        self.records: dict[str, StageRecord] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.records = {k: StageRecord(**v) for k, v in data.get("stages", {}).items()}

    def _save(self) -> None:
        atomic_write_json(self.path, {"stages": {k: vars(r) for k, r in self.records.items()}})

    def is_fresh(self, name: str, fp: str) -> bool:
        """True when ``name`` finished with fingerprint ``fp`` and its recorded outputs still exist."""
        rec = self.records.get(name)
        if rec is None or rec.status != "done" or rec.fingerprint != fp:
            return False
        paths = [v for v in rec.outputs.values() if isinstance(v, str) and v.startswith("/")]
        return all(Path(p).exists() for p in paths)

    def run(self, name: str, fp: str, fn: Callable[[], dict[str, Any]]) -> StageRecord:
        """Run ``fn`` unless the stage is fresh; record outputs (``fn``'s return dict) and timing.

        Returns:
            The stage's record; ``skipped`` is True when it was reused.
        """
        if self.is_fresh(name, fp):
            rec = self.records[name]
            logger.info("stage %-9s up to date (fingerprint %s), skipped", name, fp)
            return StageRecord(**{**vars(rec), "skipped": True})
        logger.info("stage %-9s running", name)
        start = time.perf_counter()
        try:
            outputs = fn()
        except BaseException:
            self.records[name] = StageRecord(name=name, fingerprint=fp, status="failed",
                                             seconds=time.perf_counter() - start)
            self._save()
            raise
        rec = StageRecord(
            name=name, fingerprint=fp, status="done", seconds=round(time.perf_counter() - start, 3),
            outputs=outputs, finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        self.records[name] = rec
        self._save()
        logger.info("stage %-9s done in %.1f s", name, rec.seconds)
        return rec
