"""sls_core.client.SlsClient against an in-process fake server: micro-batching, retries,
deadlines, error mapping, and no secret in any exception."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import numpy as np
import pytest

from client_fakes import (
    BOOM_USER,
    BYE_USER,
    GONE_REQUEST,
    SHORT_USER,
    SLOW_SECONDS,
    SLOW_USER,
    STRANGER,
    FakeSls,
    expected,
    serve,
)
from sls_core.api.v1 import common_pb2
from sls_core.client import (
    AlreadyExistsError,
    ClientClosedError,
    ClientRefusedError,
    DeadlineExceededError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ResourceExhaustedError,
    RetryPolicy,
    ServerStatus,
    SlsClient,
    SlsRpcError,
    TlsSettings,
    UnauthenticatedError,
    UnavailableError,
)
from sls_core.errors import InvalidInputError, InvalidInputTypeError, SlsError
from sls_core.values import (
    APPROVE,
    DECLINE,
    Access,
    DeviceState,
    DeviceType,
    Identity,
    LockoutStatus,
    LoginOutcome,
    Purpose,
    SharingRequest,
    SharingState,
)

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
#: The owner's answer to a sharing challenge, as the fake takes it.
PROOF: dict[str, Any] = {"token": "tok-7", "response": "123456"}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeSls, str]]:
    with serve() as running:
        yield running


@pytest.fixture
def fake(server: tuple[FakeSls, str]) -> FakeSls:
    """The module's server with its record and scripts cleared for this test."""
    state = server[0]
    with state.lock:
        state.calls.clear()
        state.requests.clear()
        state.failures.clear()
    return state


@pytest.fixture
def target(server: tuple[FakeSls, str], fake: FakeSls) -> str:
    return server[1]


def verify_concurrently(client: SlsClient, count: int, **kwargs: object) -> list[object]:
    """``count`` threads released together, each verifying its own response."""
    barrier = threading.Barrier(count)

    def one(i: int) -> object:
        barrier.wait()
        try:
            return client.verify(f"user{i}", f"tok{i}", f"{i:08d}", **kwargs)  # type: ignore[arg-type]
        except Exception as err:
            return err

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


# --- micro-batching -------------------------------------------------------------------


def test_concurrent_verifies_are_coalesced_and_each_caller_gets_its_own_outcome(
    fake: FakeSls, target: str
) -> None:
    with SlsClient(target, linger=0.05) as client:
        results = verify_concurrently(client, 64)
    for i, verdict in enumerate(results):
        outcome, device_id = expected(f"{i:08d}")
        assert verdict.outcome is outcome, i  # type: ignore[attr-defined]
        assert verdict.device_id == (device_id or None)  # type: ignore[attr-defined]
    batches = fake.batches()
    assert fake.calls["Verify"] == 0
    assert 1 <= len(batches) <= 8
    sent = [u for b in batches for u in b.usernames]
    assert sorted(sent) == sorted(f"user{i}" for i in range(64))  # none lost, none twice
    for batch in batches:  # the columns travel together
        assert [r for r in batch.responses] == [f"{int(u[4:]):08d}" for u in batch.usernames]
        assert list(batch.tokens) == [f"tok{u[4:]}" for u in batch.usernames]


def test_a_batch_leaves_as_soon_as_max_batch_attempts_wait(fake: FakeSls, target: str) -> None:
    started = time.monotonic()
    with SlsClient(target, linger=0.2, max_batch=8) as client:
        results = verify_concurrently(client, 40)
    assert not [r for r in results if isinstance(r, Exception)]
    sizes = [len(b.usernames) for b in fake.batches()]
    assert sum(sizes) == 40
    assert max(sizes) <= 8
    assert time.monotonic() - started < 2.0


def test_attempts_with_different_access_travel_in_separate_batches(
    fake: FakeSls, target: str
) -> None:
    barrier = threading.Barrier(6)

    def one(i: int) -> LoginOutcome:
        barrier.wait()
        access = Access.PORTAL if i % 2 else Access.TRADING
        return client.verify(f"user{i}", None, f"{i:08d}", access=access).outcome

    with SlsClient(target, linger=0.05) as client, ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(one, range(6)))
    assert outcomes == [expected(f"{i:08d}")[0] for i in range(6)]
    for batch in fake.batches():
        want = Access.PORTAL if int(batch.usernames[0][4:]) % 2 else Access.TRADING
        for username in batch.usernames:
            assert (Access.PORTAL if int(username[4:]) % 2 else Access.TRADING) == want
        assert batch.access == {Access.TRADING: 1, Access.PORTAL: 2}[want]
        assert set(batch.tokens) == {""}


def test_step_up_answers_travel_in_batches_of_their_own_task(fake: FakeSls, target: str) -> None:
    tasks = [None, "withdrawal", "bank_instructions"]
    barrier = threading.Barrier(9)

    def one(i: int) -> LoginOutcome:
        barrier.wait()
        return client.verify(f"user{i}", f"tok{i}", f"{i:08d}", task=tasks[i % 3]).outcome

    with SlsClient(target, linger=0.05) as client, ThreadPoolExecutor(9) as pool:
        outcomes = list(pool.map(one, range(9)))
    assert outcomes == [expected(f"{i:08d}")[0] for i in range(9)]
    assert fake.calls["Verify"] == 0
    for batch in fake.batches():
        assert {tasks[int(u[4:]) % 3] or "" for u in batch.usernames} == {batch.task}
    assert {b.task for b in fake.batches()} == {"", "withdrawal", "bank_instructions"}


