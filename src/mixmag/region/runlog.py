"""Per-step training metrics (JSON lines) and the loss-curve figure of a pretraining run."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from mixmag.utils.atomic import atomic_path, atomic_write_text

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


def _ema(values: list[float], decay: float) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None or not math.isfinite(acc) else decay * acc + (1 - decay) * v
        out.append(acc)
    return out


def plot_loss_curve(records: list[dict[str, Any]], path: str | os.PathLike[str], *, title: str = "") -> Path | None:
    """Draw total loss and its terms against the step (log y) with the learning rate; write a PNG.

    Returns:
        The PNG path, or None when there is nothing to plot.
    """
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    terms = [k for k in ("loss", "mem1", "mem2", "nce") if k in records[0]]
    if terms == ["loss", "mem1"]:  # MEM: the total is the single term
        terms = ["loss"]
    decay = min(max(1.0 - 30.0 / len(records), 0.5), 0.98)  # EMA over ~1/30 of the run
    smooth = len(records) > 50  # long runs: faint raw curves under an exponential moving average
    for key in terms:
        values = [r.get(key, math.nan) for r in records]
        width, alpha = (1.6, 1.0) if key == "loss" else (1.0, 0.8)
        if smooth:
            line = ax.plot(steps, values, lw=0.6, alpha=0.25)[0]
            ax.plot(steps, _ema(values, decay), label=f"{key} (EMA)", lw=width, alpha=alpha, color=line.get_color())
        else:
            ax.plot(steps, values, label=key, lw=width, alpha=alpha)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if all(v > 0 for r in records for k, v in r.items() if k in terms):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if "lr" in records[0]:
        ax2 = ax.twinx()
        ax2.plot(steps, [r["lr"] for r in records], color="grey", ls=":", lw=1.0, label="lr")
        ax2.set_ylabel("learning rate", color="grey")
        ax2.tick_params(axis="y", colors="grey")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "region-encoder pretraining")
    fig.tight_layout()
    final = Path(path)
    with atomic_path(final) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return final
