"""sls_core.wire, the one protobuf <-> value converter of the server and the client: every
``to_*`` / ``from_*`` pair round-trips, the wire's conventions (the outcome offset, "0 means
none", unset times, unspecified access and purpose) hold, every enum member has a wire
value, and a value that cannot be mapped is refused by field name without being quoted."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from sls_core import wire
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

DSC = Device(
    id=7,
    type=DeviceType.DSC_PLUS,
    state=DeviceState.ACTIVE,
    serial="DSC-0007",
    issued_at=100.0,
    activated_at=200.125,
)


def _everything_said(error: BaseException | None) -> str:
    """The messages of the error and of every error chained to it (not the source lines
    of the traceback, which quote this test)."""
    said = []
    while error is not None:
        said += [*traceback.format_exception_only(error), repr(error), repr(error.args)]
        said.append(repr(vars(error)))
        error = error.__cause__ or error.__context__
    return "\n".join(said)


# -- enums ---------------------------------------------------------------------------------


def test_every_outcome_travels_shifted_by_one_and_back() -> None:
    for outcome in LoginOutcome:
        value = wire.to_outcome(outcome)
        assert value == common_pb2.Outcome.Value(f"OUTCOME_{outcome.name}") == outcome + 1
        assert wire.from_outcome(value) is outcome
    for bad in (common_pb2.OUTCOME_UNSPECIFIED, len(LoginOutcome) + 1, -1):
        with pytest.raises(InvalidInputError, match="outcome: must be a known Outcome value"):
            wire.from_outcome(bad)


@given(st.lists(st.sampled_from(list(LoginOutcome)), max_size=50))
def test_a_batch_of_outcomes_round_trips_as_uint8(outcomes: list[LoginOutcome]) -> None:
    array = np.array(outcomes, dtype=np.uint8)
    values = wire.to_outcomes(array)
    assert values == [wire.to_outcome(o) for o in outcomes]
    back = wire.from_outcomes(values, len(outcomes))
    assert back.dtype == np.uint8
    assert back.tolist() == array.tolist()


def test_a_batch_of_outcomes_must_have_one_known_value_per_attempt() -> None:
    with pytest.raises(InvalidInputError, match="outcomes: one per attempt: got 1 for 2"):
        wire.from_outcomes([1], 2)
    with pytest.raises(InvalidInputError, match="outcomes: must be known Outcome values"):
        wire.from_outcomes([1, 0], 2)
    with pytest.raises(InvalidInputError, match="outcomes: must be known Outcome values"):
        wire.from_outcomes([len(LoginOutcome) + 1], 1)


ENUMS = {
    "device type": (DeviceType, common_pb2.DeviceType, "DEVICE_TYPE_"),
    "device state": (DeviceState, common_pb2.DeviceState, "DEVICE_STATE_"),
    "access": (Access, common_pb2.Access, "ACCESS_"),
    "purpose": (Purpose, common_pb2.Purpose, "PURPOSE_"),
    "push status": (PushStatus, push_pb2.PushStatus, "PUSH_STATUS_"),
    "decision": (PushDecision, push_pb2.Decision, "DECISION_"),
    "sharing state": (SharingState, common_pb2.SharingState, "SHARING_STATE_"),
}
CONVERTERS = {
    "device type": (wire.to_device_type, wire.from_device_type),
    "device state": (wire.to_device_state, wire.from_device_state),
    "access": (wire.to_access, wire.from_access),
    "purpose": (wire.to_purpose, wire.from_purpose),
    "push status": (wire.to_push_status, wire.from_push_status),
    "decision": (wire.to_decision, wire.from_decision),
    "sharing state": (wire.to_sharing_state, wire.from_sharing_state),
}


@pytest.mark.parametrize("name", ENUMS)
def test_every_enum_member_has_its_own_wire_value_and_back(name: str) -> None:
    kind, proto_enum, prefix = ENUMS[name]
    to: Any
    back: Any
    to, back = CONVERTERS[name]
    values = {member: to(member) for member in kind}
    for member, value in values.items():
        assert value == proto_enum.Value(prefix + member.name), member
        assert back(value) is member
    assert len(set(values.values())) == len(values)
    assert common_pb2.DEVICE_TYPE_UNSPECIFIED not in values.values()
    # Nothing on the wire is left without a member (beyond "unspecified").
    assert len(proto_enum.keys()) == len(values) + 1


def test_the_new_sls_rule_values_are_on_the_wire() -> None:
    assert wire.to_device_type(DeviceType.ALPINE) == common_pb2.DEVICE_TYPE_ALPINE
    assert wire.to_device_state(DeviceState.SUSPENDED) == common_pb2.DEVICE_STATE_SUSPENDED
    assert wire.to_purpose(Purpose.REACTIVATION) == common_pb2.PURPOSE_REACTIVATION
    assert wire.to_purpose(Purpose.STEP_UP) == common_pb2.PURPOSE_STEP_UP


def test_an_unspecified_access_is_trading_and_a_value_may_be_given_as_text() -> None:
    assert wire.from_access(common_pb2.ACCESS_UNSPECIFIED) is Access.TRADING
    assert wire.to_access("portal") == common_pb2.ACCESS_PORTAL
    with pytest.raises(InvalidInputError, match="access: must be one of trading, portal"):
        wire.to_access("everything")
    with pytest.raises(InvalidInputError, match="access: must be a known Access value"):
        wire.from_access(7)


def test_an_unspecified_purpose_is_a_login_or_a_step_up_when_a_task_is_named() -> None:
    assert wire.from_purpose(common_pb2.PURPOSE_UNSPECIFIED) is Purpose.LOGIN
    assert wire.from_purpose(common_pb2.PURPOSE_UNSPECIFIED, task="withdrawal") is Purpose.STEP_UP
    # An explicit purpose is kept as given: the domain judges a task that does not fit.
    assert wire.from_purpose(common_pb2.PURPOSE_LOGIN, task="withdrawal") is Purpose.LOGIN
    assert wire.to_purpose(None) == common_pb2.PURPOSE_UNSPECIFIED
    assert wire.purpose_of_batch(None) is Purpose.LOGIN
    assert wire.purpose_of_batch("withdrawal") is Purpose.STEP_UP
    with pytest.raises(InvalidInputError, match="purpose: must be a known Purpose value"):
        wire.from_purpose(9)
    with pytest.raises(InvalidInputError, match=r"purpose: must be one of Purpose\.LOGIN"):
        wire.to_purpose(9)


def test_an_unknown_device_type_or_state_names_the_field() -> None:
    with pytest.raises(InvalidInputError) as caught:
        wire.from_device_type(common_pb2.DEVICE_TYPE_UNSPECIFIED)
    assert str(caught.value) == "type: must be a known DeviceType"
    with pytest.raises(InvalidInputError) as caught:
        wire.from_device_type(42, field_name="device_type")
    assert str(caught.value) == "device_type: must be a known DeviceType"
    with pytest.raises(InvalidInputError) as caught:
        wire.from_device_state(0)
    assert str(caught.value) == "state: must be a known DeviceState"
    with pytest.raises(InvalidInputError, match="device_type: must be a DeviceType"):
        wire.to_device_type("dsc_plus")  # type: ignore[arg-type]
    assert wire.from_optional_device_type(common_pb2.DEVICE_TYPE_UNSPECIFIED) is None
    assert wire.to_optional_device_type(None) == common_pb2.DEVICE_TYPE_UNSPECIFIED


def test_a_push_decision_the_domain_cannot_take_is_passed_on_as_none() -> None:
    # No decision is an answer (MALFORMED, the push stays pending), not a refused call.
    assert wire.from_decision(push_pb2.DECISION_UNSPECIFIED) == 0
    assert wire.from_decision(9) == 0
    with pytest.raises(InvalidInputError, match="decision: must be APPROVE"):
        wire.to_decision(3)


# -- "none" on the wire ----------------------------------------------------------------------


def test_none_travels_as_the_empty_value() -> None:
    assert (wire.to_text(None), wire.from_text(""), wire.from_text("x")) == ("", None, "x")
    assert (wire.to_id(None), wire.from_id(0), wire.from_id(5)) == (0, None, 5)
    assert (wire.to_time(None), wire.to_time(0.0)) == (None, None)
    unset = verification_pb2.RecordPasswordFailureResponse()
    assert wire.from_time(unset, "locked_until") is None
    assert wire.from_tokens(["t1", "", "t3"]) == ["t1", None, "t3"]
    assert wire.from_tokens(["t1"]) == ["t1"]


# -- messages --------------------------------------------------------------------------------


# -- times and spans -------------------------------------------------------------------------


@given(st.floats(min_value=1e9, max_value=4e9))  # 2001 to 2096
def test_unix_seconds_round_trip_through_a_timestamp_exactly(seconds: float) -> None:
    """A float's resolution there (about 0.2 microseconds) is coarser than a nanosecond."""
    stamp = wire.to_time(seconds)
    assert stamp is not None
    assert 0 <= stamp.nanos < 1_000_000_000
    message = verification_pb2.RecordPasswordFailureResponse(locked_until=stamp)
    assert wire.from_time(message, "locked_until") == seconds


