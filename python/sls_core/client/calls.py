"""The unary calls both clients make: each checks the caller's values, builds its request
(:mod:`sls_core.wire`) and says how to read the answer; and what a coalesced verify()
batch is made of. No check here quotes a value it refuses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from sls_core import wire
from sls_core.api.v1 import (
    activation_pb2,
    admin_pb2,
    common_pb2,
    portal_pb2,
    push_pb2,
    verification_pb2,
)
from sls_core.client.errors import (
    ClientClosedError,
    ProtocolError,
    SlsRpcError,
    _rpc_error,
    _timeout_error,
)
from sls_core.errors import InvalidInputError, InvalidInputTypeError, SlsError
from sls_core.values import (
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

# --- checks of what the caller passes --------------------------------------------------------

_T = TypeVar("_T")
#: A verify() attempt's checked fields: username, token ("" for none), response, access.
_VerifyFields = tuple[str, str, str, "common_pb2.Access.ValueType"]

_message = wire.build_message


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInputTypeError(name, "must be a str")
    return value


def _optional_text(name: str, value: str | None) -> str:
    """``None`` (not given) travels as ``""``."""
    return wire.to_text(None if value is None else _text(name, value))


def _optional_id(name: str, value: int | None) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidInputError(name, "must be a positive int or None")
    return value


def _parse(method: str, parse: Callable[[Any], _T], response: Any) -> _T:
    """The answer as Python values; one the converter cannot read is the server's fault
    (a :class:`ProtocolError`), not the caller's bad input."""
    try:
        return parse(response)
    except InvalidInputError as err:
        raise ProtocolError(f"{method}: {err}") from None


def _none(_response: Message) -> None:
    return None


# --- calls, shared by both clients --------------------------------------------------------


@dataclass(frozen=True)
class _Call(Generic[_T]):
    """One unary call: which stub and method, the request, how to read the answer."""

    service: str
    method: str
    request: Message
    parse: Callable[[Any], _T]
    extra_timeout: float = 0.0


def _issue_challenge_call(
    username: str, device_id: int | None, purpose: Purpose | None, task: str | None
) -> _Call[Challenge]:
    request = _message(
        verification_pb2.IssueChallengeRequest,
        username=_text("username", username),
        device_id=_optional_id("device_id", device_id),
        purpose=wire.to_purpose(purpose),
        task=_optional_text("task", task),
    )
    return _Call("verification", "IssueChallenge", request, wire.from_challenge)


def _verify_fields(username: str, token: str | None, response: str, access: str) -> _VerifyFields:
    """Checked before an attempt joins a batch, so a bad one never fails its neighbours."""
    return (
        _text("username", username),
        "" if token is None else _text("token", token),
        _text("response", response),
        wire.to_access(access),
    )


def _batchable(purpose: Purpose | None, task: str) -> bool:
    """A batch carries no purpose: only the answers a batch stands for (logins, or
    step-ups for its task) may join one; the others go as a plain Verify."""
    return purpose is None or Purpose(purpose) is wire.purpose_of_batch(wire.from_text(task))


def _verify_call(fields: _VerifyFields, purpose: Purpose | None, task: str) -> _Call[Verdict]:
    username, token, response, access = fields
    request = verification_pb2.VerifyRequest(
        username=username, token=token, response=response, access=access, task=task
    )
    if purpose is not None:
        request.purpose = wire.to_purpose(purpose)
    return _Call("verification", "Verify", request, wire.from_verdict)


def _column(name: str, values: Sequence[str | None], count: int | None) -> list[str]:
    if isinstance(values, str | bytes):
        raise InvalidInputTypeError(name, "must be a sequence of str, not a single value")
    column: list[Any] = list(values)
    if None in column:  # a temporary passcode comes without a token
        column = ["" if v is None else v for v in column]
    if count is not None and len(column) != count:
        raise InvalidInputError(name, "must have one entry per username")
    # One pass in C over the types (a str subclass passes, as protobuf takes it).
    if not set(map(type, column)) <= {str} and not all(isinstance(v, str) for v in column):
        raise InvalidInputTypeError(name, "every entry must be a str")
    return column


