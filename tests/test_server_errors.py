"""Bad input of every kind through real gRPC: the right status code, "field: rule" details,
and nothing changed (a refused call leaves the store as it was: challenges still unused,
no device half-enrolled, activation offers not used up). Limits: batch size, message size,
deadlines."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_fixtures import CALL_TIMEOUT, GrpcIbKey, InProcessServer, Stubs
from sls_core.api.v1 import (
    activation_pb2,
    admin_pb2,
    common_pb2,
    push_pb2,
    verification_pb2,
)
from sls_core.simulator import SimulatedApp, dsc_response

pytest_plugins = ["grpc_fixtures"]

SECRET = bytes(range(1, 21))
PIN = "4711"
V = verification_pb2
OK = common_pb2.OUTCOME_OK


def refused(call: Callable[..., Any], request: Any, **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=kw.pop("timeout", CALL_TIMEOUT), **kw)
    return error.value


def with_dsc(stubs: Stubs, name: str = "alice") -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username=name))
    stubs.admin.EnrollDevice(
        admin_pb2.EnrollDeviceRequest(
            username=name, type=common_pb2.DEVICE_TYPE_DSC_PLUS, secret=SECRET, pin=PIN
        )
    )


def challenge(stubs: Stubs, name: str = "alice") -> V.IssueChallengeResponse:
    return stubs.verification.IssueChallenge(V.IssueChallengeRequest(username=name))


def still_usable(stubs: Stubs, c: V.IssueChallengeResponse, name: str = "alice") -> bool:
    answer = dsc_response(SECRET, PIN, c.challenge)
    request = V.VerifyRequest(username=name, token=c.token, response=answer)
    return stubs.verification.Verify(request, timeout=CALL_TIMEOUT).outcome == OK


@pytest.mark.parametrize(
    ("request_", "details"),
    [
        (
            admin_pb2.CreateUserRequest(username="Alice"),
            "username: invalid characters: only lower-case letters and digits (1-64)",
        ),
        (
            admin_pb2.CreateUserRequest(username=""),
            "username: invalid characters: only lower-case letters and digits (1-64)",
        ),
        (
            admin_pb2.CreateUserRequest(username="a" * 65),
            "username: invalid characters: only lower-case letters and digits (1-64)",
        ),
        (
            admin_pb2.CreateUserRequest(username="bob\x00"),
            "username: invalid characters: only lower-case letters and digits (1-64)",
        ),
    ],
)
def test_invalid_usernames_are_refused_and_no_user_is_created(
    stubs: Stubs, request_: admin_pb2.CreateUserRequest, details: str
) -> None:
    error = refused(stubs.admin.CreateUser, request_)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == details
    lookup = refused(stubs.admin.ListDevices, admin_pb2.ListDevicesRequest(username="bob"))
    assert lookup.details() == "username: no such user"


def test_a_taken_username(stubs: Stubs) -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username="bob"))
    error = refused(stubs.admin.CreateUser, admin_pb2.CreateUserRequest(username="bob"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "username: already taken",
    )


@pytest.mark.parametrize(
    ("fields", "details"),
    [
        ({"type": common_pb2.DEVICE_TYPE_UNSPECIFIED}, "type: must be a known DeviceType"),
        ({"type": 42}, "type: must be a known DeviceType"),
        (
            {"type": common_pb2.DEVICE_TYPE_DSC_PLUS, "secret": SECRET, "pin": "47"},
            "pin: a DSC+ PIN is exactly 4 digits",
        ),
        (
            {"type": common_pb2.DEVICE_TYPE_DSC_PLUS, "secret": SECRET},
            "pin: required by this device's suite",
        ),
        (
            {"type": common_pb2.DEVICE_TYPE_DSC_PLUS, "secret": b"short", "pin": PIN},
            "secret: must be at least 16 bytes",
        ),
        (
            {"type": common_pb2.DEVICE_TYPE_SMS, "phone": "0791234567"},
            "phone: must be E.164: '+' then 8 to 15 digits",
        ),
        (
            {"type": common_pb2.DEVICE_TYPE_TEMPORARY_PASSCODE},
            "device_type: issue temporary credentials with their own methods",
        ),
        (
            {"type": common_pb2.DEVICE_TYPE_SMS, "phone": "+41791234567", "shipped": True},
            "shipped: only physical devices are shipped",
        ),
        (
            {"type": common_pb2.DEVICE_TYPE_DSC_PLUS, "pin": PIN, "replaces": 999},
            "device_id: the user has no such device",
        ),
        (
            {"type": common_pb2.DEVICE_TYPE_DSC_PLUS, "pin": PIN, "suite": "OCRA-2:nope"},
            None,
        ),
    ],
)
def test_bad_enrollments_are_refused_and_enroll_nothing(
    stubs: Stubs, fields: dict[str, Any], details: str | None
) -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username="carol"))
    error = refused(
        stubs.admin.EnrollDevice, admin_pb2.EnrollDeviceRequest(username="carol", **fields)
    )
    unknown = details is not None and "no such" in details
    assert error.code() is (
        grpc.StatusCode.NOT_FOUND if unknown else grpc.StatusCode.INVALID_ARGUMENT
    )
    if details is not None:
        assert error.details() == details
    else:
        assert error.details().startswith("suite: ")
    assert PIN not in error.details()
    devices = stubs.admin.ListDevices(admin_pb2.ListDevicesRequest(username="carol")).devices
    assert list(devices) == []


def test_challenges_refused_for_unknown_users_bad_purposes_and_passcodes(stubs: Stubs) -> None:
    error = refused(stubs.verification.IssueChallenge, V.IssueChallengeRequest(username="zed"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "username: no such user",
    )
    with_dsc(stubs)
    error = refused(
        stubs.verification.IssueChallenge,
        V.IssueChallengeRequest(username="alice", purpose=9),  # type: ignore[arg-type]
    )
    assert error.details() == "purpose: must be a known Purpose value"
    error = refused(
        stubs.verification.IssueChallenge, V.IssueChallengeRequest(username="alice", device_id=77)
    )
    assert error.details() == "device_id: the user has no such device"


def test_a_bad_access_value_refuses_the_call_and_uses_no_challenge(stubs: Stubs) -> None:
    with_dsc(stubs)
    c = challenge(stubs)
    answer = dsc_response(SECRET, PIN, c.challenge)
    error = refused(
        stubs.verification.Verify,
        V.VerifyRequest(username="alice", token=c.token, response=answer, access=7),  # type: ignore[arg-type]
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "access: must be a known Access value",
    )
    assert answer not in error.details()
    assert still_usable(stubs, c)


def test_batch_columns_of_different_lengths_refuse_the_whole_batch_before_any_work(
    stubs: Stubs,
) -> None:
    with_dsc(stubs)
    c = challenge(stubs)
    answer = dsc_response(SECRET, PIN, c.challenge)
    for usernames, tokens, responses in [
        (["alice", "alice"], [c.token], [answer, answer]),
        (["alice"], [c.token], [answer, answer]),
        (["alice"], [], [answer]),
    ]:
        error = refused(
            stubs.verification.VerifyBatch,
            V.VerifyBatchRequest(usernames=usernames, tokens=tokens, responses=responses),
        )
        assert (error.code(), error.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "tokens: usernames, tokens and responses must have the same length",
        )
    assert still_usable(stubs, c)


def test_an_oversized_batch_is_resource_exhausted_and_applies_nothing(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve(max_batch_items=5)
    stubs = server.stubs()
    with_dsc(stubs)
    c = challenge(stubs)
    answer = dsc_response(SECRET, PIN, c.challenge)
    error = refused(
        stubs.verification.VerifyBatch,
        V.VerifyBatchRequest(usernames=["alice"] * 6, tokens=[c.token] * 6, responses=[answer] * 6),
    )
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "usernames: at most 5 items per batch (got 6)"
    five = stubs.verification.VerifyBatch(
        V.VerifyBatchRequest(usernames=["alice"] * 5, tokens=[c.token] * 5, responses=[answer] * 5)
    )
    assert list(five.outcomes) == [OK] + [common_pb2.OUTCOME_REPLAYED] * 4


def test_a_message_over_the_size_limit_is_resource_exhausted(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve(max_message_bytes=16 * 1024)
    stubs = server.stubs()
    with_dsc(stubs)
    c = challenge(stubs)
    error = refused(
        stubs.verification.VerifyBatch,
        V.VerifyBatchRequest(
            usernames=["alice"] * 2000, tokens=[c.token] * 2000, responses=["12345678"] * 2000
        ),
    )
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert still_usable(stubs, c)


def test_activation_bad_input_leaves_the_offer_usable(stubs: Stubs) -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username="dan"))
    offer = stubs.activation.CreateActivation(
        activation_pb2.CreateActivationRequest(username="dan")
    )
    complete = stubs.activation.CompleteActivation
    error = refused(complete, activation_pb2.CompleteActivationRequest(app_public=b"\1" * 32))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "code: give payload or manual_code",
    )
    for fields, details in [
        ({"app_public": b"\1" * 31, "push_public": b"\2" * 32}, "app_public: must be 32 bytes"),
        ({"app_public": b"\1" * 32, "push_public": b""}, "push_public: must be 32 bytes"),
        (
            {"app_public": b"\1" * 32, "push_public": b"\2" * 32, "pin": "1234567"},
            "pin: an IB Key PIN is 4 to 6 letters, digits or special characters",
        ),
    ]:
        error = refused(
            complete, activation_pb2.CompleteActivationRequest(payload=offer.payload, **fields)
        )
        assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, details)
        assert "1234567" not in error.details()
    error = refused(
        complete,
        activation_pb2.CompleteActivationRequest(
            payload="SLS1:AAAA", app_public=b"\1" * 32, push_public=b"\2" * 32
        ),
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "not a valid activation code",
    )
    # None of that used the offer up.
    SimulatedApp(None).activate(GrpcIbKey(stubs), qr_png=offer.qr_png, pin="1234")
    error = refused(
        stubs.activation.CreateActivation, activation_pb2.CreateActivationRequest(username="Dan")
    )
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "username: no such user")


def test_push_bad_input(stubs: Stubs) -> None:
    with_dsc(stubs)
    error = refused(stubs.push.CreatePush, push_pb2.CreatePushRequest(username="alice"))
    assert error.details() == "device_id: the user has no active IB Key"
    error = refused(
        stubs.push.GetPushStatus,
        push_pb2.GetPushStatusRequest(challenge_id=1, wait=Duration(seconds=-1)),
    )
    assert error.details() == "wait: must be 0 or more"
    error = refused(
        stubs.push.GetPushStatus,
        push_pb2.GetPushStatusRequest(challenge_id=1, wait=Duration(seconds=1, nanos=-1)),
    )
    assert error.details().startswith("wait: must be a Duration")
    error = refused(stubs.push.GetPushStatus, push_pb2.GetPushStatusRequest(challenge_id=12345))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "challenge_id: no such push",
    )
    error = refused(
        stubs.push.ListPendingPushes, push_pb2.ListPendingPushesRequest(push_public=b"x")
    )
    assert error.details() == "push_public: must be 32 bytes"
    unknown = stubs.push.AnswerPush(push_pb2.AnswerPushRequest(challenge_id=999, signature=b""))
    assert unknown.outcome == common_pb2.OUTCOME_CHALLENGE_INVALID


def test_push_answer_without_a_decision_is_malformed_and_leaves_it_pending(stubs: Stubs) -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username="eve"))
    offer = stubs.activation.CreateActivation(
        activation_pb2.CreateActivationRequest(username="eve")
    )
    app = SimulatedApp(None)
    app.activate(GrpcIbKey(stubs), qr_png=offer.qr_png)
    push = stubs.push.CreatePush(push_pb2.CreatePushRequest(username="eve")).push
    answer = stubs.push.AnswerPush(
        push_pb2.AnswerPushRequest(challenge_id=push.challenge_id, signature=b"\0" * 64)
    )
    assert answer.outcome == common_pb2.OUTCOME_MALFORMED
    assert app.answer_pushes(GrpcIbKey(stubs)) == [(push.challenge_id, 0)]


def test_policy_and_admin_bad_input(stubs: Stubs) -> None:
    error = refused(stubs.policy.GetSessionLength, admin_pb2.GetSessionLengthRequest(unlock="eye"))
    assert error.details() == "unlock: must be pin, passcode, fingerprint, face or biometric"
    error = refused(
        stubs.policy.GetWithdrawalLimits, admin_pb2.GetWithdrawalLimitsRequest(username="x y")
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    with_dsc(stubs)
    for call, request_ in [
        (stubs.admin.RevokeDevice, admin_pb2.RevokeDeviceRequest(username="alice", device_id=9)),
        (stubs.admin.ChooseDevice, admin_pb2.ChooseDeviceRequest(username="alice", device_id=9)),
        (
            stubs.admin.ReactivateDevice,
            admin_pb2.ReactivateDeviceRequest(username="alice", device_id=9),
        ),
    ]:
        error = refused(call, request_)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.NOT_FOUND,
            "device_id: the user has no such device",
        )


def test_a_bad_message_in_a_stream_ends_it_with_invalid_argument_after_earlier_answers(
    stubs: Stubs,
) -> None:
    with_dsc(stubs)
    c = challenge(stubs)
    answer = dsc_response(SECRET, PIN, c.challenge)
    requests = [
        V.VerifyBatchRequest(usernames=["alice"], tokens=[c.token], responses=[answer]),
        V.VerifyBatchRequest(usernames=["alice"], tokens=[], responses=[answer]),
    ]
    call = stubs.verification.VerifyStream(iter(requests), timeout=CALL_TIMEOUT)
    first = next(call)
    assert list(first.outcomes) == [OK]
    with pytest.raises(grpc.RpcError) as error:
        next(call)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_work_whose_deadline_passed_while_queued_is_refused_before_the_store(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve(threads=1, inline_max_items=0)  # every batch waits for the thread
    stubs = server.stubs()
    with_dsc(stubs)
    c = challenge(stubs)
    answer = dsc_response(SECRET, PIN, c.challenge)
    release = threading.Event()
    blocker = server.server.executor.submit(release.wait, CALL_TIMEOUT)
    try:
        error = refused(
            stubs.verification.VerifyBatch,
            V.VerifyBatchRequest(usernames=["alice"], tokens=[c.token], responses=[answer]),
            timeout=0.3,
        )
        assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
        blocker.result(CALL_TIMEOUT)
    assert still_usable(stubs, c)


def test_a_call_without_a_deadline_gets_the_default_one(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve(threads=1, inline_max_items=0, default_deadline_seconds=0.2)
    stubs = server.stubs()
    with_dsc(stubs)
    c = challenge(stubs)
    answer = dsc_response(SECRET, PIN, c.challenge)
    release = threading.Event()
    blocker = server.server.executor.submit(release.wait, CALL_TIMEOUT)
    try:
        # No client deadline: the server's default one passes while the call is queued.
        future = stubs.verification.Verify.future(
            V.VerifyRequest(username="alice", token=c.token, response=answer)
        )
        with pytest.raises(grpc.RpcError) as error:
            future.result(timeout=CALL_TIMEOUT)
        assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert error.value.details() == "the deadline passed before the work started"
    finally:
        release.set()
        blocker.result(CALL_TIMEOUT)
    assert still_usable(stubs, c)


def test_a_deadline_too_short_for_the_call_is_deadline_exceeded(stubs: Stubs) -> None:
    """gRPC carries a deadline in whole units, so the server may still see a sliver of it and
    verify in time while the client has given up: then the answer was applied whole (the
    challenge is used), otherwise not at all. What the server refuses on its side is tested
    above, deterministically."""
    with_dsc(stubs)
    c = challenge(stubs)
    answer = dsc_response(SECRET, PIN, c.challenge)
    request = V.VerifyRequest(username="alice", token=c.token, response=answer)
    reply = None
    code = grpc.StatusCode.OK
    try:
        reply = stubs.verification.Verify(request, timeout=0.000001)
    except grpc.RpcError as error:
        code = error.code()
    if reply is None:
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED
        allowed_next = (OK, common_pb2.OUTCOME_REPLAYED)  # applied whole, or not at all
    else:
        # Rarely the call beats even this deadline: then it was applied, whole.
        assert reply.outcome == OK
        allowed_next = (common_pb2.OUTCOME_REPLAYED,)
    again = V.VerifyRequest(username="alice", token=c.token, response=answer)
    assert stubs.verification.Verify(again).outcome in allowed_next


# -- hardening: malformed messages and out-of-range ids (issue 11, finding 9) -------------


def _all_methods() -> list[tuple[str, Any, bool]]:
    """Every sls.v1 RPC: its path, its request message class, and whether it streams."""
    from sls_core.api.v1 import portal_pb2

    found = []
    for module in (verification_pb2, activation_pb2, push_pb2, admin_pb2, portal_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                request = method.input_type.full_name
                found.append((path, request, method.client_streaming))
    return found


METHODS = _all_methods()
#: Bytes that are no protobuf message at all: a truncated varint, a truncated
#: length-delimited field, a wire type that does not exist.
NOT_MESSAGES = [b"\x08", b"\x0a\x05ab", b"\x0f\x00"]


def _send_raw(server: InProcessServer, path: str, streaming: bool, data: bytes) -> grpc.RpcError:
    channel = grpc.insecure_channel(server.address)
    try:
        if streaming:
            call = channel.stream_stream(path)
            with pytest.raises(grpc.RpcError) as raised:
                list(call(iter([data]), timeout=CALL_TIMEOUT))
        else:
            call = channel.unary_unary(path)
            with pytest.raises(grpc.RpcError) as raised:
                call(data, timeout=CALL_TIMEOUT)
        return raised.value
    finally:
        channel.close()


@pytest.mark.parametrize(("path", "message", "streaming"), METHODS, ids=[m[0] for m in METHODS])
def test_bytes_that_are_not_the_request_are_invalid_argument_naming_the_message(
    server: InProcessServer, path: str, message: str, streaming: bool
) -> None:
    for data in NOT_MESSAGES:
        error = _send_raw(server, path, streaming, data)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (path, data, error.details())
        assert error.details() == f"request: not a valid {message} message"


def test_invalid_utf8_in_a_string_field_is_invalid_argument(server: InProcessServer) -> None:
    username_not_utf8 = b"\x0a\x02\xff\xfe"  # VerifyRequest field 1 (username), 2 bytes
    error = _send_raw(server, "/sls.v1.VerificationService/Verify", False, username_not_utf8)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "request: not a valid sls.v1.VerifyRequest message"


def test_a_malformed_request_is_logged_like_any_other_call(
    server: InProcessServer, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="sls_core.server.access")
    import time

    _send_raw(server, "/sls.v1.VerificationService/Verify", False, b"\x0a\x02\xff\xfe")

    def logged() -> list[dict[str, Any]]:
        return [
            getattr(r, "fields", {}) for r in caplog.records if r.name == "sls_core.server.access"
        ]

    end = time.monotonic() + CALL_TIMEOUT  # the line follows the status out
    while not logged() and time.monotonic() < end:
        time.sleep(0.01)
    (line,) = logged()
    assert (line["method"], line["code"]) == (
        "/sls.v1.VerificationService/Verify",
        "INVALID_ARGUMENT",
    )


def test_a_push_id_beyond_the_store_range_is_invalid_argument_naming_the_field(
    stubs: Stubs,
) -> None:
    big = 2**64 - 1
    for call, request in (
        (
            stubs.push.AnswerPush,
            push_pb2.AnswerPushRequest(challenge_id=big, signature=b"s" * 64),
        ),
        (stubs.push.GetPushStatus, push_pb2.GetPushStatusRequest(challenge_id=big)),
    ):
        error = refused(call, request)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("challenge_id: ")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=st.sampled_from(METHODS), data=st.binary(max_size=64))
def test_any_bytes_sent_to_any_rpc_get_a_status_that_names_the_problem(
    server: InProcessServer, method: tuple[str, str, bool], data: bytes
) -> None:
    """Property: whatever the bytes, no RPC answers UNKNOWN or INTERNAL (a traceback)."""
    path, _, streaming = method
    channel = grpc.insecure_channel(server.address)
    code = grpc.StatusCode.OK
    try:
        if streaming:
            list(channel.stream_stream(path)(iter([data]), timeout=CALL_TIMEOUT))
        else:
            channel.unary_unary(path)(data, timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        code = e.code()
    finally:
        channel.close()
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), path
