"""The one mapping between the sls.v1 protobuf messages (``proto/sls/v1``) and sls_core's
value types, in both directions: ``to_*`` builds the message (or enum value) of a Python
value, ``from_*`` reads the Python value of a message. The gRPC servicers and the gateway
client both convert here, so each convention of the wire is written once:

* ``LoginOutcome`` value ``v`` travels as ``v + 1`` (0 is protobuf's "unspecified");
* proto3 has no null: ``""`` and ``0`` stand for ``None`` (no token, no device);
* a time is a ``google.protobuf.Timestamp`` and a span a ``google.protobuf.Duration``. The
  domain counts Unix seconds (floats): they travel to the nanosecond, and an unset
  Timestamp is ``None`` (not locked, never expires). What only the wire returns
  (:class:`ActivationOffer`, :class:`ServerStatus`, an SMS activation's expiry, a session
  length) reads as a timezone-aware UTC ``datetime`` or a ``timedelta``;
* an unspecified ``Access`` is trading; an unspecified ``Purpose`` is a login, or a
  step-up when the message names a task;
* ``Decision`` and ``PushDecision``, ``DeviceType``/``DeviceState``/``SharingState`` and
  their protobuf enums are matched by name, so a member missing on either side fails at
  import.

A value that cannot be mapped raises :class:`~sls_core.errors.InvalidInputError` naming
the field and the rule (the server answers INVALID_ARGUMENT with it; the client reports a
``ProtocolError`` for an answer it cannot read). No error here quotes a value: a token,
response, code, PIN or passcode never appears in one.

This module imports only the generated messages, :mod:`sls_core.values` and
:mod:`sls_core.errors`: a gateway that imports the client loads neither the Rust
extension nor the store, PIL or reportlab through it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypedDict, TypeVar, cast

import numpy as np
import numpy.typing as npt
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from sls_core.api.v1 import activation_pb2, admin_pb2, common_pb2, push_pb2, verification_pb2
from sls_core.errors import InvalidInputError, InvalidInputTypeError
from sls_core.values import (
    Access,
    Activated,
    BatchResult,
    Challenge,
    Device,
    DeviceState,
    DeviceType,
    Identity,
    LockoutStatus,
    LoginOutcome,
    Purpose,
    PushChallenge,
    PushDecision,
    PushStatus,
    SharingRequest,
    SharingState,
    Verdict,
    WithdrawalLimits,
)

__all__ = [
    "ActivationOffer",
    "ActivationOfferSource",
    "EnrollOptions",
    "EnrollmentMessage",
    "OnlineCard",
    "SecurityLevel",
    "ServerStatus",
    "build_message",
    "from_access",
    "from_activated",
    "from_activation_offer",
    "from_batch_result",
    "from_challenge",
    "from_datetime",
    "from_decision",
    "from_device",
    "from_device_state",
    "from_device_type",
    "from_duration",
    "from_enrollment",
    "from_id",
    "from_identity",
    "from_lockout_status",
    "from_online_card",
    "from_optional_device_type",
    "from_outcome",
    "from_outcomes",
    "from_purpose",
    "from_push",
    "from_push_status",
    "from_security_level",
    "from_server_status",
    "from_sharing_request",
    "from_sharing_state",
    "from_text",
    "from_time",
    "from_tokens",
    "from_verdict",
    "from_withdrawal_limits",
    "purpose_of_batch",
    "seconds_of",
    "to_access",
    "to_activated",
    "to_activation_offer",
    "to_batch_result",
    "to_challenge",
    "to_decision",
    "to_device",
    "to_device_state",
    "to_device_type",
    "to_duration",
    "to_enrollment",
    "to_id",
    "to_identity",
    "to_lockout_status",
    "to_online_card",
    "to_optional_device_type",
    "to_outcome",
    "to_outcomes",
    "to_purpose",
    "to_push",
    "to_push_status",
    "to_security_level",
    "to_server_status",
    "to_sharing_request",
    "to_sharing_state",
    "to_text",
    "to_time",
    "to_verdict",
    "to_withdrawal_limits",
]

if TYPE_CHECKING:  # the protobuf enums' value types exist for type checkers only
    OutcomeValue: TypeAlias = common_pb2.Outcome.ValueType
    DeviceTypeValue: TypeAlias = common_pb2.DeviceType.ValueType
    DeviceStateValue: TypeAlias = common_pb2.DeviceState.ValueType
    AccessValue: TypeAlias = common_pb2.Access.ValueType
    PurposeValue: TypeAlias = common_pb2.Purpose.ValueType
    PushStatusValue: TypeAlias = push_pb2.PushStatus.ValueType
    DecisionValue: TypeAlias = push_pb2.Decision.ValueType
    SharingStateValue: TypeAlias = common_pb2.SharingState.ValueType


#: A protobuf message class.
M = TypeVar("M", bound=Message)


def build_message(message_type: Callable[..., M], **fields: Any) -> M:
    """``message_type(**fields)``; a value protobuf refuses is reported by field name and
    never quoted (it may be a PIN or an SSN).

    The error is raised outside any ``except`` block, so it does not even carry protobuf's
    exception, which quotes the value, as its context."""
    try:
        return message_type(**fields)
    except (TypeError, ValueError):
        pass
    raise _refused_field(message_type, fields)


def _refused_field(
    message_type: Callable[..., Message], fields: dict[str, Any]
) -> InvalidInputError:
    for name, value in fields.items():
        try:
            message_type(**{name: value})
        except TypeError:
            return InvalidInputTypeError(name, "has the wrong type")
        except ValueError:
            return InvalidInputError(name, "is out of range")
    return InvalidInputError("request", "cannot be encoded")


# -- "none" on the wire ----------------------------------------------------------------------


def to_text(value: str | None) -> str:
    """``None`` travels as ``""``."""
    return value or ""


def from_text(value: str) -> str | None:
    """proto3 has no null: an empty string means "not given"."""
    return value or None


def to_id(value: int | None) -> int:
    """No device (``None``) travels as ``0``; ids start at 1."""
    return value or 0


def from_id(value: int) -> int | None:
    return value or None


# -- times and spans -------------------------------------------------------------------------

#: google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
#: google.protobuf.Duration's range: about +-10,000 years.
_DURATION_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000


def to_time(seconds: float | None) -> Timestamp | None:
    """Unix seconds (the domain's times) as a Timestamp, to the nanosecond; "not set"
    (``None``, or the domain's ``0.0``) is None: the field stays unset."""
    if not seconds:
        return None
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * _NANOS)  # the subtraction is exact
    if nanos == _NANOS:
        whole, nanos = whole + 1, 0
    return Timestamp(seconds=whole, nanos=nanos)


def _timestamp(message: Message, name: str, field_name: str | None) -> Timestamp | None:
    """``message.<name>``, checked; None when unset."""
    if not message.HasField(name):
        return None
    stamp: Timestamp = getattr(message, name)
    low, high = _TIMESTAMP_SECONDS
    if not (low <= stamp.seconds <= high and 0 <= stamp.nanos < _NANOS):
        raise InvalidInputError(
            field_name or name, "must be a Timestamp from year 1 to 9999 (nanos 0 to 999999999)"
        )
    return stamp


def from_time(message: Message, name: str, *, field_name: str | None = None) -> float | None:
    """The Unix seconds of ``message.<name>`` (a Timestamp); None when unset."""
    stamp = _timestamp(message, name, field_name)
    return None if stamp is None else stamp.seconds + stamp.nanos / _NANOS


def _required_time(message: Message, name: str, field_name: str | None = None) -> float:
    seconds = from_time(message, name, field_name=field_name)
    if seconds is None:
        raise InvalidInputError(field_name or name, "must be set")
    return seconds


def from_datetime(message: Message, name: str, *, field_name: str | None = None) -> datetime:
    """``message.<name>`` (a Timestamp that must be set) as a timezone-aware UTC
    ``datetime`` (to the microsecond, as far as ``datetime`` goes)."""
    stamp = _timestamp(message, name, field_name)
    if stamp is None:
        raise InvalidInputError(field_name or name, "must be set")
    return stamp.ToDatetime(tzinfo=UTC)


def to_duration(span: timedelta | float, *, field_name: str) -> Duration:
    """A span (a ``timedelta``, or seconds) as a Duration, to the nanosecond."""
    if isinstance(span, timedelta):
        seconds = span.total_seconds()
    elif isinstance(span, bool) or not isinstance(span, int | float) or not math.isfinite(span):
        raise InvalidInputTypeError(field_name, "must be a timedelta or a finite number of seconds")
    else:
        seconds = span
    if abs(seconds) > _DURATION_SECONDS:
        raise InvalidInputError(field_name, "must be within 10,000 years")
    duration = Duration()
    if isinstance(span, timedelta):
        duration.FromTimedelta(span)  # exact, to the microsecond
    else:
        duration.FromNanoseconds(round(span * _NANOS))
    return duration


def _checked_duration(duration: Duration, field_name: str) -> Duration:
    seconds, nanos = duration.seconds, duration.nanos
    if not (
        abs(seconds) <= _DURATION_SECONDS
        and abs(nanos) < _NANOS
        and (seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0))
    ):
        raise InvalidInputError(
            field_name, "must be a Duration within 10,000 years (seconds and nanos of one sign)"
        )
    return duration