def test_an_answer_whose_purpose_a_batch_cannot_carry_goes_as_a_plain_verify(
    fake: FakeSls, target: str
) -> None:
    with SlsClient(target, linger=0.01) as client:
        client.verify("alice", "tok", "00000001", purpose=Purpose.REACTIVATION)
        client.verify("alice", "tok", "00000001", purpose=Purpose.LOGIN, task="withdrawal")
        client.verify("alice", "tok", "00000001", purpose=Purpose.STEP_UP, task="withdrawal")
        with pytest.raises(InvalidInputTypeError, match="task"):
            client.verify("alice", "tok", "00000001", task=7)  # type: ignore[arg-type]
    sent = [(r.purpose, r.task) for r in fake.requests["Verify"]]
    assert sent == [
        (common_pb2.PURPOSE_REACTIVATION, ""),
        (common_pb2.PURPOSE_LOGIN, "withdrawal"),
    ]
    assert [b.task for b in fake.batches()] == ["withdrawal"]


def test_linger_zero_sends_plain_verify_calls(fake: FakeSls, target: str) -> None:
    with SlsClient(target, linger=0) as client:
        results = verify_concurrently(client, 8)
        assert client.verify("alice", "tok", "1234 5678").outcome is LoginOutcome.MALFORMED
    assert [r.outcome for r in results] == [expected(f"{i:08d}")[0] for i in range(8)]  # type: ignore[attr-defined]
    assert fake.calls["Verify"] == 9
    assert fake.calls["VerifyBatch"] == 0


def test_a_failing_batch_fails_its_own_callers_only(fake: FakeSls, target: str) -> None:
    barrier = threading.Barrier(12)

    def one(i: int) -> object:
        # The portal batch holds the user the fake refuses; the trading batch does not.
        portal = i % 2 == 1
        username = BOOM_USER if i == 1 else f"user{i}"
        barrier.wait()
        try:
            access = Access.PORTAL if portal else Access.TRADING
            return client.verify(username, "tok", f"{i:08d}", access=access)
        except Exception as err:
            return err

    # max_in_flight=0: every batch is held for the linger, so the boom user's neighbours
    # certainly share its batch.
    with (
        SlsClient(target, linger=0.05, max_in_flight=0) as client,
        ThreadPoolExecutor(12) as pool,
    ):
        results = list(pool.map(one, range(12)))
        after = client.verify("user99", "tok", "00000099")  # the batcher still works
    for i, result in enumerate(results):
        if i % 2:
            assert isinstance(result, InvalidInputError), result
            assert (result.field, result.rule) == ("usernames", "refused by the fake")
        else:
            assert result.outcome is expected(f"{i:08d}")[0]  # type: ignore[attr-defined]
    assert after.outcome is expected("00000099")[0]
    # each caller got its own exception object
    assert len({id(r) for r in results[1::2]}) == 6


def test_a_batch_that_is_unavailable_is_not_retried(fake: FakeSls, target: str) -> None:
    fake.fail_next("VerifyBatch", grpc.StatusCode.UNAVAILABLE, "going away", times=5)
    # max_in_flight=0: the five travel in one batch, so one call means none was retried
    with SlsClient(target, linger=0.05, max_in_flight=0, retry=FAST_RETRY) as client:
        results = verify_concurrently(client, 5)
    assert all(isinstance(r, UnavailableError) for r in results)
    assert fake.calls["VerifyBatch"] == 1


def test_an_idle_client_sends_at_once_instead_of_lingering(fake: FakeSls, target: str) -> None:
    """With a free in-flight slot an attempt leaves at once: a 30 s linger never applies
    (the call's own 5 s deadline would fail it if it did)."""
    with SlsClient(target, linger=30.0, max_in_flight=1, timeout=5.0) as client:
        for i in range(3):
            assert client.verify(f"user{i}", "tok", f"{i:08d}").outcome is expected(f"{i:08d}")[0]
    assert [len(b.usernames) for b in fake.batches()] == [1, 1, 1]


def test_attempts_wait_for_a_free_slot_then_leave_together(fake: FakeSls, target: str) -> None:
    """max_in_flight=1: while a slow batch is out, new attempts coalesce and leave as one
    batch when it returns, long before their 30 s linger."""
    with (
        SlsClient(target, linger=30.0, max_in_flight=1, timeout=10.0) as client,
        ThreadPoolExecutor(7) as pool,
    ):
        slow = pool.submit(client.verify, SLOW_USER, "tok", "00000000")
        deadline = time.monotonic() + 5
        while not fake.batches() and time.monotonic() < deadline:
            time.sleep(0.005)
        waiting = [pool.submit(client.verify, f"user{i}", "tok", f"{i:08d}") for i in range(1, 7)]
        assert [f.result(timeout=8).outcome for f in waiting] == [
            expected(f"{i:08d}")[0] for i in range(1, 7)
        ]
        assert slow.result(timeout=8).outcome is expected("00000000")[0]
    # the six waited together for the slot
    assert [len(b.usernames) for b in fake.batches()] == [1, 6]


