"""Coalescing of single Verify calls (:class:`SingleVerifier`): a call that arrives while
the domain is busy with earlier ones waits, and all that waited go to the domain together
as one batch (one store transaction), in arrival order, so they answer exactly as one after
the other would. An idle server verifies a call at once: there is no linger time.

Runs on the event loop; the batch runs on a worker thread (or on the loop, for a small one
while nobody else writes). A call whose deadline passes before its batch starts is refused
with DEADLINE_EXCEEDED and never reaches the store; once its batch has started it answers.
An :class:`Attempt`'s ``repr`` leaves the response out, and nothing here logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sls_core.server.domain import Domain, timed_on_thread
from sls_core.server.interceptors import Caller
from sls_core.server.status import Context, DeadlinePassedError
from sls_core.store import WriterBusyError
from sls_core.values import Access, BatchResult, LoginOutcome, Purpose

__all__ = ["Attempt", "SingleVerifier", "VerifyBatch"]

#: ``verify(method, callers, usernames, tokens, responses, access, purpose, task, *, wait)``:
#: the domain's batch with its audit lines and metrics (one caller per item).
VerifyBatch = Callable[..., BatchResult]
#: One domain batch per kind: what a single VerifyBatch call carries once for all items.
_Kind = tuple[Access, Purpose, str | None]
#: A call's answer: (outcome, device id), its kind's error, or None (expired, cancelled).
_Answer = tuple[LoginOutcome, int] | BaseException | None


@dataclass(frozen=True)
class Attempt:
    """One single Verify call waiting to be verified; its ``repr`` leaves the response out."""

    username: str
    token: str | None
    response: str = dataclasses.field(repr=False)
    access: Access
    purpose: Purpose
    task: str | None
    caller: Caller

    @property
    def kind(self) -> _Kind:
        return (self.access, self.purpose, self.task)


@dataclass
class _Waiting:
    attempt: Attempt
    deadline: float | None
    future: asyncio.Future[tuple[LoginOutcome, int]]
    #: The batch it was handed to (None while it waits for one).
    batch: _Batch | None = None
    expired: bool = False
    #: When it arrived (perf_counter; only with debug timing on).
    arrived: float = 0.0


@dataclass
class _Batch:
    calls: list[_Waiting]
    #: Set by the worker thread when it starts: from then on the batch answers every call.
    started: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class SingleVerifier:
    """Coalesces single Verify calls into domain batches (see the module docstring):
    :meth:`verify` answers one call's (outcome, device id) or raises
    :class:`~sls_core.server.status.DeadlinePassedError`."""

    def __init__(self, domain: Domain, verify: VerifyBatch) -> None:
        self.d = domain
        self._verify = verify
        self._waiting: list[_Waiting] = []
        self._busy = False

    async def verify(self, context: Context, attempt: Attempt) -> tuple[LoginOutcome, int]:
        deadline = self.d.deadline(context)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(attempt, deadline, loop.create_future())
        if self.d.phases is not None:
            waiting.arrived = time.perf_counter()
        timer = None
        if deadline is not None:
            timer = loop.call_later(deadline - time.monotonic(), self._expire, waiting)
        self._waiting.append(waiting)
        if not self._busy:
            self._next()
        try:
            return await waiting.future
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, waiting: _Waiting) -> None:
        batch = waiting.batch
        if batch is None:
            self._waiting.remove(waiting)
        else:
            with batch.lock:
                if batch.started:
                    return  # being verified: it answers
                waiting.expired = True
        if not waiting.future.done():
            waiting.future.set_exception(DeadlinePassedError())

    def _next(self) -> None:
        calls = [w for w in self._waiting if not w.future.done()]
        limit = self.d.max_batch_items
        calls, self._waiting = calls[:limit], calls[limit:]
        self._busy = bool(calls)
        if not calls:
            return
        batch = _Batch(calls)
        for w in calls:
            w.batch = batch
        loop = asyncio.get_running_loop()
        kinds = {w.attempt.kind for w in calls}
        phases = self.d.phases
        if phases is not None:
            now = time.perf_counter()
            for w in calls:
                phases.add("coalescing queue wait", now - w.arrived)
        # On the loop only as one domain batch: a second one could not give up midway.
        if len(calls) <= self.d.inline_max_items and len(kinds) == 1:
            if phases is not None:
                phases.batch_started()
            try:
                answers = self._run(batch, wait=False)
            except WriterBusyError:
                batch.started = False  # nothing was done: wait for the writer on a thread
                if phases is not None:
                    phases.batch_finished("inline, refused: writer busy")
            except Exception as error:  # every caller must get an answer
                self._answer(batch, None, error)
                loop.call_soon(self._next)
                return
            else:
                if phases is not None:
                    phases.batch_finished("inline")
                self._answer(batch, answers, None)
                loop.call_soon(self._next)  # what arrived meanwhile goes next
                return
        if phases is not None:
            done: list[float] = []
            job = self.d.executor.submit(
                timed_on_thread, phases, time.perf_counter(), done, self._run, batch
            )
        else:
            job = self.d.executor.submit(self._run, batch)
        job.add_done_callback(lambda f: loop.call_soon_threadsafe(self._done, batch, f))

    def _run(self, batch: _Batch, *, wait: bool = True) -> list[_Answer]:
        """One domain batch per (access, purpose, task), in arrival order, on a worker
        thread (or the loop, ``wait=False``); None for a call that expired or was
        cancelled before the batch started, the error for the calls of a kind that failed."""
        with batch.lock:
            batch.started = True
            now = time.monotonic()
            live = [
                not (w.expired or w.future.cancelled()) and (w.deadline is None or now < w.deadline)
                for w in batch.calls
            ]
        answers: list[_Answer] = [None] * len(batch.calls)
        kinds: dict[_Kind, list[int]] = {}
        for i, w in enumerate(batch.calls):
            if live[i]:
                kinds.setdefault(w.attempt.kind, []).append(i)
        for (access, purpose, task), rows in kinds.items():
            attempts = [batch.calls[i].attempt for i in rows]
            try:
                result = self._verify(
                    "Verify",
                    [a.caller for a in attempts],
                    [a.username for a in attempts],
                    [a.token for a in attempts],
                    [a.response for a in attempts],
                    access,
                    purpose,
                    task,
                    wait=wait,
                )
            except WriterBusyError:
                raise  # only on the loop, with one kind: nothing was done
            except Exception as error:
                # The kinds before this one are committed: their callers get their verdicts.
                for i in rows:
                    answers[i] = error
                continue
            outcomes, devices = result.outcomes.tolist(), result.device_ids.tolist()
            for k, i in enumerate(rows):
                answers[i] = (LoginOutcome(outcomes[k]), devices[k])
        return answers

    def _done(self, batch: _Batch, job: Future[list[Any]]) -> None:
        error = job.exception()
        self._answer(batch, job.result() if error is None else None, error)
        self._next()

    @staticmethod
    def _answer(
        batch: _Batch,
        answers: list[_Answer] | None,
        error: BaseException | None,
    ) -> None:
        if answers is None:
            answers = [None] * len(batch.calls)
        for w, answer in zip(batch.calls, answers, strict=True):
            if w.future.done():
                continue
            if error is not None:
                w.future.set_exception(error)
            elif isinstance(answer, BaseException):
                w.future.set_exception(answer)
            elif answer is None:
                w.future.set_exception(DeadlinePassedError())
            else:
                w.future.set_result(answer)
