"""The Client Portal's self-service over real gRPC (127.0.0.1, mutual TLS): PortalService
(online card, sharing requests, opt-out, device choice, own devices) is callable by the
gateway role; reactivation goes through VerificationService with the gateway role too;
client services approve sharing requests and import legacy devices (admin role only).
Refusals name the field (INVALID_ARGUMENT) or the reason (FAILED_PRECONDITION), and every
action leaves an audit line with its caller. The gateway client speaks all of it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from grpc_fixtures import CALL_TIMEOUT, InProcessServer, Pki, Stubs
from sls_core.api.v1 import admin_pb2, common_pb2, portal_pb2, verification_pb2
from sls_core.client import (
    ClientRefusedError,
    PermissionDeniedError,
    SlsClient,
    TlsSettings,
)
from sls_core.errors import InvalidInputError
from sls_core.server.config import TlsConfig
from sls_core.server.interceptors import required_role
from sls_core.simulator import dsc_response
from sls_core.values import DeviceState, DeviceType, Purpose, SharingState

pytest_plugins = ["grpc_fixtures"]

SECRET = bytes(range(1, 21))
OTHER_SECRET = bytes(range(2, 22))
PIN = "4711"
V = verification_pb2
P = portal_pb2
OK = common_pb2.OUTCOME_OK
ROLES = {"gateway1": "gateway", "ops": "admin"}
#: The same holder behind several usernames (SLS-RULES "Sharing": the same SSN).
HOLDER = admin_pb2.Identity(ssn="123-45-6789")


@pytest.fixture
def mtls(serve: Callable[..., InProcessServer], pki: Pki) -> InProcessServer:
    tls = TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca, require_client_auth=True
    )
    return serve(tls=tls, roles=ROLES)


@pytest.fixture
def admin(mtls: InProcessServer, pki: Pki) -> Stubs:
    return mtls.stubs(grpc.secure_channel(mtls.address, pki.credentials("ops")))


@pytest.fixture
def gateway(mtls: InProcessServer, pki: Pki) -> Stubs:
    return mtls.stubs(grpc.secure_channel(mtls.address, pki.credentials("gateway1")))


def user(admin: Stubs, name: str, identity: admin_pb2.Identity | None = None) -> None:
    request = admin_pb2.CreateUserRequest(username=name, identity=identity)
    admin.admin.CreateUser(request, timeout=CALL_TIMEOUT)


def dsc(admin: Stubs, name: str, secret: bytes = SECRET) -> common_pb2.Device:
    request = admin_pb2.EnrollDeviceRequest(
        username=name, type=common_pb2.DEVICE_TYPE_DSC_PLUS, secret=secret, pin=PIN
    )
    return admin.admin.EnrollDevice(request, timeout=CALL_TIMEOUT).device


def own_devices(stubs: Stubs, name: str) -> dict[int, common_pb2.Device]:
    found = stubs.portal.ListOwnDevices(P.ListOwnDevicesRequest(username=name))
    return {d.device_id: d for d in found.devices}


def challenge(stubs: Stubs, name: str, **fields: Any) -> V.IssueChallengeResponse:
    request = V.IssueChallengeRequest(username=name, **fields)
    return stubs.verification.IssueChallenge(request, timeout=CALL_TIMEOUT)


def sharing_proof(gateway: Stubs, owner: str, device_id: int) -> dict[str, str]:
    """The owner's answer to a sharing challenge from the device: the request's proof."""
    c = challenge(gateway, owner, device_id=device_id, purpose=common_pb2.PURPOSE_SHARING)
    assert (c.purpose, c.device_id) == (common_pb2.PURPOSE_SHARING, device_id)
    return {"token": c.token, "response": dsc_response(SECRET, PIN, c.challenge)}


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code(), str(refused.value.details())


def audit_lines(server: InProcessServer, event: str) -> list[dict[str, Any]]:
    text = server.config.audit_path.read_text()  # type: ignore[union-attr]
    return [line for line in map(json.loads, text.splitlines()) if line["event"] == event]


# -- roles -------------------------------------------------------------------------------


def test_every_portal_rpc_needs_the_gateway_role_and_the_new_admin_rpcs_need_admin() -> None:
    for method in P.DESCRIPTOR.services_by_name["PortalService"].methods:
        assert required_role(f"/sls.v1.PortalService/{method.name}") == "gateway", method.name
    for name in ("ApproveSharing", "ImportDevice"):
        assert required_role(f"/sls.v1.AdminService/{name}") == "admin"


def test_a_gateway_may_not_approve_sharing_nor_import_a_device(gateway: Stubs) -> None:
    for call in (
        lambda: gateway.admin.ApproveSharing(admin_pb2.ApproveSharingRequest(request_id=1)),
        lambda: gateway.admin.ImportDevice(
            admin_pb2.ImportDeviceRequest(username="ann", type=common_pb2.DEVICE_TYPE_GOLD)
        ),
    ):
        code, details = refusal(call)
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert details.startswith("role gateway may not call /sls.v1.AdminService/")


# -- online card and reactivation ------------------------------------------------------------


def test_a_gateway_gets_an_online_card_only_within_the_temporary_passcodes_window(
    mtls: InProcessServer, admin: Stubs, gateway: Stubs
) -> None:
    user(admin, "ann")
    permanent = dsc(admin, "ann")
    # The portal takes AdminService's messages for the same action.
    request = admin_pb2.IssueOnlineCardRequest(username="ann")
    code, details = refusal(lambda: gateway.portal.IssueOnlineCard(request))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("username: an online card is issued only within")

    passcode = admin.admin.IssueTemporaryPasscode(
        admin_pb2.IssueTemporaryPasscodeRequest(username="ann")
    ).passcode
    issued = gateway.portal.IssueOnlineCard(request, timeout=CALL_TIMEOUT)
    assert issued.device.type == common_pb2.DEVICE_TYPE_ONLINE_CARD
    assert issued.device.state == common_pb2.DEVICE_STATE_PENDING
    assert issued.device.expires_at.ToNanoseconds() / 1e9 > mtls.clock.now()
    assert issued.card_png.startswith(b"\x89PNG")
    assert issued.card_pdf.startswith(b"%PDF")
    devices = own_devices(gateway, "ann")
    assert devices[permanent.device_id].state == common_pb2.DEVICE_STATE_SUSPENDED
    assert devices[issued.device.device_id].state == common_pb2.DEVICE_STATE_PENDING

    (line,) = audit_lines(mtls, "portal.IssueOnlineCard")
    assert (line["caller"], line["username"], line["device_id"], line["outcome"]) == (
        "gateway1",
        "ann",
        issued.device.device_id,
        "OK",
    )
    assert passcode not in mtls.config.audit_path.read_text()  # type: ignore[union-attr]


def test_a_gateway_reactivates_a_suspended_device_and_that_ends_the_passcode_and_the_card(
    mtls: InProcessServer, admin: Stubs, gateway: Stubs
) -> None:
    user(admin, "bea")
    permanent = dsc(admin, "bea")
    # Client services: the device is unavailable, a temporary passcode suspends it.
    passcode = admin.admin.IssueTemporaryPasscode(
        admin_pb2.IssueTemporaryPasscodeRequest(username="bea")
    ).passcode
    card = gateway.portal.IssueOnlineCard(admin_pb2.IssueOnlineCardRequest(username="bea"))
    assert own_devices(gateway, "bea")[permanent.device_id].state == (
        common_pb2.DEVICE_STATE_SUSPENDED
    )
    # The device is back: the portal reactivates it by answering with it.
    c = challenge(
        gateway, "bea", device_id=permanent.device_id, purpose=common_pb2.PURPOSE_REACTIVATION
    )
    assert c.purpose == common_pb2.PURPOSE_REACTIVATION
    answer = V.VerifyRequest(
        username="bea",
        token=c.token,
        response=dsc_response(SECRET, PIN, c.challenge),
        purpose=common_pb2.PURPOSE_REACTIVATION,
    )
    assert gateway.verification.Verify(answer, timeout=CALL_TIMEOUT).outcome == OK
    devices = own_devices(gateway, "bea")
    assert devices[permanent.device_id].state == common_pb2.DEVICE_STATE_ACTIVE
    assert devices[card.device.device_id].state == common_pb2.DEVICE_STATE_REVOKED
    passcodes = [d for d in devices.values() if d.type == common_pb2.DEVICE_TYPE_TEMPORARY_PASSCODE]
    assert [d.state for d in passcodes] == [common_pb2.DEVICE_STATE_REVOKED]
    passcode_login = V.VerifyRequest(username="bea", response=passcode)
    assert gateway.verification.Verify(passcode_login, timeout=CALL_TIMEOUT).outcome != OK
    # The answer is used up: a second reactivation with it is no answer at all.
    assert gateway.verification.Verify(answer, timeout=CALL_TIMEOUT).outcome != OK

    reactivations = [a for a in audit_lines(mtls, "reactivate") if a["outcome"] == "OK"]
    assert [(a["caller"], a["username"], a["device_id"]) for a in reactivations] == [
        ("gateway1", "bea", permanent.device_id)
    ]


# -- sharing --------------------------------------------------------------------------------


def test_sharing_is_requested_with_proof_approved_by_client_services_and_cancelled(
    mtls: InProcessServer, admin: Stubs, gateway: Stubs
) -> None:
    user(admin, "cal", HOLDER)
    user(admin, "cal2", HOLDER)
    shared = dsc(admin, "cal")
    # The requester's own physical device: a legacy card, which arrives only by import.
    legacy = admin.admin.ImportDevice(
        admin_pb2.ImportDeviceRequest(
            username="cal2", type=common_pb2.DEVICE_TYPE_SECURITY_CODE_CARD, secret=OTHER_SECRET
        ),
        timeout=CALL_TIMEOUT,
    ).device
    assert legacy.state == common_pb2.DEVICE_STATE_ACTIVE

    asked = gateway.portal.RequestSharing(
        P.RequestSharingRequest(
            owner="cal",
            device_id=shared.device_id,
            with_username="cal2",
            needs_approval=True,
            **sharing_proof(gateway, "cal", shared.device_id),
        ),
        timeout=CALL_TIMEOUT,
    ).sharing
    assert (asked.owner, asked.requester, asked.device_id) == ("cal", "cal2", shared.device_id)
    assert asked.state == common_pb2.SHARING_STATE_PENDING
    assert list(asked.set_aside_device_ids) == [legacy.device_id]
    assert own_devices(gateway, "cal2")[legacy.device_id].state == (
        common_pb2.DEVICE_STATE_SUSPENDED
    )
    # Pending: the shared device does not answer for the requester yet.
    code, _ = refusal(lambda: challenge(gateway, "cal2"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT

    approve = admin_pb2.ApproveSharingRequest(request_id=asked.request_id)
    approved = admin.admin.ApproveSharing(approve, timeout=CALL_TIMEOUT).sharing
    assert approved.state == common_pb2.SHARING_STATE_ACTIVE
    login = challenge(gateway, "cal2")
    assert login.device_id == shared.device_id
    typed = dsc_response(SECRET, PIN, login.challenge)
    verify = V.VerifyRequest(username="cal2", token=login.token, response=typed)
    assert gateway.verification.Verify(verify, timeout=CALL_TIMEOUT).outcome == OK

    cancel = P.CancelSharingRequest(request_id=asked.request_id, username="cal2")
    missing = P.CancelSharingRequest(request_id=asked.request_id)
    assert refusal(lambda: gateway.portal.CancelSharing(missing))[0] is (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    cancelled = gateway.portal.CancelSharing(cancel, timeout=CALL_TIMEOUT).sharing
    assert cancelled.state == common_pb2.SHARING_STATE_CANCELLED
    assert list(cancelled.set_aside_device_ids) == [legacy.device_id]
    assert own_devices(gateway, "cal2")[legacy.device_id].state == common_pb2.DEVICE_STATE_ACTIVE
    for again in (
        lambda: admin.admin.ApproveSharing(approve),
        lambda: gateway.portal.CancelSharing(cancel),
    ):
        assert refusal(again) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "no such pending sharing request",
        )

    said = [
        (a["event"], a["caller"], a["username"], a["device_id"], a["owner"], a["state"])
        for event in ("portal.RequestSharing", "admin.ApproveSharing", "portal.CancelSharing")
        for a in audit_lines(mtls, event)
        if a["outcome"] == "OK"
    ]
    assert said == [
        ("portal.RequestSharing", "gateway1", "cal2", shared.device_id, "cal", "pending"),
        ("admin.ApproveSharing", "ops", "cal2", shared.device_id, "cal", "active"),
        ("portal.CancelSharing", "gateway1", "cal2", shared.device_id, "cal", "cancelled"),
    ]
    (imported,) = audit_lines(mtls, "admin.ImportDevice")
    assert (imported["caller"], imported["username"], imported["device_id"]) == (
        "ops",
        "cal2",
        legacy.device_id,
    )


def test_a_sharing_refusal_is_failed_precondition_with_the_reason_and_is_audited(
    mtls: InProcessServer, admin: Stubs, gateway: Stubs
) -> None:
    user(admin, "dan", HOLDER)
    user(admin, "dan2", HOLDER)
    user(admin, "zed", admin_pb2.Identity(ssn="987-65-4321"))
    shared = dsc(admin, "dan")

    def ask(with_username: str, token: str, response: str) -> tuple[grpc.StatusCode, str]:
        request = P.RequestSharingRequest(
            owner="dan",
            device_id=shared.device_id,
            with_username=with_username,
            token=token,
            response=response,
        )
        return refusal(lambda: gateway.portal.RequestSharing(request, timeout=CALL_TIMEOUT))

    proof = sharing_proof(gateway, "dan", shared.device_id)
    assert ask("zed", **proof) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "different identification information",
    )
    # A wrong answer from the owner is no proof, and a failed attempt like any other.
    typo = f"{(int(proof['response']) + 1) % 10**8:08d}"
    assert ask("dan2", token=proof["token"], response=typo) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "the owner did not prove possession of the device (wrong)",
    )
    lockout = gateway.policy.GetLockoutStatus(admin_pb2.GetLockoutStatusRequest(username="dan"))
    assert lockout.consecutive_failures == 1
    # A login challenge proves nothing for sharing.
    login = challenge(gateway, "dan")
    code, details = ask(
        "dan2", token=login.token, response=dsc_response(SECRET, PIN, login.challenge)
    )
    assert (code, details) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "the owner did not prove possession of the device (challenge_invalid)",
    )

    refused = audit_lines(mtls, "portal.RequestSharing")
    assert [(a["caller"], a["username"], a["device_id"]) for a in refused] == [
        ("gateway1", "zed", shared.device_id),
        ("gateway1", "dan2", shared.device_id),
        ("gateway1", "dan2", shared.device_id),
    ]
    assert refused[0]["outcome"] == "different identification information"
    assert refused[1]["outcome"].startswith("the owner did not prove possession")
    trail = mtls.config.audit_path.read_text()  # type: ignore[union-attr]
    assert typo not in trail
    assert proof["token"] not in trail


# -- opt-out, M2FS, own devices ----------------------------------------------------------------


def test_a_gateway_sets_the_users_opt_out_and_m2fs_choice_and_lists_their_devices(
    mtls: InProcessServer, admin: Stubs, gateway: Stubs
) -> None:
    user(admin, "eva")
    first, second = dsc(admin, "eva"), dsc(admin, "eva", OTHER_SECRET)
    assert set(own_devices(gateway, "eva")) == {first.device_id, second.device_id}
    code, details = refusal(lambda: challenge(gateway, "eva"))
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "device_id: the user has several active devices: choose one (M2FS)",
    )
    choose = admin_pb2.ChooseDeviceRequest(username="eva", device_id=second.device_id)
    gateway.portal.ChooseDevice(choose, timeout=CALL_TIMEOUT)
    assert challenge(gateway, "eva").device_id == second.device_id

    limits = admin_pb2.GetWithdrawalLimitsRequest(username="eva")
    assert gateway.policy.GetWithdrawalLimits(limits).unlimited
    opt_out = admin_pb2.SetOptOutRequest(username="eva", opted_out=True)
    gateway.portal.SetOptOut(opt_out, timeout=CALL_TIMEOUT)
    opted_out = gateway.policy.GetWithdrawalLimits(limits)
    assert (opted_out.unlimited, opted_out.per_day, opted_out.per_five_days) == (
        False,
        50_000,
        100_000,
    )
    gateway.portal.SetOptOut(admin_pb2.SetOptOutRequest(username="eva", opted_out=False))
    assert gateway.policy.GetWithdrawalLimits(limits).unlimited

    (chosen,) = audit_lines(mtls, "portal.ChooseDevice")
    assert (chosen["caller"], chosen["username"], chosen["device_id"]) == (
        "gateway1",
        "eva",
        second.device_id,
    )
    opt_outs = audit_lines(mtls, "portal.SetOptOut")
    assert [(a["caller"], a["username"], a["opted_out"]) for a in opt_outs] == [
        ("gateway1", "eva", True),
        ("gateway1", "eva", False),
    ]


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_is_invalid_argument_naming_the_field(admin: Stubs, gateway: Stubs) -> None:
    user(admin, "fay")
    device = dsc(admin, "fay")
    cases: list[tuple[Callable[[], object], str]] = [
        (
            lambda: gateway.portal.ListOwnDevices(P.ListOwnDevicesRequest(username="Fay Smith")),
            "username: ",
        ),
        (
            lambda: gateway.portal.ChooseDevice(
                admin_pb2.ChooseDeviceRequest(username="fay", device_id=999)
            ),
            "device_id: the user has no such device",
        ),
        (
            lambda: gateway.portal.SetOptOut(admin_pb2.SetOptOutRequest(username="nobody")),
            "username: no such user",
        ),
        (
            lambda: gateway.portal.CancelSharing(
                P.CancelSharingRequest(request_id=0, username="fay")
            ),
            "request_id: must be a positive integer",
        ),
        (
            lambda: gateway.portal.RequestSharing(
                P.RequestSharingRequest(owner="fay", device_id=0, with_username="fay")
            ),
            "device_id: the user has no such device",
        ),
        (
            lambda: admin.admin.ApproveSharing(admin_pb2.ApproveSharingRequest(request_id=0)),
            "request_id: must be a positive integer",
        ),
        (
            lambda: admin.admin.ImportDevice(admin_pb2.ImportDeviceRequest(username="fay")),
            "type: must be a known DeviceType",
        ),
        (
            lambda: admin.admin.ImportDevice(
                admin_pb2.ImportDeviceRequest(
                    username="fay", type=common_pb2.DEVICE_TYPE_GOLD, secret=b"short"
                )
            ),
            "secret: must be at least 16 bytes",
        ),
        (
            lambda: admin.admin.ImportDevice(
                admin_pb2.ImportDeviceRequest(
                    username="fay", type=common_pb2.DEVICE_TYPE_ONLINE_CARD, secret=SECRET
                )
            ),
            "device_type: issue temporary credentials with their own methods",
        ),
    ]
    for call, said in cases:
        code, details = refusal(call)
        unknown = "no such" in said  # a user or device that does not exist: NOT_FOUND
        want = grpc.StatusCode.NOT_FOUND if unknown else grpc.StatusCode.INVALID_ARGUMENT
        assert code is want, said
        assert details.startswith(said), (details, said)
    assert list(own_devices(gateway, "fay")) == [device.device_id]


def test_a_legacy_device_arrives_by_import_and_is_refused_as_a_new_one(admin: Stubs) -> None:
    user(admin, "gil")
    fields: dict[str, Any] = {
        "username": "gil",
        "type": common_pb2.DEVICE_TYPE_ALPINE,
        "secret": SECRET,
    }
    code, details = refusal(
        lambda: admin.admin.EnrollDevice(admin_pb2.EnrollDeviceRequest(**fields))
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "no longer issued" in details
    imported = admin.admin.ImportDevice(
        admin_pb2.ImportDeviceRequest(serial="ALP-1", **fields), timeout=CALL_TIMEOUT
    ).device
    assert (imported.type, imported.state, imported.serial) == (
        common_pb2.DEVICE_TYPE_ALPINE,
        common_pb2.DEVICE_STATE_ACTIVE,
        "ALP-1",
    )


# -- the gateway client ----------------------------------------------------------------------


def test_the_gateway_client_speaks_the_portal_and_not_the_admin_calls(
    mtls: InProcessServer, admin: Stubs, pki: Pki
) -> None:
    for name in ("hal", "hal2", "hal3"):
        user(admin, name, HOLDER)
    shared = dsc(admin, "hal")
    admin.admin.IssueTemporaryPasscode(admin_pb2.IssueTemporaryPasscodeRequest(username="hal2"))
    cert, key = pki.clients["gateway1"]
    tls = TlsSettings(ca_cert=pki.ca, client_cert=cert, client_key=key)
    with SlsClient(mtls.address, tls=tls) as client:
        card = client.portal_issue_online_card("hal2")
        assert (card.device.type, card.device.state) == (
            DeviceType.ONLINE_CARD,
            DeviceState.PENDING,
        )
        # hal2 now holds temporary devices: no sharing.
        c = client.issue_challenge("hal", device_id=shared.device_id, purpose=Purpose.SHARING)
        assert c.challenge is not None
        with pytest.raises(ClientRefusedError) as refused:
            client.request_sharing(
                "hal",
                shared.device_id,
                "hal2",
                token=c.token,
                response=dsc_response(SECRET, PIN, c.challenge),
            )
        assert refused.value.reason == "a temporary device is assigned"
        # The challenge was not used up by the refusal: hal3 holds no temporary device.
        asked = client.request_sharing(
            "hal",
            shared.device_id,
            "hal3",
            token=c.token,
            response=dsc_response(SECRET, PIN, c.challenge),
        )
        assert (asked.owner, asked.requester, asked.state) == ("hal", "hal3", SharingState.ACTIVE)
        assert [d.id for d in client.list_own_devices("hal3")] == [shared.device_id]
        cancelled = client.cancel_sharing(asked.id, username="hal3")
        assert cancelled.state is SharingState.CANCELLED
        assert client.list_own_devices("hal3") == []

        second = dsc(admin, "hal", OTHER_SECRET)
        client.portal_choose_device("hal", second.device_id)
        assert client.issue_challenge("hal").device_id == second.device_id
        client.portal_set_opt_out("hal", True)
        assert client.withdrawal_limits("hal").per_day == 50_000
        with pytest.raises(InvalidInputError) as bad:
            client.cancel_sharing(0, username="hal3")
        assert (bad.value.field, bad.value.rule) == ("request_id", "must be a positive integer")
        with pytest.raises(PermissionDeniedError):
            client.approve_sharing(asked.id)
        with pytest.raises(PermissionDeniedError):
            client.import_device("hal", DeviceType.GOLD, secret=SECRET)
        with pytest.raises(PermissionDeniedError):
            client.issue_online_card("hal")  # AdminService's: client services only
    callers = {a["caller"] for a in audit_lines(mtls, "portal.RequestSharing")}
    assert callers == {"gateway1"}