def test_close_flushes_waiting_attempts_instead_of_lingering(fake: FakeSls, target: str) -> None:
    client = SlsClient(target, linger=30.0, max_in_flight=0)
    with ThreadPoolExecutor(5) as pool:
        pending = [pool.submit(client.verify, f"user{i}", "tok", f"{i:08d}") for i in range(5)]
        deadline = time.monotonic() + 2
        while len(client._batcher._pending) < 5 and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.005)
        started = time.monotonic()
        client.close()
        assert [f.result(timeout=2).outcome for f in pending] == [
            expected(f"{i:08d}")[0] for i in range(5)
        ]
    assert time.monotonic() - started < 2.0
    assert [len(b.usernames) for b in fake.batches()] == [5]
    with pytest.raises(ClientClosedError):
        client.verify("user1", "tok", "00000001")
    with pytest.raises(ClientClosedError):
        client.list_devices("alice")
    client.close()  # idempotent


def test_an_activation_answer_goes_as_a_plain_verify_with_its_purpose(
    fake: FakeSls, target: str
) -> None:
    with SlsClient(target, linger=0.01) as client:
        verdict = client.verify("alice", "tok", "00000001", purpose=Purpose.ACTIVATION)
        assert client.verify("alice", "tok", "00000001").device_id == 1001
        with pytest.raises(InvalidInputError, match="purpose"):
            client.verify("alice", "tok", "00000001", purpose=7)
    assert verdict.outcome is expected("00000001")[0]
    assert [r.purpose for r in fake.requests["Verify"]] == [2]
    assert fake.calls["VerifyBatch"] == 1


def test_a_bad_attempt_is_refused_before_it_joins_a_batch(fake: FakeSls, target: str) -> None:
    with SlsClient(target, linger=0.01) as client:
        with pytest.raises(InvalidInputTypeError) as caught:
            client.verify("alice", "tok", 12345678)  # type: ignore[arg-type]
        assert caught.value.field == "response"
        with pytest.raises(InvalidInputError, match="access"):
            client.verify("alice", "tok", "12345678", access="everything")
    assert fake.calls["VerifyBatch"] == 0


# --- the other calls --------------------------------------------------------------------


def test_verify_batch_returns_uint8_outcomes_and_device_ids_in_input_order(
    fake: FakeSls, target: str
) -> None:
    responses = ["00000013", "1234 5678", "00000000", "00000005"]
    with SlsClient(target, linger=0) as client:
        result = client.verify_batch(["a", "b", "c", "d"], ["t1", None, "t3", "t4"], responses)
        empty = client.verify_batch([], [], [])
    assert result.outcomes.dtype == np.uint8
    assert result.device_ids.dtype == np.uint64
    assert [result[i] for i in range(4)] == [expected(r)[0] for r in responses]
    assert result.device_ids.tolist() == [expected(r)[1] for r in responses]
    assert len(empty) == 0
    assert list(fake.requests["VerifyBatch"][0].tokens) == ["t1", "", "t3", "t4"]


def test_verify_batch_checks_its_columns(target: str) -> None:
    with SlsClient(target) as client:
        with pytest.raises(InvalidInputError, match="tokens"):
            client.verify_batch(["a", "b"], ["t"], ["1", "2"])
        with pytest.raises(InvalidInputTypeError) as caught:
            client.verify_batch(["a", "b"], ["t", "t"], ["1", 98765432])  # type: ignore[list-item]
        assert "98765432" not in str(caught.value)
        with pytest.raises(InvalidInputTypeError):
            client.verify_batch("ab", ["t", "t"], ["1", "2"])


