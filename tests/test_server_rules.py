"""The SLS rules' additions to the API, through real gRPC (127.0.0.1): gateways report wrong
passwords (RecordPasswordFailure, gateway role) and client services unlock (Unlock, admin
role, audited with who did it); step-up challenges name their task; a suspended device is
reactivated by answering with it; a replacement for a lost device; the legacy Alpine card.
The gateway client (``sls_core.client``) speaks all of it as well."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from grpc_fixtures import CALL_TIMEOUT, InProcessServer, Pki, Stubs
from sls_core.api.v1 import admin_pb2, common_pb2, verification_pb2
from sls_core.client import PermissionDeniedError, SlsClient
from sls_core.clock import DAY
from sls_core.server.audit import read_records
from sls_core.server.config import TlsConfig
from sls_core.simulator import dsc_response
from sls_core.values import LockoutStatus, LoginOutcome, Purpose

pytest_plugins = ["grpc_fixtures"]

SECRET = bytes(range(1, 21))
PIN = "4711"
V = verification_pb2
OK = common_pb2.OUTCOME_OK
ROLES = {"gateway1": "gateway", "ops": "admin"}


@pytest.fixture
def mtls(serve: Callable[..., InProcessServer], pki: Pki) -> InProcessServer:
    tls = TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca, require_client_auth=True
    )
    return serve(tls=tls, roles=ROLES)


def tls_stubs(server: InProcessServer, pki: Pki, client: str) -> Stubs:
    return server.stubs(grpc.secure_channel(server.address, pki.credentials(client)))


def with_dsc(stubs: Stubs, name: str, **fields: Any) -> common_pb2.Device:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username=name), timeout=CALL_TIMEOUT)
    return enroll(stubs, name, secret=SECRET, pin=PIN, **fields)


def enroll(stubs: Stubs, name: str, **fields: Any) -> common_pb2.Device:
    fields.setdefault("type", common_pb2.DEVICE_TYPE_DSC_PLUS)
    request = admin_pb2.EnrollDeviceRequest(username=name, **fields)
    return stubs.admin.EnrollDevice(request, timeout=CALL_TIMEOUT).device


def challenge(stubs: Stubs, name: str, **fields: Any) -> V.IssueChallengeResponse:
    request = V.IssueChallengeRequest(username=name, **fields)
    return stubs.verification.IssueChallenge(request, timeout=CALL_TIMEOUT)


def answer(stubs: Stubs, name: str, c: V.IssueChallengeResponse, **fields: Any) -> int:
    response = dsc_response(SECRET, PIN, c.challenge)
    request = V.VerifyRequest(username=name, token=c.token, response=response, **fields)
    return stubs.verification.Verify(request, timeout=CALL_TIMEOUT).outcome


def states(stubs: Stubs, name: str) -> dict[int, int]:
    devices = stubs.admin.ListDevices(admin_pb2.ListDevicesRequest(username=name)).devices
    return {d.device_id: d.state for d in devices}


def audit_lines(server: InProcessServer) -> list[dict[str, Any]]:
    return list(read_records(server.config.audit_path))  # type: ignore[arg-type]


# -- lockout: reported passwords and unlock -------------------------------------------------


def test_a_gateway_reports_wrong_passwords_until_locked_and_only_an_admin_unlocks(
    mtls: InProcessServer, pki: Pki
) -> None:
    admin = tls_stubs(mtls, pki, "ops")
    gateway = tls_stubs(mtls, pki, "gateway1")
    with_dsc(admin, "alice")
    report = V.RecordPasswordFailureRequest(username="alice")
    counts = []
    for _ in range(10):
        status = gateway.verification.RecordPasswordFailure(report, timeout=CALL_TIMEOUT)
        counts.append(status.consecutive_failures)
    assert counts == list(range(1, 11))
    locked_until = status.locked_until.ToNanoseconds() / 1e9
    assert locked_until == pytest.approx(mtls.clock.now() + DAY)
    # Locked: even the right second factor is refused now (one rule for every way in).
    assert answer(gateway, "alice", challenge(gateway, "alice")) == common_pb2.OUTCOME_LOCKED
    unlock = admin_pb2.UnlockRequest(username="alice")
    with pytest.raises(grpc.RpcError) as denied:
        gateway.admin.Unlock(unlock, timeout=CALL_TIMEOUT)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.details().startswith("role gateway may not call /sls.v1.AdminService/")
    status = admin.admin.Unlock(unlock, timeout=CALL_TIMEOUT)
    assert (status.consecutive_failures, status.HasField("locked_until")) == (0, False)
    lockout = gateway.policy.GetLockoutStatus(admin_pb2.GetLockoutStatusRequest(username="alice"))
    assert (lockout.consecutive_failures, lockout.HasField("locked_until")) == (0, False)
    assert answer(gateway, "alice", challenge(gateway, "alice")) == OK

    lines = audit_lines(mtls)
    failures = [line for line in lines if line["event"] == "password_failure"]
    # Each report is a counted wrong attempt (the tenth locks: its count says 10).
    assert [(f["caller"], f["username"], f["outcome"]) for f in failures] == [
        ("gateway1", "alice", "WRONG")
    ] * 10
    assert [f["consecutive_failures"] for f in failures] == list(range(1, 11))
    unlocks = [line for line in lines if line["event"] == "admin.Unlock"]
    assert [(u["caller"], u["username"], u["outcome"]) for u in unlocks] == [("ops", "alice", "OK")]


def test_a_password_failure_for_a_bad_username_is_refused_and_not_audited(
    server: InProcessServer,
) -> None:
    stubs = server.stubs()
    with pytest.raises(grpc.RpcError) as refused:
        stubs.verification.RecordPasswordFailure(
            V.RecordPasswordFailureRequest(username="hunter2 password"), timeout=CALL_TIMEOUT
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("username: invalid characters")
    assert "hunter2" not in server.config.audit_path.read_text()  # type: ignore[union-attr]


# -- step-up -----------------------------------------------------------------------------


def test_a_step_up_challenge_names_its_task_and_its_answer_is_valid_for_that_task_only(
    server: InProcessServer,
) -> None:
    stubs = server.stubs()
    with_dsc(stubs, "bob")
    c = challenge(stubs, "bob", task="withdrawal")
    assert (c.purpose, c.task) == (common_pb2.PURPOSE_STEP_UP, "withdrawal")
    assert answer(stubs, "bob", c, task="withdrawal") == OK
    # Another task, or a login, does not accept a step-up answer; nor the reverse.
    c = challenge(stubs, "bob", task="withdrawal")
    assert answer(stubs, "bob", c, task="bank_instructions") == (
        common_pb2.OUTCOME_CHALLENGE_INVALID
    )
    assert answer(stubs, "bob", c) == common_pb2.OUTCOME_CHALLENGE_INVALID
    login = challenge(stubs, "bob")
    assert (login.purpose, login.task) == (common_pb2.PURPOSE_LOGIN, "")
    assert answer(stubs, "bob", login, task="withdrawal") == common_pb2.OUTCOME_CHALLENGE_INVALID
    # A batch of step-up answers names its one task.
    cs = [challenge(stubs, "bob", task="withdrawal") for _ in range(2)]
    batch = stubs.verification.VerifyBatch(
        V.VerifyBatchRequest(
            usernames=["bob", "bob"],
            tokens=[c.token for c in cs],
            responses=[dsc_response(SECRET, PIN, c.challenge) for c in cs],
            task="withdrawal",
        ),
        timeout=CALL_TIMEOUT,
    )
    assert list(batch.outcomes) == [OK, OK]
    events = [(a["event"], a["outcome"]) for a in audit_lines(server) if a["username"] == "bob"]
    assert events.count(("step_up", "OK")) == 3


# -- device life cycle -------------------------------------------------------------------


def test_a_suspended_device_is_reactivated_by_answering_a_reactivation_challenge(
    server: InProcessServer,
) -> None:
    stubs = server.stubs()
    dsc = with_dsc(stubs, "carl")
    # A temporary passcode suspends the permanent device (SLS-RULES "Device life cycle").
    passcode = stubs.admin.IssueTemporaryPasscode(
        admin_pb2.IssueTemporaryPasscodeRequest(username="carl")
    ).passcode
    assert states(stubs, "carl")[dsc.device_id] == common_pb2.DEVICE_STATE_SUSPENDED
    c = challenge(stubs, "carl", device_id=dsc.device_id, purpose=common_pb2.PURPOSE_REACTIVATION)
    assert c.purpose == common_pb2.PURPOSE_REACTIVATION
    assert answer(stubs, "carl", c, purpose=common_pb2.PURPOSE_REACTIVATION) == OK
    assert states(stubs, "carl")[dsc.device_id] == common_pb2.DEVICE_STATE_ACTIVE
    # Reactivation ends the temporary passcode.
    passcode_login = V.VerifyRequest(username="carl", response=passcode)
    assert stubs.verification.Verify(passcode_login, timeout=CALL_TIMEOUT).outcome != OK
    assert any(a["event"] == "reactivate" and a["outcome"] == "OK" for a in audit_lines(server))


def test_a_replacement_for_a_lost_device_takes_it_out_of_service_at_once(
    stubs: Stubs,
) -> None:
    lost = with_dsc(stubs, "dora")
    spare = {"secret": bytes(range(2, 22)), "pin": PIN, "shipped": True}
    kept = enroll(stubs, "dora", replaces=lost.device_id, **spare)
    assert states(stubs, "dora")[lost.device_id] == common_pb2.DEVICE_STATE_ACTIVE
    stubs.admin.RevokeDevice(
        admin_pb2.RevokeDeviceRequest(username="dora", device_id=kept.device_id)
    )
    spare["secret"] = bytes(range(3, 23))
    replacement = enroll(stubs, "dora", replaces=lost.device_id, replaces_lost=True, **spare)
    assert replacement.state == common_pb2.DEVICE_STATE_PENDING
    assert states(stubs, "dora")[lost.device_id] != common_pb2.DEVICE_STATE_ACTIVE
    with pytest.raises(grpc.RpcError):
        challenge(stubs, "dora", device_id=lost.device_id)


def test_the_legacy_alpine_card_is_known_on_the_wire_but_no_longer_issued(stubs: Stubs) -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username="eve"))
    with pytest.raises(grpc.RpcError) as refused:
        enroll(stubs, "eve", type=common_pb2.DEVICE_TYPE_ALPINE, secret=SECRET)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("device_type: ")
    assert "no longer issued" in refused.value.details()


# -- the gateway client ------------------------------------------------------------------


def test_the_gateway_client_reports_failures_unlocks_and_steps_up(
    server: InProcessServer,
) -> None:
    with_dsc(server.stubs(), "fay")
    with SlsClient(server.address, linger=0.001) as client:
        for _ in range(9):
            client.record_password_failure("fay")
        status = client.record_password_failure("fay")
        assert status.consecutive_failures == 10
        assert status.locked
        assert client.lockout_status("fay") == status
        assert client.unlock("fay") == LockoutStatus(0, None)
        step_up = client.issue_challenge("fay", task="withdrawal")
        assert (step_up.purpose, step_up.task) == (Purpose.STEP_UP, "withdrawal")
        assert step_up.challenge is not None
        typed = dsc_response(SECRET, PIN, step_up.challenge)
        verdict = client.verify("fay", step_up.token, typed, task="withdrawal")  # coalesced
        assert verdict.outcome is LoginOutcome.OK
        again = client.issue_challenge("fay", task="withdrawal")
        assert again.challenge is not None
        typed = dsc_response(SECRET, PIN, again.challenge)
        result = client.verify_batch(["fay"], [again.token], [typed], task="withdrawal")
        assert result[0] is LoginOutcome.OK


def test_a_gateway_client_may_report_failures_but_not_unlock(
    mtls: InProcessServer, pki: Pki
) -> None:
    from sls_core.client import TlsSettings

    with_dsc(tls_stubs(mtls, pki, "ops"), "gus")
    cert, key = pki.clients["gateway1"]
    tls = TlsSettings(ca_cert=pki.ca, client_cert=cert, client_key=key)
    with SlsClient(mtls.address, tls=tls) as client:
        assert client.record_password_failure("gus").consecutive_failures == 1
        with pytest.raises(PermissionDeniedError):
            client.unlock("gus")
