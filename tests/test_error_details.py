"""Issue 13, "Conventions an operator expects": every gRPC error carries ``google.rpc.Status``
details (read here with grpcio-status, as a gateway would): an ``ErrorInfo`` with a stable
reason in domain ``sls.v1``, a ``BadRequest`` field violation for bad input, a ``RetryInfo``
where a retry helps; "no such user" is NOT_FOUND and a taken username ALREADY_EXISTS. The
client exposes the reason; the HTTP face answers 404 / 409 with it in the JSON body."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from grpc_fixtures import CALL_TIMEOUT, InProcessServer, Pki, Stubs
from http_fixtures import http_client, serve_http
from sls_core.api.v1 import activation_pb2, admin_pb2, common_pb2, verification_pb2
from sls_core.client import AlreadyExistsError, NotFoundError, SlsClient
from sls_core.devices import DeviceType
from sls_core.errors import AlreadyExistsError as DomainAlreadyExistsError
from sls_core.errors import InvalidInputError
from sls_core.server.config import TlsConfig
from sls_core.server.http_api import ApiError, http_context
from sls_core.server.status import DeadlinePassedError, abort_for
from sls_core.store import StoreUnavailableError

pytest_plugins = ["grpc_fixtures"]

SECRET = bytes(range(1, 21))
PIN = "4711"
V = verification_pb2


def refused(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=CALL_TIMEOUT)
    return error.value


def details_of(error: grpc.RpcError) -> dict[str, Any]:
    """The decoded details of a failed call, by kind: "info", "bad_request", "retry"."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details"
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    return unpack(status)


def unpack(status: status_pb2.Status) -> dict[str, Any]:
    found: dict[str, Any] = {}
    kinds: list[tuple[str, Any]] = [
        ("info", error_details_pb2.ErrorInfo),
        ("bad_request", error_details_pb2.BadRequest),
        ("retry", error_details_pb2.RetryInfo),
    ]
    for packed in status.details:
        for name, kind in kinds:
            message = kind()
            if packed.Unpack(message):
                assert name not in found, f"two {name} details"
                found[name] = message
    assert found["info"].domain == "sls.v1"
    return found


def test_bad_input_has_a_field_violation_and_a_reason(stubs: Stubs) -> None:
    error = refused(stubs.admin.CreateUser, admin_pb2.CreateUserRequest(username="Bob"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = details_of(error)
    assert found["info"].reason == "INVALID_INPUT"
    assert found["info"].metadata["field"] == "username"
    (violation,) = found["bad_request"].field_violations
    assert violation.field == "username"
    assert error.details() == f"username: {violation.description}"
    assert "retry" not in found


def test_no_such_user_is_not_found(stubs: Stubs) -> None:
    for call, request in [
        (stubs.verification.IssueChallenge, V.IssueChallengeRequest(username="zed")),
        (stubs.admin.ListDevices, admin_pb2.ListDevicesRequest(username="zed")),
        (
            stubs.activation.CreateActivation,
            activation_pb2.CreateActivationRequest(username="Zed"),
        ),
    ]:
        error = refused(call, request)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.NOT_FOUND,
            "username: no such user",
        )
        found = details_of(error)
        assert (found["info"].reason, found["info"].metadata["field"]) == (
            "USER_NOT_FOUND",
            "username",
        )
        assert set(found) == {"info"}


def test_no_such_device_and_no_such_push_are_not_found(stubs: Stubs) -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username="alice"))
    error = refused(
        stubs.admin.RevokeDevice, admin_pb2.RevokeDeviceRequest(username="alice", device_id=9)
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert details_of(error)["info"].reason == "DEVICE_NOT_FOUND"
    from sls_core.api.v1 import push_pb2

    error = refused(stubs.push.GetPushStatus, push_pb2.GetPushStatusRequest(challenge_id=12345))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "challenge_id: no such push",
    )
    assert details_of(error)["info"].reason == "PUSH_NOT_FOUND"