def test_every_call_converts_to_and_from_the_domain_types(fake: FakeSls, target: str) -> None:
    with SlsClient(target) as client:
        challenge = client.issue_challenge("alice", device_id=7, purpose=Purpose.ACTIVATION)
        assert (challenge.token, challenge.device_id, challenge.challenge) == (
            "tok-alice",
            7,
            "123456",
        )
        assert challenge.device_type is DeviceType.DSC_PLUS
        assert challenge.purpose == Purpose.ACTIVATION
        assert challenge.card_indices is None
        assert challenge.expires_at == 1300.5  # the Timestamp to the nanosecond
        card = client.issue_challenge("card")
        assert card.card_indices == (3, 42)
        assert card.challenge is None
        assert fake.requests["IssueChallenge"][0].purpose == 2

        offer = client.create_activation("alice")
        assert offer.manual_code == "K7QM-4TZ9-HX3P-AB"
        assert offer.expires_at == datetime(1970, 1, 1, 0, 26, 40, tzinfo=UTC)
        assert "PAYLOADSECRET" not in repr(offer)
        assert "K7QM" not in repr(offer)
        activated = client.complete_activation(
            app_public=b"A" * 32, push_public=b"P" * 32, payload="SLS1:X", pin="12ab"
        )
        assert activated.device.id == 11
        assert activated.device.state is DeviceState.ACTIVE
        assert activated.device.expires_at is None  # unset: it does not expire
        assert (activated.device.issued_at, activated.device.activated_at) == (100.0, 200.25)
        assert activated.server_public == b"S" * 32
        request = fake.requests["CompleteActivation"][0]
        assert request.WhichOneof("code") == "payload"
        assert request.pin == "12ab"
        with pytest.raises(ClientRefusedError) as refused:
            client.complete_activation(
                app_public=b"A" * 32, push_public=b"P" * 32, manual_code="USED"
            )
        assert refused.value.reason == "already used or expired"
        with pytest.raises(InvalidInputError, match="payload"):
            client.complete_activation(app_public=b"A" * 32, push_public=b"P" * 32)
        sms_expiry = client.send_sms_activation("alice")
        assert sms_expiry == datetime.fromtimestamp(1700.5, UTC)
        assert sms_expiry.tzinfo is UTC
        recovered = client.recover("alice", "a1b2", app_public=b"A" * 32, push_public=b"P" * 32)
        assert recovered.username == "alice"
        assert fake.requests["Recover"][0].recovery_pin == "a1b2"
        with pytest.raises(ClientRefusedError) as refused:
            client.recover("alice", "zzzz", app_public=b"A" * 32, push_public=b"P" * 32)
        assert refused.value.reason == "wrong recovery PIN"

        push = client.create_push("alice")
        assert (push.challenge_id, push.user_id, push.device_id, push.expires_at) == (
            55,
            3,
            7,
            1900,
        )
        assert client.list_pending_pushes(b"P" * 32) == [push]
        assert client.answer_push(55, APPROVE, b"sig") is LoginOutcome.OK
        assert client.answer_push(55, DECLINE, b"sig") is LoginOutcome.DECLINED
        with pytest.raises(InvalidInputError, match="decision"):
            client.answer_push(55, 3, b"sig")
        assert client.push_status(55) == "pending"
        assert client.wait_push(55, wait=0.5) == "approved"
        assert fake.requests["GetPushStatus"][1].wait.ToTimedelta() == timedelta(seconds=0.5)
        assert client.wait_push(55, wait=timedelta(milliseconds=1500)) == "approved"
        assert fake.requests["GetPushStatus"][2].wait.ToNanoseconds() == 1_500_000_000
        for bad in (-1.0, timedelta(seconds=-1)):
            with pytest.raises(InvalidInputError, match="wait: must be 0 or more"):
                client.wait_push(55, wait=bad)
        with pytest.raises(InvalidInputTypeError, match="wait"):
            client.wait_push(55, wait="soon")  # type: ignore[arg-type]
        assert len(fake.requests["GetPushStatus"]) == 3  # the refused ones were never sent

        identity = Identity(date_of_birth="1980-01-01", ssn="123-45-6789")
        assert client.create_user("alice", identity) == 42
        assert fake.requests["CreateUser"][0].identity.ssn == "123-45-6789"
        enrolled = client.enroll_device("alice", DeviceType.DSC_PLUS, secret=b"K" * 20, pin="4711")
        assert enrolled.id == 12
        sent = fake.requests["EnrollDevice"][0]
        assert (sent.type, sent.secret, sent.pin, sent.replaces) == (1, b"K" * 20, "4711", 0)
        assert [d.id for d in client.list_devices("alice")] == [7, 8]
        client.choose_device("alice", 7)
        client.share_device("alice", 7, "bob")
        with pytest.raises(ClientRefusedError) as refused:
            client.share_device("alice", 7, "weaker")
        assert refused.value.reason == "less secure device"
        client.revoke_device("alice", 7)
        client.reactivate_device("alice", 7)
        assert client.issue_temporary_passcode("alice") == "ABCDEFGHJKMN"
        online = client.issue_online_card("alice")
        assert online.device.type is DeviceType.ONLINE_CARD
        assert (online.card_png, online.card_pdf) == (b"png", b"pdf")
        client.set_opt_out("alice", True)
        assert fake.requests["SetOptOut"][0].opted_out is True

        level = client.security_level("alice")
        assert (level.level, level.strongest_device) == (1, DeviceType.DSC_PLUS)
        limits = client.withdrawal_limits("alice")
        assert (limits.device, limits.per_day, limits.per_five_days) == (
            DeviceType.IB_KEY,
            1_000_000,
            1_000_000,
        )
        unlimited = client.withdrawal_limits("rich")
        assert (unlimited.per_day, unlimited.per_five_days) == (None, None)
        assert client.session_length("face") == timedelta(hours=1)
        lockout = client.lockout_status("alice")
        assert (lockout.consecutive_failures, lockout.locked_until) == (3, None)  # unset
        status = client.server_status()
        assert status == ServerStatus(
            version="9.9.9",
            store_backend="sqlite",
            schema_version=7,
            active_key_id="k2",
            key_ids_in_use={"k1": 3, "k2": 40},
            users=5,
            devices=6,
            consumed_challenges=70,
            started_at=datetime(2027, 1, 15, 8, 0, 0, 250_000, tzinfo=UTC),
            uptime=timedelta(seconds=90.5),
            serving=True,
        )
        assert status.started_at.tzinfo is UTC


def test_the_sls_rules_calls_convert_to_and_from_the_wire(fake: FakeSls, target: str) -> None:
    with SlsClient(target) as client:
        status = client.record_password_failure("alice")
        assert status == LockoutStatus(10, 86_400.0)
        assert status.locked
        assert fake.requests["RecordPasswordFailure"][0].username == "alice"
        assert client.unlock("alice") == LockoutStatus(0, None)
        assert fake.requests["Unlock"][0].username == "alice"

        step_up = client.issue_challenge("alice", task="withdrawal")
        assert (step_up.purpose, step_up.task) == (Purpose.STEP_UP, "withdrawal")
        sent = fake.requests["IssueChallenge"][0]
        assert (sent.purpose, sent.task) == (common_pb2.PURPOSE_UNSPECIFIED, "withdrawal")
        login = client.issue_challenge("alice")
        assert (login.purpose, login.task) == (Purpose.LOGIN, None)
        again = client.issue_challenge("alice", device_id=7, purpose=Purpose.REACTIVATION)
        assert again.purpose is Purpose.REACTIVATION
        assert fake.requests["IssueChallenge"][2].purpose == common_pb2.PURPOSE_REACTIVATION

        result = client.verify_batch(["a"], ["t"], ["00000001"], task="withdrawal")
        assert result[0] is expected("00000001")[0]
        assert fake.requests["VerifyBatch"][0].task == "withdrawal"
        client.verify_batch(["a"], ["t"], ["00000001"])
        assert fake.requests["VerifyBatch"][1].task == ""

        client.enroll_device(
            "alice", DeviceType.DSC_PLUS, shipped=True, replaces=7, replaces_lost=True
        )
        sent = fake.requests["EnrollDevice"][0]
        assert (sent.replaces, sent.replaces_lost, sent.shipped) == (7, True, True)