def from_duration(duration: Duration, *, field_name: str) -> timedelta:
    """A Duration as a ``timedelta`` (to the microsecond); unset is zero."""
    return _checked_duration(duration, field_name).ToTimedelta()


def seconds_of(duration: Duration, *, field_name: str) -> float:
    """A Duration in seconds, to the nanosecond (what the domain takes); unset is zero."""
    checked = _checked_duration(duration, field_name)
    return checked.seconds + checked.nanos / _NANOS


def from_tokens(values: Iterable[str]) -> list[str | None]:
    """A batch's token column: a temporary passcode comes without a token (``""``)."""
    tokens: list[str | None] = list(values)
    if "" in tokens:
        tokens = [t or None for t in tokens]
    return tokens


# -- enums -----------------------------------------------------------------------------------

E = TypeVar("E", bound=enum.Enum)


def _member(kind: type[E], value: object) -> E | None:
    """``kind(value)``, or None when it is not a member. The caller raises its own error
    outside any ``except`` block, so the refused value, which ``Enum`` quotes (it may be a
    PIN typed into the wrong field), is not even in that error's context."""
    try:
        return kind(value)
    except (ValueError, TypeError):
        return None


# Indexed by value; LoginOutcome(i) fails at import if the values ever stop being 0..n-1.
_OUTCOMES = tuple(LoginOutcome(i) for i in range(len(LoginOutcome)))
#: A LoginOutcome travels shifted by one: 0 is the protobuf "unspecified".
_OUTCOME_SHIFT = 1


