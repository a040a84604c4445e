"""How long a stage will take, estimated from its first steps, and the one rule for asking first.

Why: a study config that asks for the ``base`` region encoder on a 2-core CPU starts a job of many
hours without a word (issue: base-preset pretraining, 43.5 M parameters, 2,000 steps). A stage that
can be long times its first few units of real work (the *probe*; nothing is run twice), turns
that into an estimate of the remaining wall time, logs it, and, when it exceeds the limit the
user set (``region.confirm_above_minutes``), stops with one line that says what to change,
unless a person at a terminal says to go on or the user said so in advance (``--yes``, or the
limit set to null).

Deciding is separate from asking: :func:`check_cost` takes an optional ``ask`` callback, which the
CLI provides only when stdin is a terminal (:func:`mixmag.cli.common.terminal_ask`), so batch jobs
never hang on a prompt.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mixmag.errors import MixmagValueError

logger = logging.getLogger(__name__)

#: Steps timed before the estimate is made; the first is left out of it (allocation, warm-up).
PROBE_STEPS = 4


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``"1 min 15 s"``, ``3.4`` -> ``"3.4 s"``, ``7300`` -> ``"2 h 01 min"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass(frozen=True)
class CostEstimate:
    """Remaining wall time of a stage, from timed units of its real work.

    Attributes:
        stage: What runs, e.g. ``"pretraining mem (preset base, batch 256)"``.
        unit: The unit timed, e.g. ``"step"``.
        unit_seconds: Wall seconds per unit (median of the probe, first unit excluded).
        units_left: Units still to run after the probe.
        device: Where it runs (``"cpu"``, ``"cuda:0"``), for the message.
        advice: What would make it shorter, e.g. ``"set region.preset: small"``.
    """

    stage: str
    unit: str
    unit_seconds: float
    units_left: int
    device: str
    advice: str

    @property
    def seconds(self) -> float:
        """Estimated wall seconds still to go."""
        return self.unit_seconds * self.units_left

    def describe(self) -> str:
        """E.g. ``"pretraining mem (preset base): about 14 h 20 min on cpu (25.8 s/step x 2000 steps)"``."""
        return (f"{self.stage}: about {format_seconds(self.seconds)} on {self.device} "
                f"({self.unit_seconds:.3g} s/{self.unit} x {self.units_left} {self.unit}s)")


def estimate_from_probe(durations: Sequence[float], *, stage: str, unit: str, units_left: int, device: str,
                        advice: str) -> CostEstimate:
    """Estimate from the wall seconds of the probe's units (the first is dropped when there are more)."""
    if not durations:
        raise ValueError("estimate_from_probe needs at least one timed unit")
    timed = list(durations[1:]) if len(durations) > 1 else list(durations)
    return CostEstimate(stage=stage, unit=unit, unit_seconds=float(statistics.median(timed)),
                        units_left=int(units_left), device=device, advice=advice)


class CostLimitError(MixmagValueError):
    """A stage would run longer than the user's limit and nobody said to go on (exit code 2)."""


#: Shown an estimate over the limit, returns True to go on (a prompt at a terminal).
Ask = Callable[[CostEstimate], bool]


def check_cost(estimate: CostEstimate, *, limit_minutes: float | None, setting: str,
               ask: Ask | None = None) -> None:
    """Log ``estimate``; above ``limit_minutes``, go on only if ``ask`` says yes, else raise.

    Args:
        estimate: The stage's estimate (:func:`estimate_from_probe`).
        limit_minutes: Minutes above which to stop; None never stops.
        setting: The config key of the limit, named in the message (``"region.confirm_above_minutes"``).
        ask: Prompt for a person at a terminal; None (batch mode, the Python API) stops instead.

    Raises:
        CostLimitError: Over the limit and not confirmed. One line: the estimate, what to change,
            and how to run it anyway.
    """
    logger.info("%s", estimate.describe())
    if limit_minutes is None or estimate.seconds <= limit_minutes * 60.0:
        return
    if ask is not None and ask(estimate):
        logger.info("%s: confirmed, going on", estimate.stage)
        return
    declined = "declined" if ask is not None else "not confirmed"
    raise CostLimitError(
        f"{estimate.describe()}, more than {setting}={limit_minutes:g} min ({declined}): {estimate.advice}; "
        f"or run it anyway with --yes (or {setting}: null)")