@given(st.floats(min_value=1e-3, max_value=1e9))
def test_any_time_travels_to_the_nearest_nanosecond(seconds: float) -> None:
    message = verification_pb2.RecordPasswordFailureResponse(locked_until=wire.to_time(seconds))
    assert wire.from_time(message, "locked_until") == pytest.approx(seconds, rel=0, abs=1e-9)


def test_a_timestamp_keeps_the_sub_second_and_reads_as_utc() -> None:
    stamp = wire.to_time(1_796_432_523.5)
    assert stamp == Timestamp(seconds=1_796_432_523, nanos=500_000_000)
    assert stamp.ToJsonString() == "2026-12-05T01:02:03.500Z"
    message = activation_pb2.SendSmsActivationResponse(expires_at=stamp)
    when = wire.from_datetime(message, "expires_at")
    assert when == datetime(2026, 12, 5, 1, 2, 3, 500_000, tzinfo=UTC)
    assert when.utcoffset() == timedelta(0)
    assert wire.to_time(2.9999999999) == Timestamp(seconds=3)  # rounding carries the second


def test_an_unset_timestamp_is_none_or_refused_where_one_is_required() -> None:
    assert wire.from_lockout_status(admin_pb2.UnlockResponse()) == LockoutStatus(0, None)
    with pytest.raises(InvalidInputError, match="expires_at: must be set"):
        wire.from_datetime(activation_pb2.SendSmsActivationResponse(), "expires_at")
    no_expiry = verification_pb2.IssueChallengeResponse(device_type=common_pb2.DEVICE_TYPE_SMS)
    with pytest.raises(InvalidInputError, match="expires_at: must be set"):
        wire.from_challenge(no_expiry)