def to_outcome(outcome: LoginOutcome) -> OutcomeValue:
    return cast("OutcomeValue", int(outcome) + _OUTCOME_SHIFT)


def from_outcome(value: int, *, field_name: str = "outcome") -> LoginOutcome:
    index = value - _OUTCOME_SHIFT
    if not 0 <= index < len(_OUTCOMES):
        raise InvalidInputError(field_name, "must be a known Outcome value")
    return _OUTCOMES[index]


def to_outcomes(outcomes: npt.NDArray[np.uint8]) -> list[OutcomeValue]:
    """A batch's ``LoginOutcome`` array as wire values, in one numpy pass."""
    return cast("list[OutcomeValue]", (outcomes + _OUTCOME_SHIFT).tolist())


def from_outcomes(values: Sequence[int], count: int) -> npt.NDArray[np.uint8]:
    """A batch's wire outcomes as a ``LoginOutcome`` array, one per attempt."""
    raw = np.array(values, dtype=np.int64)
    if len(raw) != count:
        raise InvalidInputError("outcomes", f"one per attempt: got {len(raw)} for {count}")
    if count and (raw.min() < _OUTCOME_SHIFT or raw.max() >= len(_OUTCOMES) + _OUTCOME_SHIFT):
        raise InvalidInputError("outcomes", "must be known Outcome values")
    return (raw - _OUTCOME_SHIFT).astype(np.uint8)