def test_the_portal_calls_go_to_the_portal_service_and_convert_to_the_domain_types(
    fake: FakeSls, target: str
) -> None:
    with SlsClient(target) as client:
        online = client.portal_issue_online_card("alice")
        assert online.device.type is DeviceType.ONLINE_CARD
        assert (online.card_png, online.card_pdf) == (b"png", b"pdf")
        asked = client.request_sharing("alice", 7, "alice2", **PROOF)
        assert asked == SharingRequest(5, "alice", "alice2", 7, SharingState.ACTIVE, (8,))
        sent = fake.requests["Portal.RequestSharing"][0]
        assert (sent.owner, sent.device_id, sent.with_username) == ("alice", 7, "alice2")
        assert (sent.token, sent.response, sent.needs_approval) == ("tok-7", "123456", False)
        waiting = client.request_sharing("alice", 7, "alice2", needs_approval=True, **PROOF)
        assert waiting.state is SharingState.PENDING
        with pytest.raises(ClientRefusedError) as refused:
            client.request_sharing("alice", 7, STRANGER, **PROOF)
        assert refused.value.reason == "different identification information"
        cancelled = client.cancel_sharing(5, username="alice")
        assert (cancelled.id, cancelled.state) == (5, SharingState.CANCELLED)
        with pytest.raises(ClientRefusedError, match="no such pending sharing request"):
            client.cancel_sharing(GONE_REQUEST, username="alice")
        client.portal_set_opt_out("alice", True)
        assert fake.requests["Portal.SetOptOut"][0].opted_out is True
        client.portal_choose_device("alice", 8)
        assert fake.requests["Portal.ChooseDevice"][0].device_id == 8
        assert [d.id for d in client.list_own_devices("alice")] == [7, 8]
    # None of them went to AdminService.
    assert not {"IssueOnlineCard", "SetOptOut", "ChooseDevice", "ListDevices"} & set(fake.calls)


def test_client_services_approve_sharing_and_import_legacy_devices(
    fake: FakeSls, target: str
) -> None:
    with SlsClient(target) as client:
        approved = client.approve_sharing(5)
        assert (approved.id, approved.state, approved.set_aside) == (5, SharingState.ACTIVE, (8,))
        assert fake.requests["ApproveSharing"][0].request_id == 5
        with pytest.raises(ClientRefusedError, match="no such pending sharing request"):
            client.approve_sharing(GONE_REQUEST)
        card = client.import_device(
            "alice", DeviceType.SECURITY_CODE_CARD, secret=b"K" * 20, serial="SCC-1"
        )
        assert (card.id, card.type) == (14, DeviceType.SECURITY_CODE_CARD)
        sent = fake.requests["ImportDevice"][0]
        assert (sent.username, sent.type, sent.secret, sent.serial, sent.pin) == (
            "alice",
            common_pb2.DEVICE_TYPE_SECURITY_CODE_CARD,
            b"K" * 20,
            "SCC-1",
            "",
        )
        assert "EnrollDevice" not in fake.calls
        with pytest.raises(InvalidInputTypeError, match="device_type"):
            client.import_device("alice", "security_code_card")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="replaces"):
            client.import_device("alice", DeviceType.GOLD, replaces=-1)
    assert fake.calls["ImportDevice"] == 1


def test_an_answer_the_converter_cannot_read_is_a_protocol_error(
    fake: FakeSls, target: str
) -> None:
    with SlsClient(target) as client:
        with pytest.raises(ProtocolError, match="VerifyBatch: outcomes: one per attempt"):
            client.verify_batch(["a", SHORT_USER], ["t", "t"], ["1", "2"])
        # A coalesced single verify fails the same way, and only its own batch.
        with pytest.raises(ProtocolError, match="VerifyBatch: outcomes: one per attempt"):
            client.verify(SHORT_USER, "t", "00000001")
        assert client.verify("alice", "t", "00000001").outcome is expected("00000001")[0]


def test_importing_the_client_loads_no_engine() -> None:
    """A gateway imports the client and the wire types only: not the Rust extension, the
    store, the login engine, IB Key, PIL or reportlab (in a fresh interpreter)."""
    engine = (
        "sls_core._native",
        "sls_core.store",
        "sls_core.login",
        "PIL",
        "reportlab",
        "sls_core.ibkey",
    )
    check = (
        f"import sys, sls_core.client\nprint(','.join(m for m in {engine!r} if m in sys.modules))"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", check], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the client loaded {done.stdout.strip()}"


# --- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("ListDevices", lambda c: c.list_devices("alice")),
        ("GetPushStatus", lambda c: c.push_status(55)),
        ("ListPendingPushes", lambda c: c.list_pending_pushes(b"P" * 32)),
        ("GetLockoutStatus", lambda c: c.lockout_status("alice")),
        ("GetSecurityLevel", lambda c: c.security_level("alice")),
        ("GetWithdrawalLimits", lambda c: c.withdrawal_limits("alice")),
        ("GetSessionLength", lambda c: c.session_length("pin")),
        ("GetServerStatus", lambda c: c.server_status()),
        ("Portal.ListOwnDevices", lambda c: c.list_own_devices("alice")),
    ],
)
def test_read_only_calls_are_retried_on_unavailable(
    fake: FakeSls, target: str, method: str, call: object
) -> None:
    fake.fail_next(method, grpc.StatusCode.UNAVAILABLE, "restarting", times=2)
    with SlsClient(target, retry=FAST_RETRY) as client:
        call(client)  # type: ignore[operator]
    assert fake.calls[method] == 3


