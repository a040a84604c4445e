"""Slides on a Ray cluster: as independent tasks, or as calls to a pool of actors, with retries.

Both loops keep the driver in charge of the order of events: each finished slide is handed to a
callback in this process (which records it in the manifest, as the local backend does), a slide
whose attempt died is tried again or handed to the failure callback, and a callback returning
True stops the batch (``fail_fast``).

* :func:`run_tasks` (tiling): a window of at most ``max_in_flight`` Ray tasks; retries are Ray's
  own (the task's ``max_retries``), so a task lost with its node is simply run again elsewhere.
* :class:`ActorPool` (embedding): actors that each hold a model; one slide per call, handed to
  whichever actor is idle. Ray's automatic actor restart would wait for the dead actor's resources
  on a shrunken cluster while the other actors hold theirs, so the pool does it itself: a slide
  whose actor died goes back to the queue for any live actor (up to ``max_retries`` times), and a
  replacement actor is started that receives work once (and if) the cluster can place it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from types import ModuleType
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=Hashable)

#: Seconds a run with work left and no live actor waits for one to start before giving up.
WORKER_START_TIMEOUT_S = 600.0


def run_tasks(ray: ModuleType, items: Sequence[T], submit: Callable[[T], Any], *, max_in_flight: int,
              on_result: Callable[[T, Any], bool], on_failure: Callable[[T, BaseException], bool]) -> bool:
    """Run one Ray task per item, at most ``max_in_flight`` at a time, in completion order.

    Args:
        ray: The ``ray`` module (connected).
        items: Work items; each is submitted once (Ray retries a task per its ``max_retries``).
        submit: Starts the task of an item and returns its ``ObjectRef``.
        max_in_flight: Tasks submitted and not yet finished, at most.
        on_result: Called with an item and its task's return value; True stops the batch.
        on_failure: Called with an item whose task failed for good (raised, or its worker or node
            died once more than the task's retries allow); True stops the batch.

    Returns:
        True when a callback stopped the batch (tasks still running are cancelled).
    """
    queue = deque(items)
    in_flight: dict[Any, T] = {}
    while queue or in_flight:
        while queue and len(in_flight) < max(1, max_in_flight):
            item = queue.popleft()
            in_flight[submit(item)] = item
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            item = in_flight.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayError as exc:
                stop = on_failure(item, exc)
            else:
                stop = on_result(item, value)
            if stop:
                for other in in_flight:
                    ray.cancel(other)
                return True
    return False


class ActorPool(Generic[T]):
    """Actors that each process one item per call; items go to whichever actor is idle.

    Args:
        ray: The ``ray`` module (connected).
        start: Creates one actor (an ``ActorHandle``; its resources are set by the caller).
        ready: Calls a cheap method on an actor, returning its ``ObjectRef``; the actor takes work
            once that call returns (so a model is loaded before any slide is handed to it).
        size: Actors to start.
        start_timeout_s: How long a pool with work left and no live actor waits for one to start.
    """

    def __init__(self, ray: ModuleType, start: Callable[[], Any], ready: Callable[[Any], Any], size: int, *,
                 start_timeout_s: float = WORKER_START_TIMEOUT_S) -> None:
        self.ray = ray
        self._start = start
        self._ready = ready
        self.start_timeout_s = float(start_timeout_s)
        self._starting: dict[Any, Any] = {}
        self._idle: deque[Any] = deque()
        self._actors: list[Any] = []
        self.first_ready_value: Any = None
        self.last_start_error: BaseException | None = None
        for _ in range(max(1, size)):
            self._spawn()

    def _spawn(self) -> None:
        actor = self._start()
        self._actors.append(actor)
        self._starting[self._ready(actor)] = actor

    def _retire(self, actor: Any) -> None:
        """Make sure a failed actor is gone (it may only look dead, e.g. behind a lost connection)."""
        self._actors = [a for a in self._actors if a is not actor]
        try:
            self.ray.kill(actor)
        except Exception:  # already dead, or its node is gone: nothing left to stop
            logger.debug("could not kill a lost actor", exc_info=True)

    def _started(self, ref: Any) -> None:
        actor = self._starting.pop(ref)
        try:
            value = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            self.last_start_error = exc
            logger.warning("a Ray worker failed to start: %s", " ".join(str(exc).split())[:300])
            self._retire(actor)
            return
        if self.first_ready_value is None:
            self.first_ready_value = value
        self._idle.append(actor)

    def wait_first(self) -> Any:
        """The ``ready`` value of the first actor that starts.

        Raises:
            BaseException: The start error of the last actor when none started (a task error
                carries the constructor's own exception as ``cause``).
            TimeoutError: No actor started within ``start_timeout_s``.
        """
        while self.first_ready_value is None:
            if not self._starting:
                assert self.last_start_error is not None
                raise self.last_start_error
            ready, _ = self.ray.wait(list(self._starting), num_returns=1, timeout=self.start_timeout_s)
            if not ready:
                raise TimeoutError(f"no Ray worker started within {self.start_timeout_s:.0f} s")
            self._started(ready[0])
        return self.first_ready_value

    def map(self, items: Sequence[T], call: Callable[[Any, T], Any], *, max_retries: int,
            on_result: Callable[[T, Any], bool], on_failure: Callable[[T, BaseException], bool],
            retryable: Callable[[BaseException], bool] = lambda exc: True,
            label: Callable[[T], str] = str) -> bool:
        """Process every item on the pool's actors, one call per item and actor at a time.

        An item whose actor died (process killed, node lost, out of memory) or whose call raised a
        ``retryable`` error is queued again, up to ``max_retries`` times; after that, or for an
        error that is not retryable, ``on_failure`` gets it. A lost actor is replaced.

        Args:
            items: Work items (hashable).
            call: Calls the actor's method for one item and returns its ``ObjectRef``.
            max_retries: Attempts after the first one per item.
            on_result: Called with an item and its return value; True stops the batch.
            on_failure: Called with an item that failed for good; True stops the batch.
            retryable: Whether an exception raised by a call (a ``RayTaskError``) may be retried.
            label: Names an item in log messages.

        Returns:
            True when a callback stopped the batch. Calls already running are then allowed to
            finish (and are reported), nothing new is started.
        """
        ray = self.ray
        queue = deque(items)
        in_flight: dict[Any, tuple[Any, T]] = {}
        attempts: Counter[T] = Counter()
        stopped = False
        waited_since: float | None = None
        while (queue and not stopped) or in_flight:
            while queue and self._idle and not stopped:
                actor, item = self._idle.popleft(), queue.popleft()
                in_flight[call(actor, item)] = (actor, item)
            if queue and not stopped and not in_flight and not self._starting:
                error = self.last_start_error or RuntimeError("every Ray worker died")
                logger.error("no Ray worker left; %d slides not processed", len(queue))
                while queue:
                    stopped = on_failure(queue.popleft(), error) or stopped
                break
            refs = list(in_flight) + list(self._starting)
            ready, _ = ray.wait(refs, num_returns=1, timeout=5.0)
            if not ready:
                if not in_flight and queue:  # work left, only actors that are still being placed
                    waited_since = waited_since or time.monotonic()
                    if time.monotonic() - waited_since > self.start_timeout_s:
                        self.last_start_error = TimeoutError(
                            f"no Ray worker could be started within {self.start_timeout_s:.0f} s")
                        self._starting.clear()
                continue
            waited_since = None
            ref = ready[0]
            if ref in self._starting:
                self._started(ref)
                continue
            actor, item = in_flight.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the call raised; the actor lives on
                self._idle.append(actor)
                stopped = self._failed(label(item), item, exc, attempts, max_retries, queue, on_failure,
                                       retry=retryable(exc) and not stopped) or stopped
            except ray.exceptions.RayError as exc:  # the actor is gone: its process, its node
                logger.warning("a Ray worker was lost while processing %s: %s", label(item),
                               " ".join(str(exc).split())[:300])
                self._retire(actor)
                stopped = self._failed(label(item), item, exc, attempts, max_retries, queue, on_failure,
                                       retry=not stopped) or stopped
                if queue and not stopped:  # a replacement, placed when the cluster has room for it
                    self._spawn()
            else:
                self._idle.append(actor)
                stopped = on_result(item, value) or stopped
        return stopped

    @staticmethod
    def _failed(name: str, item: T, exc: BaseException, attempts: Counter[T], max_retries: int, queue: deque[T],
                on_failure: Callable[[T, BaseException], bool], *, retry: bool) -> bool:
        attempts[item] += 1
        if retry and attempts[item] <= max_retries:
            logger.warning("retrying %s (attempt %d of %d)", name, attempts[item] + 1, max_retries + 1)
            queue.appendleft(item)
            return False
        return on_failure(item, exc)

    def shutdown(self) -> None:
        """Stop every actor of the pool (idle, busy or still starting)."""
        for actor in list(self._actors):
            self._retire(actor)
        self._starting.clear()
        self._idle.clear()