_DEVICE_TYPES: dict[DeviceType, DeviceTypeValue] = {
    t: common_pb2.DeviceType.Value(f"DEVICE_TYPE_{t.name}") for t in DeviceType
}
_DEVICE_TYPE_OF: dict[int, DeviceType] = {v: t for t, v in _DEVICE_TYPES.items()}


def to_device_type(device_type: DeviceType) -> DeviceTypeValue:
    if not isinstance(device_type, DeviceType):
        raise InvalidInputError("device_type", "must be a DeviceType")
    return _DEVICE_TYPES[device_type]


def from_device_type(value: int, *, field_name: str = "type") -> DeviceType:
    device_type = _DEVICE_TYPE_OF.get(value)
    if device_type is None:
        raise InvalidInputError(field_name, "must be a known DeviceType")
    return device_type


def to_optional_device_type(device_type: DeviceType | None) -> DeviceTypeValue:
    """No device (``None``) travels as ``DEVICE_TYPE_UNSPECIFIED``."""
    return (
        common_pb2.DEVICE_TYPE_UNSPECIFIED if device_type is None else to_device_type(device_type)
    )


def from_optional_device_type(value: int, *, field_name: str = "device") -> DeviceType | None:
    return (
        None
        if value == common_pb2.DEVICE_TYPE_UNSPECIFIED
        else from_device_type(value, field_name=field_name)
    )


_DEVICE_STATES: dict[DeviceState, DeviceStateValue] = {
    s: common_pb2.DeviceState.Value(f"DEVICE_STATE_{s.name}") for s in DeviceState
}
_DEVICE_STATE_OF: dict[int, DeviceState] = {v: s for s, v in _DEVICE_STATES.items()}


def to_device_state(state: DeviceState) -> DeviceStateValue:
    return _DEVICE_STATES[state]


def from_device_state(value: int, *, field_name: str = "state") -> DeviceState:
    state = _DEVICE_STATE_OF.get(value)
    if state is None:
        raise InvalidInputError(field_name, "must be a known DeviceState")
    return state


_ACCESS: dict[Access, AccessValue] = {
    a: common_pb2.Access.Value(f"ACCESS_{a.name}") for a in Access
}
_ACCESS_OF: dict[int, Access] = {v: a for a, v in _ACCESS.items()}
_ACCESS_OF[common_pb2.ACCESS_UNSPECIFIED] = Access.TRADING


def to_access(access: Access | str) -> AccessValue:
    """``access`` may be the :class:`Access` member or its value ("trading")."""
    member = _member(Access, access)
    if member is None:
        raise InvalidInputError("access", "must be one of " + ", ".join(Access))
    return _ACCESS[member]


def from_access(value: int) -> Access:
    """An unspecified access is trading."""
    access = _ACCESS_OF.get(value)
    if access is None:
        raise InvalidInputError("access", "must be a known Access value")
    return access


_PURPOSES: dict[Purpose, PurposeValue] = {
    p: common_pb2.Purpose.Value(f"PURPOSE_{p.name}") for p in Purpose
}
_PURPOSE_OF: dict[int, Purpose] = {v: p for p, v in _PURPOSES.items()}


def to_purpose(purpose: Purpose | int | None) -> PurposeValue:
    """``None`` travels as unspecified: the receiver's default (see :func:`from_purpose`)."""
    if purpose is None:
        return common_pb2.PURPOSE_UNSPECIFIED
    member = _member(Purpose, purpose)
    if member is None:
        names = ", ".join(f"Purpose.{p.name}" for p in Purpose)
        raise InvalidInputError("purpose", f"must be one of {names}")
    return _PURPOSES[member]


def from_purpose(value: int, *, task: str | None = None) -> Purpose:
    """An unspecified purpose is a login, or a step-up when the message names a task."""
    if value == common_pb2.PURPOSE_UNSPECIFIED:
        return purpose_of_batch(task)
    purpose = _PURPOSE_OF.get(value)
    if purpose is None:
        raise InvalidInputError("purpose", "must be a known Purpose value")
    return purpose


