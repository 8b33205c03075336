"""An in-process fake sls.v1 server for the client tests (no tests here).

Deterministic: a response of digits ``n`` verifies to ``LoginOutcome(n % 14)`` on device
``n + 1000``; anything else is MALFORMED on device 0. Each method can be scripted to fail
its next calls with given statuses (:meth:`FakeSls.fail_next`), and every request is
recorded, so tests can count calls (retries) and look at batches. PortalService's calls are
recorded as ``"Portal.<Method>"`` (some share a name with AdminService's).
"""

# ruff: noqa: N802 - servicer methods carry the RPC names

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

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
from sls_core.values import LoginOutcome

#: A username whose calls take this long (deadline tests).
SLOW_USER = "slow"
SLOW_SECONDS = 1.0
#: A batch holding this username is refused as a whole (batch-failure tests).
BOOM_USER = "boom"
BYE_USER = "bye"
#: A batch holding this username is answered with one outcome too few (protocol errors).
SHORT_USER = "short"
#: Sharing with this username is refused (FAILED_PRECONDITION with the reason).
STRANGER = "stranger"
#: A sharing request id that is not pending.
GONE_REQUEST = 404


def expected(response: str) -> tuple[LoginOutcome, int]:
    """What the fake answers for ``response``: (outcome, device id)."""
    if not response.isdigit():
        return LoginOutcome.MALFORMED, 0
    n = int(response)
    return LoginOutcome(n % len(LoginOutcome)), n + 1000


def wire(outcome: LoginOutcome) -> common_pb2.Outcome.ValueType:
    """The proto enum of a domain outcome (its value + 1)."""
    return common_pb2.Outcome.Value(f"OUTCOME_{outcome.name}")


def at(seconds: int, nanos: int = 0) -> Timestamp:
    """A Timestamp ``seconds`` (and ``nanos``) after the Unix epoch."""
    return Timestamp(seconds=seconds, nanos=nanos)


def device(device_id: int = 7) -> common_pb2.Device:
    return common_pb2.Device(
        device_id=device_id,
        type=common_pb2.DEVICE_TYPE_DSC_PLUS,
        state=common_pb2.DEVICE_STATE_ACTIVE,
        serial="DSC-0007",
        issued_at=at(100),
        activated_at=at(200, 250_000_000),
        security_level=1,
    )


def online_card() -> admin_pb2.IssueOnlineCardResponse:
    card = device(13)
    card.type = common_pb2.DEVICE_TYPE_ONLINE_CARD
    return admin_pb2.IssueOnlineCardResponse(device=card, card_png=b"png", card_pdf=b"pdf")


def sharing(
    request_id: int, state: common_pb2.SharingState.ValueType, requester: str = "alice2"
) -> common_pb2.SharingRequest:
    return common_pb2.SharingRequest(
        request_id=request_id,
        owner="alice",
        requester=requester,
        device_id=7,
        state=state,
        set_aside_device_ids=[8],
    )


def decided(
    fake: FakeSls, method: str, request: Any, context: Any, state: Any
) -> common_pb2.SharingRequest:
    fake.enter(method, request, context)
    if request.request_id == GONE_REQUEST:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no such pending sharing request")
    return sharing(request.request_id, state)


