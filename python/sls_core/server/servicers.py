# ruff: noqa: N802 - gRPC method names are the proto's (VerifyBatch)
"""Thin gRPC servicers: convert the message, call the domain (:class:`SecureLogin`, its
:class:`~sls_core.ibkey.IbKey`) on a worker thread, convert back. Errors map to status codes
in one place (:func:`_rpc`):

* :class:`~sls_core.errors.InvalidInputError` -> INVALID_ARGUMENT ``"field: rule"``;
* :class:`~sls_core.ibkey.ActivationError`, :class:`~sls_core.login.SharingError` ->
  FAILED_PRECONDITION with the reason ("already used or expired", "less secure device");
* a batch over ``max_batch_items`` -> RESOURCE_EXHAUSTED;
* a deadline already passed when the work would start -> DEADLINE_EXCEEDED, before the
  store is touched;
* anything else -> INTERNAL "internal error" (the traceback goes to the log, not the caller).

A wrong answer is never an error: it is an outcome. Batches answer per item, in order, and
one bad item never fails its neighbours. No status detail, log line or audit line carries a
secret, response, code, PIN, passcode or token.

The domain calls block (SQLite, the kernel), so they run in a small thread pool and the
event loop stays free for other calls. A batch's hot path is columnar: repeated fields
become lists in C (``list(request.usernames)``), the domain works on numpy arrays, and the
outcomes go back with one ``extend`` of ``(outcomes + 1).tolist()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
import grpc.aio

from sls_core import cardprint
from sls_core.api.v1 import (
    activation_pb2,
    activation_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    push_pb2,
    push_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from sls_core.devices import Device, DeviceState, DeviceType
from sls_core.errors import InvalidInputError
from sls_core.ibkey import ActivationError
from sls_core.login import Access, BatchResult, Identity, Purpose, SecureLogin, SharingError
from sls_core.outcome import LoginOutcome
from sls_core.server.audit import AuditTrail
from sls_core.server.interceptors import Caller, current_caller
from sls_core.server.metrics import Metrics
from sls_core.store import WriterBusyError

__all__ = [
    "ActivationServicer",
    "AdminServicer",
    "DeadlinePassedError",
    "Domain",
    "PolicyServicer",
    "PushServicer",
    "RefusedError",
    "VerificationServicer",
]

log = logging.getLogger("sls_core.server")

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_ACCESS = {
    common_pb2.ACCESS_UNSPECIFIED: Access.TRADING,
    common_pb2.ACCESS_TRADING: Access.TRADING,
    common_pb2.ACCESS_PORTAL: Access.PORTAL,
    common_pb2.ACCESS_ONLINE_CARD: Access.ONLINE_CARD,
}
_PURPOSE = {
    common_pb2.PURPOSE_UNSPECIFIED: Purpose.LOGIN,
    common_pb2.PURPOSE_LOGIN: Purpose.LOGIN,
    common_pb2.PURPOSE_ACTIVATION: Purpose.ACTIVATION,
}
_DEVICE_TYPE = {t: common_pb2.DeviceType.Value(f"DEVICE_TYPE_{t.name}") for t in DeviceType}
_DEVICE_TYPE_OF = {v: t for t, v in _DEVICE_TYPE.items()}
_DEVICE_STATE = {s: common_pb2.DeviceState.Value(f"DEVICE_STATE_{s.name}") for s in DeviceState}
_PUSH_STATUS = {
    "pending": push_pb2.PUSH_STATUS_PENDING,
    "approved": push_pb2.PUSH_STATUS_APPROVED,
    "declined": push_pb2.PUSH_STATUS_DECLINED,
    "expired": push_pb2.PUSH_STATUS_EXPIRED,
}
#: How often a waiting GetPushStatus looks at the store for an answer another process took.
_PUSH_POLL = 0.1


class RefusedError(Exception):
    """A refusal with its own status code (RESOURCE_EXHAUSTED for an oversized batch)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class DeadlinePassedError(Exception):
    """The call's deadline passed before its work started; nothing was done."""


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
        if items <= self.inline_max_items:
            self.deadline(context)  # DeadlinePassedError if it has passed
            try:
                return fn(*args, wait=False)
            except WriterBusyError:
                pass  # nothing was done: wait for the writer on a thread
        return await self.run(context, fn, *args)