def test_a_timestamp_out_of_range_is_refused_by_field_name() -> None:
    bad = common_pb2.Device(
        device_id=1,
        type=common_pb2.DEVICE_TYPE_SMS,
        state=common_pb2.DEVICE_STATE_ACTIVE,
        expires_at=Timestamp(seconds=1, nanos=-5),
    )
    with pytest.raises(InvalidInputError, match=r"device\.expires_at: must be a Timestamp"):
        wire.from_device(bad)
    far = admin_pb2.UnlockResponse(locked_until=Timestamp(seconds=10**12))
    with pytest.raises(InvalidInputError, match="locked_until: must be a Timestamp"):
        wire.from_lockout_status(far)


def test_a_push_expires_on_a_whole_second() -> None:
    message = push_pb2.Push(challenge_id=1, expires_at=Timestamp(seconds=1900, nanos=1))
    with pytest.raises(InvalidInputError, match=r"push\.expires_at: must be set, on a whole"):
        wire.from_push(message)
    with pytest.raises(InvalidInputError, match=r"push\.expires_at"):
        wire.from_push(push_pb2.Push(challenge_id=1))


@pytest.mark.parametrize(
    ("span", "nanos"),
    [(0.5, 500_000_000), (2, 2_000_000_000), (timedelta(milliseconds=1500), 1_500_000_000),
     (-1.25, -1_250_000_000), (0, 0)],
)  # fmt: skip
def test_a_span_travels_as_a_duration_from_timedelta_or_seconds(
    span: timedelta | float, nanos: int
) -> None:
    duration = wire.to_duration(span, field_name="wait")
    assert duration.ToNanoseconds() == nanos
    assert wire.seconds_of(duration, field_name="wait") == nanos / 1e9
    assert wire.from_duration(duration, field_name="wait") == timedelta(microseconds=nanos / 1000)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "2s", None])
