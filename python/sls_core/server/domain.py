"""How a servicer runs domain work: :class:`Domain` holds what every servicer shares (the
domain, the worker threads, limits, audit, metrics) and runs a call's work on a worker
thread within the call's deadline.

The domain calls block (SQLite, the kernel), so they run in a small thread pool and the
event loop stays free for other calls. Work whose deadline passes while it waits in the
queue is dropped before it touches the store (:class:`DeadlinePassedError`); work already
running finishes (a batch commits whole), so nothing is half-applied.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sls_core.server.audit import AuditTrail
from sls_core.server.metrics import Metrics, PhaseTimes
from sls_core.server.status import Context, DeadlinePassedError
from sls_core.store import WriterBusyError

if TYPE_CHECKING:
    from sls_core.login import SecureLogin

__all__ = ["Domain"]

T = TypeVar("T")


@dataclass
class Domain:
    """What every servicer shares: the domain, the worker threads, limits, audit, metrics."""

    sls: SecureLogin
    executor: Executor
    audit: AuditTrail
    metrics: Metrics
    max_batch_items: int
    default_deadline: float
    max_push_wait: float
    stopping: asyncio.Event
    #: Verification batches up to this size try the event loop first (config.py).
    inline_max_items: int = 0
    #: Debug timing of verification batches (metrics.PhaseTimes); None: off.
    phases: PhaseTimes | None = None

    def deadline(self, context: Context) -> float | None:
        """The call's deadline on the monotonic clock (``default_deadline`` when it came
        without one); DeadlinePassedError when it has already passed."""
        remaining = context.time_remaining()
        if remaining is None or math.isinf(remaining):
            if not self.default_deadline:
                return None
            remaining = self.default_deadline
        if remaining <= 0:
            raise DeadlinePassedError
        return time.monotonic() + remaining

    async def run(self, context: Context, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread, unless the deadline passes before it starts."""
        deadline = self.deadline(context)
        job = self.executor.submit(_before_deadline, deadline, fn, args)
        if deadline is None:
            return await asyncio.wrap_future(job)
        # Still queued at the deadline: dropped, never run. Already running: it finishes
        # (a batch commits whole), the caller has given up, nothing is half-applied.
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = job.cancel()

        timer = asyncio.get_running_loop().call_later(deadline - time.monotonic(), expire)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if expired:
                raise DeadlinePassedError from None
            raise
        finally:
            timer.cancel()

    async def run_batch(self, context: Context, items: int, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`run` for a verification batch ``fn(*args, wait=...)`` of ``items`` items:
        a small one runs right here on the event loop unless another thread or process is
        writing (then, and for a large one, on a worker thread as usual). Skipping the
        hand-over to a thread and back saves a few hundred microseconds of a call that
        takes a few hundred itself; a busy store never blocks the loop."""
        phases = self.phases
        if phases is not None:
            return await self._run_batch_timed(phases, context, items, fn, *args)
        if items <= self.inline_max_items:
            self.deadline(context)  # DeadlinePassedError if it has passed
            try:
                return fn(*args, wait=False)
            except WriterBusyError:
                pass  # nothing was done: wait for the writer on a thread
        return await self.run(context, fn, *args)

    async def _run_batch_timed(
        self, phases: PhaseTimes, context: Context, items: int, fn: Callable[..., T], *args: Any
    ) -> T:
        """:meth:`run_batch` with its phases timed (debug timing on)."""
        arrived = time.perf_counter()
        if items <= self.inline_max_items:
            self.deadline(context)
            phases.batch_started()
            try:
                result = fn(*args, wait=False)
            except WriterBusyError:
                phases.batch_finished("inline, refused: writer busy")
            else:
                phases.batch_finished("inline")
                phases.add("batch server time (inline)", time.perf_counter() - arrived)
                return result
        done: list[float] = []
        result = await self.run(context, timed_on_thread, phases, arrived, done, fn, *args)
        now = time.perf_counter()
        if done:
            phases.add("loop wake-up after thread", now - done[0])
        phases.add("batch server time (thread)", now - arrived)
        return result


def _before_deadline(deadline: float | None, fn: Callable[..., T], args: Sequence[Any]) -> T:
    # Checked again on the worker thread: a call that waited in the queue past its deadline
    # is refused before it touches the store.
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlinePassedError
    return fn(*args)


def timed_on_thread(
    phases: PhaseTimes, submitted: float, done: list[float], fn: Callable[..., T], *args: Any
) -> T:
    """``fn(*args)`` on a worker thread, its queue wait and run timed (debug timing);
    ``done`` gets the time it returned (the loop's wake-up after it is timed from there)."""
    phases.add("thread queue wait", time.perf_counter() - submitted)
    phases.batch_started()
    try:
        return fn(*args)
    finally:
        phases.batch_finished("thread")
        done.append(time.perf_counter())