def _before_deadline(deadline: float | None, fn: Callable[..., T], args: Sequence[Any]) -> T:
    # Checked again on the worker thread: a call that waited in the queue past its deadline
    # is refused before it touches the store.
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlinePassedError
    return fn(*args)


async def _abort_for(error: BaseException, context: Context, method: str) -> None:
    """The one place where errors become status codes."""
    if isinstance(error, InvalidInputError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{error.field}: {error.rule}")
    if isinstance(error, ActivationError | SharingError):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, error.reason)
    if isinstance(error, RefusedError):
        await context.abort(error.code, error.details)
    if isinstance(error, DeadlinePassedError):
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the work started"
        )
    log.error(
        "internal error",
        exc_info=(type(error), error, error.__traceback__),
        extra={"fields": {"method": method}},
    )
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _rpc(method: F) -> F:
    """Maps a unary handler's exceptions to status codes (see :func:`_abort_for`)."""

    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: Context) -> Any:
        try:
            return await method(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as e:  # mapped to a status code in one place
            await _abort_for(e, context, method.__name__)

    return cast(F, handler)


def _text(value: str) -> str | None:
    """proto3 has no null: an empty string means "not given"."""
    return value or None


def _device(d: Device) -> common_pb2.Device:
    return common_pb2.Device(
        device_id=d.id,
        type=_DEVICE_TYPE[d.type],
        state=_DEVICE_STATE[d.state],
        serial=d.serial,
        issued_at=d.issued_at or 0.0,
        activated_at=d.activated_at or 0.0,
        expires_at=d.expires_at or 0.0,
        security_level=d.security_level,
    )


def _access(value: int) -> str:
    try:
        return _ACCESS[value]  # type: ignore[index]
    except KeyError:
        raise InvalidInputError("access", "must be a known Access value") from None


def _purpose(value: int) -> int:
    try:
        return _PURPOSE[value]  # type: ignore[index]
    except KeyError:
        raise InvalidInputError("purpose", "must be a known Purpose value") from None


# -- verification -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attempt:
    """One single Verify call waiting to be verified; its ``repr`` leaves the response out."""

    username: str
    token: str | None
    response: str = dataclasses.field(repr=False)
    access: str
    purpose: int
    caller: Caller


@dataclass
class _Waiting:
    attempt: _Attempt
    deadline: float | None
    future: asyncio.Future[tuple[LoginOutcome, int]]
    #: The batch it was handed to (None while it waits for one).
    batch: _Batch | None = None
    expired: bool = False


@dataclass
class _Batch:
    calls: list[_Waiting]
    #: Set by the worker thread when it starts: from then on the batch answers every call.
    started: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class _SingleVerifier:
    """Coalesces single Verify calls: a call that arrives while the domain is busy with
    earlier ones waits, and all that waited go to the domain together as one batch (one
    store transaction), in arrival order, so they answer exactly as one after the other
    would. An idle server verifies a call at once: there is no linger time.

    Runs on the event loop; the batch runs on a worker thread. A call whose deadline passes
    before its batch starts is refused with DEADLINE_EXCEEDED and never reaches the store."""

    def __init__(self, domain: Domain, verify: Callable[..., BatchResult]) -> None:
        self.d = domain
        self._verify = verify
        self._waiting: list[_Waiting] = []
        self._busy = False

    async def verify(self, context: Context, attempt: _Attempt) -> tuple[LoginOutcome, int]:
        deadline = self.d.deadline(context)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(attempt, deadline, loop.create_future())
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
        kinds = {(w.attempt.access, w.attempt.purpose) for w in calls}
        # On the loop only as one domain batch: a second one could not give up midway.
        if len(calls) <= self.d.inline_max_items and len(kinds) == 1:
            try:
                answers = self._run(batch, wait=False)
            except WriterBusyError:
                batch.started = False  # nothing was done: wait for the writer on a thread
            except Exception as error:  # every caller must get an answer
                self._answer(batch, None, error)
                loop.call_soon(self._next)
                return
            else:
                self._answer(batch, answers, None)
                loop.call_soon(self._next)  # what arrived meanwhile goes next
                return
        job = self.d.executor.submit(self._run, batch)
        job.add_done_callback(lambda f: loop.call_soon_threadsafe(self._done, batch, f))

    def _run(self, batch: _Batch, *, wait: bool = True) -> list[tuple[LoginOutcome, int] | None]:
        """One domain batch per (access, purpose), in arrival order, on a worker thread
        (or the loop, ``wait=False``); None for a call that expired or was cancelled
        before the batch started."""
        with batch.lock:
            batch.started = True
            now = time.monotonic()
            live = [
                not (w.expired or w.future.cancelled()) and (w.deadline is None or now < w.deadline)
                for w in batch.calls
            ]
        answers: list[tuple[LoginOutcome, int] | None] = [None] * len(batch.calls)
        kinds: dict[tuple[str, int], list[int]] = {}
        for i, w in enumerate(batch.calls):
            if live[i]:
                kinds.setdefault((w.attempt.access, w.attempt.purpose), []).append(i)
        for (access, purpose), rows in kinds.items():
            attempts = [batch.calls[i].attempt for i in rows]
            result = self._verify(
                "Verify",
                [a.caller for a in attempts],
                [a.username for a in attempts],
                [a.token for a in attempts],
                [a.response for a in attempts],
                access,
                purpose,
                wait=wait,
            )
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
        answers: list[tuple[LoginOutcome, int] | None] | None,
        error: BaseException | None,
    ) -> None:
        if answers is None:
            answers = [None] * len(batch.calls)
        for w, answer in zip(batch.calls, answers, strict=True):
            if w.future.done():
                continue
            if error is not None:
                w.future.set_exception(error)
            elif answer is None:
                w.future.set_exception(DeadlinePassedError())
            else:
                w.future.set_result(answer)