def _verify_batch_call(
    usernames: Sequence[str],
    tokens: Sequence[str | None],
    responses: Sequence[str],
    access: str,
    task: str | None,
) -> _Call[BatchResult]:
    names = _column("usernames", usernames, None)
    request = verification_pb2.VerifyBatchRequest(
        usernames=names,
        tokens=_column("tokens", tokens, len(names)),
        responses=_column("responses", responses, len(names)),
        access=wire.to_access(access),
        task=_optional_text("task", task),
    )
    parse = partial(wire.from_batch_result, count=len(names))
    return _Call("verification", "VerifyBatch", request, parse)


def _record_password_failure_call(username: str) -> _Call[LockoutStatus]:
    request = _message(verification_pb2.RecordPasswordFailureRequest, username=username)
    return _Call("verification", "RecordPasswordFailure", request, wire.from_lockout_status)


def _create_activation_call(username: str) -> _Call[ActivationOffer]:
    request = _message(activation_pb2.CreateActivationRequest, username=username)
    return _Call("activation", "CreateActivation", request, wire.from_activation_offer)


def _complete_activation_call(
    app_public: bytes,
    push_public: bytes,
    payload: str | None,
    manual_code: str | None,
    pin: str | None,
) -> _Call[Activated]:
    if (payload is None) == (manual_code is None):
        raise InvalidInputError("payload", "give exactly one of payload and manual_code")
    code = (
        {"payload": _text("payload", payload)}
        if payload is not None
        else {"manual_code": _text("manual_code", manual_code)}
    )
    request = _message(
        activation_pb2.CompleteActivationRequest,
        app_public=app_public,
        push_public=push_public,
        pin=_optional_text("pin", pin),
        **code,
    )
    return _Call("activation", "CompleteActivation", request, wire.from_activated)


def _recover_call(
    username: str, recovery_pin: str, app_public: bytes, push_public: bytes
) -> _Call[Activated]:
    request = _message(
        activation_pb2.RecoverRequest,
        username=username,
        recovery_pin=_text("recovery_pin", recovery_pin),
        app_public=app_public,
        push_public=push_public,
    )
    return _Call("activation", "Recover", request, wire.from_activated)


def _send_sms_activation_call(username: str) -> _Call[datetime]:
    request = _message(activation_pb2.SendSmsActivationRequest, username=username)
    return _Call(
        "activation", "SendSmsActivation", request, lambda r: wire.from_datetime(r, "expires_at")
    )


def _create_push_call(username: str, device_id: int | None) -> _Call[PushChallenge]:
    request = _message(
        push_pb2.CreatePushRequest,
        username=username,
        device_id=_optional_id("device_id", device_id),
    )
    return _Call("push", "CreatePush", request, lambda r: wire.from_push(r.push))


def _list_pending_pushes_call(push_public: bytes) -> _Call[list[PushChallenge]]:
    request = _message(push_pb2.ListPendingPushesRequest, push_public=push_public)
    return _Call(
        "push", "ListPendingPushes", request, lambda r: [wire.from_push(p) for p in r.pushes]
    )


def _answer_push_call(
    challenge_id: int, decision: PushDecision | int, signature: bytes
) -> _Call[LoginOutcome]:
    request = _message(
        push_pb2.AnswerPushRequest,
        challenge_id=challenge_id,
        decision=wire.to_decision(decision),
        signature=signature,
    )
    return _Call("push", "AnswerPush", request, lambda r: wire.from_outcome(r.outcome))


def _push_status_call(challenge_id: int, wait: timedelta | float) -> _Call[PushStatus]:
    """``wait``: a ``timedelta`` or seconds, 0 for the status now."""
    span = wire.to_duration(wait, field_name="wait")
    seconds = wire.seconds_of(span, field_name="wait")
    if seconds < 0:
        raise InvalidInputError("wait", "must be 0 or more")
    request = _message(push_pb2.GetPushStatusRequest, challenge_id=challenge_id, wait=span)
    return _Call(
        "push",
        "GetPushStatus",
        request,
        lambda r: wire.from_push_status(r.status),
        extra_timeout=seconds,
    )