def test_retries_stop_after_max_attempts(fake: FakeSls, target: str) -> None:
    fake.fail_next("ListDevices", grpc.StatusCode.UNAVAILABLE, "down", times=10)
    with (
        SlsClient(target, retry=RetryPolicy(3, 0.01, 0.02)) as client,
        pytest.raises(UnavailableError),
    ):
        client.list_devices("alice")
    assert fake.calls["ListDevices"] == 3


def test_retries_stay_inside_the_deadline(fake: FakeSls, target: str) -> None:
    fake.fail_next("ListDevices", grpc.StatusCode.UNAVAILABLE, "down", times=10)
    started = time.monotonic()
    with (
        SlsClient(target, retry=RetryPolicy(5, 2.0, 5.0, 1.5)) as client,
        pytest.raises((UnavailableError, DeadlineExceededError)),
    ):
        client.list_devices("alice", timeout=0.3)
    assert time.monotonic() - started < 1.5


def test_other_statuses_are_not_retried(fake: FakeSls, target: str) -> None:
    fake.fail_next("ListDevices", grpc.StatusCode.INTERNAL, "bug")
    with SlsClient(target, retry=FAST_RETRY) as client, pytest.raises(SlsRpcError):
        client.list_devices("alice")
    assert fake.calls["ListDevices"] == 1


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("Verify", lambda c: c.verify("alice", "tok", "12345678")),
        ("VerifyBatch", lambda c: c.verify_batch(["alice"], ["tok"], ["12345678"])),
        ("IssueChallenge", lambda c: c.issue_challenge("alice")),
        ("CreatePush", lambda c: c.create_push("alice")),
        ("AnswerPush", lambda c: c.answer_push(55, APPROVE, b"sig")),
        ("CreateActivation", lambda c: c.create_activation("alice")),
        ("IssueTemporaryPasscode", lambda c: c.issue_temporary_passcode("alice")),
        ("RevokeDevice", lambda c: c.revoke_device("alice", 7)),
        (
            "Portal.RequestSharing",
            lambda c: c.request_sharing("alice", 7, "alice2", **PROOF),
        ),
        ("Portal.CancelSharing", lambda c: c.cancel_sharing(5, username="alice")),
        ("Portal.IssueOnlineCard", lambda c: c.portal_issue_online_card("alice")),
        ("ApproveSharing", lambda c: c.approve_sharing(5)),
        ("ImportDevice", lambda c: c.import_device("alice", DeviceType.GOLD)),
    ],
)
def test_calls_that_change_state_are_never_retried(
    fake: FakeSls, target: str, method: str, call: object
) -> None:
    fake.fail_next(method, grpc.StatusCode.UNAVAILABLE, "restarting", times=2)
    with SlsClient(target, linger=0, retry=FAST_RETRY) as client, pytest.raises(UnavailableError):
        call(client)  # type: ignore[operator]
    assert fake.calls[method] == 1


def test_an_unreachable_server_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on port now.
    with (
        SlsClient(f"127.0.0.1:{port}", linger=0, timeout=2) as client,
        pytest.raises(UnavailableError) as caught,
    ):
        client.verify("alice", "tok", "12345678")
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert isinstance(caught.value, ConnectionError)


# --- deadlines --------------------------------------------------------------------------


@pytest.mark.parametrize("linger", [0.0, 0.01])
def test_a_deadline_maps_to_deadline_exceeded(target: str, linger: float) -> None:
    with SlsClient(target, linger=linger) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError) as caught:
            client.verify(SLOW_USER, "tok", "12345678", timeout=0.2)
        assert time.monotonic() - started < 0.9
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_the_default_deadline_applies_to_every_call(target: str) -> None:
    with SlsClient(target, linger=0, timeout=0.2) as client:
        with pytest.raises(DeadlineExceededError):
            client.verify_batch([SLOW_USER], ["tok"], ["12345678"])
        assert client.list_devices("alice")  # the deadline is per call


# --- error mapping ----------------------------------------------------------------------

EXPECTED_ERRORS: dict[grpc.StatusCode, type[Exception]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInputError,
    grpc.StatusCode.FAILED_PRECONDITION: ClientRefusedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK])
def test_every_status_maps_to_an_sls_error(
    fake: FakeSls, target: str, code: grpc.StatusCode
) -> None:
    fake.fail_next("IssueChallenge", code, "username: must be lower case")
    with SlsClient(target) as client, pytest.raises(SlsError) as caught:
        client.issue_challenge("alice")
    error = caught.value
    want = EXPECTED_ERRORS.get(code, SlsRpcError)
    assert type(error) is want
    if isinstance(error, SlsRpcError):
        assert (error.method, error.code) == ("IssueChallenge", code)
        assert error.details == "username: must be lower case"
    else:
        assert isinstance(error, InvalidInputError)
        assert (error.field, error.rule) == ("username", "must be lower case")
    if isinstance(error, ClientRefusedError):
        assert error.reason == "username: must be lower case"


