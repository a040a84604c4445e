"""Per-step training metrics of a pretraining run (JSON lines).

The loss-curve figure drawn from them is :func:`mixmag.report.run_plots.write_loss_curve`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mixmag.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per optimizer step.

    Each record has at least ``step`` (optimizer steps completed, 1-based) and ``loss``. Lines are
    flushed as they are written, so a crashed run keeps its history; :meth:`truncate` drops the
    records after the step a run resumes from, so the file never holds two versions of a step.

    Args:
        path: The JSONL file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fh: Any = None

    def records(self) -> list[dict[str, Any]]:
        """All complete records (a torn last line from a crash is ignored)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                logger.debug("ignoring a torn line in %s", self.path)
        return out

    def truncate(self, step: int) -> None:
        """Keep only records with ``step <= step`` (atomic rewrite)."""
        kept = [r for r in self.records() if int(r.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and flush it."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across steps
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file handle."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