def purpose_of_batch(task: str | None) -> Purpose:
    """A VerifyBatch message carries no purpose: its answers are logins, or step-ups for
    the one task it names."""
    return Purpose.STEP_UP if task else Purpose.LOGIN


_PUSH_STATUSES: dict[PushStatus, PushStatusValue] = {
    s: push_pb2.PushStatus.Value(f"PUSH_STATUS_{s.name}") for s in PushStatus
}
_PUSH_STATUS_OF: dict[int, PushStatus] = {v: s for s, v in _PUSH_STATUSES.items()}


def to_push_status(status: PushStatus | str) -> PushStatusValue:
    """``status`` may be the :class:`PushStatus` member or its value ("pending")."""
    return _PUSH_STATUSES[PushStatus(status)]


def from_push_status(value: int) -> PushStatus:
    status = _PUSH_STATUS_OF.get(value)
    if status is None:
        raise InvalidInputError("status", "must be a known PushStatus value")
    return status


_DECISIONS: dict[PushDecision, DecisionValue] = {
    d: push_pb2.Decision.Value(f"DECISION_{d.name}") for d in PushDecision
}
_DECISION_OF: dict[int, PushDecision] = {v: d for d, v in _DECISIONS.items()}


def to_decision(decision: PushDecision | int) -> DecisionValue:
    member = _member(PushDecision, decision)
    if member is None:
        raise InvalidInputError("decision", "must be APPROVE (1) or DECLINE (2)")
    return _DECISIONS[member]


def from_decision(value: int) -> int:
    """The :class:`PushDecision`, or 0 for an unspecified or unknown one: the push is
    answered MALFORMED (an outcome, not an error) and stays pending."""
    return _DECISION_OF.get(value, 0)


_SHARING_STATES: dict[SharingState, SharingStateValue] = {
    s: common_pb2.SharingState.Value(f"SHARING_STATE_{s.name}") for s in SharingState
}
_SHARING_STATE_OF: dict[int, SharingState] = {v: s for s, v in _SHARING_STATES.items()}


def to_sharing_state(state: SharingState | str) -> SharingStateValue:
    """``state`` may be the :class:`SharingState` member or its value ("pending")."""
    member = _member(SharingState, state)
    if member is None:
        raise InvalidInputError("state", "must be one of " + ", ".join(SharingState))
    return _SHARING_STATES[member]


def from_sharing_state(value: int, *, field_name: str = "state") -> SharingState:
    state = _SHARING_STATE_OF.get(value)
    if state is None:
        raise InvalidInputError(field_name, "must be a known SharingState")
    return state


# -- messages --------------------------------------------------------------------------------


def to_device(device: Device) -> common_pb2.Device:
    return common_pb2.Device(
        device_id=device.id,
        type=to_device_type(device.type),
        state=to_device_state(device.state),
        serial=device.serial,
        issued_at=to_time(device.issued_at),
        activated_at=to_time(device.activated_at),
        expires_at=to_time(device.expires_at),
        security_level=device.security_level,
    )


def from_device(message: common_pb2.Device) -> Device:
    return Device(
        id=message.device_id,
        type=from_device_type(message.type, field_name="device.type"),
        state=from_device_state(message.state, field_name="device.state"),
        serial=message.serial,
        issued_at=from_time(message, "issued_at", field_name="device.issued_at") or 0.0,
        activated_at=from_time(message, "activated_at", field_name="device.activated_at"),
        expires_at=from_time(message, "expires_at", field_name="device.expires_at"),
    )


def to_identity(identity: Identity) -> admin_pb2.Identity:
    """Each field is checked by name: an identity's numbers never appear in an error."""
    return build_message(admin_pb2.Identity, **identity.as_dict())


def from_identity(message: admin_pb2.Identity) -> Identity:
    return Identity(
        date_of_birth=message.date_of_birth,
        citizenship=message.citizenship,
        residence=message.residence,
        id_type=message.id_type,
        id_number=message.id_number,
        ssn=message.ssn,
    )


#: The requests that register a device (the same fields in each).
EnrollmentMessage = TypeVar(
    "EnrollmentMessage", admin_pb2.EnrollDeviceRequest, admin_pb2.ImportDeviceRequest
)


