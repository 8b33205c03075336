"""The SLS rules that arrived with the one decision point, each pinned by a test named
after it (SLS-RULES sections in the comments). The older rules are in
test_domain_rules.py; the matrix of every way in is test_one_rule_for_every_way_in.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sls_core import card, ocra
from sls_core.clock import DAY, HOUR, ManualClock
from sls_core.devices import DeviceState, DeviceType
from sls_core.errors import InvalidInputError
from sls_core.ibkey import ActivationError
from sls_core.login import SecureLogin
from sls_core.outcome import LoginOutcome
from sls_core.rules import lockout
from sls_core.simulator import SimulatedApp
from sls_core.values import Access, Identity, Purpose, SharingError, SharingState

pytest_plugins = ["pg_fixtures"]

OC = LoginOutcome

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
SECRET = bytes(range(20))
PIN = "4711"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_000.0)


@pytest.fixture
def sls(tmp_path: Path, clock: ManualClock, store_url: str | None) -> Iterator[SecureLogin]:
    """The domain on SQLite, and again on PostgreSQL."""
    service = SecureLogin.open(tmp_path / "data", clock=clock, store=store_url)
    service.create_user("alice")
    yield service
    service.store.close()


def dsc(challenge: str | None) -> str:
    assert challenge is not None
    return ocra.compute(SUITE, SECRET, question=challenge, pin=PIN)


def with_dsc(sls: SecureLogin, name: str = "alice") -> int:
    return sls.enroll_device(name, DeviceType.DSC_PLUS, secret=SECRET, pin=PIN).id


def login(sls: SecureLogin, *, right: bool = True, name: str = "alice") -> OC:
    c = sls.issue_challenge(name)
    answer = dsc(c.challenge)
    if not right:
        answer = f"{(int(answer) + 1) % 10**8:08d}"
    return sls.verify(name, c.token, answer).outcome


def with_ibkey(sls: SecureLogin, name: str = "alice") -> SimulatedApp:
    app = SimulatedApp()
    app.activate(sls.ibkey, payload=sls.ibkey.create_activation(name).payload, pin="a1b2")
    return app


# -- Lockout ------------------------------------------------------------------------------


def test_password_failures_reported_by_gateways_count_toward_the_same_lockout(
    sls: SecureLogin,
) -> None:
    with_dsc(sls)
    for _ in range(9):
        assert login(sls, right=False) is OC.WRONG
    status = sls.record_password_failure("alice")
    assert status.consecutive_failures == 10
    assert status.locked
    assert login(sls) is OC.LOCKED


def test_a_password_failure_for_an_unknown_user_is_an_error_naming_the_field(
    sls: SecureLogin,
) -> None:
    with pytest.raises(InvalidInputError, match="username"):
        sls.record_password_failure("nobody")
    with pytest.raises(InvalidInputError, match="invalid characters"):
        sls.record_password_failure("bad name")


def test_client_services_unlock_a_locked_user(sls: SecureLogin) -> None:
    with_dsc(sls)
    for _ in range(10):
        sls.record_password_failure("alice")
    assert login(sls) is OC.LOCKED
    status = sls.unlock("alice", by="agent:carol")
    assert status.consecutive_failures == 0
    assert not status.locked
    assert login(sls) is OC.OK
    with pytest.raises(InvalidInputError, match="by"):
        sls.unlock("alice", by="")


def test_a_push_approval_ends_the_run_of_failures(sls: SecureLogin) -> None:
    card_id = with_dsc(sls)
    app = with_ibkey(sls)
    sls.choose_device("alice", card_id)  # M2FS: logins below answer with the card
    for _ in range(9):
        assert login(sls, right=False) is OC.WRONG
    sls.ibkey.create_push("alice")
    assert [o for _, o in app.answer_pushes(sls.ibkey)] == [OC.OK]
    assert sls.lockout_status("alice").consecutive_failures == 0
    assert login(sls, right=False) is OC.WRONG
    assert not sls.lockout_status("alice").locked


def test_a_bad_push_signature_is_a_failure_and_a_decline_is_not(sls: SecureLogin) -> None:
    app = with_ibkey(sls)
    push = sls.ibkey.create_push("alice")
    assert sls.ibkey.answer_push(push.challenge_id, 1, b"\x01" * 64) is OC.WRONG
    assert sls.lockout_status("alice").consecutive_failures == 1
    # The forged answer did not burn the holder's push: the real decline still lands.
    assert [o for _, o in app.answer_pushes(sls.ibkey, approve=False)] == [OC.DECLINED]
    assert sls.lockout_status("alice").consecutive_failures == 1
    assert sls.ibkey.push_status(push.challenge_id) == "declined"


def test_a_push_to_a_device_revoked_after_it_was_sent_is_refused(sls: SecureLogin) -> None:
    app = with_ibkey(sls)
    push = sls.ibkey.create_push("alice")
    sls.revoke_device("alice", push.device_id)
    assert [o for _, o in app.answer_pushes(sls.ibkey)] == []  # no longer delivered
    signature = app.sign(push.message(1))
    assert sls.ibkey.answer_push(push.challenge_id, 1, signature) is OC.DEVICE_NOT_ACTIVE
    assert sls.ibkey.push_status(push.challenge_id) == "pending"


def test_wrong_recovery_pins_count_in_the_same_run_as_other_failures(
    sls: SecureLogin, clock: ManualClock
) -> None:
    card_id = with_dsc(sls)
    app = with_ibkey(sls)
    sls.choose_device("alice", card_id)
    for _ in range(8):
        assert login(sls, right=False) is OC.WRONG
    clock.advance(HOUR)
    with pytest.raises(ActivationError, match="wrong recovery PIN"):
        app.recover(sls.ibkey, "alice", "zzzz")
    sls.record_password_failure("alice")
    assert sls.lockout_status("alice").locked
    with pytest.raises(ActivationError, match="locked"):
        app.recover(sls.ibkey, "alice", "a1b2")


def test_the_lock_message_names_no_hard_coded_period() -> None:
    assert "24" not in OC.LOCKED.message
    assert lockout.LOCKOUT_PERIOD == 24 * HOUR
    assert lockout.LOCKOUT_FAILURES == 10


def test_failure_times_are_kept_sorted_whoever_records_them() -> None:
    run = lockout.with_failure([10.0, 30.0], 20.0)
    assert run == [10.0, 20.0, 30.0]
    assert lockout.counts_as_failure(OC.WRONG)
    assert not any(lockout.counts_as_failure(o) for o in (OC.MALFORMED, OC.REPLAYED, OC.DECLINED))
    assert lockout.ends_failure_run(OC.OK)
    assert not lockout.ends_failure_run(OC.DECLINED)


# -- Device life cycle ---------------------------------------------------------------------


def test_issuing_a_temporary_passcode_suspends_the_permanent_device(sls: SecureLogin) -> None:
    device_id = with_dsc(sls)
    sls.issue_temporary_passcode("alice")
    assert sls.device("alice", device_id).state is DeviceState.SUSPENDED
    with pytest.raises(InvalidInputError, match="suspended"):
        sls.issue_challenge("alice", device_id=device_id)


def test_a_replacement_for_a_lost_device_suspends_the_lost_one_at_once(sls: SecureLogin) -> None:
    lost = with_dsc(sls)
    c = sls.issue_challenge("alice", device_id=lost)
    sls.enroll_device(
        "alice",
        DeviceType.DSC_PLUS,
        secret=bytes(range(1, 21)),
        pin=PIN,
        shipped=True,
        replaces=lost,
        replaces_lost=True,
    )
    assert sls.device("alice", lost).state is DeviceState.SUSPENDED
    assert sls.verify("alice", c.token, dsc(c.challenge)).outcome is OC.DEVICE_NOT_ACTIVE


def test_self_reactivation_with_the_suspended_device_ends_temporary_credentials(
    sls: SecureLogin,
) -> None:
    device_id = with_dsc(sls)
    passcode = sls.issue_temporary_passcode("alice")
    card_device, _ = sls.issue_online_card("alice")
    c = sls.issue_challenge("alice", purpose=Purpose.REACTIVATION)
    assert c.device_id == device_id
    assert c.purpose is Purpose.REACTIVATION
    wrong = f"{(int(dsc(c.challenge)) + 1) % 10**8:08d}"
    assert sls.activate("alice", c.token, wrong).outcome is OC.WRONG
    c = sls.issue_challenge("alice", purpose=Purpose.REACTIVATION)
    assert sls.activate("alice", c.token, dsc(c.challenge)).ok
    states = {d.id: d.state for d in sls.devices("alice")}
    assert states[device_id] is DeviceState.ACTIVE
    assert states[card_device.id] is DeviceState.REVOKED
    assert sls.verify("alice", None, passcode).outcome is OC.DEVICE_NOT_ACTIVE
    assert login(sls) is OC.OK


def test_auto_activation_of_a_replacement_ends_the_passcode_and_online_card(
    sls: SecureLogin, clock: ManualClock
) -> None:
    lost = with_dsc(sls)
    sls.enroll_device(
        "alice",
        DeviceType.DSC_PLUS,
        secret=SECRET,
        pin=PIN,
        shipped=True,
        replaces=lost,
        replaces_lost=True,
    )
    clock.advance(15 * DAY)  # the replacement is slow to arrive: a passcode meanwhile
    passcode = sls.issue_temporary_passcode("alice")
    assert sls.verify("alice", None, passcode).ok
    clock.advance(6 * DAY)  # 21 days after shipment, within the passcode's 12 days
    assert sls.verify("alice", None, passcode, access=Access.ONLINE_CARD).outcome is (
        OC.DEVICE_NOT_ACTIVE
    )
    assert login(sls) is OC.OK  # the replacement answers now


def test_the_online_card_is_issued_only_within_the_passcodes_window(
    sls: SecureLogin, clock: ManualClock
) -> None:
    with pytest.raises(InvalidInputError, match="window"):
        sls.issue_online_card("alice")
    sls.issue_temporary_passcode("alice")
    clock.advance(11 * DAY)
    device, printable = sls.issue_online_card("alice")  # day 11: still in the portal window
    assert device.expires_at == pytest.approx(clock.now() + 21 * DAY)
    assert printable.expires_on is not None
    clock.advance(2 * DAY)
    with pytest.raises(InvalidInputError, match="window"):
        sls.issue_online_card("alice")


def test_the_online_card_gives_full_access_for_21_days(
    sls: SecureLogin, clock: ManualClock
) -> None:
    sls.issue_temporary_passcode("alice")
    device, printable = sls.issue_online_card("alice")
    c = sls.issue_challenge("alice", device_id=device.id, purpose=Purpose.ACTIVATION)
    assert c.card_indices is not None
    first, second = c.card_indices
    assert sls.activate(
        "alice", c.token, printable.codes[first - 1] + printable.codes[second - 1]
    ).ok
    clock.advance(20 * DAY)
    c = sls.issue_challenge("alice", device_id=device.id)
    assert c.card_indices is not None
    first, second = c.card_indices
    answer = printable.codes[first - 1] + printable.codes[second - 1]
    assert sls.verify("alice", c.token, answer, access=Access.TRADING).outcome is OC.OK


def test_activating_ib_key_ends_the_sms_device(sls: SecureLogin) -> None:
    sms = sls.enroll_device("alice", DeviceType.SMS, phone="+41791234567")
    with_ibkey(sls)
    assert sls.device("alice", sms.id).state is DeviceState.REVOKED


def test_a_locked_user_cannot_activate_a_new_ib_key(sls: SecureLogin) -> None:
    offer = sls.ibkey.create_activation("alice")
    for _ in range(10):
        sls.record_password_failure("alice")
    with pytest.raises(ActivationError, match="locked"):
        SimulatedApp().activate(sls.ibkey, payload=offer.payload)
    with pytest.raises(InvalidInputError, match="locked"):
        sls.ibkey.create_activation("alice")
    assert not [d for d in sls.devices("alice") if d.type is DeviceType.IB_KEY]


# -- Opt-out and closed accounts -------------------------------------------------------------


def test_a_closed_account_has_no_trading_access_and_gets_no_new_device_passcode_or_push(
    sls: SecureLogin,
) -> None:
    with_ibkey(sls)
    sls.close_account("alice")
    with pytest.raises(InvalidInputError, match="no trading access"):
        sls.second_factor_required("alice", Access.TRADING)
    assert not sls.second_factor_required("alice", Access.PORTAL)
    for issue in (
        lambda: sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN),
        lambda: sls.issue_temporary_passcode("alice"),
        lambda: sls.ibkey.create_push("alice"),
        lambda: sls.ibkey.create_activation("alice"),
    ):
        with pytest.raises(InvalidInputError, match="closed"):
            issue()


def test_opted_out_users_get_the_none_withdrawal_limits(sls: SecureLogin) -> None:
    with_dsc(sls)
    assert sls.withdrawal_limits("alice").per_day is None
    sls.set_opted_out("alice", True)
    limits = sls.withdrawal_limits("alice")
    assert (limits.device, limits.per_day, limits.per_five_days) == (None, 50_000, 100_000)


# -- Usernames and devices -----------------------------------------------------------------


def test_a_username_in_the_wrong_case_is_an_invalid_combination_not_invalid_characters(
    sls: SecureLogin,
) -> None:
    with_dsc(sls)
    wrong_case = sls.verify("Alice", None, "ABCDEFGHJKMN").outcome
    assert wrong_case is OC.UNKNOWN_USER
    assert wrong_case.message == "Invalid username/password combination."
    assert sls.verify("al-ice", None, "ABCDEFGHJKMN").outcome is OC.INVALID_USERNAME
    assert OC.INVALID_USERNAME.message != wrong_case.message
    assert sls.record_password_failure("alice").consecutive_failures == 1
    with pytest.raises(InvalidInputError, match="no such user"):
        sls.issue_challenge("Alice")  # the right letters, the wrong case: no such user
    with pytest.raises(InvalidInputError, match="lower-case"):
        sls.create_user("Bob")  # usernames are created in lower case


def test_legacy_devices_are_not_newly_enrolled_but_imported_ones_verify(
    sls: SecureLogin,
) -> None:
    for legacy in (
        DeviceType.SECURITY_CODE_CARD,
        DeviceType.DIGITAL_SECURITY_CARD,
        DeviceType.PLATINUM,
        DeviceType.GOLD,
        DeviceType.ALPINE,
    ):
        with pytest.raises(InvalidInputError, match="no longer issued"):
            sls.enroll_device("alice", legacy)
    alpine = sls.import_device("alice", DeviceType.ALPINE, secret=SECRET)
    assert alpine.suite == "OCRA-1:HOTP-SHA1-8:QN06"
    c = sls.issue_challenge("alice")
    assert c.challenge is not None
    answer = ocra.compute("OCRA-1:HOTP-SHA1-8:QN06", SECRET, question=c.challenge)
    assert sls.verify("alice", c.token, answer).ok
    assert DeviceType.ALPINE.is_legacy
    assert DeviceType.ALPINE.is_physical


def test_the_code_card_face_gives_the_printed_codes() -> None:
    codes = card.card_codes(SECRET, 100)
    assert len(codes) == 100
    assert all(len(c) == 3 for c in codes)


# -- Several devices and sharing ------------------------------------------------------------

PERSON = Identity("1980-01-02", "CH", "CH", "passport", "X1234567")


def _holder_pair(sls: SecureLogin) -> tuple[int, int]:
    """alice (DSC+) and alice2 (a legacy DSC), the same person."""
    sls.create_user("owner", PERSON)
    shared = sls.enroll_device("owner", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN).id
    sls.create_user("alice2", PERSON)
    own = sls.import_device("alice2", DeviceType.DIGITAL_SECURITY_CARD, secret=bytes(range(3, 23)))
    return shared, own.id


def _proof(sls: SecureLogin, device_id: int) -> tuple[str, str]:
    c = sls.issue_challenge("owner", device_id=device_id, purpose=Purpose.SHARING)
    return c.token, dsc(c.challenge)


def test_a_sharing_request_is_proved_by_the_owner_answering_with_the_shared_device(
    sls: SecureLogin,
) -> None:
    shared, own = _holder_pair(sls)
    token, answer = _proof(sls, shared)
    wrong = f"{(int(answer) + 1) % 10**8:08d}"
    with pytest.raises(SharingError, match="possession"):
        sls.request_sharing("owner", shared, "alice2", token=token, response=wrong)
    assert sls.lockout_status("owner").consecutive_failures == 1  # a wrong proof is a guess
    token, answer = _proof(sls, shared)
    request = sls.request_sharing("owner", shared, "alice2", token=token, response=answer)
    assert request.state is SharingState.ACTIVE
    assert request.set_aside == (own,)
    assert sls.device("alice2", own).state is DeviceState.SUSPENDED
    assert login(sls, name="alice2") is OC.OK  # the shared card answers for alice2
    # The same request twice is refused; a login answer is no proof of possession
    # (purpose-bound tokens).
    token, answer = _proof(sls, shared)
    with pytest.raises(SharingError, match="already open"):
        sls.request_sharing("owner", shared, "alice2", token=token, response=answer)
    sls.create_user("alice3", PERSON)
    c = sls.issue_challenge("owner", device_id=shared)
    with pytest.raises(SharingError, match="possession"):
        sls.request_sharing("owner", shared, "alice3", token=c.token, response=dsc(c.challenge))


def test_a_sharing_request_may_wait_for_compliance_approval(sls: SecureLogin) -> None:
    shared, _ = _holder_pair(sls)
    token, answer = _proof(sls, shared)
    request = sls.request_sharing(
        "owner", shared, "alice2", token=token, response=answer, needs_approval=True
    )
    assert request.state is SharingState.PENDING
    assert shared not in {d.id for d in sls.devices("alice2")}
    assert sls.approve_sharing(request.id).state is SharingState.ACTIVE
    assert shared in {d.id for d in sls.devices("alice2")}
    with pytest.raises(SharingError, match="no such pending"):
        sls.approve_sharing(request.id)


def test_cancelling_a_sharing_request_reactivates_the_devices_the_requester_set_aside(
    sls: SecureLogin,
) -> None:
    shared, own = _holder_pair(sls)
    token, answer = _proof(sls, shared)
    request = sls.request_sharing("owner", shared, "alice2", token=token, response=answer)
    cancelled = sls.cancel_sharing(request.id)
    assert cancelled.state is SharingState.CANCELLED
    assert sls.device("alice2", own).state is DeviceState.ACTIVE
    assert shared not in {d.id for d in sls.devices("alice2")}
    with pytest.raises(SharingError, match="no such pending"):
        sls.cancel_sharing(request.id)


def test_only_a_temporary_passcode_or_online_card_blocks_sharing_not_sms(
    sls: SecureLogin,
) -> None:
    shared, _ = _holder_pair(sls)
    sls.enroll_device("alice2", DeviceType.SMS, phone="+41790000001")
    token, answer = _proof(sls, shared)
    sls.request_sharing("owner", shared, "alice2", token=token, response=answer)
    sls.create_user("alice3", PERSON)
    sls.issue_temporary_passcode("alice3")
    token, answer = _proof(sls, shared)
    with pytest.raises(SharingError, match="temporary device"):
        sls.request_sharing("owner", shared, "alice3", token=token, response=answer)


def test_only_physical_devices_are_compared_for_sharing(sls: SecureLogin) -> None:
    """An IB Key (stronger than the legacy DSC) does not block sharing that DSC."""
    sls.create_user("owner", PERSON)
    legacy = sls.import_device("owner", DeviceType.DIGITAL_SECURITY_CARD, secret=SECRET)
    sls.create_user("alice2", PERSON)
    sls.enroll_device("alice2", DeviceType.IB_KEY, secret=bytes(range(5, 25)), pin="a1b2")
    sls.share_device("owner", legacy.id, "alice2")


def test_client_services_unlock_from_the_command_line_and_it_is_audited(
    tmp_path: Path, clock: ManualClock
) -> None:

    from sls_core.admin import main as admin_main
    from sls_core.server.audit import read_records

    data = tmp_path / "cli"
    sls = SecureLogin.open(data, clock=clock)
    sls.create_user("alice")
    for _ in range(10):
        sls.record_password_failure("alice")
    sls.store.close()
    assert admin_main(["--data-dir", str(data), "unlock", "alice", "--by", "carol"]) == 0
    reopened = SecureLogin.open(data, clock=clock)
    assert not reopened.lockout_status("alice").locked
    (record,) = read_records(data / "audit.jsonl")
    assert (record["event"], record["caller"], record["username"]) == (
        "unlock",
        "cli:carol",
        "alice",
    )


def test_only_the_owner_or_the_requester_cancel_a_sharing_request(sls: SecureLogin) -> None:
    shared, _ = _holder_pair(sls)
    token, answer = _proof(sls, shared)
    request = sls.request_sharing("owner", shared, "alice2", token=token, response=answer)
    with pytest.raises(SharingError, match="no such pending"):
        sls.cancel_sharing(request.id, username="alice")  # a stranger to the request
    assert sls.cancel_sharing(request.id, username="alice2").state is SharingState.CANCELLED


def test_a_sharing_request_names_which_username_is_unknown(sls: SecureLogin) -> None:
    shared, _ = _holder_pair(sls)
    token, answer = _proof(sls, shared)
    with pytest.raises(InvalidInputError, match=r"^with_username: no such user"):
        sls.request_sharing("owner", shared, "nobody", token=token, response=answer)
    with pytest.raises(InvalidInputError, match=r"^owner: invalid characters"):
        sls.request_sharing("own-er", shared, "alice2", token=token, response=answer)


# -- hardening: one device's suite never breaks other users' logins --------------------------


@pytest.mark.parametrize(
    "suite",
    [
        "OCRA-1:HOTP-SHA1-8:C-QN06-PSHA1",
        "OCRA-1:HOTP-SHA256-8:QN08-T1M",
        "OCRA-1:HOTP-SHA256-8:QN08-S064",
        "OCRA-1:HOTP-SHA1-6:QA08",
        "OCRA-1:HOTP-SHA1-6:QN04",
    ],
)
def test_a_suite_logins_cannot_verify_is_refused_at_enrollment(
    sls: SecureLogin, suite: str
) -> None:
    """Issue 11, finding 2."""
    with pytest.raises(InvalidInputError, match=r"^suite: a login suite"):
        sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN, suite=suite)


def test_other_suites_that_take_only_the_challenge_and_pin_are_supported(sls: SecureLogin) -> None:
    suite = "OCRA-1:HOTP-SHA256-6:QN08-PSHA1"
    sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN, suite=suite)
    c = sls.issue_challenge("alice")
    assert c.challenge is not None
    answer = ocra.compute(suite, SECRET, question=c.challenge, pin=PIN)
    assert sls.verify("alice", c.token, answer).ok


def test_a_device_with_an_unverifiable_suite_fails_alone_never_its_batch(
    sls: SecureLogin,
) -> None:
    """A device stored before such suites were refused: its items are MALFORMED (not a
    guess); the other users of the same batch are verified as usual."""
    with_dsc(sls)
    sls.create_user("old")
    legacy = sls.enroll_device("old", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    with sls.context.write() as tx:
        tx.store.update_device(legacy.id, suite="OCRA-1:HOTP-SHA1-8:C-QN06-PSHA1")
    good = sls.issue_challenge("alice")
    bad = sls.issue_challenge("old")
    result = sls.verify_batch(
        ["alice", "old"], [good.token, bad.token], [dsc(good.challenge), dsc(bad.challenge)]
    )
    assert [result[0], result[1]] == [OC.OK, OC.MALFORMED]
    assert sls.lockout_status("old").consecutive_failures == 0


# -- review findings: sharing, lost devices, step-up, online card, SMS ----------------------


def test_cancelling_a_share_never_brings_back_a_device_revoked_since(sls: SecureLogin) -> None:
    shared, own = _holder_pair(sls)
    token, answer = _proof(sls, shared)
    request = sls.request_sharing("owner", shared, "alice2", token=token, response=answer)
    sls.revoke_device("alice2", own)
    sls.cancel_sharing(request.id, username="alice2")
    assert sls.device("alice2", own).state is DeviceState.REVOKED


def test_a_closed_or_locked_requester_gets_no_shared_device(sls: SecureLogin) -> None:
    shared, _ = _holder_pair(sls)
    for _ in range(10):
        sls.record_password_failure("alice2")
    token, answer = _proof(sls, shared)
    with pytest.raises(InvalidInputError, match="locked"):
        sls.request_sharing("owner", shared, "alice2", token=token, response=answer)
    with pytest.raises(InvalidInputError, match="locked"):
        sls.share_device("owner", shared, "alice2")
    sls.unlock("alice2", by="agent")
    request = sls.request_sharing(
        "owner", shared, "alice2", token=token, response=answer, needs_approval=True
    )
    sls.close_account("alice2")
    with pytest.raises(InvalidInputError, match="closed"):
        sls.approve_sharing(request.id)  # judged again at approval
    assert shared not in {d.id for d in sls.devices("alice2")}


def test_a_proof_from_another_device_is_refused_before_it_counts(sls: SecureLogin) -> None:
    shared, _ = _holder_pair(sls)
    other = sls.enroll_device("owner", DeviceType.DSC_PLUS, secret=bytes(range(9, 29)), pin=PIN)
    for _ in range(9):
        sls.record_password_failure("owner")
    c = sls.issue_challenge("owner", device_id=other.id, purpose=Purpose.SHARING)
    answer = ocra.compute(SUITE, bytes(range(9, 29)), question=c.challenge, pin=PIN)
    with pytest.raises(SharingError, match="possession"):
        sls.request_sharing("owner", shared, "alice2", token=c.token, response=answer)
    assert sls.lockout_status("owner").consecutive_failures == 9  # no success recorded


def test_a_lost_device_is_never_reactivated_while_its_replacement_is_on_its_way(
    sls: SecureLogin,
) -> None:
    lost = with_dsc(sls)
    sls.enroll_device(
        "alice",
        DeviceType.DSC_PLUS,
        secret=bytes(range(1, 21)),
        pin=PIN,
        shipped=True,
        replaces=lost,
        replaces_lost=True,
    )
    with pytest.raises(InvalidInputError, match="device"):
        sls.issue_challenge("alice", purpose=Purpose.REACTIVATION)
    with pytest.raises(InvalidInputError, match="being replaced"):
        sls.issue_challenge("alice", device_id=lost, purpose=Purpose.REACTIVATION)


def test_a_temporary_passcode_is_no_step_up_answer(sls: SecureLogin) -> None:
    with_dsc(sls)
    passcode = sls.issue_temporary_passcode("alice")
    assert sls.verify("alice", None, passcode).ok
    step = sls.verify("alice", None, passcode, task="withdrawal")
    assert step.outcome is OC.CHALLENGE_INVALID


def test_a_locked_user_gets_no_online_card_and_no_sms_code(sls: SecureLogin) -> None:
    sls.issue_temporary_passcode("alice")
    sls.enroll_device("alice", DeviceType.SMS, phone="+41791234567")
    for _ in range(10):
        sls.record_password_failure("alice")
    with pytest.raises(InvalidInputError, match="locked"):
        sls.issue_online_card("alice")
    with pytest.raises(InvalidInputError, match="locked"):
        sls.issue_challenge("alice")


def test_the_auto_activation_delay_is_set_per_region_from_2_to_3_weeks(tmp_path: Path) -> None:
    clock = ManualClock(1_800_000_000.0)
    sls = SecureLogin.open(tmp_path / "eu", clock=clock, auto_activation_delay=14 * DAY)
    sls.create_user("alice")
    shipped = sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN, shipped=True)
    clock.advance(14 * DAY - 1)
    assert sls.device("alice", shipped.id).state is DeviceState.PENDING
    clock.advance(1)
    assert sls.device("alice", shipped.id).state is DeviceState.ACTIVE
    for days in (13, 22):
        with pytest.raises(InvalidInputError, match="14 to 21 days"):
            SecureLogin.open(tmp_path / "bad", auto_activation_delay=days * DAY)


# -- abuse limits (issue 11): texts and activation offers per user ---------------------------


def test_a_user_is_sent_at_most_5_texts_in_15_minutes(
    sls: SecureLogin, clock: ManualClock, tmp_path: Path
) -> None:
    from sls_core.rules.quotas import QuotaExceededError
    from sls_core.sms import read_outbox

    sls.enroll_device("alice", DeviceType.SMS, phone="+41791234567")
    for _ in range(5):
        sls.issue_challenge("alice")
    with pytest.raises(QuotaExceededError, match=r"sms: at most 5 per user in 15 minutes"):
        sls.issue_challenge("alice")
    assert len(read_outbox(tmp_path / "data" / "sms-outbox.jsonl")) == 5  # nothing sent
    clock.advance(15 * 60 + 1)
    sls.issue_challenge("alice")  # the window moved on


def test_a_user_gets_at_most_5_activation_offers_an_hour(sls: SecureLogin) -> None:
    from sls_core.rules.quotas import QuotaExceededError

    for _ in range(5):
        sls.ibkey.create_activation("alice")
    with pytest.raises(QuotaExceededError) as refused:
        sls.ibkey.create_activation("alice")
    assert 0 < refused.value.retry_after <= 3600
    sls.create_user("bob")
    sls.ibkey.create_activation("bob")  # per user: others are not affected
