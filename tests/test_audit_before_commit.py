"""Issue 11, finding 5 for every audited action that changes state: client services'
(AdminService) and the portal's (PortalService) actions write their audit line inside the
store transaction, before it commits. With the trail unwritable the call is UNAVAILABLE,
nothing changed in the store and health turns NOT_SERVING; once the trail can be written
again the same call is applied and audited once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from grpc_fixtures import CALL_TIMEOUT, InProcessServer, Stubs, health_turns
from sls_core.api.v1 import admin_pb2, common_pb2, portal_pb2
from sls_core.errors import InvalidInputError
from sls_core.login import LOCKOUT_FAILURES, SecureLogin
from sls_core.server.audit import read_records
from sls_core.simulator import dsc_response
from sls_core.values import DeviceType, Identity, Purpose

pytest_plugins = ["grpc_fixtures"]

SECRET = bytes(range(1, 21))
OTHER_SECRET = bytes(range(2, 22))
PIN = "4711"
#: The same holder behind two usernames (SLS-RULES "Sharing": the same SSN).
HOLDER = Identity(ssn="123-45-6789")
A = admin_pb2
P = portal_pb2


def dsc(sls: SecureLogin, name: str, secret: bytes = SECRET) -> int:
    return sls.enroll_device(name, DeviceType.DSC_PLUS, secret=secret, pin=PIN).id


def holder_pair(sls: SecureLogin) -> int:
    """``own`` (with a DSC+) and ``other``, one holder: the shared device's id."""
    sls.create_user("own", HOLDER)
    sls.create_user("other", HOLDER)
    return dsc(sls, "own")


def proof(sls: SecureLogin, device_id: int, *, wrong: bool = False) -> dict[str, str]:
    """The owner's answer to a sharing challenge from the device (or a typo of it)."""
    c = sls.issue_challenge("own", device_id=device_id, purpose=Purpose.SHARING)
    assert c.challenge is not None
    response = dsc_response(SECRET, PIN, c.challenge)
    if wrong:
        response = f"{(int(response) + 1) % 10**8:08d}"
    return {"token": c.token, "response": response}


def user_exists(sls: SecureLogin, name: str) -> bool:
    try:
        sls.user(name)
    except InvalidInputError:
        return False
    return True


@dataclass(frozen=True)
class Action:
    """One audited action: what it needs, the call, and the part of the store it changes."""

    event: str
    arrange: Callable[[SecureLogin], Any]
    call: Callable[[Stubs, Any], object]
    state: Callable[[SecureLogin], object]
    #: With a working trail: the FAILED_PRECONDITION reason of a refusal that still
    #: changes the store (a wrong proof counts as a failed attempt), else None (success).
    refused: str | None = None


def _two_devices(sls: SecureLogin) -> int:
    sls.create_user("ann")
    dsc(sls, "ann")
    return dsc(sls, "ann", OTHER_SECRET)


def _one_device(sls: SecureLogin) -> int:
    sls.create_user("ann")
    return dsc(sls, "ann")


def _suspended(sls: SecureLogin) -> int:
    device_id = _one_device(sls)
    sls.issue_temporary_passcode("ann")
    return device_id


def _locked(sls: SecureLogin) -> None:
    sls.create_user("ann")
    for _ in range(LOCKOUT_FAILURES):
        sls.record_password_failure("ann")
    assert sls.lockout_status("ann").locked_until is not None


def _pending_sharing(sls: SecureLogin) -> int:
    shared = holder_pair(sls)
    asked = sls.request_sharing("own", shared, "other", needs_approval=True, **proof(sls, shared))
    return asked.id


def _active_sharing(sls: SecureLogin) -> int:
    shared = holder_pair(sls)
    return sls.request_sharing("own", shared, "other", **proof(sls, shared)).id


def _request(wrong: bool) -> Callable[[SecureLogin], P.RequestSharingRequest]:
    def arrange(sls: SecureLogin) -> P.RequestSharingRequest:
        shared = holder_pair(sls)
        return P.RequestSharingRequest(
            owner="own", device_id=shared, with_username="other", **proof(sls, shared, wrong=wrong)
        )

    return arrange