def test_a_taken_username_already_exists(stubs: Stubs) -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username="bob"))
    error = refused(stubs.admin.CreateUser, admin_pb2.CreateUserRequest(username="bob"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "username: already taken",
    )
    found = details_of(error)
    assert (found["info"].reason, found["info"].metadata["field"]) == (
        "USERNAME_TAKEN",
        "username",
    )


def test_a_verification_still_answers_an_unknown_user_with_an_outcome(stubs: Stubs) -> None:
    """SLS-RULES "Usernames": the verification answer does not change (an outcome, never
    an error that would tell a gateway more)."""
    for name in ("zed", "Alice"):
        answer = stubs.verification.VerifyBatch(
            V.VerifyBatchRequest(usernames=[name], tokens=["t"], responses=["12345678"]),
            timeout=CALL_TIMEOUT,
        )
        assert list(answer.outcomes) == [common_pb2.OUTCOME_UNKNOWN_USER]


def test_an_activation_refusal_names_its_reason(stubs: Stubs) -> None:
    error = refused(
        stubs.activation.CompleteActivation,
        activation_pb2.CompleteActivationRequest(
            payload="SLS1:AAAA", app_public=b"\1" * 32, push_public=b"\2" * 32
        ),
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "not a valid activation code",
    )
    assert details_of(error)["info"].reason == "ACTIVATION_INVALID"


def test_an_oversized_batch_is_resource_exhausted_without_retry(
    serve: Callable[..., InProcessServer],
) -> None:
    stubs = serve(max_batch_items=5).stubs()
    n = 6
    error = refused(
        stubs.verification.VerifyBatch,
        V.VerifyBatchRequest(usernames=["a"] * n, tokens=["t"] * n, responses=["1"] * n),
    )
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    found = details_of(error)
    assert found["info"].reason == "BATCH_TOO_LARGE"
    assert "retry" not in found


def test_a_user_over_the_text_limit_is_told_when_to_retry(stubs: Stubs) -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username="erin"))
    stubs.admin.EnrollDevice(
        admin_pb2.EnrollDeviceRequest(
            username="erin", type=common_pb2.DEVICE_TYPE_SMS, phone="+41791234567"
        )
    )
    request = V.IssueChallengeRequest(username="erin")
    for _ in range(5):
        stubs.verification.IssueChallenge(request, timeout=CALL_TIMEOUT)
    error = refused(stubs.verification.IssueChallenge, request)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    found = details_of(error)
    assert found["info"].reason == "QUOTA_EXCEEDED"
    delay = found["retry"].retry_delay.ToSeconds()
    assert f"retry in {delay} s" in (error.details() or "")