class VerificationServicer(verification_pb2_grpc.VerificationServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self.d = domain
        self._singles = _SingleVerifier(domain, self._verify)

    @_rpc
    async def IssueChallenge(
        self, request: verification_pb2.IssueChallengeRequest, context: Context
    ) -> verification_pb2.IssueChallengeResponse:
        purpose = _purpose(request.purpose)
        c = await self.d.run(
            context,
            functools.partial(
                self.d.sls.issue_challenge,
                request.username,
                device_id=request.device_id or None,
                purpose=purpose,
            ),
        )
        return verification_pb2.IssueChallengeResponse(
            token=c.token,
            device_id=c.device_id,
            device_type=_DEVICE_TYPE[c.device_type],
            expires_at=c.expires_at,
            challenge=c.challenge or "",
            card_indices=c.card_indices or (),
        )

    @_rpc
    async def Verify(
        self, request: verification_pb2.VerifyRequest, context: Context
    ) -> verification_pb2.VerifyResponse:
        attempt = _Attempt(
            request.username,
            request.token or None,
            request.response,
            _access(request.access),
            _purpose(request.purpose),
            current_caller(),
        )
        outcome, device_id = await self._singles.verify(context, attempt)
        return verification_pb2.VerifyResponse(
            outcome=cast(common_pb2.Outcome.ValueType, outcome + 1),
            message=outcome.message,
            device_id=device_id,
        )

    def _verify(
        self,
        method: str,
        caller: Caller | list[Caller],
        usernames: list[str],
        tokens: list[str | None],
        responses: list[str],
        access: str,
        purpose: int,
        *,
        wait: bool = True,
    ) -> BatchResult:
        """The domain's batch, then its audit lines and metrics; on a worker thread, or
        on the loop with ``wait=False`` (see :meth:`Domain.run_batch`). ``caller`` is one
        per item when single calls were coalesced."""
        result = self.d.sls.verify_batch(
            usernames, tokens, responses, access=access, purpose=purpose, wait=wait
        )
        event = "verify" if purpose == Purpose.LOGIN else "activate"
        if isinstance(caller, Caller):
            self.d.audit.verdicts(
                event,
                caller.identity,
                caller.request_id,
                usernames,
                result.device_ids,
                result.outcomes,
            )
        else:
            self.d.audit.verdicts_of_calls(
                event,
                [(c.identity, c.request_id) for c in caller],
                usernames,
                result.device_ids,
                result.outcomes,
            )
        self.d.metrics.outcomes(method, result.outcomes, batch=method != "Verify")
        return result

    def _batch(
        self,
        method: str,
        caller: Caller,
        request: verification_pb2.VerifyBatchRequest,
        *,
        wait: bool = True,
    ) -> verification_pb2.VerifyBatchResponse:
        """Columns out of the message, the batch, outcomes back in (see :meth:`_verify`)."""
        usernames = list(request.usernames)
        tokens: list[str | None] = list(request.tokens)
        if "" in tokens:  # a temporary passcode comes without a token
            tokens = [t or None for t in tokens]
        result = self._verify(
            method,
            caller,
            usernames,
            tokens,
            list(request.responses),
            _ACCESS[request.access],
            Purpose.LOGIN,
            wait=wait,
        )
        response = verification_pb2.VerifyBatchResponse()
        response.outcomes.extend(
            cast(list[common_pb2.Outcome.ValueType], (result.outcomes + 1).tolist())
        )
        response.device_ids.extend(result.device_ids.tolist())
        return response

    def _check_batch(self, request: verification_pb2.VerifyBatchRequest) -> None:
        n = len(request.usernames)
        if n > self.d.max_batch_items:
            raise RefusedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"usernames: at most {self.d.max_batch_items} items per batch (got {n})",
            )
        if len(request.tokens) != n or len(request.responses) != n:
            raise InvalidInputError(
                "tokens", "usernames, tokens and responses must have the same length"
            )
        _access(request.access)

    @_rpc
    async def VerifyBatch(
        self, request: verification_pb2.VerifyBatchRequest, context: Context
    ) -> verification_pb2.VerifyBatchResponse:
        self._check_batch(request)
        return await self.d.run_batch(
            context, len(request.usernames), self._batch, "VerifyBatch", current_caller(), request
        )

    async def VerifyStream(
        self,
        request_iterator: Any,
        context: Context,
    ) -> AsyncIterator[verification_pb2.VerifyBatchResponse]:
        """Each request message is a batch, answered in order. On shutdown the stream ends
        after the batch in hand (the gateway reconnects to another process)."""
        caller = current_caller()
        stop = asyncio.ensure_future(self.d.stopping.wait())
        try:
            while True:
                read = asyncio.ensure_future(context.read())
                done, _ = await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    return
                request = read.result()
                if request is grpc.aio.EOF:
                    return
                try:
                    self._check_batch(request)
                    yield await self.d.run_batch(
                        context,
                        len(request.usernames),
                        self._batch,
                        "VerifyStream",
                        caller,
                        request,
                    )
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as e:  # mapped to a status code in one place
                    await _abort_for(e, context, "VerifyStream")
        finally:
            stop.cancel()