def test_a_span_that_is_not_a_finite_number_or_timedelta_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidInputTypeError, match="wait: must be a timedelta"):
        wire.to_duration(bad, field_name="wait")
    for too_long in (1e12, timedelta(days=4_000_000)):
        with pytest.raises(InvalidInputError, match="wait: must be within 10,000 years"):
            wire.to_duration(too_long, field_name="wait")


def test_a_duration_with_mixed_signs_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="uptime: must be a Duration"):
        wire.from_duration(Duration(seconds=1, nanos=-1), field_name="uptime")


def test_a_server_status_round_trips_with_its_times() -> None:
    status = wire.ServerStatus(
        version="1.2.3",
        store_backend="postgresql",
        schema_version=9,
        active_key_id="k2",
        key_ids_in_use={"k1": 1, "k2": 20},
        users=3,
        devices=4,
        consumed_challenges=5,
        started_at=datetime(2026, 12, 5, 1, 2, 3, 500_000, tzinfo=UTC),
        uptime=timedelta(hours=2, microseconds=7),
        serving=False,
    )
    message = wire.to_server_status(status)
    assert message.started_at.ToJsonString() == "2026-12-05T01:02:03.500Z"
    assert message.uptime.ToJsonString() == "7200.000007s"
    assert wire.from_server_status(message) == status


def test_a_device_round_trips_and_carries_its_security_level() -> None:
    message = wire.to_device(DSC)
    assert message.security_level == 1
    assert not message.HasField("expires_at")  # None: unset, it does not expire
    assert message.activated_at == Timestamp(seconds=200, nanos=125_000_000)
    assert wire.from_device(message) == DSC
    suspended = Device(8, DeviceType.ALPINE, DeviceState.SUSPENDED, "ALP-8", expires_at=9.0)
    assert wire.from_device(wire.to_device(suspended)) == suspended
    with pytest.raises(InvalidInputError, match=r"device\.state: must be a known DeviceState"):
        wire.from_device(common_pb2.Device(device_id=1, type=common_pb2.DEVICE_TYPE_SMS))


def test_an_identity_round_trips_and_a_bad_field_is_named_never_quoted() -> None:
    identity = Identity("1980-01-01", "CH", "CH", "passport", "X1234567", "123-45-6789")
    assert wire.from_identity(wire.to_identity(identity)) == identity
    with pytest.raises(InvalidInputTypeError) as caught:
        wire.to_identity(Identity(ssn=123456789))  # type: ignore[arg-type]
    assert caught.value.field == "ssn"
    assert "123456789" not in _everything_said(caught.value)


