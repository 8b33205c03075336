# ruff: noqa: N802 - gRPC method names are the proto's (VerifyBatch)
"""Thin gRPC servicers: each RPC converts the message (:mod:`sls_core.wire`), calls the
domain (:class:`~sls_core.login.SecureLogin`, its IB Key service) on a worker thread
(:class:`~sls_core.server.domain.Domain`), and converts the answer back. Errors become
status codes in one place (:mod:`sls_core.server.status`); single Verify calls are
coalesced into domain batches by :mod:`sls_core.server.coalescing`.

What stays here is the audit trail and the decision metrics of each call. A wrong answer
is never an error: it is an outcome. Batches answer per item, in order, and one bad item
never fails its neighbours. No status detail, log line or audit line carries a secret,
response, code, PIN, passcode or token.

A batch's hot path is columnar: repeated fields become lists in C
(``list(request.usernames)``), the domain works on numpy arrays, and the outcomes go back
with one ``extend`` (:func:`sls_core.wire.to_batch_result`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import grpc.aio

from sls_core import __version__, cardprint, wire
from sls_core.api.v1 import (
    activation_pb2,
    activation_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    portal_pb2,
    portal_pb2_grpc,
    push_pb2,
    push_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from sls_core.errors import InvalidInputError
from sls_core.login.issuing import check_task
from sls_core.server.audit import AuditTrail
from sls_core.server.coalescing import Attempt, SingleVerifier
from sls_core.server.domain import Domain
from sls_core.server.interceptors import Caller, current_caller
from sls_core.server.status import (
    UNAVAILABLE_RETRY,
    Context,
    RefusedError,
    abort_for,
    check_request,
    rpc,
)
from sls_core.store import SqliteStore
from sls_core.store.postgres import PostgresStore
from sls_core.values import (
    Access,
    ActivationError,
    BatchResult,
    LockoutStatus,
    LoginOutcome,
    Purpose,
    PushStatus,
    SharingError,
    SharingRequest,
    Verdict,
)

__all__ = [
    "ActivationServicer",
    "AdminServicer",
    "PolicyServicer",
    "PortalServicer",
    "PushServicer",
    "VerificationServicer",
    "audit_or_unavailable",
]

T = TypeVar("T")

#: How often a waiting GetPushStatus looks at the store for an answer another process took.
_PUSH_POLL = 0.1
#: The audit event of a verification batch, by what its answers are for (any other
#: purpose: its own name in lower case).
_VERIFY_EVENTS = {
    Purpose.LOGIN: "verify",
    Purpose.ACTIVATION: "activate",
    Purpose.REACTIVATION: "reactivate",
    Purpose.STEP_UP: "step_up",
}


# -- verification -------------------------------------------------------------------------


@contextlib.contextmanager
def audit_or_unavailable() -> Iterator[None]:
    """An audit write inside a store transaction: if the trail cannot be written, the call
    is UNAVAILABLE and the transaction rolls back (nothing applied, a retry is safe)."""
    try:
        yield
    except OSError:
        raise RefusedError(
            grpc.StatusCode.UNAVAILABLE,
            "the audit trail cannot be written: nothing was applied",
            "AUDIT_UNAVAILABLE",
            retry_after=UNAVAILABLE_RETRY,
        ) from None


class VerificationServicer(verification_pb2_grpc.VerificationServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self.d = domain
        self._singles = SingleVerifier(domain, self._verify)

    @rpc
    async def IssueChallenge(
        self, request: verification_pb2.IssueChallengeRequest, context: Context
    ) -> verification_pb2.IssueChallengeResponse:
        task = wire.from_text(request.task)
        challenge = await self.d.run(
            context,
            functools.partial(
                self.d.sls.issue_challenge,
                request.username,
                device_id=wire.from_id(request.device_id),
                purpose=wire.from_purpose(request.purpose, task=task),
                task=task,
            ),
        )
        return wire.to_challenge(challenge)

    @rpc
    async def Verify(
        self, request: verification_pb2.VerifyRequest, context: Context
    ) -> verification_pb2.VerifyResponse:
        task = wire.from_text(request.task)
        purpose = wire.from_purpose(request.purpose, task=task)
        # Refused on arrival: a call that cannot be verified never joins others' batch.
        check_task(purpose, task)
        attempt = Attempt(
            username=request.username,
            token=wire.from_text(request.token),
            response=request.response,
            access=wire.from_access(request.access),
            purpose=purpose,
            task=task,
            caller=current_caller(),
        )
        outcome, device_id = await self._singles.verify(context, attempt)
        return wire.to_verdict(Verdict(outcome, wire.from_id(device_id)))

    def _verify(
        self,
        method: str,
        caller: Caller | list[Caller],
        usernames: list[str],
        tokens: list[str | None],
        responses: list[str],
        access: Access,
        purpose: Purpose,
        task: str | None,
        *,
        wait: bool = True,
    ) -> BatchResult:
        """The domain's batch, then its audit lines and metrics; on a worker thread, or
        on the loop with ``wait=False`` (see :meth:`Domain.run_batch`). ``caller`` is one
        per item when single calls were coalesced."""
        event = _VERIFY_EVENTS.get(purpose) or purpose.name.lower()

        def audit(result: BatchResult) -> None:
            # Inside the store transaction, before it commits: a verdict the trail cannot
            # hold is never applied (the transaction rolls back, the caller may retry).
            with audit_or_unavailable():
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

        result = self.d.sls.verify_batch(
            usernames,
            tokens,
            responses,
            access=access,
            purpose=purpose,
            task=task,
            wait=wait,
            before_commit=audit,
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
        task = wire.from_text(request.task)
        result = self._verify(
            method,
            caller,
            list(request.usernames),
            wire.from_tokens(request.tokens),
            list(request.responses),
            wire.from_access(request.access),
            wire.purpose_of_batch(task),
            task,
            wait=wait,
        )
        return wire.to_batch_result(result)

    def _check_batch(self, request: verification_pb2.VerifyBatchRequest) -> None:
        n = len(request.usernames)
        if n > self.d.max_batch_items:
            raise RefusedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"usernames: at most {self.d.max_batch_items} items per batch (got {n})",
                "BATCH_TOO_LARGE",
            )
        if len(request.tokens) != n or len(request.responses) != n:
            raise InvalidInputError(
                "tokens", "usernames, tokens and responses must have the same length"
            )
        wire.from_access(request.access)

    @rpc
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
        after the batch in hand (the gateway reconnects to another process); a stream
        waiting for its next message ends at once."""
        caller = current_caller()
        stopping = self.d.stopping
        stream = asyncio.current_task()
        reading = False

        def end_if_reading(_: object) -> None:
            if reading and stream is not None:
                stream.cancel()

        # One watcher per stream, not per message: a task and an ``asyncio.wait`` around
        # every read cost each message two extra turns of a busy event loop.
        stop = asyncio.ensure_future(stopping.wait())
        stop.add_done_callback(end_if_reading)
        try:
            while not stopping.is_set():
                reading = True
                try:
                    request = await context.read()
                except asyncio.CancelledError:
                    if stopping.is_set() and stream is not None and stream.cancelling():
                        stream.uncancel()  # ended by the shutdown, not by the caller
                        return
                    raise
                finally:
                    reading = False
                if request is grpc.aio.EOF:
                    return
                try:
                    check_request(request)
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
                    await abort_for(e, context, "VerifyStream")
        finally:
            stop.cancel()

    @rpc
    async def RecordPasswordFailure(
        self, request: verification_pb2.RecordPasswordFailureRequest, context: Context
    ) -> verification_pb2.RecordPasswordFailureResponse:
        caller = current_caller()

        def audit(outcome: LoginOutcome, status: LockoutStatus) -> None:
            with audit_or_unavailable():  # before the commit: nothing unaudited counts
                self.d.audit.record(
                    "password_failure",
                    caller.identity,
                    caller.request_id,
                    username=request.username,
                    outcome=outcome.name,
                    consecutive_failures=status.consecutive_failures,
                )

        def record() -> LockoutStatus:
            return self.d.sls.record_password_failure(request.username, before_commit=audit)

        status = await self.d.run(context, record)
        return wire.to_lockout_status(status, verification_pb2.RecordPasswordFailureResponse)


