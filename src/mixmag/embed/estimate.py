"""How long the rest of an embedding run will take, from its first batches (one log line).

Why: embedding a cohort of thousands of slides on a CPU is a job of days, and the progress bar's
ETA only covers the slides started so far (their tiles are added as each slide opens) and is not
shown at all in batch jobs (``--no-progress``). Before the loop starts, the tiles still to embed
are counted from the region indexes' shapes (no tile data is read); once the first batches are
through, the wall time per tile (decoding, model and writing, as the run actually goes) turns
that count into one line such as::

    embedding 230 slides (812,000 tiles): about 2 h 10 min on cpu (0.0096 s/tile x 812000 tiles);
    a GPU embeds tens of times faster (docs/performance.md)

Unlike pretraining (:func:`mixmag.utils.cost.check_cost`) nothing is asked: an embedding run is
long by nature, resumes where it stopped, and is usually split into shards on purpose.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from mixmag.embed.jobs import EmbedJob
from mixmag.io.regions import count_region_tiles
from mixmag.utils.cost import PROBE_STEPS, CostEstimate

logger = logging.getLogger(__name__)

#: Estimates shorter than this are not logged (a small run is over before anyone reads them).
MIN_LOGGED_SECONDS = 60.0


def tiles_to_embed(jobs: Sequence[EmbedJob], *, overwrite: bool) -> tuple[int, int]:
    """``(slides, tiles)`` still to embed: every job whose feature file is missing (all with ``overwrite``).

    An existing file that turns out stale is re-embedded later without being counted, so the
    count (and the estimate) can be low on a resumed run whose settings changed.
    """
    todo = [job for job in jobs if overwrite or not job.out_path.exists()]
    return len(todo), sum(count_region_tiles(job.region_path) for job in todo)


class EmbedEstimator:
    """Times the first batches of a run and logs the estimated remaining wall time once.

    Call :meth:`tick` after every batch with the tiles embedded so far. The first batch starts the
    clock (it carries the model's warm-up and the first decode); the next :data:`PROBE_STEPS`
    batches are timed, and their wall seconds per tile times the tiles still to go is the estimate.

    Args:
        slides: Slides still to embed.
        tiles: Tiles still to embed (:func:`tiles_to_embed`).
        device: Where the model runs, for the message.
        clock: Wall clock in seconds (tests pass a fake one).
    """

    def __init__(self, slides: int, tiles: int, *, device: str,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.slides = slides
        self.tiles = tiles
        self.device = device
        self.clock = clock
        self.estimate: CostEstimate | None = None
        self._start: tuple[float, int] | None = None  # (time, tiles done) at the end of the first batch
        self._batches = 0

    def tick(self, tiles_done: int) -> None:
        """Record the end of a batch; after the probe, estimate and log once."""
        if self.estimate is not None or self.tiles <= 0:
            return
        self._batches += 1
        now = self.clock()
        if self._start is None:
            self._start = (now, tiles_done)
            return
        if self._batches <= PROBE_STEPS:
            return
        seconds, tiles = now - self._start[0], tiles_done - self._start[1]
        if tiles <= 0 or seconds <= 0:
            return
        left = max(self.tiles - tiles_done, 0)
        self.estimate = CostEstimate(
            stage=f"embedding {self.slides:,} slide(s) ({self.tiles:,} tiles)", unit="tile",
            unit_seconds=seconds / tiles, units_left=left, device=self.device,
            advice="a GPU embeds tens of times faster (docs/performance.md)")
        if self.estimate.seconds >= MIN_LOGGED_SECONDS:
            logger.info("%s; %s", self.estimate.describe(), self.estimate.advice)