def _create_user_call(username: str, identity: Identity | None) -> _Call[int]:
    if identity is not None and not isinstance(identity, Identity):
        raise InvalidInputTypeError("identity", "must be a values.Identity or None")
    request = _message(
        admin_pb2.CreateUserRequest,
        username=username,
        identity=wire.to_identity(identity or Identity()),
    )
    return _Call("admin", "CreateUser", request, lambda r: int(r.user_id))


def _enrollment_call(
    method: str,
    message_type: type[wire.EnrollmentMessage],
    username: str,
    device_type: DeviceType,
    options: EnrollOptions,
) -> _Call[Device]:
    """EnrollDevice (a new device) or ImportDevice (an existing one, legacy types too)."""
    if not isinstance(device_type, DeviceType):
        raise InvalidInputTypeError("device_type", "must be a DeviceType")
    _optional_id("replaces", options["replaces"])
    request = wire.to_enrollment(message_type, username, device_type, options)
    return _Call("admin", method, request, lambda r: wire.from_device(r.device))


def _devices(response: Any) -> list[Device]:
    return [wire.from_device(d) for d in response.devices]


def _list_devices_call(username: str) -> _Call[list[Device]]:
    request = _message(admin_pb2.ListDevicesRequest, username=username)
    return _Call("admin", "ListDevices", request, _devices)


def _list_own_devices_call(username: str) -> _Call[list[Device]]:
    request = _message(portal_pb2.ListOwnDevicesRequest, username=username)
    return _Call("portal", "ListOwnDevices", request, _devices)


def _device_call(
    method: str, cls: Callable[..., Message], *, service: str = "admin", **fields: Any
) -> _Call[None]:
    """A call that answers nothing; AdminService's unless ``service`` says otherwise."""
    return _Call(service, method, _message(cls, **fields), _none)


def _sharing(response: Any) -> SharingRequest:
    return wire.from_sharing_request(response.sharing)


def _request_sharing_call(
    owner: str,
    device_id: int,
    with_username: str,
    token: str,
    response: str,
    needs_approval: bool,
) -> _Call[SharingRequest]:
    request = _message(
        portal_pb2.RequestSharingRequest,
        owner=owner,
        device_id=device_id,
        with_username=with_username,
        token=_text("token", token),
        response=_text("response", response),
        needs_approval=needs_approval,
    )
    return _Call("portal", "RequestSharing", request, _sharing)


def _cancel_sharing_call(request_id: int, username: str) -> _Call[SharingRequest]:
    request = _message(portal_pb2.CancelSharingRequest, request_id=request_id, username=username)
    return _Call("portal", "CancelSharing", request, _sharing)


def _approve_sharing_call(request_id: int) -> _Call[SharingRequest]:
    request = _message(admin_pb2.ApproveSharingRequest, request_id=request_id)
    return _Call("admin", "ApproveSharing", request, _sharing)


def _issue_temporary_passcode_call(username: str) -> _Call[str]:
    request = _message(admin_pb2.IssueTemporaryPasscodeRequest, username=username)
    return _Call("admin", "IssueTemporaryPasscode", request, lambda r: str(r.passcode))


def _issue_online_card_call(service: str, username: str) -> _Call[OnlineCard]:
    """AdminService's or PortalService's (the same messages)."""
    request = _message(admin_pb2.IssueOnlineCardRequest, username=username)
    return _Call(service, "IssueOnlineCard", request, wire.from_online_card)


def _unlock_call(username: str) -> _Call[LockoutStatus]:
    request = _message(admin_pb2.UnlockRequest, username=username)
    return _Call("admin", "Unlock", request, wire.from_lockout_status)