@pytest.mark.parametrize(
    "challenge",
    [
        Challenge("tok", 7, DeviceType.DSC_PLUS, Purpose.LOGIN, 1300.0, challenge="123456"),
        Challenge("tok", 9, DeviceType.SECURITY_CODE_CARD, Purpose.LOGIN, 1.0, None, (3, 42)),
        Challenge("tok", 7, DeviceType.IB_KEY, Purpose.STEP_UP, 5.0, "000001", task="withdrawal"),
        Challenge("tok", 7, DeviceType.DSC_PLUS, Purpose.REACTIVATION, 5.0, challenge="999999"),
        Challenge("tok", 7, DeviceType.SMS, Purpose.ACTIVATION, 5.0),
    ],
    ids=["login", "card", "step-up", "reactivation", "sms-activation"],
)  # fmt: skip
def test_a_challenge_round_trips_with_its_purpose_and_task(challenge: Challenge) -> None:
    message = wire.to_challenge(challenge)
    assert message.task == (challenge.task or "")
    assert wire.from_challenge(message) == challenge


def test_a_verdict_round_trips_with_the_outcome_message() -> None:
    for verdict in (Verdict(LoginOutcome.OK, 7), Verdict(LoginOutcome.LOCKED, None)):
        message = wire.to_verdict(verdict)
        assert message.message == verdict.outcome.message
        assert wire.from_verdict(message) == verdict


def test_a_batch_result_round_trips_in_input_order() -> None:
    result = BatchResult(
        outcomes=np.array([0, 1, 13], dtype=np.uint8),
        device_ids=np.array([7, 0, 9], dtype=np.uint64),
    )
    message = wire.to_batch_result(result)
    assert list(message.outcomes) == [1, 2, 14]
    back = wire.from_batch_result(message, 3)
    assert back.outcomes.tolist() == [0, 1, 13]
    assert back.device_ids.dtype == np.uint64
    assert back.device_ids.tolist() == [7, 0, 9]
    bare = verification_pb2.VerifyBatchResponse(outcomes=[1, 1])
    assert wire.from_batch_result(bare, 2).device_ids.tolist() == [0, 0]
    with pytest.raises(InvalidInputError, match="device_ids: one per attempt"):
        wire.from_batch_result(
            verification_pb2.VerifyBatchResponse(outcomes=[1], device_ids=[1, 2]), 1
        )


@pytest.mark.parametrize(
    "message_type",
    [
        admin_pb2.GetLockoutStatusResponse,
        admin_pb2.UnlockResponse,
        verification_pb2.RecordPasswordFailureResponse,
    ],
)
def test_a_lockout_status_round_trips_in_each_message_that_carries_one(
    message_type: Any,
) -> None:
    for status in (LockoutStatus(3, None), LockoutStatus(10, 86_400.0)):
        message = wire.to_lockout_status(status, message_type)
        assert isinstance(message, message_type)
        assert wire.from_lockout_status(message) == status
    assert not wire.to_lockout_status(LockoutStatus(0, None), message_type).HasField("locked_until")


def test_withdrawal_limits_round_trip_and_unlimited_is_a_flag() -> None:
    for limits in (
        WithdrawalLimits(DeviceType.IB_KEY, 1_000_000, 1_000_000),
        WithdrawalLimits(DeviceType.DSC_PLUS, None, None),
        WithdrawalLimits(None, 50_000, 100_000),
    ):
        assert wire.from_withdrawal_limits(wire.to_withdrawal_limits(limits)) == limits
    assert wire.to_withdrawal_limits(WithdrawalLimits(DeviceType.GOLD, None, None)).unlimited


def test_a_push_and_an_activation_round_trip() -> None:
    push = PushChallenge(55, 3, 7, 1900)
    assert wire.from_push(wire.to_push(push)) == push
    done = Activated(DSC, "alice", b"S" * 32, b"I" * 16, "OCRA-1:HOTP-SHA1-8:QN06-PSHA1")
    message = wire.to_activated(done)
    assert isinstance(message, activation_pb2.CompleteActivationResponse)
    assert wire.from_activated(message) == done


