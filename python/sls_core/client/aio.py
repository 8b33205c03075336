"""The asyncio client :class:`AsyncSlsClient` and its micro-batching of concurrent
verify() calls on the event loop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from sls_core.api.v1.activation_pb2_grpc import ActivationServiceAsyncStub
    from sls_core.api.v1.admin_pb2_grpc import AdminServiceAsyncStub, PolicyServiceAsyncStub
    from sls_core.api.v1.portal_pb2_grpc import PortalServiceAsyncStub
    from sls_core.api.v1.push_pb2_grpc import PushServiceAsyncStub
    from sls_core.api.v1.verification_pb2_grpc import VerificationServiceAsyncStub
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

# --- the asyncio client -------------------------------------------------------------------


_AsyncAttempt = _Attempt["asyncio.Future[Verdict]"]


class _BatchStream:
    """Micro-batches as the messages of one long-lived ``VerifyStream`` call: no new
    call per batch, answered in order. Any error, or the oldest batch on the stream
    passing its callers' deadline, ends the stream and fails every batch on it (the next
    batch opens a new one); a later batch that passes its deadline fails alone. The
    server's end of the stream (shutdown) fails them as UNAVAILABLE. Runs on the event
    loop only."""

    def __init__(
        self,
        rpc: grpc.aio.StreamStreamMultiCallable[
            verification_pb2.VerifyBatchRequest, verification_pb2.VerifyBatchResponse
        ],
    ) -> None:
        self._rpc = rpc
        self._call: Any = None
        #: The answers each open call still owes, in the order its requests were written.
        self._owed: dict[Any, collections.deque[asyncio.Future[Any]]] = {}
        self._write_lock = asyncio.Lock()
        self._readers: set[asyncio.Task[None]] = set()

    async def __call__(
        self, request: verification_pb2.VerifyBatchRequest, *, timeout: float
    ) -> verification_pb2.VerifyBatchResponse:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[verification_pb2.VerifyBatchResponse] = loop.create_future()
        # A stream has no per-message deadline: the batch's own is kept here, for the
        # write (a server that stops reading) as for the answer.
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline), self._write_lock:
                # One write at a time, in the order of the answers.
                if self._call is None:
                    call = self._rpc()
                    self._owed[call] = collections.deque()
                    self._call = call
                    reader = loop.create_task(self._read(call))
                    self._readers.add(reader)
                    reader.add_done_callback(self._readers.discard)
                call = self._call
                self._owed[call].append(answer)
                try:
                    await call.write(request)
                except BaseException as err:  # half written, maybe: the stream is done
                    answer.cancel()
                    self._end(call, err)
                    raise
        except TimeoutError:
            raise _timeout_error() from None
        # The answer is awaited directly (the reader sets it, the deadline timer fails it):
        # wait_for around a shield would wake this task three turns of the loop later.
        timer = loop.call_at(deadline, self._expire, call, answer)
        try:
            return await answer
        finally:
            timer.cancel()

    def _expire(self, call: Any, answer: asyncio.Future[Any]) -> None:
        """The deadline of ``answer``'s batch passed: it fails alone, or, if it is the
        oldest on the stream, so does the stream (the batches behind it wait on it)."""
        if answer.done():
            return
        owed = self._owed.get(call)
        oldest = bool(owed) and owed[0] is answer  # type: ignore[index]
        answer.set_exception(_timeout_error())  # the reader skips its answer when it comes
        if oldest:
            self._end(call, _timeout_error())

    async def _read(self, call: Any) -> None:
        owed = self._owed[call]
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise UnavailableError(
                        "VerifyStream", grpc.StatusCode.UNAVAILABLE, "the server ended the stream"
                    )
                if not owed:
                    raise ProtocolError("VerifyStream: an answer nobody asked for")
                answer = owed.popleft()
                if not answer.done():
                    answer.set_result(response)
        except BaseException as err:
            self._end(call, err)

    def _end(self, call: Any, err: BaseException) -> None:
        """Ends ``call`` (if not already) and fails the answers it still owes."""
        if self._call is call:
            self._call = None
        owed = self._owed.pop(call, None)
        if owed is None:
            return
        call.cancel()
        error = err if isinstance(err, Exception) else ClientClosedError()
        while owed:
            answer = owed.popleft()
            if not answer.done():
                answer.set_exception(error)

    async def close(self) -> None:
        call = self._call
        if call is not None:
            with contextlib.suppress(Exception):
                await call.done_writing()
        if self._readers:
            await asyncio.gather(*self._readers, return_exceptions=True)


class _TaskBatcher:
    """Coalesces verify() calls from many tasks of one event loop into VerifyBatch calls.
    While fewer than ``max_in_flight`` calls are in flight, what waits leaves on the loop's
    next turn (so the tasks woken together still travel together); otherwise the first
    waiting attempt arms a ``linger`` timer, and the batch leaves when a call returns, the
    timer fires or ``max_batch`` attempts wait. Runs on the loop only, so needs no lock."""

    def __init__(
        self,
        rpc: Callable[..., Awaitable[verification_pb2.VerifyBatchResponse]],
        *,
        linger: float,
        max_batch: int,
        max_in_flight: int,
    ) -> None:
        self._rpc = rpc
        self._linger = linger
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._pending: list[_AsyncAttempt] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def submit(
        self,
        username: str,
        token: str,
        response: str,
        access: common_pb2.Access.ValueType,
        task: str,
        *,
        deadline: float,
    ) -> asyncio.Future[Verdict]:
        if self._closed:
            raise ClientClosedError()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()
        attempt = _AsyncAttempt(username, token, response, access, task, deadline, future)
        self._pending.append(attempt)
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._timer is None:
            if self._in_flight < self._max_in_flight:
                self._timer = loop.call_soon(self._flush)
            elif not self._max_in_flight:
                self._timer = loop.call_later(self._linger, self._flush)
            # else every slot is taken: the first batch to return sends what waits
        return future

    async def close(self) -> None:
        """Sends what is waiting, then waits for every batch in flight."""
        self._closed = True
        self._flush()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if isinstance(self._rpc, _BatchStream):
            await self._rpc.close()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            for kind, group in _by_kind(batch).items():
                sending = asyncio.get_running_loop().create_task(self._send(kind, group))
                self._in_flight += 1
                self._tasks.add(sending)
                sending.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        # Attempts that waited for a free slot leave now rather than at their linger.
        if self._pending and self._in_flight < self._max_in_flight:
            self._flush()

    async def _send(self, kind: _BatchKind, group: list[_AsyncAttempt]) -> None:
        group = _unexpired(group)
        if not group:
            return
        # The batch may run until its latest caller gives up; each caller waits its own time.
        timeout = max(a.deadline for a in group) - time.monotonic()
        try:
            response = await self._rpc(_batch_request(group, kind), timeout=timeout)
            verdicts = _verdicts(response, len(group))
        except asyncio.CancelledError as err:
            self._fail(group, err)
            raise
        except Exception as err:  # every caller must get an answer
            self._fail(group, err)
            return
        for attempt, verdict in zip(group, verdicts, strict=True):
            if not attempt.future.done():
                attempt.future.set_result(verdict)

    @staticmethod
    def _fail(group: list[_AsyncAttempt], err: BaseException | None) -> None:
        for attempt in group:
            if not attempt.future.done():
                attempt.future.set_exception(_batch_failure(err))


class AsyncSlsClient:
    """The asyncio client: the same calls as :class:`SlsClient`, as coroutines. Create it
    inside the event loop that uses it (a gRPC asyncio channel belongs to one loop); use
    ``async with`` or ``await close()``."""

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
            self._channel = grpc.aio.insecure_channel(self._settings.target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(
                self._settings.target, tls.credentials(), options=options
            )
        verification: VerificationServiceAsyncStub = verification_pb2_grpc.VerificationServiceStub(
            self._channel
        )
        activation: ActivationServiceAsyncStub = activation_pb2_grpc.ActivationServiceStub(
            self._channel
        )
        push: PushServiceAsyncStub = push_pb2_grpc.PushServiceStub(self._channel)
        admin: AdminServiceAsyncStub = admin_pb2_grpc.AdminServiceStub(self._channel)
        policy: PolicyServiceAsyncStub = admin_pb2_grpc.PolicyServiceStub(self._channel)
        portal: PortalServiceAsyncStub = portal_pb2_grpc.PortalServiceStub(self._channel)
        self._stubs: dict[str, Any] = {
            "verification": verification,
            "activation": activation,
            "push": push,
            "admin": admin,
            "policy": policy,
            "portal": portal,
        }
        self._batcher = (
            _TaskBatcher(
                _BatchStream(verification.VerifyStream) if stream else verification.VerifyBatch,
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
        return f"AsyncSlsClient({self._settings.given!r}, {mode}, linger={self._settings.linger})"

    async def __aenter__(self) -> AsyncSlsClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Sends the verify() attempts still waiting, waits for their answers, then closes
        the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._batcher is not None:
            await self._batcher.close()
        await self._channel.close()

    async def wait_ready(self, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self._timeout(timeout))
        except asyncio.TimeoutError:
            raise DeadlineExceededError(
                "connect", grpc.StatusCode.DEADLINE_EXCEEDED, "channel not ready in time"
            ) from None

    def _timeout(self, timeout: float | None) -> float:
        return self._settings.timeout if timeout is None else timeout

    async def _run(self, call: _Call[_T], timeout: float | None) -> _T:
        if self._closed:
            raise ClientClosedError()
        rpc = getattr(self._stubs[call.service], call.method)
        try:
            response = await rpc(call.request, timeout=self._timeout(timeout) + call.extra_timeout)
        except grpc.RpcError as err:
            raise _rpc_error(err, call.method) from err
        return _parse(call.method, call.parse, response)

    # verification

    async def issue_challenge(
        self,
        username: str,
        *,
        device_id: int | None = None,
        purpose: Purpose | None = None,
        task: str | None = None,
        timeout: float | None = None,
    ) -> Challenge:
        call = _issue_challenge_call(username, device_id, purpose, task)
        return await self._run(call, timeout)

    async def verify(
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
        """As :meth:`SlsClient.verify`; concurrent tasks are coalesced."""
        fields = _verify_fields(username, token, response, access)
        wire.to_purpose(purpose)  # a bad one is refused before anything is sent
        task_text = _optional_text("task", task)
        if self._batcher is None or not _batchable(purpose, task_text):
            return await self._run(_verify_call(fields, purpose, task_text), timeout)
        if self._closed:
            raise ClientClosedError()
        wait = self._timeout(timeout)
        future = self._batcher.submit(*fields, task_text, deadline=time.monotonic() + wait)
        try:
            return await asyncio.wait_for(future, wait)
        except DeadlineExceededError:
            raise
        except asyncio.TimeoutError:
            raise _timeout_error() from None

    async def verify_batch(
        self,
        usernames: Sequence[str],
        tokens: Sequence[str | None],
        responses: Sequence[str],
        *,
        access: str = Access.TRADING,
        task: str | None = None,
        timeout: float | None = None,
    ) -> BatchResult:
        call = _verify_batch_call(usernames, tokens, responses, access, task)
        return await self._run(call, timeout)

    async def record_password_failure(
        self, username: str, *, timeout: float | None = None
    ) -> LockoutStatus:
        return await self._run(_record_password_failure_call(username), timeout)

    # activation

    async def create_activation(
        self, username: str, *, timeout: float | None = None
    ) -> ActivationOffer:
        return await self._run(_create_activation_call(username), timeout)

    async def complete_activation(
        self,
        *,
        app_public: bytes,
        push_public: bytes,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
        timeout: float | None = None,
    ) -> Activated:
        call = _complete_activation_call(app_public, push_public, payload, manual_code, pin)
        return await self._run(call, timeout)

    async def send_sms_activation(self, username: str, *, timeout: float | None = None) -> datetime:
        return await self._run(_send_sms_activation_call(username), timeout)

    async def recover(
        self,
        username: str,
        recovery_pin: str,
        *,
        app_public: bytes,
        push_public: bytes,
        timeout: float | None = None,
    ) -> Activated:
        call = _recover_call(username, recovery_pin, app_public, push_public)
        return await self._run(call, timeout)

    # push

    async def create_push(
        self, username: str, *, device_id: int | None = None, timeout: float | None = None
    ) -> PushChallenge:
        return await self._run(_create_push_call(username, device_id), timeout)

    async def list_pending_pushes(
        self, push_public: bytes, *, timeout: float | None = None
    ) -> list[PushChallenge]:
        return await self._run(_list_pending_pushes_call(push_public), timeout)

    async def answer_push(
        self,
        challenge_id: int,
        decision: PushDecision | int,
        signature: bytes,
        *,
        timeout: float | None = None,
    ) -> LoginOutcome:
        return await self._run(_answer_push_call(challenge_id, decision, signature), timeout)

    async def push_status(self, challenge_id: int, *, timeout: float | None = None) -> PushStatus:
        return await self._run(_push_status_call(challenge_id, 0.0), timeout)

    async def wait_push(
        self, challenge_id: int, *, wait: timedelta | float, timeout: float | None = None
    ) -> PushStatus:
        return await self._run(_push_status_call(challenge_id, wait), timeout)

    # client services

    async def create_user(
        self, username: str, identity: Identity | None = None, *, timeout: float | None = None
    ) -> int:
        return await self._run(_create_user_call(username, identity), timeout)

    async def enroll_device(
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
        return await self._run(call, timeout)

    async def import_device(
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
        return await self._run(call, timeout)

    async def list_devices(self, username: str, *, timeout: float | None = None) -> list[Device]:
        return await self._run(_list_devices_call(username), timeout)

    async def choose_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "ChooseDevice", admin_pb2.ChooseDeviceRequest, username=username, device_id=device_id
        )
        await self._run(call, timeout)

    async def share_device(
        self, owner: str, device_id: int, with_username: str, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "ShareDevice",
            admin_pb2.ShareDeviceRequest,
            owner=owner,
            device_id=device_id,
            with_username=with_username,
        )
        await self._run(call, timeout)

    async def approve_sharing(
        self, request_id: int, *, timeout: float | None = None
    ) -> SharingRequest:
        return await self._run(_approve_sharing_call(request_id), timeout)

    async def revoke_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "RevokeDevice", admin_pb2.RevokeDeviceRequest, username=username, device_id=device_id
        )
        await self._run(call, timeout)

    async def reactivate_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "ReactivateDevice",
            admin_pb2.ReactivateDeviceRequest,
            username=username,
            device_id=device_id,
        )
        await self._run(call, timeout)

    async def issue_temporary_passcode(self, username: str, *, timeout: float | None = None) -> str:
        return await self._run(_issue_temporary_passcode_call(username), timeout)

    async def issue_online_card(self, username: str, *, timeout: float | None = None) -> OnlineCard:
        return await self._run(_issue_online_card_call("admin", username), timeout)

    async def set_opt_out(
        self, username: str, opted_out: bool, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "SetOptOut", admin_pb2.SetOptOutRequest, username=username, opted_out=opted_out
        )
        await self._run(call, timeout)

    async def unlock(self, username: str, *, timeout: float | None = None) -> LockoutStatus:
        return await self._run(_unlock_call(username), timeout)

    async def server_status(self, *, timeout: float | None = None) -> ServerStatus:
        return await self._run(_server_status_call(), timeout)

    # the Client Portal (gateway role): the user's own settings

    async def portal_issue_online_card(
        self, username: str, *, timeout: float | None = None
    ) -> OnlineCard:
        return await self._run(_issue_online_card_call("portal", username), timeout)

    async def request_sharing(
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
        call = _request_sharing_call(
            owner, device_id, with_username, token, response, needs_approval
        )
        return await self._run(call, timeout)

    async def cancel_sharing(
        self, request_id: int, *, username: str, timeout: float | None = None
    ) -> SharingRequest:
        return await self._run(_cancel_sharing_call(request_id, username), timeout)

    async def portal_set_opt_out(
        self, username: str, opted_out: bool, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "SetOptOut",
            admin_pb2.SetOptOutRequest,
            service="portal",
            username=username,
            opted_out=opted_out,
        )
        await self._run(call, timeout)

    async def portal_choose_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "ChooseDevice",
            admin_pb2.ChooseDeviceRequest,
            service="portal",
            username=username,
            device_id=device_id,
        )
        await self._run(call, timeout)

    async def list_own_devices(
        self, username: str, *, timeout: float | None = None
    ) -> list[Device]:
        return await self._run(_list_own_devices_call(username), timeout)

    # policy

    async def security_level(self, username: str, *, timeout: float | None = None) -> SecurityLevel:
        return await self._run(_security_level_call(username), timeout)

    async def withdrawal_limits(
        self, username: str, *, timeout: float | None = None
    ) -> WithdrawalLimits:
        return await self._run(_withdrawal_limits_call(username), timeout)

    async def session_length(self, unlock: str, *, timeout: float | None = None) -> timedelta:
        return await self._run(_session_length_call(unlock), timeout)

    async def lockout_status(self, username: str, *, timeout: float | None = None) -> LockoutStatus:
        return await self._run(_lockout_status_call(username), timeout)