def _devices(name: str) -> Callable[[SecureLogin], object]:
    return lambda sls: sls.devices(name)


ACTIONS = [
    Action(
        "admin.CreateUser",
        lambda sls: None,
        lambda s, _: s.admin.CreateUser(A.CreateUserRequest(username="ann")),
        lambda sls: user_exists(sls, "ann"),
    ),
    Action(
        "admin.EnrollDevice",
        lambda sls: sls.create_user("ann"),
        lambda s, _: s.admin.EnrollDevice(
            A.EnrollDeviceRequest(
                username="ann", type=common_pb2.DEVICE_TYPE_DSC_PLUS, secret=SECRET, pin=PIN
            )
        ),
        _devices("ann"),
    ),
    Action(
        "admin.ImportDevice",
        lambda sls: sls.create_user("ann"),
        lambda s, _: s.admin.ImportDevice(
            A.ImportDeviceRequest(
                username="ann", type=common_pb2.DEVICE_TYPE_SECURITY_CODE_CARD, secret=SECRET
            )
        ),
        _devices("ann"),
    ),
    Action(
        "admin.ChooseDevice",
        _two_devices,
        lambda s, device_id: s.admin.ChooseDevice(
            A.ChooseDeviceRequest(username="ann", device_id=device_id)
        ),
        lambda sls: sls.user("ann").preferred_device,
    ),
    Action(
        "portal.ChooseDevice",
        _two_devices,
        lambda s, device_id: s.portal.ChooseDevice(
            A.ChooseDeviceRequest(username="ann", device_id=device_id)
        ),
        lambda sls: sls.user("ann").preferred_device,
    ),
    Action(
        "admin.ShareDevice",
        holder_pair,
        lambda s, shared: s.admin.ShareDevice(
            A.ShareDeviceRequest(owner="own", device_id=shared, with_username="other")
        ),
        _devices("other"),
    ),
    Action(
        "admin.RevokeDevice",
        _one_device,
        lambda s, device_id: s.admin.RevokeDevice(
            A.RevokeDeviceRequest(username="ann", device_id=device_id)
        ),
        _devices("ann"),
    ),
    Action(
        "admin.ReactivateDevice",
        _suspended,
        lambda s, device_id: s.admin.ReactivateDevice(
            A.ReactivateDeviceRequest(username="ann", device_id=device_id)
        ),
        _devices("ann"),
    ),
    Action(
        "admin.IssueTemporaryPasscode",
        _one_device,
        lambda s, _: s.admin.IssueTemporaryPasscode(
            A.IssueTemporaryPasscodeRequest(username="ann")
        ),
        _devices("ann"),
    ),
    Action(
        "admin.IssueOnlineCard",
        _suspended,
        lambda s, _: s.admin.IssueOnlineCard(A.IssueOnlineCardRequest(username="ann")),
        _devices("ann"),
    ),
    Action(
        "portal.IssueOnlineCard",
        _suspended,
        lambda s, _: s.portal.IssueOnlineCard(A.IssueOnlineCardRequest(username="ann")),
        _devices("ann"),
    ),
    Action(
        "admin.SetOptOut",
        lambda sls: sls.create_user("ann"),
        lambda s, _: s.admin.SetOptOut(A.SetOptOutRequest(username="ann", opted_out=True)),
        lambda sls: sls.user("ann").opted_out,
    ),
    Action(
        "portal.SetOptOut",
        lambda sls: sls.create_user("ann"),
        lambda s, _: s.portal.SetOptOut(A.SetOptOutRequest(username="ann", opted_out=True)),
        lambda sls: sls.user("ann").opted_out,
    ),
    Action(
        "admin.Unlock",
        _locked,
        lambda s, _: s.admin.Unlock(A.UnlockRequest(username="ann")),
        lambda sls: sls.lockout_status("ann"),
    ),
    Action(
        "portal.RequestSharing",
        _request(wrong=False),
        lambda s, request: s.portal.RequestSharing(request),
        lambda sls: (sls.devices("other"), sls.lockout_status("own")),
    ),
    Action(
        "portal.RequestSharing",
        _request(wrong=True),
        lambda s, request: s.portal.RequestSharing(request),
        lambda sls: sls.lockout_status("own"),
        refused="the owner did not prove possession of the device (wrong)",
    ),
    Action(
        "admin.ApproveSharing",
        _pending_sharing,
        lambda s, request_id: s.admin.ApproveSharing(
            A.ApproveSharingRequest(request_id=request_id)
        ),
        _devices("other"),
    ),
    Action(
        "portal.CancelSharing",
        _active_sharing,
        lambda s, request_id: s.portal.CancelSharing(
            P.CancelSharingRequest(request_id=request_id, username="other")
        ),
        _devices("other"),
    ),
]