def test_the_results_only_the_wire_has_round_trip_and_keep_secrets_out_of_repr() -> None:
    class Offer:
        payload, manual_code, expires_at = "SLS1:PAYLOAD", "K7QM-4TZ9-HX3P-AB", 1600.0

        def qr_png(self) -> bytes:
            return b"\x89PNG"

        def qr_svg(self) -> str:
            return "<svg/>"

    offer = wire.from_activation_offer(wire.to_activation_offer(Offer()))
    expires = datetime.fromtimestamp(1600.0, UTC)
    assert offer == wire.ActivationOffer(
        "SLS1:PAYLOAD", "K7QM-4TZ9-HX3P-AB", expires, b"\x89PNG", "<svg/>"
    )
    assert "PAYLOAD" not in repr(offer)
    assert "K7QM" not in repr(offer)
    card = wire.OnlineCard(DSC, b"png", b"pdf")
    assert wire.from_online_card(wire.to_online_card(card)) == card
    for level in (wire.SecurityLevel(1, DeviceType.DSC_PLUS), wire.SecurityLevel(0, None)):
        assert wire.from_security_level(wire.to_security_level(level)) == level


def test_a_sharing_request_round_trips_with_its_state_and_set_aside_devices() -> None:
    for state in SharingState:
        request = SharingRequest(3, "alice", "alice2", 7, state, (8, 9))
        message = wire.to_sharing_request(request)
        assert (message.request_id, list(message.set_aside_device_ids)) == (3, [8, 9])
        assert wire.from_sharing_request(message) == request
    assert wire.to_sharing_state("cancelled") == common_pb2.SHARING_STATE_CANCELLED
    with pytest.raises(InvalidInputError, match="state: must be one of pending, active"):
        wire.to_sharing_state("approved")
    with pytest.raises(InvalidInputError, match=r"sharing\.state: must be a known SharingState"):
        wire.from_sharing_request(common_pb2.SharingRequest(request_id=3))


@pytest.mark.parametrize(
    "message_type", [admin_pb2.EnrollDeviceRequest, admin_pb2.ImportDeviceRequest]
)
def test_an_enrollment_round_trips_in_both_messages_and_unset_options_are_none(
    message_type: Any,
) -> None:
    options = wire.EnrollOptions(
        secret=b"K" * 20,
        pin="4711",
        suite=None,
        serial="SCC-1",
        phone=None,
        shipped=True,
        replaces=7,
        replaces_lost=True,
    )
    message = wire.to_enrollment(message_type, "alice", DeviceType.SECURITY_CODE_CARD, options)
    assert isinstance(message, message_type)
    assert (message.username, message.suite, message.phone) == ("alice", "", "")
    assert wire.from_enrollment(message) == (DeviceType.SECURITY_CODE_CARD, options)
    bare = wire.from_enrollment(message_type(type=common_pb2.DEVICE_TYPE_GOLD))
    assert bare == (
        DeviceType.GOLD,
        wire.EnrollOptions(
            secret=None,
            pin=None,
            suite=None,
            serial=None,
            phone=None,
            shipped=False,
            replaces=None,
            replaces_lost=False,
        ),
    )
    with pytest.raises(InvalidInputError, match="type: must be a known DeviceType"):
        wire.from_enrollment(message_type(username="alice"))


def test_a_refused_value_is_never_quoted_even_in_the_chained_errors() -> None:
    for call in (
        lambda: wire.to_access("4711"),
        lambda: wire.to_purpose("4711"),  # type: ignore[arg-type]
        lambda: wire.to_decision("4711"),  # type: ignore[arg-type]
        lambda: wire.build_message(admin_pb2.EnrollDeviceRequest, username="a", pin=4711),
        lambda: wire.to_enrollment(
            admin_pb2.ImportDeviceRequest,
            "a",
            DeviceType.GOLD,
            wire.EnrollOptions(
                secret=None,
                pin=4711,  # type: ignore[typeddict-item]
                suite=None,
                serial=None,
                phone=None,
                shipped=False,
                replaces=None,
                replaces_lost=False,
            ),
        ),
    ):
        with pytest.raises(InvalidInputError) as caught:
            call()
        assert "4711" not in _everything_said(caught.value)