class EnrollOptions(TypedDict):
    """The options of ``SecureLogin.enroll_device`` / ``import_device`` as one message
    carries them (``None``: not given)."""

    secret: bytes | None
    pin: str | None
    suite: str | None
    serial: str | None
    phone: str | None
    shipped: bool
    replaces: int | None
    replaces_lost: bool


def to_enrollment(
    message_type: type[EnrollmentMessage],
    username: str,
    device_type: DeviceType,
    options: EnrollOptions,
) -> EnrollmentMessage:
    """Each field is checked by name: a secret or PIN never appears in an error."""
    return build_message(
        message_type,
        username=username,
        type=to_device_type(device_type),
        secret=options["secret"] or b"",
        pin=to_text(options["pin"]),
        suite=to_text(options["suite"]),
        serial=to_text(options["serial"]),
        phone=to_text(options["phone"]),
        shipped=options["shipped"],
        replaces=to_id(options["replaces"]),
        replaces_lost=options["replaces_lost"],
    )


def from_enrollment(message: EnrollmentMessage) -> tuple[DeviceType, EnrollOptions]:
    """The device type and the options of an EnrollDevice or ImportDevice request."""
    options = EnrollOptions(
        secret=message.secret or None,
        pin=from_text(message.pin),
        suite=from_text(message.suite),
        serial=from_text(message.serial),
        phone=from_text(message.phone),
        shipped=message.shipped,
        replaces=from_id(message.replaces),
        replaces_lost=message.replaces_lost,
    )
    return from_device_type(message.type), options


def to_sharing_request(request: SharingRequest) -> common_pb2.SharingRequest:
    return common_pb2.SharingRequest(
        request_id=request.id,
        owner=request.owner,
        requester=request.requester,
        device_id=request.device_id,
        state=to_sharing_state(request.state),
        set_aside_device_ids=request.set_aside,
    )


def from_sharing_request(message: common_pb2.SharingRequest) -> SharingRequest:
    return SharingRequest(
        id=message.request_id,
        owner=message.owner,
        requester=message.requester,
        device_id=message.device_id,
        state=from_sharing_state(message.state, field_name="sharing.state"),
        set_aside=tuple(message.set_aside_device_ids),
    )


def to_challenge(challenge: Challenge) -> verification_pb2.IssueChallengeResponse:
    return verification_pb2.IssueChallengeResponse(
        token=challenge.token,
        device_id=challenge.device_id,
        device_type=to_device_type(challenge.device_type),
        expires_at=to_time(challenge.expires_at),
        challenge=to_text(challenge.challenge),
        card_indices=challenge.card_indices or (),
        purpose=to_purpose(challenge.purpose),
        task=to_text(challenge.task),
    )


def from_challenge(message: verification_pb2.IssueChallengeResponse) -> Challenge:
    indices = tuple(message.card_indices)
    task = from_text(message.task)
    return Challenge(
        token=message.token,
        device_id=message.device_id,
        device_type=from_device_type(message.device_type, field_name="device_type"),
        purpose=from_purpose(message.purpose, task=task),
        expires_at=_required_time(message, "expires_at"),
        challenge=from_text(message.challenge),
        card_indices=(indices[0], indices[1]) if len(indices) == 2 else None,
        task=task,
    )


def to_verdict(verdict: Verdict) -> verification_pb2.VerifyResponse:
    return verification_pb2.VerifyResponse(
        outcome=to_outcome(verdict.outcome),
        message=verdict.outcome.message,
        device_id=to_id(verdict.device_id),
    )


def from_verdict(message: verification_pb2.VerifyResponse) -> Verdict:
    return Verdict(from_outcome(message.outcome), from_id(message.device_id))


def to_batch_result(result: BatchResult) -> verification_pb2.VerifyBatchResponse:
    """Columns in, columns out: one ``extend`` per column (no per-item message)."""
    message = verification_pb2.VerifyBatchResponse()
    message.outcomes.extend(to_outcomes(result.outcomes))
    message.device_ids.extend(result.device_ids.tolist())
    return message