def _security_level_call(username: str) -> _Call[SecurityLevel]:
    request = _message(admin_pb2.GetSecurityLevelRequest, username=username)
    return _Call("policy", "GetSecurityLevel", request, wire.from_security_level)


def _withdrawal_limits_call(username: str) -> _Call[WithdrawalLimits]:
    request = _message(admin_pb2.GetWithdrawalLimitsRequest, username=username)
    return _Call("policy", "GetWithdrawalLimits", request, wire.from_withdrawal_limits)


def _session_length_call(unlock: str) -> _Call[timedelta]:
    request = _message(admin_pb2.GetSessionLengthRequest, unlock=unlock)
    return _Call(
        "policy",
        "GetSessionLength",
        request,
        lambda r: wire.from_duration(r.session_length, field_name="session_length"),
    )


def _server_status_call() -> _Call[ServerStatus]:
    request = admin_pb2.GetServerStatusRequest()
    return _Call("admin", "GetServerStatus", request, wire.from_server_status)


def _lockout_status_call(username: str) -> _Call[LockoutStatus]:
    request = _message(admin_pb2.GetLockoutStatusRequest, username=username)
    return _Call("policy", "GetLockoutStatus", request, wire.from_lockout_status)


#: What a VerifyBatch request carries once for all its attempts: the access and the task.
_BatchKind = tuple["common_pb2.Access.ValueType", str]


def _batch_request(
    attempts: Sequence[_Attempt[Any]], kind: _BatchKind
) -> verification_pb2.VerifyBatchRequest:
    access, task = kind
    return verification_pb2.VerifyBatchRequest(
        usernames=[a.username for a in attempts],
        tokens=[a.token for a in attempts],
        responses=[a.response for a in attempts],
        access=access,
        task=task,
    )


def _by_kind(attempts: list[_Attempt[_T]]) -> dict[_BatchKind, list[_Attempt[_T]]]:
    """One VerifyBatch per access and task (the request carries one of each); input order
    kept in each."""
    groups: dict[_BatchKind, list[_Attempt[_T]]] = {}
    for attempt in attempts:
        groups.setdefault((attempt.access, attempt.task), []).append(attempt)
    return groups


@dataclass(eq=False)
class _Attempt(Generic[_T]):
    """One verify() waiting for its batch. ``future`` is a concurrent or asyncio future."""

    username: str
    token: str
    response: str = field(repr=False)
    access: common_pb2.Access.ValueType
    task: str
    deadline: float
    future: _T
    enqueued: float = 0.0


def _unexpired(group: list[_Attempt[Any]]) -> list[_Attempt[Any]]:
    """The attempts whose caller still waits; the others get DEADLINE_EXCEEDED here and
    are never sent (a caller that gave up must not have its challenge used up)."""
    now = time.monotonic()
    live = [a for a in group if a.deadline > now]
    if len(live) < len(group):
        for attempt in group:
            if attempt.deadline <= now and not attempt.future.done():
                attempt.future.set_exception(_timeout_error())
    return live


def _verdicts(response: verification_pb2.VerifyBatchResponse, count: int) -> list[Verdict]:
    """A coalesced batch's answer, one verdict per attempt in order."""
    result = _parse("VerifyBatch", partial(wire.from_batch_result, count=count), response)
    ids = result.device_ids.tolist()
    return [
        Verdict(LoginOutcome(o), ids[i] or None) for i, o in enumerate(result.outcomes.tolist())
    ]


def _batch_failure(err: BaseException | None) -> SlsError:
    """A fresh exception per caller (each raises it in its own thread or task)."""
    if err is None:
        return _timeout_error()
    if isinstance(err, grpc.RpcError):
        return _rpc_error(err, "VerifyBatch")
    if isinstance(err, ProtocolError):
        return ProtocolError(str(err))
    if isinstance(err, SlsRpcError):
        return type(err)(err.method, err.code, err.details)
    if isinstance(err, grpc.FutureCancelledError | asyncio.CancelledError):
        return ClientClosedError()
    return SlsError(f"VerifyBatch failed: {type(err).__name__}")