@dataclass
class FakeSls:
    """The servers' shared state: scripted failures and a record of every call."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    requests: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, list[tuple[grpc.StatusCode, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def fail_next(
        self, method: str, code: grpc.StatusCode, details: str = "", times: int = 1
    ) -> None:
        with self.lock:
            self.failures[method].extend([(code, details)] * times)

    def batches(self) -> list[verification_pb2.VerifyBatchRequest]:
        with self.lock:
            return list(self.requests["VerifyBatch"])

    def enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        """Records the call; aborts it if a failure is scripted."""
        with self.lock:
            self.calls[method] += 1
            self.requests[method].append(request)
            scripted = self.failures[method].pop(0) if self.failures[method] else None
        if scripted is not None:
            context.abort(*scripted)


class Verification(verification_pb2_grpc.VerificationServiceServicer):
    def __init__(self, fake: FakeSls) -> None:
        self.fake = fake

    def IssueChallenge(self, request: Any, context: Any) -> Any:
        self.fake.enter("IssueChallenge", request, context)
        if request.username == "card":
            return verification_pb2.IssueChallengeResponse(
                token="tok-card",  # noqa: S106 - a fake token
                device_id=9,
                device_type=common_pb2.DEVICE_TYPE_SECURITY_CODE_CARD,
                expires_at=at(1300),
                card_indices=[3, 42],
            )
        return verification_pb2.IssueChallengeResponse(
            token=f"tok-{request.username}",
            device_id=request.device_id or 7,
            device_type=common_pb2.DEVICE_TYPE_DSC_PLUS,
            expires_at=at(1300, 500_000_000),
            challenge="123456",
            # As the server: the purpose the challenge was issued for, and its task.
            purpose=request.purpose
            or (common_pb2.PURPOSE_STEP_UP if request.task else common_pb2.PURPOSE_LOGIN),
            task=request.task,
        )

    def Verify(self, request: Any, context: Any) -> Any:
        self.fake.enter("Verify", request, context)
        if request.username == SLOW_USER:
            time.sleep(SLOW_SECONDS)
        outcome, device_id = expected(request.response)
        return verification_pb2.VerifyResponse(
            outcome=wire(outcome), message=outcome.message, device_id=device_id
        )

    def VerifyBatch(self, request: Any, context: Any) -> Any:
        self.fake.enter("VerifyBatch", request, context)
        return self._answer(request, context)

    def _answer(self, request: Any, context: Any) -> Any:
        if BOOM_USER in request.usernames:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "usernames: refused by the fake")
        if SLOW_USER in request.usernames:
            time.sleep(SLOW_SECONDS)
        answers = [expected(r) for r in request.responses]
        if SHORT_USER in request.usernames:
            answers.pop()
        return verification_pb2.VerifyBatchResponse(
            outcomes=[wire(o) for o, _ in answers], device_ids=[d for _, d in answers]
        )

    def RecordPasswordFailure(self, request: Any, context: Any) -> Any:
        self.fake.enter("RecordPasswordFailure", request, context)
        return verification_pb2.RecordPasswordFailureResponse(
            consecutive_failures=10, locked_until=at(86_400)
        )

    def VerifyStream(self, request_iterator: Any, context: Any) -> Any:
        """Each message a batch, answered in order, like the server. ``BOOM_USER`` aborts
        the stream; ``BYE_USER`` ends it as a server shutting down does."""
        with self.fake.lock:
            self.fake.calls["VerifyStream.open"] += 1
        for request in request_iterator:
            self.fake.enter("VerifyStream", request, context)
            if BYE_USER in request.usernames:
                return
            yield self._answer(request, context)


class Activation(activation_pb2_grpc.ActivationServiceServicer):
    def __init__(self, fake: FakeSls) -> None:
        self.fake = fake

    def CreateActivation(self, request: Any, context: Any) -> Any:
        self.fake.enter("CreateActivation", request, context)
        return activation_pb2.CreateActivationResponse(
            payload="SLS1:PAYLOADSECRET",
            manual_code="K7QM-4TZ9-HX3P-AB",
            expires_at=at(1600),
            qr_png=b"\x89PNG fake",
            qr_svg="<svg/>",
        )

    def CompleteActivation(self, request: Any, context: Any) -> Any:
        self.fake.enter("CompleteActivation", request, context)
        if request.manual_code == "USED":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "already used or expired")
        return activation_pb2.CompleteActivationResponse(
            device=device(11),
            username="alice",
            server_public=b"S" * 32,
            session_id=b"I" * 16,
            suite="OCRA-1:HOTP-SHA1-8:QN06-PSHA1",
        )

    def Recover(self, request: Any, context: Any) -> Any:
        self.fake.enter("Recover", request, context)
        if request.recovery_pin == "zzzz":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "wrong recovery PIN")
        return activation_pb2.CompleteActivationResponse(
            device=device(11),
            username=request.username,
            server_public=b"S" * 32,
            session_id=b"I" * 16,
            suite="OCRA-1:HOTP-SHA1-8:QN06-PSHA1",
        )

    def SendSmsActivation(self, request: Any, context: Any) -> Any:
        self.fake.enter("SendSmsActivation", request, context)
        return activation_pb2.SendSmsActivationResponse(expires_at=at(1700, 500_000_000))


class Push(push_pb2_grpc.PushServiceServicer):
    def __init__(self, fake: FakeSls) -> None:
        self.fake = fake

    def CreatePush(self, request: Any, context: Any) -> Any:
        self.fake.enter("CreatePush", request, context)
        push = push_pb2.Push(
            challenge_id=55, user_id=3, device_id=request.device_id or 7, expires_at=at(1900)
        )
        return push_pb2.CreatePushResponse(push=push)

    def ListPendingPushes(self, request: Any, context: Any) -> Any:
        self.fake.enter("ListPendingPushes", request, context)
        return push_pb2.ListPendingPushesResponse(
            pushes=[push_pb2.Push(challenge_id=55, user_id=3, device_id=7, expires_at=at(1900))]
        )

    def AnswerPush(self, request: Any, context: Any) -> Any:
        self.fake.enter("AnswerPush", request, context)
        outcome = (
            common_pb2.OUTCOME_OK
            if request.decision == push_pb2.DECISION_APPROVE
            else common_pb2.OUTCOME_DECLINED
        )
        return push_pb2.AnswerPushResponse(outcome=outcome)

    def GetPushStatus(self, request: Any, context: Any) -> Any:
        self.fake.enter("GetPushStatus", request, context)
        status = (
            push_pb2.PUSH_STATUS_APPROVED
            if request.wait.ToNanoseconds() > 0
            else push_pb2.PUSH_STATUS_PENDING
        )
        return push_pb2.GetPushStatusResponse(status=status)


class Admin(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, fake: FakeSls) -> None:
        self.fake = fake

    def CreateUser(self, request: Any, context: Any) -> Any:
        self.fake.enter("CreateUser", request, context)
        return admin_pb2.CreateUserResponse(user_id=42)

    def EnrollDevice(self, request: Any, context: Any) -> Any:
        self.fake.enter("EnrollDevice", request, context)
        return admin_pb2.EnrollDeviceResponse(device=device(12))

    def ImportDevice(self, request: Any, context: Any) -> Any:
        self.fake.enter("ImportDevice", request, context)
        imported = device(14)
        imported.type = request.type
        return admin_pb2.ImportDeviceResponse(device=imported)

    def ListDevices(self, request: Any, context: Any) -> Any:
        self.fake.enter("ListDevices", request, context)
        return admin_pb2.ListDevicesResponse(devices=[device(7), device(8)])

    def ChooseDevice(self, request: Any, context: Any) -> Any:
        self.fake.enter("ChooseDevice", request, context)
        return admin_pb2.ChooseDeviceResponse()

    def ShareDevice(self, request: Any, context: Any) -> Any:
        self.fake.enter("ShareDevice", request, context)
        if request.with_username == "weaker":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "less secure device")
        return admin_pb2.ShareDeviceResponse()

    def ApproveSharing(self, request: Any, context: Any) -> Any:
        answer = decided(
            self.fake, "ApproveSharing", request, context, common_pb2.SHARING_STATE_ACTIVE
        )
        return admin_pb2.ApproveSharingResponse(sharing=answer)

    def RevokeDevice(self, request: Any, context: Any) -> Any:
        self.fake.enter("RevokeDevice", request, context)
        return admin_pb2.RevokeDeviceResponse()

    def ReactivateDevice(self, request: Any, context: Any) -> Any:
        self.fake.enter("ReactivateDevice", request, context)
        return admin_pb2.ReactivateDeviceResponse()

    def IssueTemporaryPasscode(self, request: Any, context: Any) -> Any:
        self.fake.enter("IssueTemporaryPasscode", request, context)
        return admin_pb2.IssueTemporaryPasscodeResponse(passcode="ABCDEFGHJKMN")

    def IssueOnlineCard(self, request: Any, context: Any) -> Any:
        self.fake.enter("IssueOnlineCard", request, context)
        return online_card()

    def SetOptOut(self, request: Any, context: Any) -> Any:
        self.fake.enter("SetOptOut", request, context)
        return admin_pb2.SetOptOutResponse()

    def Unlock(self, request: Any, context: Any) -> Any:
        self.fake.enter("Unlock", request, context)
        return admin_pb2.UnlockResponse(consecutive_failures=0)

    def GetServerStatus(self, request: Any, context: Any) -> Any:
        self.fake.enter("GetServerStatus", request, context)
        return admin_pb2.GetServerStatusResponse(
            version="9.9.9",
            store_backend="sqlite",
            schema_version=7,
            active_key_id="k2",
            key_ids_in_use={"k1": 3, "k2": 40},
            users=5,
            devices=6,
            consumed_challenges=70,
            started_at=at(1_800_000_000, 250_000_000),
            uptime=Duration(seconds=90, nanos=500_000_000),
            serving=True,
        )


class Portal(portal_pb2_grpc.PortalServiceServicer):
    def __init__(self, fake: FakeSls) -> None:
        self.fake = fake

    def IssueOnlineCard(self, request: Any, context: Any) -> Any:
        self.fake.enter("Portal.IssueOnlineCard", request, context)
        return online_card()

    def RequestSharing(self, request: Any, context: Any) -> Any:
        self.fake.enter("Portal.RequestSharing", request, context)
        if request.with_username == STRANGER:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "different identification information"
            )
        state = (
            common_pb2.SHARING_STATE_PENDING
            if request.needs_approval
            else common_pb2.SHARING_STATE_ACTIVE
        )
        return portal_pb2.RequestSharingResponse(
            sharing=sharing(5, state, requester=request.with_username)
        )

    def CancelSharing(self, request: Any, context: Any) -> Any:
        answer = decided(
            self.fake, "Portal.CancelSharing", request, context, common_pb2.SHARING_STATE_CANCELLED
        )
        return portal_pb2.CancelSharingResponse(sharing=answer)

    def SetOptOut(self, request: Any, context: Any) -> Any:
        self.fake.enter("Portal.SetOptOut", request, context)
        return admin_pb2.SetOptOutResponse()

    def ChooseDevice(self, request: Any, context: Any) -> Any:
        self.fake.enter("Portal.ChooseDevice", request, context)
        return admin_pb2.ChooseDeviceResponse()

    def ListOwnDevices(self, request: Any, context: Any) -> Any:
        self.fake.enter("Portal.ListOwnDevices", request, context)
        return portal_pb2.ListOwnDevicesResponse(devices=[device(7), device(8)])


class Policy(admin_pb2_grpc.PolicyServiceServicer):
    def __init__(self, fake: FakeSls) -> None:
        self.fake = fake

    def GetSecurityLevel(self, request: Any, context: Any) -> Any:
        self.fake.enter("GetSecurityLevel", request, context)
        return admin_pb2.GetSecurityLevelResponse(
            security_level=1, strongest_device=common_pb2.DEVICE_TYPE_DSC_PLUS
        )

    def GetWithdrawalLimits(self, request: Any, context: Any) -> Any:
        self.fake.enter("GetWithdrawalLimits", request, context)
        if request.username == "rich":
            return admin_pb2.GetWithdrawalLimitsResponse(
                device=common_pb2.DEVICE_TYPE_DSC_PLUS, unlimited=True
            )
        return admin_pb2.GetWithdrawalLimitsResponse(
            device=common_pb2.DEVICE_TYPE_IB_KEY, per_day=1_000_000, per_five_days=1_000_000
        )

    def GetSessionLength(self, request: Any, context: Any) -> Any:
        self.fake.enter("GetSessionLength", request, context)
        return admin_pb2.GetSessionLengthResponse(session_length=Duration(seconds=3600))

    def GetLockoutStatus(self, request: Any, context: Any) -> Any:
        self.fake.enter("GetLockoutStatus", request, context)
        return admin_pb2.GetLockoutStatusResponse(consecutive_failures=3)


@contextmanager
def serve(
    fake: FakeSls | None = None,
    *,
    credentials: grpc.ServerCredentials | None = None,
) -> Iterator[tuple[FakeSls, str]]:
    """Runs the fake on 127.0.0.1 (a free port); yields it and the target."""
    fake = fake or FakeSls()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    verification_pb2_grpc.add_VerificationServiceServicer_to_server(Verification(fake), server)
    activation_pb2_grpc.add_ActivationServiceServicer_to_server(Activation(fake), server)
    push_pb2_grpc.add_PushServiceServicer_to_server(Push(fake), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(Admin(fake), server)
    admin_pb2_grpc.add_PolicyServiceServicer_to_server(Policy(fake), server)
    portal_pb2_grpc.add_PortalServiceServicer_to_server(Portal(fake), server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()