def from_batch_result(message: verification_pb2.VerifyBatchResponse, count: int) -> BatchResult:
    """``count`` attempts' outcomes; no device ids at all means none answered."""
    outcomes = from_outcomes(message.outcomes, count)
    ids = np.array(message.device_ids, dtype=np.uint64)
    if len(ids) == 0:
        ids = np.zeros(count, dtype=np.uint64)
    elif len(ids) != count:
        raise InvalidInputError("device_ids", f"one per attempt: got {len(ids)} for {count}")
    return BatchResult(outcomes=outcomes, device_ids=ids)


#: The responses that carry a lockout status (the same two fields in each).
LockoutMessage = TypeVar(
    "LockoutMessage",
    admin_pb2.GetLockoutStatusResponse,
    admin_pb2.UnlockResponse,
    verification_pb2.RecordPasswordFailureResponse,
)


def to_lockout_status(status: LockoutStatus, message_type: type[LockoutMessage]) -> LockoutMessage:
    return message_type(
        consecutive_failures=status.consecutive_failures,
        locked_until=to_time(status.locked_until),
    )


def from_lockout_status(message: LockoutMessage) -> LockoutStatus:
    """An unset ``locked_until``: not locked."""
    return LockoutStatus(message.consecutive_failures, from_time(message, "locked_until"))


def to_withdrawal_limits(limits: WithdrawalLimits) -> admin_pb2.GetWithdrawalLimitsResponse:
    """Unlimited (``None``) travels as ``unlimited=True``."""
    return admin_pb2.GetWithdrawalLimitsResponse(
        device=to_optional_device_type(limits.device),
        per_day=limits.per_day or 0,
        per_five_days=limits.per_five_days or 0,
        unlimited=limits.per_day is None,
    )


def from_withdrawal_limits(message: admin_pb2.GetWithdrawalLimitsResponse) -> WithdrawalLimits:
    device = from_optional_device_type(message.device)
    if message.unlimited:
        return WithdrawalLimits(device, None, None)
    return WithdrawalLimits(device, message.per_day, message.per_five_days)


def to_push(push: PushChallenge) -> push_pb2.Push:
    """A push expires on a whole second: the app signs that second in its approval."""
    return push_pb2.Push(
        challenge_id=push.challenge_id,
        user_id=push.user_id,
        device_id=push.device_id,
        expires_at=Timestamp(seconds=push.expires_at),
    )


def from_push(message: push_pb2.Push) -> PushChallenge:
    stamp = _timestamp(message, "expires_at", "push.expires_at")
    if stamp is None or stamp.nanos:
        raise InvalidInputError("push.expires_at", "must be set, on a whole second")
    return PushChallenge(message.challenge_id, message.user_id, message.device_id, stamp.seconds)


def to_activated(done: Activated) -> activation_pb2.CompleteActivationResponse:
    return activation_pb2.CompleteActivationResponse(
        device=to_device(done.device),
        username=done.username,
        server_public=done.server_public,
        session_id=done.session_id,
        suite=done.suite,
    )


def from_activated(message: activation_pb2.CompleteActivationResponse) -> Activated:
    return Activated(
        from_device(message.device),
        message.username,
        message.server_public,
        message.session_id,
        message.suite,
    )


# -- results that only the wire has ----------------------------------------------------------


@dataclass(frozen=True)
class ActivationOffer:
    """What the portal shows: the QR code (``qr_png``/``qr_svg`` of ``payload``) and the
    manual string under it. Kept out of ``repr``: they activate an IB Key."""

    payload: str = field(repr=False)
    manual_code: str = field(repr=False)
    #: When the offer stops being accepted (UTC).
    expires_at: datetime
    qr_png: bytes = field(repr=False)
    qr_svg: str = field(repr=False)


class ActivationOfferSource(Protocol):
    """The domain's offer (:class:`sls_core.ibkey.ActivationOffer`): it renders its QR code."""

    @property
    def payload(self) -> str: ...
    @property
    def manual_code(self) -> str: ...
    @property
    def expires_at(self) -> float: ...
    def qr_png(self) -> bytes: ...
    def qr_svg(self) -> str: ...