def test_a_caller_over_its_quota_is_rate_limited_with_when_to_retry(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve(quotas={"CreateActivation": 1})
    server.sls.create_user("alice")
    stubs = server.stubs()
    request = activation_pb2.CreateActivationRequest(username="alice")
    stubs.activation.CreateActivation(request, timeout=CALL_TIMEOUT)
    error = refused(stubs.activation.CreateActivation, request)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    found = details_of(error)
    assert found["info"].reason == "RATE_LIMITED"
    delay = found["retry"].retry_delay.ToSeconds()
    assert delay >= 1
    assert (error.details() or "").endswith(f"retry in {delay} s")


def test_an_unwritable_audit_trail_is_unavailable_with_a_short_retry(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve(audit_log=Path("/dev/full"))
    server.sls.create_user("alice")
    server.sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    c = server.sls.issue_challenge("alice")
    request = V.VerifyRequest(username="alice", token=c.token, response="00000000")
    error = refused(server.stubs().verification.Verify, request)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    found = details_of(error)
    assert found["info"].reason == "AUDIT_UNAVAILABLE"
    assert 0 < found["retry"].retry_delay.ToNanoseconds() <= 5 * 10**9


def test_a_role_refusal_names_its_reason(serve: Callable[..., InProcessServer], pki: Pki) -> None:
    tls = TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca, require_client_auth=True
    )
    server = serve(tls=tls, roles={"gateway1": "gateway", "ops": "admin"})
    gateway = server.stubs(grpc.secure_channel(server.address, pki.credentials("gateway1")))
    error = refused(gateway.admin.CreateUser, admin_pb2.CreateUserRequest(username="eve"))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert details_of(error)["info"].reason == "PERMISSION_DENIED"


class _Context:
    """Records the status a handler ends its call with."""

    status: grpc.Status | None = None

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise grpc.aio.AbortError()


def _status_for(error: BaseException) -> tuple[grpc.Status, dict[str, Any]]:
    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(abort_for(error, context, "Test"))  # type: ignore[arg-type]
    assert context.status is not None
    ((key, value),) = context.status.trailing_metadata
    assert key == "grpc-status-details-bin"
    return context.status, unpack(status_pb2.Status.FromString(value))


@pytest.mark.parametrize(
    ("error", "code", "reason", "retry"),
    [
        (
            StoreUnavailableError("the store cannot be reached"),
            grpc.StatusCode.UNAVAILABLE,
            "STORE_UNAVAILABLE",
            True,
        ),
        (DeadlinePassedError(), grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_PASSED", False),
        (RuntimeError("a bug"), grpc.StatusCode.INTERNAL, "INTERNAL", False),
    ],
)
def test_every_other_error_has_a_reason(
    error: BaseException, code: grpc.StatusCode, reason: str, retry: bool
) -> None:
    status, found = _status_for(error)
    assert status.code is code
    assert found["info"].reason == reason
    assert ("retry" in found) is retry
    if code is grpc.StatusCode.INTERNAL:
        assert status.details == "internal error"  # never the exception's text


def test_the_client_raises_not_found_and_already_exists_with_the_reason(
    server: InProcessServer,
) -> None:
    with SlsClient(server.address, linger=0, timeout=CALL_TIMEOUT) as client:
        client.create_user("bob")
        with pytest.raises(AlreadyExistsError) as taken:
            client.create_user("bob")
        assert (taken.value.error_reason, taken.value.details) == (
            "USERNAME_TAKEN",
            "username: already taken",
        )
        with pytest.raises(NotFoundError) as missing:
            client.issue_challenge("zed")
        assert missing.value.error_reason == "USER_NOT_FOUND"
        assert missing.value.retry_after is None
        with pytest.raises(InvalidInputError):  # bad input stays InvalidInputError
            client.create_user("Bob")


def test_http_answers_404_and_409_with_the_reason(serve: Callable[..., InProcessServer]) -> None:
    server = serve_http(serve)
    http = http_client(server)
    status, answer = http.post("/v1/challenges", {"username": "zed"})
    assert status == 404
    assert answer["error"] == {
        "code": "NOT_FOUND",
        "reason": "USER_NOT_FOUND",
        "message": "username: no such user",
        "field": "username",
        "rule": "no such user",
    }
    status, answer = http.post("/v1/challenges", {"username": 7})
    assert (status, answer["error"]["reason"], answer["error"]["field"]) == (
        400,
        "INVALID_INPUT",
        "username",
    )
    # No HTTP route creates users: the same mapping, straight through the status table.
    with pytest.raises(ApiError) as taken:
        asyncio.run(
            abort_for(
                DomainAlreadyExistsError("username", "already taken", "USERNAME_TAKEN"),
                http_context(),
                "test",
            )
        )
    assert taken.value.http_status == 409
    assert taken.value.body()["error"]["reason"] == "USERNAME_TAKEN"


def test_privacyidea_answers_an_unknown_user_as_before(
    serve: Callable[..., InProcessServer],
) -> None:
    """The privacyIDEA face keeps privacyIDEA's shapes: a parameter error, HTTP 400."""
    http = http_client(serve_http(serve))
    status, answer = http.post("/validate/triggerchallenge", {"user": "zed"})
    assert status == 400
    assert answer["result"]["status"] is False
    assert answer["result"]["error"]["code"] == 905