# -- activation ---------------------------------------------------------------------------


class ActivationServicer(activation_pb2_grpc.ActivationServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self.d = domain

    @_rpc
    async def CreateActivation(
        self, request: activation_pb2.CreateActivationRequest, context: Context
    ) -> activation_pb2.CreateActivationResponse:
        def create() -> activation_pb2.CreateActivationResponse:
            offer = self.d.sls.ibkey.create_activation(request.username)
            return activation_pb2.CreateActivationResponse(
                payload=offer.payload,
                manual_code=offer.manual_code,
                expires_at=offer.expires_at,
                qr_png=offer.qr_png(),
                qr_svg=offer.qr_svg(),
            )

        return await self.d.run(context, create)

    @_rpc
    async def CompleteActivation(
        self, request: activation_pb2.CompleteActivationRequest, context: Context
    ) -> activation_pb2.CompleteActivationResponse:
        which = request.WhichOneof("code")
        if which is None:
            raise InvalidInputError("code", "give payload or manual_code")
        caller = current_caller()

        def complete() -> activation_pb2.CompleteActivationResponse:
            try:
                done = self.d.sls.ibkey.complete_activation(
                    app_public=request.app_public,
                    push_public=request.push_public,
                    payload=request.payload if which == "payload" else None,
                    manual_code=request.manual_code if which == "manual_code" else None,
                    pin=_text(request.pin),
                )
            except ActivationError as e:
                self.d.audit.record(
                    "activation", caller.identity, caller.request_id, outcome=e.reason
                )
                raise
            self.d.audit.record(
                "activation",
                caller.identity,
                caller.request_id,
                username=done.username,
                device_id=done.device.id,
                outcome="OK",
            )
            return activation_pb2.CompleteActivationResponse(
                device=_device(done.device),
                username=done.username,
                server_public=done.server_public,
                session_id=done.session_id,
                suite=done.suite,
            )

        return await self.d.run(context, complete)

    @_rpc
    async def SendSmsActivation(
        self, request: activation_pb2.SendSmsActivationRequest, context: Context
    ) -> activation_pb2.SendSmsActivationResponse:
        expires = await self.d.run(context, self.d.sls.ibkey.send_sms_activation, request.username)
        return activation_pb2.SendSmsActivationResponse(expires_at=expires)


# -- push ---------------------------------------------------------------------------------


class PushServicer(push_pb2_grpc.PushServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self.d = domain
        #: Gateways waiting in GetPushStatus, woken when this process records the answer.
        self._waiters: dict[int, asyncio.Event] = {}

    @_rpc
    async def CreatePush(
        self, request: push_pb2.CreatePushRequest, context: Context
    ) -> push_pb2.CreatePushResponse:
        p = await self.d.run(
            context,
            functools.partial(
                self.d.sls.ibkey.create_push, request.username, device_id=request.device_id or None
            ),
        )
        return push_pb2.CreatePushResponse(
            push=push_pb2.Push(
                challenge_id=p.challenge_id,
                user_id=p.user_id,
                device_id=p.device_id,
                expires_at=p.expires_at,
            )
        )

    @_rpc
    async def ListPendingPushes(
        self, request: push_pb2.ListPendingPushesRequest, context: Context
    ) -> push_pb2.ListPendingPushesResponse:
        if len(request.push_public) != 32:
            raise InvalidInputError("push_public", "must be 32 bytes")
        pushes = await self.d.run(context, self.d.sls.ibkey.pending_pushes, request.push_public)
        return push_pb2.ListPendingPushesResponse(
            pushes=[
                push_pb2.Push(
                    challenge_id=p.challenge_id,
                    user_id=p.user_id,
                    device_id=p.device_id,
                    expires_at=p.expires_at,
                )
                for p in pushes
            ]
        )

    @_rpc
    async def AnswerPush(
        self, request: push_pb2.AnswerPushRequest, context: Context
    ) -> push_pb2.AnswerPushResponse:
        caller = current_caller()

        def answer() -> LoginOutcome:
            outcome = self.d.sls.ibkey.answer_push(
                request.challenge_id, int(request.decision), request.signature
            )
            self.d.audit.record(
                "push_answer",
                caller.identity,
                caller.request_id,
                outcome=outcome.name,
                challenge_id=request.challenge_id,
            )
            self.d.metrics.outcome("AnswerPush", outcome)
            return outcome

        outcome = await self.d.run(context, answer)
        waiter = self._waiters.get(request.challenge_id)
        if waiter is not None:
            waiter.set()
        return push_pb2.AnswerPushResponse(outcome=cast(common_pb2.Outcome.ValueType, outcome + 1))

    @_rpc
    async def GetPushStatus(
        self, request: push_pb2.GetPushStatusRequest, context: Context
    ) -> push_pb2.GetPushStatusResponse:
        wait = request.wait_seconds
        if not (wait >= 0 and math.isfinite(wait)):
            raise InvalidInputError("wait_seconds", "must be 0 or more")
        wait = min(wait, self.d.max_push_wait)
        deadline = self.d.deadline(context)
        if deadline is not None:  # answer before the caller gives up
            wait = min(wait, deadline - time.monotonic() - 0.05)
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        cid = request.challenge_id
        waiter = self._waiters.setdefault(cid, asyncio.Event())
        try:
            while True:
                status = await self.d.run(context, self.d.sls.ibkey.push_status, cid)
                left = end - loop.time()
                if status != "pending" or left <= 0 or self.d.stopping.is_set():
                    break
                waiter.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter.wait(), timeout=min(_PUSH_POLL, left))
        finally:
            if self._waiters.get(cid) is waiter:
                del self._waiters[cid]
        return push_pb2.GetPushStatusResponse(status=_PUSH_STATUS[status])


# -- client services and policy -----------------------------------------------------------


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self.d = domain

    def _audit(
        self, method: str, caller: Caller, username: str, device_id: int | None = None
    ) -> None:
        self.d.audit.record(
            f"admin.{method}",
            caller.identity,
            caller.request_id,
            username=username,
            device_id=device_id,
            outcome="OK",
        )

    async def _call(
        self,
        context: Context,
        method: str,
        username: str,
        fn: Callable[[], T],
        device_id: int | Callable[[T], int] | None = None,
    ) -> T:
        """``fn()`` on a worker thread, then its audit line (``device_id``: the device the
        action is about, or how to find it in the result)."""
        caller = current_caller()

        def job() -> T:
            result = fn()
            device = device_id(result) if callable(device_id) else device_id
            self._audit(method, caller, username, device)
            return result

        return await self.d.run(context, job)

    @_rpc
    async def CreateUser(
        self, request: admin_pb2.CreateUserRequest, context: Context
    ) -> admin_pb2.CreateUserResponse:
        i = request.identity
        identity = Identity(
            date_of_birth=i.date_of_birth,
            citizenship=i.citizenship,
            residence=i.residence,
            id_type=i.id_type,
            id_number=i.id_number,
            ssn=i.ssn,
        )
        user = await self._call(
            context,
            "CreateUser",
            request.username,
            lambda: self.d.sls.create_user(request.username, identity),
        )
        return admin_pb2.CreateUserResponse(user_id=user.id)

    @_rpc
    async def EnrollDevice(
        self, request: admin_pb2.EnrollDeviceRequest, context: Context
    ) -> admin_pb2.EnrollDeviceResponse:
        device_type = _DEVICE_TYPE_OF.get(request.type)
        if device_type is None:
            raise InvalidInputError("type", "must be a known DeviceType")
        device = await self._call(
            context,
            "EnrollDevice",
            request.username,
            lambda: self.d.sls.enroll_device(
                request.username,
                device_type,
                secret=request.secret or None,
                pin=_text(request.pin),
                suite=_text(request.suite),
                serial=_text(request.serial),
                phone=_text(request.phone),
                shipped=request.shipped,
                replaces=request.replaces or None,
            ),
            lambda d: d.id,
        )
        return admin_pb2.EnrollDeviceResponse(device=_device(device))

    @_rpc
    async def ListDevices(
        self, request: admin_pb2.ListDevicesRequest, context: Context
    ) -> admin_pb2.ListDevicesResponse:
        devices = await self.d.run(context, self.d.sls.devices, request.username)
        return admin_pb2.ListDevicesResponse(devices=[_device(d) for d in devices])

    @_rpc
    async def ChooseDevice(
        self, request: admin_pb2.ChooseDeviceRequest, context: Context
    ) -> admin_pb2.ChooseDeviceResponse:
        await self._call(
            context,
            "ChooseDevice",
            request.username,
            lambda: self.d.sls.choose_device(request.username, request.device_id),
            request.device_id,
        )
        return admin_pb2.ChooseDeviceResponse()

    @_rpc
    async def ShareDevice(
        self, request: admin_pb2.ShareDeviceRequest, context: Context
    ) -> admin_pb2.ShareDeviceResponse:
        await self._call(
            context,
            "ShareDevice",
            request.with_username,
            lambda: self.d.sls.share_device(
                request.owner, request.device_id, request.with_username
            ),
            request.device_id,
        )
        return admin_pb2.ShareDeviceResponse()

    @_rpc
    async def RevokeDevice(
        self, request: admin_pb2.RevokeDeviceRequest, context: Context
    ) -> admin_pb2.RevokeDeviceResponse:
        await self._call(
            context,
            "RevokeDevice",
            request.username,
            lambda: self.d.sls.revoke_device(request.username, request.device_id),
            request.device_id,
        )
        return admin_pb2.RevokeDeviceResponse()

    @_rpc
    async def ReactivateDevice(
        self, request: admin_pb2.ReactivateDeviceRequest, context: Context
    ) -> admin_pb2.ReactivateDeviceResponse:
        await self._call(
            context,
            "ReactivateDevice",
            request.username,
            lambda: self.d.sls.reactivate_device(request.username, request.device_id),
            request.device_id,
        )
        return admin_pb2.ReactivateDeviceResponse()

    @_rpc
    async def IssueTemporaryPasscode(
        self, request: admin_pb2.IssueTemporaryPasscodeRequest, context: Context
    ) -> admin_pb2.IssueTemporaryPasscodeResponse:
        passcode = await self._call(
            context,
            "IssueTemporaryPasscode",
            request.username,
            lambda: self.d.sls.issue_temporary_passcode(request.username),
        )
        return admin_pb2.IssueTemporaryPasscodeResponse(passcode=passcode)

    @_rpc
    async def IssueOnlineCard(
        self, request: admin_pb2.IssueOnlineCardRequest, context: Context
    ) -> admin_pb2.IssueOnlineCardResponse:
        def issue() -> admin_pb2.IssueOnlineCardResponse:
            device, card = self.d.sls.issue_online_card(request.username)
            return admin_pb2.IssueOnlineCardResponse(
                device=_device(device),
                card_png=cardprint.render_png(card),
                card_pdf=cardprint.render_pdf(card),
            )

        return await self._call(
            context, "IssueOnlineCard", request.username, issue, lambda r: r.device.device_id
        )

    @_rpc
    async def SetOptOut(
        self, request: admin_pb2.SetOptOutRequest, context: Context
    ) -> admin_pb2.SetOptOutResponse:
        await self._call(
            context,
            "SetOptOut",
            request.username,
            lambda: self.d.sls.set_opted_out(request.username, request.opted_out),
        )
        return admin_pb2.SetOptOutResponse()


class PolicyServicer(admin_pb2_grpc.PolicyServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self.d = domain

    @_rpc
    async def GetSecurityLevel(
        self, request: admin_pb2.GetSecurityLevelRequest, context: Context
    ) -> admin_pb2.GetSecurityLevelResponse:
        devices = await self.d.run(context, self.d.sls.active_devices, request.username)
        if not devices:
            return admin_pb2.GetSecurityLevelResponse()
        strongest = min(devices, key=lambda d: d.security_level)
        return admin_pb2.GetSecurityLevelResponse(
            security_level=strongest.security_level, strongest_device=_DEVICE_TYPE[strongest.type]
        )

    @_rpc
    async def GetWithdrawalLimits(
        self, request: admin_pb2.GetWithdrawalLimitsRequest, context: Context
    ) -> admin_pb2.GetWithdrawalLimitsResponse:
        limits = await self.d.run(context, self.d.sls.withdrawal_limits, request.username)
        return admin_pb2.GetWithdrawalLimitsResponse(
            device=_DEVICE_TYPE[limits.device] if limits.device else 0,  # type: ignore[arg-type]
            per_day=limits.per_day or 0,
            per_five_days=limits.per_five_days or 0,
            unlimited=limits.per_day is None,
        )

    @_rpc
    async def GetSessionLength(
        self, request: admin_pb2.GetSessionLengthRequest, context: Context
    ) -> admin_pb2.GetSessionLengthResponse:
        return admin_pb2.GetSessionLengthResponse(
            seconds=SecureLogin.trading_session_length(request.unlock)
        )

    @_rpc
    async def GetLockoutStatus(
        self, request: admin_pb2.GetLockoutStatusRequest, context: Context
    ) -> admin_pb2.GetLockoutStatusResponse:
        status = await self.d.run(context, self.d.sls.lockout_status, request.username)
        return admin_pb2.GetLockoutStatusResponse(
            consecutive_failures=status.consecutive_failures,
            locked_until=status.locked_until or 0.0,
        )