def to_activation_offer(offer: ActivationOfferSource) -> activation_pb2.CreateActivationResponse:
    """Renders the offer's QR code (PNG and SVG) into the message."""
    return activation_pb2.CreateActivationResponse(
        payload=offer.payload,
        manual_code=offer.manual_code,
        expires_at=to_time(offer.expires_at),
        qr_png=offer.qr_png(),
        qr_svg=offer.qr_svg(),
    )


def from_activation_offer(message: activation_pb2.CreateActivationResponse) -> ActivationOffer:
    return ActivationOffer(
        message.payload,
        message.manual_code,
        from_datetime(message, "expires_at"),
        message.qr_png,
        message.qr_svg,
    )


@dataclass(frozen=True)
class OnlineCard:
    """An Online Security Code Card: the device and the printable card (its codes are on
    it, so it stays out of ``repr``)."""

    device: Device
    card_png: bytes = field(repr=False)
    card_pdf: bytes = field(repr=False)


def to_online_card(card: OnlineCard) -> admin_pb2.IssueOnlineCardResponse:
    return admin_pb2.IssueOnlineCardResponse(
        device=to_device(card.device), card_png=card.card_png, card_pdf=card.card_pdf
    )


def from_online_card(message: admin_pb2.IssueOnlineCardResponse) -> OnlineCard:
    return OnlineCard(from_device(message.device), message.card_png, message.card_pdf)


@dataclass(frozen=True)
class SecurityLevel:
    """1 (highest) to 5; 0 and ``strongest_device=None`` when the user has no active device."""

    level: int
    strongest_device: DeviceType | None


def to_security_level(level: SecurityLevel) -> admin_pb2.GetSecurityLevelResponse:
    return admin_pb2.GetSecurityLevelResponse(
        security_level=level.level,
        strongest_device=to_optional_device_type(level.strongest_device),
    )


def from_security_level(message: admin_pb2.GetSecurityLevelResponse) -> SecurityLevel:
    strongest = from_optional_device_type(message.strongest_device, field_name="strongest_device")
    return SecurityLevel(message.security_level, strongest)


@dataclass(frozen=True)
class ServerStatus:
    """A running server as an operator sees it (AdminService.GetServerStatus): the same
    store figures ``python -m sls_core.admin status`` prints, and the process's health."""

    #: sls_core's version (``sls-core --version``).
    version: str
    #: "sqlite" or "postgresql".
    store_backend: str
    schema_version: int
    #: The master key id new values are sealed under.
    active_key_id: str
    #: Sealed values per master key id.
    key_ids_in_use: Mapping[str, int]
    users: int
    devices: int
    consumed_challenges: int
    #: When the process started serving (UTC), and for how long it has.
    started_at: datetime
    uptime: timedelta
    #: What grpc.health.v1 reports (False: store or audit trail unreachable, shutting down).
    serving: bool


def to_server_status(status: ServerStatus) -> admin_pb2.GetServerStatusResponse:
    started_at = Timestamp()
    started_at.FromDatetime(status.started_at)
    return admin_pb2.GetServerStatusResponse(
        version=status.version,
        store_backend=status.store_backend,
        schema_version=status.schema_version,
        active_key_id=status.active_key_id,
        key_ids_in_use=dict(status.key_ids_in_use),
        users=status.users,
        devices=status.devices,
        consumed_challenges=status.consumed_challenges,
        started_at=started_at,
        uptime=to_duration(status.uptime, field_name="uptime"),
        serving=status.serving,
    )


def from_server_status(message: admin_pb2.GetServerStatusResponse) -> ServerStatus:
    return ServerStatus(
        version=message.version,
        store_backend=message.store_backend,
        schema_version=message.schema_version,
        active_key_id=message.active_key_id,
        key_ids_in_use=dict(message.key_ids_in_use),
        users=message.users,
        devices=message.devices,
        consumed_challenges=message.consumed_challenges,
        started_at=from_datetime(message, "started_at"),
        uptime=from_duration(message.uptime, field_name="uptime"),
        serving=message.serving,
    )