@pytest.mark.parametrize(
    ("details", "field", "rule"),
    [
        ("responses: must be digits", "responses", "must be digits"),
        ("usernames[3]: invalid characters", "usernames[3]", "invalid characters"),
        ("identity.ssn: too long", "identity.ssn", "too long"),
        ("no field here", "request", "no field here"),
        ("", "request", "invalid_argument"),
    ],
)
def test_invalid_argument_details_give_field_and_rule(
    fake: FakeSls, target: str, details: str, field: str, rule: str
) -> None:
    fake.fail_next("CreateUser", grpc.StatusCode.INVALID_ARGUMENT, details)
    with SlsClient(target) as client, pytest.raises(InvalidInputError) as caught:
        client.create_user("alice")
    assert (caught.value.field, caught.value.rule) == (field, rule)


# --- no secrets -------------------------------------------------------------------------

SECRETS = ("98765432", "tok-SECRET", "4711", "ABCDEFGHJKMN", "123-45-6789")


def _everything_said(error: BaseException | None) -> str:
    """The messages of the error and of every error chained to it (not the source lines
    of the traceback, which quote this test)."""
    said = []
    while error is not None:
        said += [*traceback.format_exception_only(error), repr(error), repr(error.args)]
        said.append(repr(vars(error)))
        debug = getattr(error, "debug_error_string", None)
        if callable(debug):
            said.append(str(debug()))
        error = error.__cause__ or error.__context__
    return "\n".join(said)


def test_no_code_pin_or_token_appears_in_an_exception(fake: FakeSls, target: str) -> None:
    failures: list[BaseException] = []
    with SlsClient(target, linger=0) as client:
        fake.fail_next("Verify", grpc.StatusCode.INVALID_ARGUMENT, "response: must be 8 digits")
        fake.fail_next("Verify", grpc.StatusCode.UNAVAILABLE, "down")
        fake.fail_next("EnrollDevice", grpc.StatusCode.PERMISSION_DENIED, "gateways may not")
        fake.fail_next("CreateUser", grpc.StatusCode.FAILED_PRECONDITION, "already exists")
        calls: list[Callable[[], object]] = [
            lambda: client.verify("alice", "tok-SECRET", "98765432"),
            lambda: client.verify("alice", "tok-SECRET", "98765432"),
            lambda: client.verify("alice", "tok-SECRET", 98765432),  # type: ignore[arg-type]
            lambda: client.verify_batch(["a"], ["tok-SECRET"], [98765432]),  # type: ignore[list-item]
            lambda: client.verify_batch(["a", "b"], ["tok-SECRET"], ["98765432"]),
            lambda: client.verify("alice", "tok-SECRET", "98765432", access="4711"),
            lambda: client.enroll_device("alice", DeviceType.DSC_PLUS, pin="4711"),
            lambda: client.enroll_device("alice", DeviceType.DSC_PLUS, pin=4711),  # type: ignore[arg-type]
            lambda: client.complete_activation(
                app_public=b"A" * 32,
                push_public=b"P" * 32,
                manual_code="ABCDEFGHJKMN",
                pin=4711,  # type: ignore[arg-type]
            ),
            lambda: client.create_user("alice", Identity(ssn="123-45-6789")),
            lambda: client.import_device("alice", DeviceType.DSC_PLUS, pin=4711),  # type: ignore[arg-type]
            lambda: client.request_sharing(
                "alice",
                7,
                "alice2",
                token="tok-SECRET",  # noqa: S106 - a fake token
                response=98765432,  # type: ignore[arg-type]
            ),
            lambda: client.request_sharing(
                "alice",
                7,
                STRANGER,
                token="tok-SECRET",  # noqa: S106 - a fake token
                response="98765432",
            ),
        ]
        for call in calls:
            with pytest.raises(SlsError) as caught:
                call()
            failures.append(caught.value)
    for error in failures:
        said = _everything_said(error)
        for secret in SECRETS:
            assert secret not in said, (secret, said)


def test_settings_never_show_the_client_key() -> None:
    settings = TlsSettings(b"ca", b"cert", b"-----BEGIN PRIVATE KEY-----SECRETKEY")
    assert "SECRETKEY" not in repr(settings)


# --- settings ---------------------------------------------------------------------------