def _id(action: Action) -> str:
    return action.event + (" refused" if action.refused else "")


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """The audit file's path, a link to /dev/full (every write fails with ENOSPC) until
    :func:`repair` makes it a file."""
    path = tmp_path / "audit.jsonl"
    path.symlink_to("/dev/full")
    return path


def repair(server: InProcessServer, path: Path) -> None:
    """Space again: a real file at the path, opened afresh (what SIGHUP does)."""
    path.unlink()
    audit = server.server.audit
    assert audit is not None
    audit.reopen()


@pytest.mark.parametrize("action", ACTIONS, ids=_id)
def test_an_action_the_trail_cannot_hold_is_unavailable_with_nothing_applied(
    serve: Callable[..., InProcessServer], trail: Path, action: Action
) -> None:
    server = serve(audit_log=trail)
    sls = server.sls
    arranged = action.arrange(sls)
    before = action.state(sls)
    stubs = server.stubs()

    with pytest.raises(grpc.RpcError) as refused:
        action.call(stubs, arranged)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == "the audit trail cannot be written: nothing was applied"
    assert action.state(sls) == before  # nothing was applied
    assert health_turns(stubs, health_pb2.HealthCheckResponse.NOT_SERVING)

    repair(server, trail)
    if action.refused is None:
        action.call(stubs, arranged)  # a retry is safe: now it is applied
    else:
        with pytest.raises(grpc.RpcError) as refused:
            action.call(stubs, arranged)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details() == action.refused
    assert action.state(sls) != before
    lines = [r for r in read_records(trail) if r["event"] == action.event]
    assert [r["outcome"] for r in lines] == [action.refused or "OK"]


def test_an_activation_refusal_the_trail_cannot_hold_uses_nothing_up(
    serve: Callable[..., InProcessServer], trail: Path
) -> None:
    """A refused IB Key activation uses its offer up (SLS-RULES "IB Key"): that is state,
    so its audit line is written before the commit too. With the trail unwritable the
    refusal is UNAVAILABLE and the offer stays usable; once the trail is back, the refusal
    is committed and audited once."""
    from sls_core import activation
    from sls_core.api.v1 import activation_pb2
    from sls_core.simulator import SimulatedApp

    server = serve(audit_log=trail)
    server.sls.create_user("ib")
    app = SimulatedApp(None)  # its first activation through the domain: no trail needed
    app.activate(server.sls.ibkey, payload=server.sls.ibkey.create_activation("ib").payload)
    offer = server.sls.ibkey.create_activation("ib")
    stubs = server.stubs()
    _, app_public = activation.x25519_keypair()
    again = activation_pb2.CompleteActivationRequest(
        app_public=bytes(app_public), push_public=app.push_public, payload=offer.payload
    )

    with pytest.raises(grpc.RpcError) as refused:  # the same phone again: already enrolled
        stubs.activation.CompleteActivation(again, timeout=CALL_TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == "the audit trail cannot be written: nothing was applied"

    repair(server, trail)
    with pytest.raises(grpc.RpcError) as refused:  # the offer was not used up: same refusal
        stubs.activation.CompleteActivation(again, timeout=CALL_TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "already enrolled" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as used:  # now it is used up
        stubs.activation.CompleteActivation(again, timeout=CALL_TIMEOUT)
    assert "already used or expired" in (used.value.details() or "")
    lines = [r["outcome"] for r in read_records(trail) if r["event"] == "activation"]
    assert lines == ["already enrolled", "already used or expired"]
