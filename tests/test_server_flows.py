"""End-to-end login flows through real gRPC (127.0.0.1), for every device type of SLS-RULES:
DSC+, IB Key (activated from the QR code read back with zxing-cpp, offline challenge/response
and push approval with fallback), the legacy Security Code Card, SMS, the temporary passcode
and the Online Security Code Card; and lockout."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from pypdf import PdfReader

from grpc_fixtures import CALL_TIMEOUT, GrpcIbKey, InProcessServer, Stubs
from sls_core import ocra, qr, wire
from sls_core.api.v1 import (
    activation_pb2,
    admin_pb2,
    common_pb2,
    push_pb2,
    verification_pb2,
)
from sls_core.card import card_codes
from sls_core.clock import DAY
from sls_core.login import SecureLogin
from sls_core.push import approval_message
from sls_core.simulator import SimulatedApp, dsc_response
from sls_core.sms import read_outbox

pytest_plugins = ["grpc_fixtures"]

SECRET = bytes(range(1, 21))
PIN = "4711"
V = verification_pb2
OK = common_pb2.OUTCOME_OK


def create_user(stubs: Stubs, name: str) -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username=name), timeout=CALL_TIMEOUT)


def enroll(stubs: Stubs, name: str, device_type: int, **fields: object) -> common_pb2.Device:
    request = admin_pb2.EnrollDeviceRequest(username=name, type=device_type, **fields)  # type: ignore[arg-type]
    return stubs.admin.EnrollDevice(request, timeout=CALL_TIMEOUT).device


def challenge(stubs: Stubs, name: str, **fields: object) -> verification_pb2.IssueChallengeResponse:
    request = V.IssueChallengeRequest(username=name, **fields)  # type: ignore[arg-type]
    return stubs.verification.IssueChallenge(request, timeout=CALL_TIMEOUT)


def verify(stubs: Stubs, name: str, token: str, response: str, **fields: object) -> int:
    request = V.VerifyRequest(username=name, token=token, response=response, **fields)  # type: ignore[arg-type]
    return stubs.verification.Verify(request, timeout=CALL_TIMEOUT).outcome


def import_legacy(
    server: InProcessServer, name: str, device_type: int, **fields: object
) -> common_pb2.Device:
    """Legacy devices are no longer issued (SLS-RULES): an existing holder's arrives by
    import, through the domain; it then verifies over gRPC like any other."""
    imported = server.sls.import_device(name, wire.from_device_type(device_type), **fields)
    return wire.to_device(imported)


def with_dsc(stubs: Stubs, name: str = "alice") -> common_pb2.Device:
    create_user(stubs, name)
    return enroll(stubs, name, common_pb2.DEVICE_TYPE_DSC_PLUS, secret=SECRET, pin=PIN)


def test_dsc_plus_login_ok_then_replayed_wrong_and_malformed(stubs: Stubs) -> None:
    device = with_dsc(stubs)
    c = challenge(stubs, "alice")
    assert c.device_id == device.device_id
    assert c.device_type == common_pb2.DEVICE_TYPE_DSC_PLUS
    assert re.fullmatch(r"[0-9]{6}", c.challenge)
    answer = dsc_response(SECRET, PIN, c.challenge)
    response = stubs.verification.Verify(
        V.VerifyRequest(username="alice", token=c.token, response=answer), timeout=CALL_TIMEOUT
    )
    assert response.outcome == OK
    assert response.device_id == device.device_id
    assert response.message == "The second factor is correct."
    assert verify(stubs, "alice", c.token, answer) == common_pb2.OUTCOME_REPLAYED
    c = challenge(stubs, "alice")
    wrong = f"{(int(dsc_response(SECRET, PIN, c.challenge)) + 1) % 10**8:08d}"
    assert verify(stubs, "alice", c.token, wrong) == common_pb2.OUTCOME_WRONG
    c = challenge(stubs, "alice")
    spaced = dsc_response(SECRET, PIN, c.challenge)[:4] + " " + "1234"
    assert verify(stubs, "alice", c.token, spaced) == common_pb2.OUTCOME_MALFORMED
    # Malformed is not a guess: the challenge is still good.
    assert verify(stubs, "alice", c.token, dsc_response(SECRET, PIN, c.challenge)) == OK


def test_ib_key_activated_from_the_qr_code_over_grpc_then_offline_login(stubs: Stubs) -> None:
    create_user(stubs, "bob")
    offer = stubs.activation.CreateActivation(
        activation_pb2.CreateActivationRequest(username="bob"), timeout=CALL_TIMEOUT
    )
    assert offer.payload.startswith("SLS1:")
    assert re.fullmatch(r"[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{2}", offer.manual_code)
    assert qr.decode_png(offer.qr_png) == offer.payload  # zxing-cpp reads the PNG back
    assert offer.qr_svg.lstrip().startswith("<")
    app = SimulatedApp(None)
    user = app.activate(GrpcIbKey(stubs), qr_png=offer.qr_png, pin="12ab")
    devices = stubs.admin.ListDevices(admin_pb2.ListDevicesRequest(username="bob")).devices
    assert [(d.device_id, d.type, d.state) for d in devices] == [
        (user.device_id, common_pb2.DEVICE_TYPE_IB_KEY, common_pb2.DEVICE_STATE_ACTIVE)
    ]
    c = challenge(stubs, "bob")
    assert c.device_type == common_pb2.DEVICE_TYPE_IB_KEY
    assert verify(stubs, "bob", c.token, app.respond("bob", c.challenge, "12ab")) == OK
    # The same QR code again: the offer is used up.
    with pytest.raises(grpc.RpcError) as refused:
        app.activate(GrpcIbKey(stubs), qr_png=offer.qr_png, pin="12ab")
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "already used or expired"


def test_ib_key_app_on_the_same_data_dir_then_login_over_grpc(server: InProcessServer) -> None:
    stubs = server.stubs()
    create_user(stubs, "carl")
    # Another process on the same data dir activates the app (the CLI simulator goes through
    # the server instead: tests/test_simulator_remote.py).
    other = SecureLogin.open(server.data_dir, clock=server.clock)
    try:
        app = SimulatedApp(server.data_dir / "app.json")
        offer = other.ibkey.create_activation("carl")
        app.activate(other.ibkey, manual_code=offer.manual_code)  # iOS: no PIN in the suite
    finally:
        other.store.close()
    c = challenge(stubs, "carl")
    assert verify(stubs, "carl", c.token, app.respond("carl", c.challenge)) == OK


def test_ib_key_manual_code_and_already_enrolled(stubs: Stubs) -> None:
    create_user(stubs, "dora")
    app = SimulatedApp(None)
    first = stubs.activation.CreateActivation(
        activation_pb2.CreateActivationRequest(username="dora")
    )
    app.activate(GrpcIbKey(stubs), manual_code=first.manual_code.lower().replace("-", " "))
    second = stubs.activation.CreateActivation(
        activation_pb2.CreateActivationRequest(username="dora")
    )
    with pytest.raises(grpc.RpcError) as refused:
        app.activate(GrpcIbKey(stubs), payload=second.payload)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "already enrolled"


def test_push_approval_wakes_the_waiting_gateway_and_decline_and_fallback(
    stubs: Stubs, server: InProcessServer
) -> None:
    create_user(stubs, "erin")
    offer = stubs.activation.CreateActivation(
        activation_pb2.CreateActivationRequest(username="erin")
    )
    app = SimulatedApp(None)
    app.activate(GrpcIbKey(stubs), qr_png=offer.qr_png, pin="9876")
    push = stubs.push.CreatePush(push_pb2.CreatePushRequest(username="erin")).push
    # The gateway waits for the decision while the app approves it.
    waiting = stubs.push.GetPushStatus.future(
        push_pb2.GetPushStatusRequest(challenge_id=push.challenge_id, wait=Duration(seconds=5)),
        timeout=CALL_TIMEOUT,
    )
    assert app.answer_pushes(GrpcIbKey(stubs)) == [(push.challenge_id, 0)]  # LoginOutcome.OK
    assert waiting.result().status == push_pb2.PUSH_STATUS_APPROVED
    # The same answer again is a replay.
    message = _push_message(push, 1)
    again = stubs.push.AnswerPush(
        push_pb2.AnswerPushRequest(
            challenge_id=push.challenge_id,
            decision=push_pb2.DECISION_APPROVE,
            signature=app.sign(message),
        )
    )
    assert again.outcome == common_pb2.OUTCOME_REPLAYED
    # Declined.
    push = stubs.push.CreatePush(push_pb2.CreatePushRequest(username="erin")).push
    assert app.answer_pushes(GrpcIbKey(stubs), approve=False) == [(push.challenge_id, 13)]
    status = stubs.push.GetPushStatus(push_pb2.GetPushStatusRequest(challenge_id=push.challenge_id))
    assert status.status == push_pb2.PUSH_STATUS_DECLINED
    # The push never arrives: the gateway stops waiting and falls back to challenge/response.
    push = stubs.push.CreatePush(push_pb2.CreatePushRequest(username="erin")).push
    status = stubs.push.GetPushStatus(
        push_pb2.GetPushStatusRequest(
            challenge_id=push.challenge_id, wait=Duration(nanos=300_000_000)
        ),
        timeout=CALL_TIMEOUT,
    )
    assert status.status == push_pb2.PUSH_STATUS_PENDING
    c = challenge(stubs, "erin")
    assert verify(stubs, "erin", c.token, app.respond("erin", c.challenge, "9876")) == OK
    # A signature for another push is WRONG; after expiry the push is EXPIRED.
    other = stubs.push.CreatePush(push_pb2.CreatePushRequest(username="erin")).push
    wrong = stubs.push.AnswerPush(
        push_pb2.AnswerPushRequest(
            challenge_id=other.challenge_id,
            decision=push_pb2.DECISION_APPROVE,
            signature=app.sign(_push_message(push, 1)),
        )
    )
    assert wrong.outcome == common_pb2.OUTCOME_WRONG
    server.clock.advance(10 * 60)
    status = stubs.push.GetPushStatus(
        push_pb2.GetPushStatusRequest(challenge_id=other.challenge_id)
    )
    assert status.status == push_pb2.PUSH_STATUS_EXPIRED


def _push_message(push: push_pb2.Push, decision: int) -> bytes:
    return bytes(
        approval_message(
            push.challenge_id, push.user_id, push.device_id, push.expires_at.seconds, decision
        )
    )


def test_security_code_card_two_codes_concatenated(server: InProcessServer) -> None:
    stubs = server.stubs()
    create_user(stubs, "fay")
    card = import_legacy(server, "fay", common_pb2.DEVICE_TYPE_SECURITY_CODE_CARD, secret=SECRET)
    codes = list(card_codes(SECRET, 100))
    c = challenge(stubs, "fay")
    assert c.device_id == card.device_id
    assert c.challenge == ""
    first, second = c.card_indices
    assert first != second
    assert verify(stubs, "fay", c.token, codes[first - 1] + " " + codes[second - 1]) == (
        common_pb2.OUTCOME_MALFORMED
    )
    assert verify(stubs, "fay", c.token, codes[first - 1] + codes[second - 1]) == OK


def test_sms_code_from_the_outbox_verifies_once(server: InProcessServer) -> None:
    stubs = server.stubs()
    create_user(stubs, "gus")
    enroll(stubs, "gus", common_pb2.DEVICE_TYPE_SMS, phone="+41791234567")
    c = challenge(stubs, "gus")
    assert c.device_type == common_pb2.DEVICE_TYPE_SMS
    (message,) = read_outbox(server.data_dir / "sms-outbox.jsonl")
    assert message.to == "+41791234567"
    code = "".join(ch for ch in message.text if ch.isdigit())
    assert verify(stubs, "gus", c.token, code) == OK
    assert verify(stubs, "gus", c.token, code) == common_pb2.OUTCOME_REPLAYED


def test_sms_activation_token_activates_an_ib_key(server: InProcessServer) -> None:
    stubs = server.stubs()
    create_user(stubs, "hal")
    enroll(stubs, "hal", common_pb2.DEVICE_TYPE_SMS, phone="+41790000001")
    sent = stubs.activation.SendSmsActivation(
        activation_pb2.SendSmsActivationRequest(username="hal")
    )
    assert sent.expires_at.ToNanoseconds() / 1e9 > server.clock.now()
    (message,) = read_outbox(server.data_dir / "sms-outbox.jsonl")
    token = re.search(r"[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{2}", message.text)
    assert token is not None
    app = SimulatedApp(None)
    app.activate(GrpcIbKey(stubs), manual_code=token.group(0), pin="abcd")
    c = challenge(stubs, "hal", device_id=app.user("hal").device_id)
    assert verify(stubs, "hal", c.token, app.respond("hal", c.challenge, "abcd")) == OK


def test_temporary_passcode_full_for_2_days_then_online_card_page_only(
    server: InProcessServer,
) -> None:
    stubs = server.stubs()
    create_user(stubs, "ivy")
    passcode = stubs.admin.IssueTemporaryPasscode(
        admin_pb2.IssueTemporaryPasscodeRequest(username="ivy")
    ).passcode
    assert re.fullmatch(r"[A-Z2-9]{12}", passcode)
    assert verify(stubs, "ivy", "", passcode.lower()) == common_pb2.OUTCOME_WRONG
    assert verify(stubs, "ivy", "", passcode) == OK
    server.clock.advance(2 * DAY + 1)
    assert verify(stubs, "ivy", "", passcode) == common_pb2.OUTCOME_SCOPE_LIMITED
    assert verify(stubs, "ivy", "", passcode, access=common_pb2.ACCESS_ONLINE_CARD) == OK
    server.clock.advance(10 * DAY)
    assert verify(stubs, "ivy", "", passcode, access=common_pb2.ACCESS_ONLINE_CARD) == (
        common_pb2.OUTCOME_EXPIRED
    )


def _card_codes(pdf: bytes) -> dict[int, str]:
    words = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages).split()
    codes = {}
    for i, word in enumerate(words[:-1]):
        if word.isdigit() and 1 <= int(word) <= 100 and re.fullmatch(r"[0-9]{3}", words[i + 1]):
            codes.setdefault(int(word), words[i + 1])
    return codes


def test_online_card_activated_with_two_codes_then_login_valid_21_days(
    server: InProcessServer,
) -> None:
    stubs = server.stubs()
    create_user(stubs, "jon")
    stubs.admin.IssueTemporaryPasscode(admin_pb2.IssueTemporaryPasscodeRequest(username="jon"))
    issued = stubs.admin.IssueOnlineCard(admin_pb2.IssueOnlineCardRequest(username="jon"))
    card = issued.device
    assert card.type == common_pb2.DEVICE_TYPE_ONLINE_CARD
    assert card.state == common_pb2.DEVICE_STATE_PENDING
    assert issued.card_png.startswith(b"\x89PNG")
    codes = _card_codes(issued.card_pdf)
    assert len(codes) == 100
    activation = challenge(
        stubs, "jon", device_id=card.device_id, purpose=common_pb2.PURPOSE_ACTIVATION
    )
    first, second = activation.card_indices
    answer = codes[first] + codes[second]
    # A login answer to an activation challenge is refused; the activation purpose works.
    assert verify(stubs, "jon", activation.token, answer) == common_pb2.OUTCOME_CHALLENGE_INVALID
    assert (
        verify(stubs, "jon", activation.token, answer, purpose=common_pb2.PURPOSE_ACTIVATION) == OK
    )
    devices = {
        d.device_id: d.state
        for d in stubs.admin.ListDevices(admin_pb2.ListDevicesRequest(username="jon")).devices
    }
    assert devices[card.device_id] == common_pb2.DEVICE_STATE_ACTIVE
    server.clock.advance(20 * DAY)
    c = challenge(stubs, "jon", device_id=card.device_id)
    first, second = c.card_indices
    assert verify(stubs, "jon", c.token, codes[first] + codes[second]) == OK
    server.clock.advance(2 * DAY)
    with pytest.raises(grpc.RpcError) as expired:
        challenge(stubs, "jon", device_id=card.device_id)
    assert expired.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expired.value.details() == "device_id: the device has expired"


def test_shipped_dsc_plus_is_activated_by_answering_an_activation_challenge(
    stubs: Stubs,
) -> None:
    create_user(stubs, "kim")
    device = enroll(
        stubs, "kim", common_pb2.DEVICE_TYPE_DSC_PLUS, secret=SECRET, pin=PIN, shipped=True
    )
    assert device.state == common_pb2.DEVICE_STATE_PENDING
    c = challenge(stubs, "kim", purpose=common_pb2.PURPOSE_ACTIVATION)
    answer = dsc_response(SECRET, PIN, c.challenge)
    assert verify(stubs, "kim", c.token, answer, purpose=common_pb2.PURPOSE_ACTIVATION) == OK
    c = challenge(stubs, "kim")
    assert verify(stubs, "kim", c.token, dsc_response(SECRET, PIN, c.challenge)) == OK


def test_ten_wrong_answers_lock_the_user_even_against_a_right_one(
    stubs: Stubs, server: InProcessServer
) -> None:
    with_dsc(stubs, "lea")
    challenges = [challenge(stubs, "lea") for _ in range(11)]
    responses = [
        f"{(int(dsc_response(SECRET, PIN, c.challenge)) + 1) % 10**8:08d}" for c in challenges[:10]
    ]
    responses.append(dsc_response(SECRET, PIN, challenges[10].challenge))
    batch = stubs.verification.VerifyBatch(
        V.VerifyBatchRequest(
            usernames=["lea"] * 11, tokens=[c.token for c in challenges], responses=responses
        ),
        timeout=CALL_TIMEOUT,
    )
    assert list(batch.outcomes) == [common_pb2.OUTCOME_WRONG] * 10 + [common_pb2.OUTCOME_LOCKED]
    status = stubs.policy.GetLockoutStatus(admin_pb2.GetLockoutStatusRequest(username="lea"))
    assert status.consecutive_failures == 10
    locked_until = status.locked_until.ToNanoseconds() / 1e9
    assert locked_until == pytest.approx(server.clock.now() + DAY)
    # The locked attempt did not use its challenge up; after 24 hours it verifies.
    server.clock.advance(DAY)
    c = challenge(stubs, "lea")
    assert verify(stubs, "lea", c.token, dsc_response(SECRET, PIN, c.challenge)) == OK


def test_batch_of_mixed_users_devices_and_outcomes_in_input_order(stubs: Stubs) -> None:
    with_dsc(stubs, "mia")
    create_user(stubs, "ned")
    passcode = stubs.admin.IssueTemporaryPasscode(
        admin_pb2.IssueTemporaryPasscodeRequest(username="ned")
    ).passcode
    c1, c2 = challenge(stubs, "mia"), challenge(stubs, "mia")
    good = dsc_response(SECRET, PIN, c1.challenge)
    request = V.VerifyBatchRequest(
        usernames=["mia", "nobody", "Not Valid", "mia", "ned", "mia", "mia"],
        tokens=[c1.token, c1.token, "", c2.token, "", "garbage", c1.token],
        responses=[good, good, "x", "12", passcode, "12345678", good],
    )
    batch = stubs.verification.VerifyBatch(request, timeout=CALL_TIMEOUT)
    assert list(batch.outcomes) == [
        common_pb2.OUTCOME_OK,
        common_pb2.OUTCOME_UNKNOWN_USER,
        common_pb2.OUTCOME_INVALID_USERNAME,
        common_pb2.OUTCOME_MALFORMED,
        common_pb2.OUTCOME_OK,
        common_pb2.OUTCOME_CHALLENGE_INVALID,
        common_pb2.OUTCOME_REPLAYED,
    ]
    assert batch.device_ids[0] == c1.device_id
    assert batch.device_ids[1] == 0


def test_verify_stream_answers_each_batch_in_order(stubs: Stubs) -> None:
    with_dsc(stubs, "ola")
    challenges = [challenge(stubs, "ola") for _ in range(3)]

    def requests() -> object:
        for c in challenges:
            yield V.VerifyBatchRequest(
                usernames=["ola", "ola"],
                tokens=[c.token, c.token],
                responses=[dsc_response(SECRET, PIN, c.challenge)] * 2,
            )

    answers = list(stubs.verification.VerifyStream(requests(), timeout=CALL_TIMEOUT))
    assert [list(a.outcomes) for a in answers] == [
        [common_pb2.OUTCOME_OK, common_pb2.OUTCOME_REPLAYED]
    ] * 3


def test_policy_answers(stubs: Stubs) -> None:
    with_dsc(stubs, "pia")
    level = stubs.policy.GetSecurityLevel(admin_pb2.GetSecurityLevelRequest(username="pia"))
    assert (level.security_level, level.strongest_device) == (1, common_pb2.DEVICE_TYPE_DSC_PLUS)
    limits = stubs.policy.GetWithdrawalLimits(admin_pb2.GetWithdrawalLimitsRequest(username="pia"))
    assert limits.unlimited
    assert limits.device == common_pb2.DEVICE_TYPE_DSC_PLUS
    create_user(stubs, "quinn")
    none = stubs.policy.GetWithdrawalLimits(admin_pb2.GetWithdrawalLimitsRequest(username="quinn"))
    assert (none.per_day, none.per_five_days, none.unlimited) == (50_000, 100_000, False)
    assert (
        stubs.policy.GetSecurityLevel(
            admin_pb2.GetSecurityLevelRequest(username="quinn")
        ).security_level
        == 0
    )
    session = stubs.policy.GetSessionLength(admin_pb2.GetSessionLengthRequest(unlock="face"))
    assert session.session_length.ToTimedelta() == timedelta(hours=30)


def test_m2fs_choose_device_and_share_refused_with_the_reason(server: InProcessServer) -> None:
    stubs = server.stubs()
    dsc = with_dsc(stubs, "rex")
    card = import_legacy(server, "rex", common_pb2.DEVICE_TYPE_SECURITY_CODE_CARD, secret=SECRET)
    with pytest.raises(grpc.RpcError) as several:
        challenge(stubs, "rex")
    assert several.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert several.value.details().startswith("device_id: the user has several active devices")
    stubs.admin.ChooseDevice(
        admin_pb2.ChooseDeviceRequest(username="rex", device_id=card.device_id)
    )
    assert challenge(stubs, "rex").device_id == card.device_id
    assert challenge(stubs, "rex", device_id=dsc.device_id).device_id == dsc.device_id
    create_user(stubs, "sam")
    with pytest.raises(grpc.RpcError) as refused:
        stubs.admin.ShareDevice(
            admin_pb2.ShareDeviceRequest(owner="rex", device_id=dsc.device_id, with_username="sam")
        )
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "different identification information"


def test_revoke_and_reactivate(stubs: Stubs) -> None:
    dsc = with_dsc(stubs, "tom")
    stubs.admin.RevokeDevice(admin_pb2.RevokeDeviceRequest(username="tom", device_id=dsc.device_id))
    with pytest.raises(grpc.RpcError) as revoked:
        challenge(stubs, "tom")
    assert revoked.value.details() == "device_id: the user has no active device"
    stubs.admin.ReactivateDevice(
        admin_pb2.ReactivateDeviceRequest(username="tom", device_id=dsc.device_id)
    )
    c = challenge(stubs, "tom")
    assert verify(stubs, "tom", c.token, dsc_response(SECRET, PIN, c.challenge)) == OK
    stubs.admin.SetOptOut(admin_pb2.SetOptOutRequest(username="tom", opted_out=True))


@pytest.mark.parametrize(
    "device_type",
    [
        common_pb2.DEVICE_TYPE_PLATINUM,
        common_pb2.DEVICE_TYPE_GOLD,
        common_pb2.DEVICE_TYPE_DIGITAL_SECURITY_CARD,
        common_pb2.DEVICE_TYPE_ALPINE,
    ],
)
def test_legacy_cards_still_verify(server: InProcessServer, device_type: int) -> None:
    stubs = server.stubs()
    create_user(stubs, "uma")
    with pytest.raises(grpc.RpcError) as refused:  # no longer issued
        enroll(stubs, "uma", device_type, secret=SECRET)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    device = import_legacy(server, "uma", device_type, secret=SECRET)
    c = challenge(stubs, "uma")
    assert (c.device_id, c.device_type) == (device.device_id, device_type)
    answer = ocra.compute("OCRA-1:HOTP-SHA1-8:QN06", SECRET, question=c.challenge)
    assert verify(stubs, "uma", c.token, answer) == OK


def test_concurrent_single_calls_answer_as_if_one_after_the_other(
    stubs: Stubs, server: InProcessServer
) -> None:
    """Single Verify calls that arrive together are verified together (one transaction):
    the same answer sent 20 times at once verifies once; 30 users at once all verify."""
    with_dsc(stubs, "vic")
    c = challenge(stubs, "vic")
    same = V.VerifyRequest(
        username="vic", token=c.token, response=dsc_response(SECRET, PIN, c.challenge)
    )
    futures = [stubs.verification.Verify.future(same, timeout=CALL_TIMEOUT) for _ in range(20)]
    outcomes = sorted(f.result().outcome for f in futures)
    assert outcomes == [OK] + [common_pb2.OUTCOME_REPLAYED] * 19
    names = [f"w{i}" for i in range(30)]
    for name in names:
        with_dsc(stubs, name)
    requests = []
    for name in names:
        c = challenge(stubs, name)
        requests.append(
            V.VerifyRequest(
                username=name, token=c.token, response=dsc_response(SECRET, PIN, c.challenge)
            )
        )
    futures = [stubs.verification.Verify.future(r, timeout=CALL_TIMEOUT) for r in requests]
    assert [f.result().outcome for f in futures] == [OK] * 30
    audit = [json.loads(line) for line in server.config.audit_path.read_text().splitlines()]  # type: ignore[union-attr]
    verdicts = [a for a in audit if a["event"] == "verify"]
    assert len(verdicts) == 50
    assert len({a["request_id"] for a in verdicts}) == 50


@pytest.mark.parametrize("stream", [False, True], ids=["VerifyBatch", "VerifyStream"])
def test_gateway_clients_micro_batch_logins_through_the_server(
    server: InProcessServer, stream: bool
) -> None:
    """Both clients, concurrent verify() calls coalesced into VerifyBatch calls or into
    messages of one VerifyStream: right, wrong, replayed and malformed answers each get
    their own outcome, exactly as one call at a time would."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from sls_core.client import AsyncSlsClient, SlsClient
    from sls_core.outcome import LoginOutcome

    stubs = server.stubs()
    with_dsc(stubs)
    target = f"127.0.0.1:{server.port}"

    def attempts(n: int) -> tuple[list[tuple[str, str]], list[LoginOutcome]]:
        sent, want = [], []
        for i in range(n):
            c = challenge(stubs, "alice")
            answer = dsc_response(SECRET, PIN, c.challenge)
            if i % 4 == 1:
                answer, outcome = answer[:4] + " 1234", LoginOutcome.MALFORMED
            else:
                outcome = LoginOutcome.OK
            sent.append((c.token, answer))
            want.append(outcome)
        sent.append(sent[0])  # the first one again: used up
        want.append(LoginOutcome.REPLAYED)
        return sent, want

    sent, want = attempts(12)
    with SlsClient(target, stream=stream, timeout=CALL_TIMEOUT) as client:
        first = client.verify("alice", *sent[0]).outcome
        with ThreadPoolExecutor(8) as pool:
            rest = list(pool.map(lambda a: client.verify("alice", *a).outcome, sent[1:]))
    assert [first, *rest] == want

    sent, want = attempts(12)

    async def gateway() -> list[LoginOutcome]:
        async with AsyncSlsClient(target, stream=stream, timeout=CALL_TIMEOUT) as client:
            first = (await client.verify("alice", *sent[0])).outcome
            rest = await asyncio.gather(*(client.verify("alice", *a) for a in sent[1:]))
            return [first, *(v.outcome for v in rest)]

    assert asyncio.run(gateway()) == want
    audit = server.config.audit_path.read_text().splitlines()  # type: ignore[union-attr]
    assert sum(json.loads(line)["event"] == "verify" for line in audit) == 2 * 13