# -- activation ---------------------------------------------------------------------------


class ActivationServicer(activation_pb2_grpc.ActivationServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self.d = domain

    @rpc
    async def CreateActivation(
        self, request: activation_pb2.CreateActivationRequest, context: Context
    ) -> activation_pb2.CreateActivationResponse:
        def create() -> activation_pb2.CreateActivationResponse:
            # Rendering the QR code is work too: it stays on the worker thread.
            return wire.to_activation_offer(self.d.sls.ibkey.create_activation(request.username))

        return await self.d.run(context, create)

    @rpc
    async def CompleteActivation(
        self, request: activation_pb2.CompleteActivationRequest, context: Context
    ) -> activation_pb2.CompleteActivationResponse:
        which = request.WhichOneof("code")
        if which is None:
            raise InvalidInputError("code", "give payload or manual_code")
        caller = current_caller()

        def audit_enrolled(username: str, device_id: int) -> None:
            with audit_or_unavailable():  # before the commit: no unaudited enrollment
                self.d.audit.record(
                    "activation",
                    caller.identity,
                    caller.request_id,
                    username=username,
                    device_id=device_id,
                    outcome="OK",
                )

        audited_refusal: list[ActivationError] = []

        def audit_refused(refusal: ActivationError) -> None:
            with audit_or_unavailable():  # before the commit: no unaudited used-up offer
                self.d.audit.record(
                    "activation", caller.identity, caller.request_id, outcome=refusal.reason
                )
            audited_refusal.append(refusal)

        def complete() -> activation_pb2.CompleteActivationResponse:
            try:
                done = self.d.sls.ibkey.complete_activation(
                    app_public=request.app_public,
                    push_public=request.push_public,
                    payload=request.payload if which == "payload" else None,
                    manual_code=request.manual_code if which == "manual_code" else None,
                    pin=wire.from_text(request.pin),
                    before_commit=audit_enrolled,
                    before_refusal_commit=audit_refused,
                )
            except ActivationError as e:
                if e not in audited_refusal:
                    # Refused before any transaction (a bad or expired payload): nothing
                    # was committed, so its line follows the refusal.
                    with audit_or_unavailable():
                        self.d.audit.record(
                            "activation", caller.identity, caller.request_id, outcome=e.reason
                        )
                raise
            return wire.to_activated(done)

        return await self.d.run(context, complete)

    @rpc
    async def Recover(
        self, request: activation_pb2.RecoverRequest, context: Context
    ) -> activation_pb2.CompleteActivationResponse:
        caller = current_caller()

        def audit(outcome: LoginOutcome, device_id: int | None) -> None:
            # Before the commit: a re-keyed app or a counted wrong PIN is always audited.
            with audit_or_unavailable():
                self.d.audit.record(
                    "recovery",
                    caller.identity,
                    caller.request_id,
                    username=request.username,
                    device_id=device_id,
                    outcome=outcome.name,
                )

        def recover() -> activation_pb2.CompleteActivationResponse:
            done = self.d.sls.ibkey.recover(
                request.username,
                request.recovery_pin,
                app_public=request.app_public,
                push_public=request.push_public,
                before_commit=audit,
            )
            return wire.to_activated(done)

        return await self.d.run(context, recover)

    @rpc
    async def SendSmsActivation(
        self, request: activation_pb2.SendSmsActivationRequest, context: Context
    ) -> activation_pb2.SendSmsActivationResponse:
        expires = await self.d.run(context, self.d.sls.ibkey.send_sms_activation, request.username)
        return activation_pb2.SendSmsActivationResponse(expires_at=wire.to_time(expires))


# -- push ---------------------------------------------------------------------------------


class PushServicer(push_pb2_grpc.PushServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self.d = domain
        #: Gateways waiting in GetPushStatus, woken when this process records the answer.
        self._waiters: dict[int, asyncio.Event] = {}

    @rpc
    async def CreatePush(
        self, request: push_pb2.CreatePushRequest, context: Context
    ) -> push_pb2.CreatePushResponse:
        push = await self.d.run(
            context,
            functools.partial(
                self.d.sls.ibkey.create_push,
                request.username,
                device_id=wire.from_id(request.device_id),
            ),
        )
        return push_pb2.CreatePushResponse(push=wire.to_push(push))

    @rpc
    async def ListPendingPushes(
        self, request: push_pb2.ListPendingPushesRequest, context: Context
    ) -> push_pb2.ListPendingPushesResponse:
        if len(request.push_public) != 32:
            raise InvalidInputError("push_public", "must be 32 bytes")
        pushes = await self.d.run(context, self.d.sls.ibkey.pending_pushes, request.push_public)
        return push_pb2.ListPendingPushesResponse(pushes=[wire.to_push(p) for p in pushes])

    @rpc
    async def AnswerPush(
        self, request: push_pb2.AnswerPushRequest, context: Context
    ) -> push_pb2.AnswerPushResponse:
        caller = current_caller()

        def audit(outcome: LoginOutcome) -> None:
            # Inside the transaction, before it commits: no decision the trail lacks.
            with audit_or_unavailable():
                self.d.audit.record(
                    "push_answer",
                    caller.identity,
                    caller.request_id,
                    outcome=outcome.name,
                    challenge_id=request.challenge_id,
                )

        def answer() -> LoginOutcome:
            outcome = self.d.sls.ibkey.answer_push(
                request.challenge_id,
                wire.from_decision(request.decision),
                request.signature,
                before_commit=audit,
            )
            self.d.metrics.outcome("AnswerPush", outcome)
            return outcome

        outcome = await self.d.run(context, answer)
        waiter = self._waiters.get(request.challenge_id)
        if waiter is not None:
            waiter.set()
        return push_pb2.AnswerPushResponse(outcome=wire.to_outcome(outcome))

    @rpc
    async def GetPushStatus(
        self, request: push_pb2.GetPushStatusRequest, context: Context
    ) -> push_pb2.GetPushStatusResponse:
        wait = wire.seconds_of(request.wait, field_name="wait")
        if wait < 0:
            raise InvalidInputError("wait", "must be 0 or more")
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
                if status != PushStatus.PENDING or left <= 0 or self.d.stopping.is_set():
                    break
                waiter.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter.wait(), timeout=min(_PUSH_POLL, left))
        finally:
            if self._waiters.get(cid) is waiter:
                del self._waiters[cid]
        return push_pb2.GetPushStatusResponse(status=wire.to_push_status(status))


# -- client services, the portal and policy -----------------------------------------------


class _ActionAudit:
    """The one audit line of a client-services or portal action, ``"<prefix>.<Method>"``
    with the caller, the user and the device. The servicer hands it to the domain as the
    action's ``before_commit`` hook, so the line is written inside the transaction: an
    unwritable trail applies nothing (UNAVAILABLE). Called with the new device's id when
    the action makes one; :meth:`sharing` for a sharing request or its refusal."""

    def __init__(
        self,
        trail: AuditTrail,
        event: str,
        caller: Caller,
        username: str | None,
        device_id: int | None,
    ) -> None:
        self._trail = trail
        self._event = event
        self._caller = caller
        self._username = username
        self._device_id = device_id
        self.written = False

    def __call__(self, device_id: int | None = None, **details: Any) -> None:
        device_id = self._device_id if device_id is None else device_id
        self._write(self._username, device_id, "OK", **details)

    def sharing(self, decided: SharingRequest | SharingError) -> None:
        """A sharing request as decided (under its requester), or a refusal that still
        commits something (the owner's failed proof counts as an attempt)."""
        if isinstance(decided, SharingError):
            self._write(self._username, self._device_id, decided.reason)
        else:
            self._write(decided.requester, decided.device_id, "OK", **_sharing_details(decided))

    def refused(self, error: SharingError) -> None:
        """A sharing refusal that applied nothing (a rule, a request already open or no
        longer pending), after the rollback; unless the hook wrote it already (a failed
        proof, which commits the owner's failed attempt)."""
        if not self.written:
            self._write(self._username, self._device_id, error.reason)

    def _write(
        self, username: str | None, device_id: int | None, outcome: str, **details: Any
    ) -> None:
        with audit_or_unavailable():
            self._trail.record(
                self._event,
                self._caller.identity,
                self._caller.request_id,
                username=username,
                device_id=device_id,
                outcome=outcome,
                **details,
            )
        self.written = True


class _AuditedActions:
    """What AdminService and PortalService share: each action runs on a worker thread and
    writes its audit line (:class:`_ActionAudit`) before its transaction commits."""

    audit_prefix: str

    def __init__(self, domain: Domain) -> None:
        self.d = domain

    async def _call(
        self,
        context: Context,
        method: str,
        username: str | None,
        fn: Callable[[_ActionAudit], T],
        device_id: int | None = None,
    ) -> T:
        """``fn(audit)`` on a worker thread; ``fn`` passes ``audit`` to the domain as its
        ``before_commit``. ``username`` and ``device_id``: who and which device the action
        is about, unless the domain tells the hook (a new device, a sharing request)."""
        event = f"{self.audit_prefix}.{method}"
        audit = _ActionAudit(self.d.audit, event, current_caller(), username, device_id)

        def job() -> T:
            try:
                return fn(audit)
            except SharingError as e:
                audit.refused(e)
                raise

        return await self.d.run(context, job)

    async def _issue_online_card(
        self, context: Context, username: str
    ) -> admin_pb2.IssueOnlineCardResponse:
        def issue(audit: _ActionAudit) -> admin_pb2.IssueOnlineCardResponse:
            device, card = self.d.sls.issue_online_card(username, before_commit=audit)
            # Rendering the card is work too: it stays on the worker thread.
            printed = wire.OnlineCard(
                device, cardprint.render_png(card), cardprint.render_pdf(card)
            )
            return wire.to_online_card(printed)

        return await self._call(context, "IssueOnlineCard", username, issue)

    async def _set_opt_out(self, context: Context, request: admin_pb2.SetOptOutRequest) -> None:
        opted_out = request.opted_out
        await self._call(
            context,
            "SetOptOut",
            request.username,
            lambda audit: self.d.sls.set_opted_out(
                request.username, opted_out, before_commit=lambda: audit(opted_out=opted_out)
            ),
        )

    async def _choose_device(
        self, context: Context, request: admin_pb2.ChooseDeviceRequest
    ) -> None:
        await self._call(
            context,
            "ChooseDevice",
            request.username,
            lambda audit: self.d.sls.choose_device(
                request.username, request.device_id, before_commit=audit
            ),
            request.device_id,
        )

    async def _decide_sharing(
        self,
        context: Context,
        method: str,
        decide: Callable[[Callable[[SharingRequest], None]], SharingRequest],
    ) -> common_pb2.SharingRequest:
        """Approves or cancels a sharing request (``decide(before_commit)``), audited under
        its requester."""
        sharing = await self._call(context, method, None, lambda audit: decide(audit.sharing))
        return wire.to_sharing_request(sharing)


def _sharing_details(sharing: SharingRequest) -> dict[str, Any]:
    """A sharing request's audit fields besides the requester and the device."""
    return {"owner": sharing.owner, "sharing_id": sharing.id, "state": sharing.state.value}


class AdminServicer(_AuditedActions, admin_pb2_grpc.AdminServiceServicer):
    """Client services (admin role), audited as ``admin.<Method>``; GetServerStatus for
    operators (a read: not audited). ``serving`` is the server's health (SlsServer's);
    without it, serving means not shutting down and the audit trail writable."""

    audit_prefix = "admin"

    def __init__(self, domain: Domain, *, serving: Callable[[], bool] | None = None) -> None:
        super().__init__(domain)
        self._serving = serving
        self._started_at = datetime.now(UTC)
        self._started = time.monotonic()

    @rpc
    async def CreateUser(
        self, request: admin_pb2.CreateUserRequest, context: Context
    ) -> admin_pb2.CreateUserResponse:
        identity = wire.from_identity(request.identity)
        user = await self._call(
            context,
            "CreateUser",
            request.username,
            lambda audit: self.d.sls.create_user(request.username, identity, before_commit=audit),
        )
        return admin_pb2.CreateUserResponse(user_id=user.id)

    @rpc
    async def EnrollDevice(
        self, request: admin_pb2.EnrollDeviceRequest, context: Context
    ) -> admin_pb2.EnrollDeviceResponse:
        device_type, options = wire.from_enrollment(request)
        device = await self._call(
            context,
            "EnrollDevice",
            request.username,
            lambda audit: self.d.sls.enroll_device(
                request.username, device_type, **options, before_commit=audit
            ),
        )
        return admin_pb2.EnrollDeviceResponse(device=wire.to_device(device))

    @rpc
    async def ImportDevice(
        self, request: admin_pb2.ImportDeviceRequest, context: Context
    ) -> admin_pb2.ImportDeviceResponse:
        device_type, options = wire.from_enrollment(request)
        device = await self._call(
            context,
            "ImportDevice",
            request.username,
            lambda audit: self.d.sls.import_device(
                request.username, device_type, **options, before_commit=audit
            ),
        )
        return admin_pb2.ImportDeviceResponse(device=wire.to_device(device))

    @rpc
    async def ListDevices(
        self, request: admin_pb2.ListDevicesRequest, context: Context
    ) -> admin_pb2.ListDevicesResponse:
        devices = await self.d.run(context, self.d.sls.devices, request.username)
        return admin_pb2.ListDevicesResponse(devices=[wire.to_device(d) for d in devices])

    @rpc
    async def ChooseDevice(
        self, request: admin_pb2.ChooseDeviceRequest, context: Context
    ) -> admin_pb2.ChooseDeviceResponse:
        await self._choose_device(context, request)
        return admin_pb2.ChooseDeviceResponse()

    @rpc
    async def ShareDevice(
        self, request: admin_pb2.ShareDeviceRequest, context: Context
    ) -> admin_pb2.ShareDeviceResponse:
        await self._call(
            context,
            "ShareDevice",
            request.with_username,
            lambda audit: self.d.sls.share_device(
                request.owner, request.device_id, request.with_username, before_commit=audit
            ),
            request.device_id,
        )
        return admin_pb2.ShareDeviceResponse()

    @rpc
    async def ApproveSharing(
        self, request: admin_pb2.ApproveSharingRequest, context: Context
    ) -> admin_pb2.ApproveSharingResponse:
        sharing = await self._decide_sharing(
            context,
            "ApproveSharing",
            lambda before_commit: self.d.sls.approve_sharing(
                request.request_id, before_commit=before_commit
            ),
        )
        return admin_pb2.ApproveSharingResponse(sharing=sharing)

    @rpc
    async def RevokeDevice(
        self, request: admin_pb2.RevokeDeviceRequest, context: Context
    ) -> admin_pb2.RevokeDeviceResponse:
        await self._call(
            context,
            "RevokeDevice",
            request.username,
            lambda audit: self.d.sls.revoke_device(
                request.username, request.device_id, before_commit=audit
            ),
            request.device_id,
        )
        return admin_pb2.RevokeDeviceResponse()

    @rpc
    async def ReactivateDevice(
        self, request: admin_pb2.ReactivateDeviceRequest, context: Context
    ) -> admin_pb2.ReactivateDeviceResponse:
        await self._call(
            context,
            "ReactivateDevice",
            request.username,
            lambda audit: self.d.sls.reactivate_device(
                request.username, request.device_id, before_commit=audit
            ),
            request.device_id,
        )
        return admin_pb2.ReactivateDeviceResponse()

    @rpc
    async def IssueTemporaryPasscode(
        self, request: admin_pb2.IssueTemporaryPasscodeRequest, context: Context
    ) -> admin_pb2.IssueTemporaryPasscodeResponse:
        passcode = await self._call(
            context,
            "IssueTemporaryPasscode",
            request.username,
            lambda audit: self.d.sls.issue_temporary_passcode(
                request.username, before_commit=audit
            ),
        )
        return admin_pb2.IssueTemporaryPasscodeResponse(passcode=passcode)

    @rpc
    async def IssueOnlineCard(
        self, request: admin_pb2.IssueOnlineCardRequest, context: Context
    ) -> admin_pb2.IssueOnlineCardResponse:
        return await self._issue_online_card(context, request.username)

    @rpc
    async def SetOptOut(
        self, request: admin_pb2.SetOptOutRequest, context: Context
    ) -> admin_pb2.SetOptOutResponse:
        await self._set_opt_out(context, request)
        return admin_pb2.SetOptOutResponse()

    @rpc
    async def Unlock(
        self, request: admin_pb2.UnlockRequest, context: Context
    ) -> admin_pb2.UnlockResponse:
        by = current_caller().identity  # the audit line names the same caller
        status = await self._call(
            context,
            "Unlock",
            request.username,
            lambda audit: self.d.sls.unlock(request.username, by=by, before_commit=audit),
        )
        return wire.to_lockout_status(status, admin_pb2.UnlockResponse)

    @rpc
    async def GetServerStatus(
        self, request: admin_pb2.GetServerStatusRequest, context: Context
    ) -> admin_pb2.GetServerStatusResponse:
        store = self.d.sls.store
        if not isinstance(store, SqliteStore | PostgresStore):  # pragma: no cover
            raise TypeError(f"no operator status for {type(store).__name__}")

        def read() -> wire.ServerStatus:
            counts = store.row_counts()  # what `python -m sls_core.admin status` prints
            return wire.ServerStatus(
                version=__version__,
                store_backend="sqlite" if isinstance(store, SqliteStore) else "postgresql",
                schema_version=store.schema_version,
                active_key_id=store.active_key_id,
                key_ids_in_use=store.key_ids_in_use(),
                users=counts["users"],
                devices=counts["devices"],
                consumed_challenges=counts["consumed"],
                started_at=self._started_at,
                uptime=timedelta(seconds=time.monotonic() - self._started),
                serving=self._is_serving(),
            )

        return wire.to_server_status(await self.d.run(context, read))

    def _is_serving(self) -> bool:
        if self._serving is not None:
            return self._serving()
        return not self.d.stopping.is_set() and self.d.audit.healthy


class PortalServicer(_AuditedActions, portal_pb2_grpc.PortalServiceServicer):
    """The Client Portal's self-service (gateway role), audited as ``portal.<Method>``."""

    audit_prefix = "portal"

    @rpc
    async def IssueOnlineCard(
        self, request: admin_pb2.IssueOnlineCardRequest, context: Context
    ) -> admin_pb2.IssueOnlineCardResponse:
        return await self._issue_online_card(context, request.username)

    @rpc
    async def RequestSharing(
        self, request: portal_pb2.RequestSharingRequest, context: Context
    ) -> portal_pb2.RequestSharingResponse:
        sharing = await self._call(
            context,
            "RequestSharing",
            request.with_username,
            lambda audit: self.d.sls.request_sharing(
                request.owner,
                request.device_id,
                request.with_username,
                token=request.token,
                response=request.response,
                needs_approval=request.needs_approval,
                before_commit=audit.sharing,
            ),
            request.device_id,
        )
        return portal_pb2.RequestSharingResponse(sharing=wire.to_sharing_request(sharing))

    @rpc
    async def CancelSharing(
        self, request: portal_pb2.CancelSharingRequest, context: Context
    ) -> portal_pb2.CancelSharingResponse:
        username = wire.from_text(request.username)
        if username is None:
            raise InvalidInputError("username", "name the owner or requester who cancels")
        sharing = await self._decide_sharing(
            context,
            "CancelSharing",
            lambda before_commit: self.d.sls.cancel_sharing(
                request.request_id, username=username, before_commit=before_commit
            ),
        )
        return portal_pb2.CancelSharingResponse(sharing=sharing)

    @rpc
    async def SetOptOut(
        self, request: admin_pb2.SetOptOutRequest, context: Context
    ) -> admin_pb2.SetOptOutResponse:
        await self._set_opt_out(context, request)
        return admin_pb2.SetOptOutResponse()

    @rpc
    async def ChooseDevice(
        self, request: admin_pb2.ChooseDeviceRequest, context: Context
    ) -> admin_pb2.ChooseDeviceResponse:
        await self._choose_device(context, request)
        return admin_pb2.ChooseDeviceResponse()

    @rpc
    async def ListOwnDevices(
        self, request: portal_pb2.ListOwnDevicesRequest, context: Context
    ) -> portal_pb2.ListOwnDevicesResponse:
        devices = await self.d.run(context, self.d.sls.devices, request.username)
        return portal_pb2.ListOwnDevicesResponse(devices=[wire.to_device(d) for d in devices])


class PolicyServicer(admin_pb2_grpc.PolicyServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self.d = domain

    @rpc
    async def GetSecurityLevel(
        self, request: admin_pb2.GetSecurityLevelRequest, context: Context
    ) -> admin_pb2.GetSecurityLevelResponse:
        devices = await self.d.run(context, self.d.sls.active_devices, request.username)
        strongest = min(devices, key=lambda d: d.security_level, default=None)
        if strongest is None:
            return wire.to_security_level(wire.SecurityLevel(0, None))
        return wire.to_security_level(wire.SecurityLevel(strongest.security_level, strongest.type))

    @rpc
    async def GetWithdrawalLimits(
        self, request: admin_pb2.GetWithdrawalLimitsRequest, context: Context
    ) -> admin_pb2.GetWithdrawalLimitsResponse:
        limits = await self.d.run(context, self.d.sls.withdrawal_limits, request.username)
        return wire.to_withdrawal_limits(limits)

    @rpc
    async def GetSessionLength(
        self, request: admin_pb2.GetSessionLengthRequest, context: Context
    ) -> admin_pb2.GetSessionLengthResponse:
        return admin_pb2.GetSessionLengthResponse(
            session_length=wire.to_duration(
                self.d.sls.trading_session_length(request.unlock), field_name="session_length"
            )
        )

    @rpc
    async def GetLockoutStatus(
        self, request: admin_pb2.GetLockoutStatusRequest, context: Context
    ) -> admin_pb2.GetLockoutStatusResponse:
        status = await self.d.run(context, self.d.sls.lockout_status, request.username)
        return wire.to_lockout_status(status, admin_pb2.GetLockoutStatusResponse)