def test_plaintext_is_refused_for_a_non_loopback_target() -> None:
    with pytest.raises(InvalidInputError) as caught:
        SlsClient("10.1.2.3:50051")
    assert caught.value.field == "tls"
    for target in ("localhost:50051", "[::1]:50051", "unix:/tmp/sls.sock"):
        SlsClient(target).close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"linger": -1}, "linger"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_in_flight": -1}, "max_in_flight"),
        ({"max_in_flight": 1.5}, "max_in_flight"),
        ({"channel_options": [("grpc.keepalive_time_ms",)]}, "channel_options"),
        ({"channel_options": [(1, 2)]}, "channel_options"),
        ({"max_receive_message_length": 2**40}, "max_receive_message_length"),
        ({"tls": "yes"}, "tls"),
    ],
)
def test_settings_are_checked(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        SlsClient("127.0.0.1:1", **kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_channel_options_reach_the_channel(fake: FakeSls, target: str) -> None:
    """A connection of its own per client (the load test's gateways use this to spread
    over the server's processes) still talks to the same server."""
    own = [("grpc.use_local_subchannel_pool", 1), ("grpc.primary_user_agent", "gw-7")]
    with SlsClient(target, linger=0, channel_options=own) as a, SlsClient(target, linger=0) as b:
        assert a.verify("user1", "tok", "00000001").outcome is expected("00000001")[0]
        assert b.verify("user2", "tok", "00000002").outcome is expected("00000002")[0]
    assert fake.calls["Verify"] == 2


def test_retry_policy_is_checked_and_names_only_read_only_methods() -> None:
    with pytest.raises(InvalidInputError):
        RetryPolicy(max_attempts=6)
    with pytest.raises(InvalidInputError):
        RetryPolicy(initial_backoff=0)
    config = RetryPolicy().service_config()
    for method in ("Verify", "VerifyBatch", "IssueChallenge", "CreatePush", "AnswerPush"):
        assert f'"{method}"' not in config
    assert '"ListDevices"' in config
    assert '"UNAVAILABLE"' in config


def test_large_messages_are_refused_by_the_size_limit(target: str) -> None:
    with (
        SlsClient(target, linger=0, max_send_message_length=1024) as client,
        pytest.raises(ResourceExhaustedError),
    ):
        client.verify_batch(["alice"] * 200, ["tok"] * 200, ["12345678"] * 200)


def test_an_attempt_that_times_out_waiting_for_a_slot_is_never_sent(
    fake: FakeSls, target: str
) -> None:
    """Its caller has been told DEADLINE_EXCEEDED: sending it later would use up a
    challenge (or count a failure) behind the caller's back."""
    with (
        SlsClient(target, linger=30.0, max_in_flight=1, timeout=10.0) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        slow = pool.submit(client.verify, SLOW_USER, "tok", "00000000")
        deadline = time.monotonic() + 5
        while not fake.batches() and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(DeadlineExceededError):
            client.verify("user1", "tok", "00000001", timeout=0.2)
        assert slow.result(timeout=8).outcome is expected("00000000")[0]
        # the slot is free again: the next attempt goes at once, alone
        assert client.verify("user2", "tok", "00000002").outcome is expected("00000002")[0]
    assert [list(b.usernames) for b in fake.batches()] == [[SLOW_USER], ["user2"]]


# --- micro-batches over one VerifyStream (stream=True) ------------------------------------


def test_stream_mode_sends_batches_as_messages_of_one_stream(fake: FakeSls, target: str) -> None:
    with SlsClient(target, stream=True) as client:
        results = verify_concurrently(client, 32) + verify_concurrently(client, 32)
    for i, verdict in enumerate(results):
        assert verdict.outcome is expected(f"{i % 32:08d}")[0], i  # type: ignore[attr-defined]
    assert fake.calls["VerifyBatch"] == 0
    assert fake.calls["VerifyStream.open"] == 1
    sent = sorted(u for m in fake.requests["VerifyStream"] for u in m.usernames)
    assert sent == sorted([f"user{i}" for i in range(32)] * 2)  # none lost, none twice


def test_a_failed_stream_fails_its_batch_only_and_the_next_opens_a_new_one(
    fake: FakeSls, target: str
) -> None:
    with SlsClient(target, stream=True) as client:
        with pytest.raises(InvalidInputError):
            client.verify(BOOM_USER, "tok", "00000001")
        assert client.verify("user3", "tok", "00000003").outcome is expected("00000003")[0]
        with pytest.raises(UnavailableError):
            client.verify(BYE_USER, "tok", "00000004")  # the server ended the stream
        assert client.verify("user5", "tok", "00000005").outcome is expected("00000005")[0]
    assert fake.calls["VerifyStream.open"] == 3


def test_stream_mode_close_waits_for_the_batch_in_flight(fake: FakeSls, target: str) -> None:
    client = SlsClient(target, stream=True, timeout=10.0)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.verify, SLOW_USER, "tok", "00000000")
        deadline = time.monotonic() + 5
        while not fake.requests["VerifyStream"] and time.monotonic() < deadline:
            time.sleep(0.005)
        client.close()
        assert slow.result(timeout=5).outcome is expected("00000000")[0]


def test_stream_mode_keeps_each_batchs_deadline(fake: FakeSls, target: str) -> None:
    """A stream has no per-message deadline: a batch whose callers' time runs out fails
    with DEADLINE_EXCEEDED all the same, the stream behind it is ended, and the next
    batch opens a new one instead of queueing behind the late answer."""
    with SlsClient(target, stream=True, timeout=5.0) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.verify(SLOW_USER, "tok", "00000000", timeout=0.2)
        assert time.monotonic() - started < SLOW_SECONDS
        assert client.verify("user1", "tok", "00000001").outcome is expected("00000001")[0]
    assert fake.calls["VerifyStream.open"] == 2


def test_a_late_batch_behind_an_older_one_fails_alone(fake: FakeSls, target: str) -> None:
    with (
        SlsClient(target, stream=True, max_in_flight=2, timeout=5.0) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        older = pool.submit(client.verify, SLOW_USER, "tok", "00000000")
        time.sleep(0.05)
        with pytest.raises(DeadlineExceededError):
            client.verify("user1", "tok", "00000001", timeout=0.1)
        assert older.result(timeout=5).outcome is expected("00000000")[0]
    assert fake.calls["VerifyStream.open"] == 1
