"""The blocking client :class:`SlsClient` (thread-safe) and its micro-batching of
concurrent verify() calls on a thread."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import grpc
import grpc.aio

from sls_core import wire
from sls_core.api.v1 import (
    activation_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    portal_pb2_grpc,
    push_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from sls_core.client.calls import (
    _T,
    _answer_push_call,
    _approve_sharing_call,
    _Attempt,
    _batch_failure,
    _batch_request,
    _batchable,
    _BatchKind,
    _by_kind,
    _Call,
    _cancel_sharing_call,
    _complete_activation_call,
    _create_activation_call,
    _create_push_call,
    _create_user_call,
    _device_call,
    _enrollment_call,
    _issue_challenge_call,
    _issue_online_card_call,
    _issue_temporary_passcode_call,
    _list_devices_call,
    _list_own_devices_call,
    _list_pending_pushes_call,
    _lockout_status_call,
    _optional_text,
    _parse,
    _push_status_call,
    _record_password_failure_call,
    _recover_call,
    _request_sharing_call,
    _security_level_call,
    _send_sms_activation_call,
    _server_status_call,
    _session_length_call,
    _unexpired,
    _unlock_call,
    _verdicts,
    _verify_batch_call,
    _verify_call,
    _verify_fields,
    _withdrawal_limits_call,
)
from sls_core.client.errors import (
    ClientClosedError,
    DeadlineExceededError,
    ProtocolError,
    UnavailableError,
    _rpc_error,
    _timeout_error,
)
from sls_core.client.settings import (
    DEFAULT_LINGER,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_MESSAGE_LENGTH,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    RetryPolicy,
    TlsSettings,
    _ChannelSettings,
)
from sls_core.values import (
    Access,
    Activated,
    BatchResult,
    Challenge,
    Device,
    DeviceType,
    Identity,
    LockoutStatus,
    LoginOutcome,
    Purpose,
    PushChallenge,
    PushDecision,
    PushStatus,
    SharingRequest,
    Verdict,
    WithdrawalLimits,
)
from sls_core.wire import ActivationOffer, EnrollOptions, OnlineCard, SecurityLevel, ServerStatus

# --- the blocking client ------------------------------------------------------------------


_SyncAttempt = _Attempt["concurrent.futures.Future[Verdict]"]


class _ThreadBatcher:
    """Coalesces verify() calls from many threads into VerifyBatch calls.

    One daemon thread waits for attempts and starts each call without waiting for it: at
    once while fewer than ``max_in_flight`` calls are in flight, else when one returns,
    the oldest attempt has waited ``linger`` or ``max_batch`` attempts wait. gRPC's
    completion callback hands each caller its outcome. Order within a batch is arrival
    order under the lock, and an attempt is taken off the queue exactly once.
    """

    def __init__(
        self,
        rpc: Any,
        *,
        linger: float,
        max_batch: int,
        max_in_flight: int,
    ) -> None:
        self._rpc = rpc  # VerifyBatch, or a _SyncBatchStream: both have .future()
        self._linger = linger
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._cond = threading.Condition()
        self._pending: list[_SyncAttempt] = []
        self._in_flight = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(
        self,
        username: str,
        token: str,
        response: str,
        access: common_pb2.Access.ValueType,
        task: str,
        *,
        deadline: float,
    ) -> concurrent.futures.Future[Verdict]:
        future: concurrent.futures.Future[Verdict] = concurrent.futures.Future()
        attempt = _SyncAttempt(username, token, response, access, task, deadline, future)
        with self._cond:
            if self._closed:
                raise ClientClosedError()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sls-client-batcher", daemon=True
                )
                self._thread.start()
            attempt.enqueued = time.monotonic()
            self._pending.append(attempt)
            waiting = len(self._pending)
            if waiting == 1 or waiting >= self._max_batch:
                self._cond.notify()
        return future

    def close(self) -> None:
        """Sends what is waiting, then waits for every batch in flight."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight == 0)
        if isinstance(self._rpc, _SyncBatchStream):
            self._rpc.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed and drained
                flush_at = self._pending[0].enqueued + self._linger
                while len(self._pending) < self._max_batch and not self._closed:
                    if self._max_in_flight:  # adaptive: leave when a slot is free
                        if self._in_flight < self._max_in_flight:
                            break
                        self._cond.wait()  # a returning batch notifies
                        continue
                    remaining = flush_at - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                groups = _by_kind(batch)
                self._in_flight += len(groups)
            for kind, group in groups.items():
                self._send(kind, group)

    def _send(self, kind: _BatchKind, group: list[_SyncAttempt]) -> None:
        group = _unexpired(group)
        if not group:
            self._done()
            return
        # The batch may run until its latest caller gives up; each caller waits its own time.
        timeout = max(a.deadline for a in group) - time.monotonic()
        try:
            call = self._rpc.future(_batch_request(group, kind), timeout=timeout)
        except Exception as err:  # the channel is closed or broken: fail these callers
            self._fail(group, err)
        else:
            call.add_done_callback(partial(self._complete, group))

    def _complete(
        self,
        group: list[_SyncAttempt],
        call: grpc.Future[verification_pb2.VerifyBatchResponse],
    ) -> None:
        try:
            verdicts = _verdicts(call.result(), len(group))
        except Exception as err:  # every caller must get an answer
            self._fail(group, err)
            return
        for attempt, verdict in zip(group, verdicts, strict=True):
            if not attempt.future.done():
                attempt.future.set_result(verdict)
        self._done()

    def _fail(self, group: list[_SyncAttempt], err: BaseException | None) -> None:
        """``err=None``: the deadline passed before the batch could leave."""
        for attempt in group:
            if not attempt.future.done():
                attempt.future.set_exception(_batch_failure(err))
        self._done()

    def _done(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()


_STREAM_END = object()


@dataclass(eq=False)
class _OpenStream:
    requests: queue.SimpleQueue[Any]
    #: (answer, deadline) of each batch written and not yet answered, in order.
    owed: collections.deque[tuple[concurrent.futures.Future[Any], float]]
    responses: Any = None
    ended: bool = False


class _SyncBatchStream:
    """The blocking client's micro-batches as the messages of one long-lived
    ``VerifyStream`` call (see :class:`_BatchStream`): requests go through a queue that
    gRPC drains, a reader thread hands the answers, in order, to the batches, and a
    watchdog thread ends the stream when its oldest batch passes its deadline (the
    batches behind it wait on its answer)."""

    def __init__(
        self,
        rpc: grpc.StreamStreamMultiCallable[
            verification_pb2.VerifyBatchRequest, verification_pb2.VerifyBatchResponse
        ],
    ) -> None:
        self._rpc = rpc
        self._cond = threading.Condition()
        self._open: _OpenStream | None = None
        self._threads: list[threading.Thread] = []

    def future(
        self, request: verification_pb2.VerifyBatchRequest, *, timeout: float
    ) -> concurrent.futures.Future[verification_pb2.VerifyBatchResponse]:
        answer: concurrent.futures.Future[verification_pb2.VerifyBatchResponse]
        answer = concurrent.futures.Future()
        with self._cond:
            stream = self._open
            if stream is None:
                stream = _OpenStream(queue.SimpleQueue(), collections.deque())
                stream.responses = self._rpc(iter(stream.requests.get, _STREAM_END))
                self._threads = [t for t in self._threads if t.is_alive()]
                for target, name in ((self._read, "reader"), (self._watch, "watchdog")):
                    thread = threading.Thread(
                        target=target, args=(stream,), name=f"sls-client-stream-{name}"
                    )
                    thread.daemon = True
                    thread.start()
                    self._threads.append(thread)
                self._open = stream  # only once it is served
            stream.owed.append((answer, time.monotonic() + timeout))
            stream.requests.put(request)
            self._cond.notify_all()
        return answer

    def _read(self, stream: _OpenStream) -> None:
        error: Exception = UnavailableError(
            "VerifyStream", grpc.StatusCode.UNAVAILABLE, "the server ended the stream"
        )
        try:
            for response in stream.responses:
                with self._cond:
                    if not stream.owed:
                        raise ProtocolError("VerifyStream: an answer nobody asked for")
                    answer, _ = stream.owed.popleft()
                if not answer.done():
                    answer.set_result(response)
        except Exception as err:  # the stream failed: every batch on it fails
            error = err
        self._end(stream, error)

    def _watch(self, stream: _OpenStream) -> None:
        with self._cond:
            while not stream.ended:
                if not stream.owed:
                    self._cond.wait()
                    continue
                # Only the oldest batch's lateness holds up the others (answers come in
                # order); a later batch that is late has callers who stopped waiting,
                # and its answer is dropped when it comes.
                late = stream.owed[0][1] - time.monotonic()
                if late > 0:
                    self._cond.wait(late)
                    continue
                break
            else:
                return
        self._end(stream, _timeout_error())

    def _end(self, stream: _OpenStream, error: Exception) -> None:
        with self._cond:
            if stream.ended:
                return
            stream.ended = True
            if self._open is stream:
                self._open = None
            owed = list(stream.owed)
            stream.owed.clear()
            self._cond.notify_all()
        stream.requests.put(_STREAM_END)
        if owed:
            with contextlib.suppress(Exception):
                stream.responses.cancel()
        for answer, _ in owed:
            if not answer.done():
                answer.set_exception(error)

    def close(self) -> None:
        with self._cond:
            stream, self._open = self._open, None
            threads = list(self._threads)
        if stream is not None:
            stream.requests.put(_STREAM_END)  # the server ends the stream in turn
        for thread in threads:
            if thread.name.endswith("reader"):
                thread.join(5.0)
        if stream is not None:
            self._end(stream, ClientClosedError())


class SlsClient:
    """Blocking client, safe to share between threads.

    ``target`` is ``"host:port"`` (one connection), a list of them or a
    ``"dns:///name:port"`` (balanced over several servers: see the module docstring);
    ``tls`` the :class:`TlsSettings` (``None`` = plaintext, refused unless every target is
    a loopback address); ``timeout`` the deadline of each call
    in seconds unless the call gives its own; ``linger``, ``max_batch`` and
    ``max_in_flight`` drive micro-batching of :meth:`verify` (``linger=0``: off; see the
    module docstring); ``retry`` the policy of the read-only calls (``None``: no
    retries); ``channel_options`` extra gRPC channel arguments (keepalive,
    ``grpc.use_local_subchannel_pool`` for a connection of its own), added after the
    client's own. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        tls: TlsSettings | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        linger: float = DEFAULT_LINGER,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_send_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        max_receive_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        channel_options: Sequence[tuple[str, Any]] = (),
        stream: bool = False,
    ) -> None:
        self._settings = _ChannelSettings.build(
            target,
            tls=tls,
            timeout=timeout,
            linger=linger,
            max_batch=max_batch,
            max_in_flight=max_in_flight,
            max_send_message_length=max_send_message_length,
            max_receive_message_length=max_receive_message_length,
            retry=retry,
            channel_options=channel_options,
        )
        options = list(self._settings.options)
        if tls is None:
            self._channel = grpc.insecure_channel(self._settings.target, options=options)
        else:
            self._channel = grpc.secure_channel(
                self._settings.target, tls.credentials(), options=options
            )
        verification = verification_pb2_grpc.VerificationServiceStub(self._channel)
        self._stubs: dict[str, Any] = {
            "verification": verification,
            "activation": activation_pb2_grpc.ActivationServiceStub(self._channel),
            "push": push_pb2_grpc.PushServiceStub(self._channel),
            "admin": admin_pb2_grpc.AdminServiceStub(self._channel),
            "policy": admin_pb2_grpc.PolicyServiceStub(self._channel),
            "portal": portal_pb2_grpc.PortalServiceStub(self._channel),
        }
        self._batcher = (
            _ThreadBatcher(
                _SyncBatchStream(verification.VerifyStream) if stream else verification.VerifyBatch,
                linger=self._settings.linger,
                max_batch=self._settings.max_batch,
                max_in_flight=self._settings.max_in_flight,
            )
            if self._settings.linger > 0
            else None
        )
        self._closed = False

    def __repr__(self) -> str:
        mode = "insecure" if self._settings.tls is None else "tls"
        return f"SlsClient({self._settings.given!r}, {mode}, linger={self._settings.linger})"

    def __enter__(self) -> SlsClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Sends the verify() attempts still waiting, waits for their answers, then closes
        the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._batcher is not None:
            self._batcher.close()
        self._channel.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Blocks until the channel is connected (:class:`DeadlineExceededError` if not in
        ``timeout`` seconds, default the client's)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self._timeout(timeout))
        except grpc.FutureTimeoutError:
            raise DeadlineExceededError(
                "connect", grpc.StatusCode.DEADLINE_EXCEEDED, "channel not ready in time"
            ) from None

    def _timeout(self, timeout: float | None) -> float:
        return self._settings.timeout if timeout is None else timeout

    def _run(self, call: _Call[_T], timeout: float | None) -> _T:
        if self._closed:
            raise ClientClosedError()
        rpc = getattr(self._stubs[call.service], call.method)
        try:
            response = rpc(call.request, timeout=self._timeout(timeout) + call.extra_timeout)
        except grpc.RpcError as err:
            raise _rpc_error(err, call.method) from err
        return _parse(call.method, call.parse, response)

    # verification

    def issue_challenge(
        self,
        username: str,
        *,
        device_id: int | None = None,
        purpose: Purpose | None = None,
        task: str | None = None,
        timeout: float | None = None,
    ) -> Challenge:
        """A challenge for ``username``'s device (M2FS: ``device_id``, else their choice).
        ``purpose`` defaults to a login, or to a step-up when a ``task`` (the Client
        Portal task the answer will be valid for) is given. Not retried: each call mints a
        new challenge (and texts SMS devices)."""
        return self._run(_issue_challenge_call(username, device_id, purpose, task), timeout)

    def verify(
        self,
        username: str,
        token: str | None,
        response: str,
        *,
        access: str = Access.TRADING,
        purpose: Purpose | None = None,
        task: str | None = None,
        timeout: float | None = None,
    ) -> Verdict:
        """One attempt: what the user typed for the challenge ``token`` (``None`` for a
        temporary passcode). Coalesced with concurrent calls when ``linger > 0``; never
        retried (a replay would be refused, and a wrong answer counted twice).
        ``task`` answers a step-up challenge for that task. ``purpose=Purpose.ACTIVATION``
        (or REACTIVATION) answers an activation challenge (the device becomes active);
        those go as a plain Verify, since a batch carries no purpose."""
        fields = _verify_fields(username, token, response, access)
        wire.to_purpose(purpose)  # a bad one is refused before anything is sent
        task_text = _optional_text("task", task)
        if self._batcher is None or not _batchable(purpose, task_text):
            return self._run(_verify_call(fields, purpose, task_text), timeout)
        if self._closed:
            raise ClientClosedError()
        wait = self._timeout(timeout)
        future = self._batcher.submit(*fields, task_text, deadline=time.monotonic() + wait)
        try:
            return future.result(timeout=wait)
        except DeadlineExceededError:
            raise
        except concurrent.futures.TimeoutError:
            raise _timeout_error() from None

    def verify_batch(
        self,
        usernames: Sequence[str],
        tokens: Sequence[str | None],
        responses: Sequence[str],
        *,
        access: str = Access.TRADING,
        task: str | None = None,
        timeout: float | None = None,
    ) -> BatchResult:
        """Many attempts in one call: per-item ``LoginOutcome`` values (``uint8``) and device
        ids in input order; logins, or step-up answers all for one ``task``. Never
        retried."""
        call = _verify_batch_call(usernames, tokens, responses, access, task)
        return self._run(call, timeout)

    def record_password_failure(
        self, username: str, *, timeout: float | None = None
    ) -> LockoutStatus:
        """Reports a wrong username/password combination: a failed attempt toward the
        lockout. Returns the lockout status after it. Never retried (it would count
        twice)."""
        return self._run(_record_password_failure_call(username), timeout)

    # activation

    def create_activation(self, username: str, *, timeout: float | None = None) -> ActivationOffer:
        return self._run(_create_activation_call(username), timeout)

    def complete_activation(
        self,
        *,
        app_public: bytes,
        push_public: bytes,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
        timeout: float | None = None,
    ) -> Activated:
        """:class:`ClientRefusedError` with ``reason`` "already used or expired" or "already
        enrolled" when refused."""
        call = _complete_activation_call(app_public, push_public, payload, manual_code, pin)
        return self._run(call, timeout)

    def send_sms_activation(self, username: str, *, timeout: float | None = None) -> datetime:
        """Texts an activation code to the user's phone; returns its expiry (UTC)."""
        return self._run(_send_sms_activation_call(username), timeout)

    def recover(
        self,
        username: str,
        recovery_pin: str,
        *,
        app_public: bytes,
        push_public: bytes,
        timeout: float | None = None,
    ) -> Activated:
        """A reinstalled app re-enables ``username``'s IB Key with the recovery PIN (a wrong
        one is a failed attempt). :class:`ClientRefusedError` with the reason if refused."""
        call = _recover_call(username, recovery_pin, app_public, push_public)
        return self._run(call, timeout)

    # push

    def create_push(
        self, username: str, *, device_id: int | None = None, timeout: float | None = None
    ) -> PushChallenge:
        return self._run(_create_push_call(username, device_id), timeout)

    def list_pending_pushes(
        self, push_public: bytes, *, timeout: float | None = None
    ) -> list[PushChallenge]:
        return self._run(_list_pending_pushes_call(push_public), timeout)

    def answer_push(
        self,
        challenge_id: int,
        decision: PushDecision | int,
        signature: bytes,
        *,
        timeout: float | None = None,
    ) -> LoginOutcome:
        """From the app: ``APPROVE`` or ``DECLINE`` signed with its push key."""
        return self._run(_answer_push_call(challenge_id, decision, signature), timeout)

    def push_status(self, challenge_id: int, *, timeout: float | None = None) -> PushStatus:
        """ "pending", "approved", "declined" or "expired", now."""
        return self._run(_push_status_call(challenge_id, 0.0), timeout)

    def wait_push(
        self, challenge_id: int, *, wait: timedelta | float, timeout: float | None = None
    ) -> PushStatus:
        """The status once decided or expired, or after ``wait`` (a ``timedelta`` or
        seconds; "pending": fall back to challenge/response). The call's deadline is
        ``wait + timeout``."""
        return self._run(_push_status_call(challenge_id, wait), timeout)

    # client services

    def create_user(
        self, username: str, identity: Identity | None = None, *, timeout: float | None = None
    ) -> int:
        return self._run(_create_user_call(username, identity), timeout)

    def enroll_device(
        self,
        username: str,
        device_type: DeviceType,
        *,
        secret: bytes | None = None,
        pin: str | None = None,
        suite: str | None = None,
        serial: str | None = None,
        phone: str | None = None,
        shipped: bool = False,
        replaces: int | None = None,
        replaces_lost: bool = False,
        timeout: float | None = None,
    ) -> Device:
        """A new device. ``replaces``: the device this one replaces; ``replaces_lost``: that
        one was lost or stolen and leaves service at once. Legacy types are refused (no
        longer issued): :meth:`import_device` takes existing ones."""
        options = EnrollOptions(
            secret=secret,
            pin=pin,
            suite=suite,
            serial=serial,
            phone=phone,
            shipped=shipped,
            replaces=replaces,
            replaces_lost=replaces_lost,
        )
        call = _enrollment_call(
            "EnrollDevice", admin_pb2.EnrollDeviceRequest, username, device_type, options
        )
        return self._run(call, timeout)

    def import_device(
        self,
        username: str,
        device_type: DeviceType,
        *,
        secret: bytes | None = None,
        pin: str | None = None,
        suite: str | None = None,
        serial: str | None = None,
        phone: str | None = None,
        shipped: bool = False,
        replaces: int | None = None,
        replaces_lost: bool = False,
        timeout: float | None = None,
    ) -> Device:
        """An existing holder's device from the old system: the checks of
        :meth:`enroll_device`, but legacy types (Platinum, Gold, Alpine, code cards) are
        accepted. Never retried."""
        options = EnrollOptions(
            secret=secret,
            pin=pin,
            suite=suite,
            serial=serial,
            phone=phone,
            shipped=shipped,
            replaces=replaces,
            replaces_lost=replaces_lost,
        )
        call = _enrollment_call(
            "ImportDevice", admin_pb2.ImportDeviceRequest, username, device_type, options
        )
        return self._run(call, timeout)

    def list_devices(self, username: str, *, timeout: float | None = None) -> list[Device]:
        return self._run(_list_devices_call(username), timeout)

    def choose_device(self, username: str, device_id: int, *, timeout: float | None = None) -> None:
        call = _device_call(
            "ChooseDevice", admin_pb2.ChooseDeviceRequest, username=username, device_id=device_id
        )
        self._run(call, timeout)

    def share_device(
        self, owner: str, device_id: int, with_username: str, *, timeout: float | None = None
    ) -> None:
        """:class:`ClientRefusedError` with ``reason`` "less secure device", "different
        identification information" or "a temporary device is assigned" when refused."""
        call = _device_call(
            "ShareDevice",
            admin_pb2.ShareDeviceRequest,
            owner=owner,
            device_id=device_id,
            with_username=with_username,
        )
        self._run(call, timeout)

    def approve_sharing(self, request_id: int, *, timeout: float | None = None) -> SharingRequest:
        """Compliance approves a pending sharing request (:meth:`request_sharing` with
        ``needs_approval``): :class:`ClientRefusedError` "no such pending sharing request"
        otherwise."""
        return self._run(_approve_sharing_call(request_id), timeout)

    def revoke_device(self, username: str, device_id: int, *, timeout: float | None = None) -> None:
        call = _device_call(
            "RevokeDevice", admin_pb2.RevokeDeviceRequest, username=username, device_id=device_id
        )
        self._run(call, timeout)

    def reactivate_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "ReactivateDevice",
            admin_pb2.ReactivateDeviceRequest,
            username=username,
            device_id=device_id,
        )
        self._run(call, timeout)

    def issue_temporary_passcode(self, username: str, *, timeout: float | None = None) -> str:
        """The passcode, to show once; never log it."""
        return self._run(_issue_temporary_passcode_call(username), timeout)

    def issue_online_card(self, username: str, *, timeout: float | None = None) -> OnlineCard:
        """Client services' (admin role); the portal calls :meth:`portal_issue_online_card`."""
        return self._run(_issue_online_card_call("admin", username), timeout)

    def set_opt_out(self, username: str, opted_out: bool, *, timeout: float | None = None) -> None:
        call = _device_call(
            "SetOptOut", admin_pb2.SetOptOutRequest, username=username, opted_out=opted_out
        )
        self._run(call, timeout)

    def unlock(self, username: str, *, timeout: float | None = None) -> LockoutStatus:
        """Client services, after verifying the user's identity: ends the lock and the run
        of failures (audited with this client's identity). Returns the status after it."""
        return self._run(_unlock_call(username), timeout)

    def server_status(self, *, timeout: float | None = None) -> ServerStatus:
        """For operators (admin role): the server's version, store, master keys, what the
        store holds, when it started and whether it is serving (retried: read-only)."""
        return self._run(_server_status_call(), timeout)

    # the Client Portal (gateway role): the user's own settings

    def portal_issue_online_card(
        self, username: str, *, timeout: float | None = None
    ) -> OnlineCard:
        """An Online Security Code Card and its PNG/PDF, while the user's temporary
        passcode is in its portal window (:class:`~sls_core.errors.InvalidInputError` on
        ``username`` otherwise)."""
        return self._run(_issue_online_card_call("portal", username), timeout)

    def request_sharing(
        self,
        owner: str,
        device_id: int,
        with_username: str,
        *,
        token: str,
        response: str,
        needs_approval: bool = False,
        timeout: float | None = None,
    ) -> SharingRequest:
        """``with_username`` asks to answer with ``owner``'s device ``device_id``; ``token``
        and ``response`` are the owner's answer to ``issue_challenge(owner,
        device_id=device_id, purpose=Purpose.SHARING)``. :class:`ClientRefusedError` with
        the ``reason`` when refused. Never retried (the answer is used up)."""
        call = _request_sharing_call(
            owner, device_id, with_username, token, response, needs_approval
        )
        return self._run(call, timeout)

    def cancel_sharing(
        self, request_id: int, *, username: str, timeout: float | None = None
    ) -> SharingRequest:
        """Cancels a pending or active request (``username``: its owner or requester): the
        requester's set-aside devices are active again."""
        return self._run(_cancel_sharing_call(request_id, username), timeout)

    def portal_set_opt_out(
        self, username: str, opted_out: bool, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "SetOptOut",
            admin_pb2.SetOptOutRequest,
            service="portal",
            username=username,
            opted_out=opted_out,
        )
        self._run(call, timeout)

    def portal_choose_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        """M2FS: the device that answers the user's logins when the gateway names none."""
        call = _device_call(
            "ChooseDevice",
            admin_pb2.ChooseDeviceRequest,
            service="portal",
            username=username,
            device_id=device_id,
        )
        self._run(call, timeout)

    def list_own_devices(self, username: str, *, timeout: float | None = None) -> list[Device]:
        """The user's devices, every state (retried: read-only)."""
        return self._run(_list_own_devices_call(username), timeout)

    # policy

    def security_level(self, username: str, *, timeout: float | None = None) -> SecurityLevel:
        return self._run(_security_level_call(username), timeout)

    def withdrawal_limits(self, username: str, *, timeout: float | None = None) -> WithdrawalLimits:
        return self._run(_withdrawal_limits_call(username), timeout)

    def session_length(self, unlock: str, *, timeout: float | None = None) -> timedelta:
        """How long a trading session lasts after ``unlock`` ("pin", "passcode",
        "fingerprint", "face")."""
        return self._run(_session_length_call(unlock), timeout)

    def lockout_status(self, username: str, *, timeout: float | None = None) -> LockoutStatus:
        return self._run(_lockout_status_call(username), timeout)
