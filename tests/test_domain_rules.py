"""Every rule of SLS-RULES, each in a test whose name says the rule.

Time moves with a ManualClock; nothing sleeps. Right answers come from the same public
kernel functions a device would use (``sls_core.ocra.compute``, the card codes the printed
card shows, the SMS outbox).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sls_core import ocra
from sls_core.clock import DAY, HOUR, ManualClock
from sls_core.devices import DeviceState, DeviceType
from sls_core.errors import InvalidInputError
from sls_core.login import (
    Access,
    Identity,
    Purpose,
    SecureLogin,
    SharingError,
)
from sls_core.outcome import LoginOutcome
from sls_core.sms import read_outbox

pytest_plugins = ["pg_fixtures"]

OC = LoginOutcome
DSC_SECRET = bytes(range(20))
IBKEY_SECRET = bytes(range(100, 120))
PIN = "4711"
PERSON = Identity("1980-01-02", "CH", "CH", "passport", "X1234567")
OTHER_PERSON = Identity("1975-05-05", "FR", "FR", "passport", "F7654321")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_000.0)


@pytest.fixture
def sls(tmp_path: Path, clock: ManualClock, store_url: str | None) -> Iterator[SecureLogin]:
    """The domain on SQLite, and again on PostgreSQL."""
    service = SecureLogin.open(tmp_path / "data", clock=clock, store=store_url)
    yield service
    service.store.close()


def dsc_answer(challenge: str, *, secret: bytes = DSC_SECRET, pin: str = PIN) -> str:
    """What a DSC+ shows after the PIN and the 6-digit challenge are typed."""
    return ocra.compute("OCRA-1:HOTP-SHA1-8:QN06-PSHA1", secret, question=challenge, pin=pin)


def with_dsc(sls: SecureLogin, name: str = "alice", **kw: object) -> int:
    sls.create_user(name, PERSON)
    device = sls.enroll_device(name, DeviceType.DSC_PLUS, secret=DSC_SECRET, pin=PIN, **kw)  # type: ignore[arg-type]
    return device.id


def login(sls: SecureLogin, name: str = "alice", *, right: bool = True) -> LoginOutcome:
    challenge = sls.issue_challenge(name)
    assert challenge.challenge is not None
    answer = dsc_answer(challenge.challenge)
    if not right:
        answer = f"{(int(answer) + 1) % 10**8:08d}"
    return sls.verify(name, challenge.token, answer).outcome


# -- usernames ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["al ice", "al-ice", "al.ice", "", "ålice", "a" * 65])
def test_username_with_invalid_characters_is_refused_before_any_lookup(
    sls: SecureLogin, bad: str
) -> None:
    with pytest.raises(InvalidInputError, match="invalid characters"):
        sls.create_user(bad)
    with pytest.raises(InvalidInputError, match="invalid characters"):
        sls.issue_challenge(bad)
    assert sls.verify(bad, None, "123456").outcome is OC.INVALID_USERNAME


def test_unknown_user_is_its_own_outcome(sls: SecureLogin) -> None:
    assert sls.verify("nobody", None, "ABCDEFGHJKMN").outcome is OC.UNKNOWN_USER


# -- challenge / response ----------------------------------------------------------------


def test_dsc_plus_answers_an_8_digit_response_computed_with_the_device_pin(
    sls: SecureLogin,
) -> None:
    with_dsc(sls)
    challenge = sls.issue_challenge("alice")
    assert challenge.challenge is not None
    assert len(challenge.challenge) == 6
    assert challenge.challenge.isdigit()
    wrong_pin = dsc_answer(challenge.challenge, pin="0000")
    assert sls.verify("alice", challenge.token, wrong_pin).outcome is OC.WRONG
    challenge = sls.issue_challenge("alice")
    assert challenge.challenge is not None
    verdict = sls.verify("alice", challenge.token, dsc_answer(challenge.challenge))
    assert verdict.ok
    assert verdict.device_id is not None


def test_dsc_plus_pin_is_stored_only_as_its_hash_and_secrets_are_encrypted_at_rest(
    sls: SecureLogin, tmp_path: Path, store_url: str | None
) -> None:
    with_dsc(sls)
    if store_url is None:
        raw = (tmp_path / "data" / "sls.db").read_bytes()
        wal = tmp_path / "data" / "sls.db-wal"
        raw += wal.read_bytes() if wal.exists() else b""
    else:  # every value of every device row, as PostgreSQL holds it
        import psycopg

        with psycopg.connect(store_url) as conn:
            rows = conn.execute("SELECT * FROM devices").fetchall()
        raw = b"".join(
            bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode()
            for row in rows
            for v in row
        )
        assert raw  # the device is there
    assert DSC_SECRET not in raw
    assert hashlib.sha1(PIN.encode()).digest() not in raw  # noqa: S324 - the suite's PIN hash
    assert PIN.encode() not in raw


def test_ib_key_offline_turns_a_6_digit_challenge_into_an_8_digit_response(
    sls: SecureLogin,
) -> None:
    sls.create_user("bob")
    sls.enroll_device("bob", DeviceType.IB_KEY, secret=IBKEY_SECRET, pin="a1b2!")
    challenge = sls.issue_challenge("bob")
    assert challenge.challenge is not None
    answer = ocra.compute(
        "OCRA-1:HOTP-SHA1-8:QN06-PSHA1", IBKEY_SECRET, question=challenge.challenge, pin="a1b2!"
    )
    assert len(answer) == 8
    assert sls.verify("bob", challenge.token, answer).ok


@pytest.mark.parametrize("pin", ["123", "1234567", "12 34", "pïn1"])
def test_ib_key_pin_is_4_to_6_letters_digits_or_specials(sls: SecureLogin, pin: str) -> None:
    sls.create_user("bob")
    with pytest.raises(InvalidInputError, match="4 to 6") as info:
        sls.enroll_device("bob", DeviceType.IB_KEY, secret=IBKEY_SECRET, pin=pin)
    assert pin not in str(info.value)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda a: a[:4] + " " + a[4:],
        lambda a: a[:7],
        lambda a: a + "0",
        lambda a: "A" + a[1:],
        lambda a: "\uff11" + a[1:],
    ],
    ids=["space", "short", "long", "letter", "fullwidth"],
)
def test_response_with_spaces_letters_or_wrong_length_is_malformed_not_wrong(
    sls: SecureLogin, mangle: object
) -> None:
    with_dsc(sls)
    challenge = sls.issue_challenge("alice")
    assert challenge.challenge is not None
    bad = mangle(dsc_answer(challenge.challenge))  # type: ignore[operator]
    assert sls.verify("alice", challenge.token, bad).outcome is OC.MALFORMED
    # Malformed is not a guess: the challenge is still usable and nothing was counted.
    assert sls.lockout_status("alice").consecutive_failures == 0
    assert sls.verify("alice", challenge.token, dsc_answer(challenge.challenge)).ok


def test_a_challenge_token_verifies_once_and_a_second_use_is_replayed(sls: SecureLogin) -> None:
    with_dsc(sls)
    challenge = sls.issue_challenge("alice")
    assert challenge.challenge is not None
    answer = dsc_answer(challenge.challenge)
    assert sls.verify("alice", challenge.token, answer).ok
    assert sls.verify("alice", challenge.token, answer).outcome is OC.REPLAYED


def test_a_replay_is_refused_by_another_process_sharing_the_store(
    sls: SecureLogin, tmp_path: Path, clock: ManualClock, store_url: str | None
) -> None:
    with_dsc(sls)
    other = SecureLogin.open(tmp_path / "data", clock=clock, store=store_url)
    challenge = sls.issue_challenge("alice")
    assert challenge.challenge is not None
    answer = dsc_answer(challenge.challenge)
    assert other.verify("alice", challenge.token, answer).ok
    assert sls.verify("alice", challenge.token, answer).outcome is OC.REPLAYED
    other.store.close()


def test_a_challenge_expires_after_its_lifetime(sls: SecureLogin, clock: ManualClock) -> None:
    with_dsc(sls)
    challenge = sls.issue_challenge("alice")
    assert challenge.challenge is not None
    clock.advance(sls.challenge_ttl + 2)
    outcome = sls.verify("alice", challenge.token, dsc_answer(challenge.challenge)).outcome
    assert outcome is OC.EXPIRED


def test_a_challenge_is_bound_to_its_user_and_cannot_be_forged(sls: SecureLogin) -> None:
    with_dsc(sls)
    sls.create_user("mallory")
    challenge = sls.issue_challenge("alice")
    assert challenge.challenge is not None
    answer = dsc_answer(challenge.challenge)
    assert sls.verify("mallory", challenge.token, answer).outcome is OC.CHALLENGE_INVALID
    forged = challenge.token[:-3] + ("AAA" if challenge.token[-3:] != "AAA" else "BBB")
    assert sls.verify("alice", forged, answer).outcome is OC.CHALLENGE_INVALID
    assert sls.verify("alice", challenge.token, answer).ok


def test_an_activation_challenge_does_not_log_in(sls: SecureLogin) -> None:
    with_dsc(sls, shipped=True)
    challenge = sls.issue_challenge("alice", purpose=Purpose.ACTIVATION)
    assert challenge.challenge is not None
    answer = dsc_answer(challenge.challenge)
    assert sls.verify("alice", challenge.token, answer).outcome is OC.CHALLENGE_INVALID
    assert sls.activate("alice", challenge.token, answer).ok


# -- lockout -----------------------------------------------------------------------------


def test_lockout_comes_at_exactly_10_consecutive_failures_not_9(
    sls: SecureLogin, clock: ManualClock
) -> None:
    with_dsc(sls)
    for _ in range(9):
        assert login(sls, right=False) is OC.WRONG
        clock.advance(60)
    assert sls.lockout_status("alice").locked_until is None
    assert login(sls) is OC.OK  # the 10th attempt is right: no lock, count reset
    for _ in range(10):
        assert login(sls, right=False) is OC.WRONG
    assert sls.lockout_status("alice").locked_until is not None


def test_a_locked_user_is_refused_even_with_the_right_answer(sls: SecureLogin) -> None:
    with_dsc(sls)
    for _ in range(10):
        login(sls, right=False)
    assert login(sls) is OC.LOCKED
    assert login(sls, right=False) is OC.LOCKED


def test_the_lock_ends_24_hours_after_the_last_failure_not_the_first(
    sls: SecureLogin, clock: ManualClock
) -> None:
    with_dsc(sls)
    login(sls, right=False)
    first = clock.now()
    clock.advance(hours=5)
    for _ in range(9):
        login(sls, right=False)
    last = clock.now()
    assert sls.lockout_status("alice").locked_until == pytest.approx(last + 24 * HOUR)
    clock.advance(first + 24 * HOUR + 1 - clock.now())  # 24 h after the first: still locked
    assert login(sls) is OC.LOCKED
    clock.advance(last + 24 * HOUR - 1 - clock.now())  # 1 s before 24 h after the last
    assert login(sls) is OC.LOCKED
    clock.advance(1)
    assert login(sls) is OC.OK


def test_ten_failures_spread_over_more_than_24_hours_do_not_lock(
    sls: SecureLogin, clock: ManualClock
) -> None:
    with_dsc(sls)
    for _ in range(10):
        assert login(sls, right=False) is OC.WRONG
        clock.advance(hours=2.7)  # 9 gaps of 2.7 h = 24.3 h
    assert login(sls) is OC.OK


def test_a_success_resets_the_consecutive_failure_count(sls: SecureLogin) -> None:
    with_dsc(sls)
    for _ in range(9):
        login(sls, right=False)
    assert sls.lockout_status("alice").consecutive_failures == 9
    assert login(sls) is OC.OK
    assert sls.lockout_status("alice").consecutive_failures == 0
    for _ in range(9):
        login(sls, right=False)
    assert login(sls) is OC.OK


def test_malformed_input_is_not_a_guess_and_does_not_count(sls: SecureLogin) -> None:
    with_dsc(sls)
    for _ in range(30):
        challenge = sls.issue_challenge("alice")
        assert sls.verify("alice", challenge.token, "12 34 56").outcome is OC.MALFORMED
    assert sls.lockout_status("alice").consecutive_failures == 0
    assert login(sls) is OC.OK


def test_lockout_inside_one_batch_follows_input_order(sls: SecureLogin) -> None:
    with_dsc(sls)
    challenges = [sls.issue_challenge("alice") for _ in range(12)]
    answers = [dsc_answer(c.challenge or "") for c in challenges]
    wrong = [f"{(int(a) + 1) % 10**8:08d}" for a in answers]
    responses = wrong[:10] + answers[10:]
    result = sls.verify_batch(["alice"] * 12, [c.token for c in challenges], responses)
    assert [result[i] for i in range(12)] == [OC.WRONG] * 10 + [OC.LOCKED] * 2


# -- temporary passcode ------------------------------------------------------------------


def test_temporary_passcode_gives_full_access_for_2_days_then_portal_card_only_until_day_12(
    sls: SecureLogin, clock: ManualClock
) -> None:
    sls.create_user("carol")
    passcode = sls.issue_temporary_passcode("carol")
    assert passcode.isupper()
    assert passcode.isalnum()
    assert len(passcode) >= 12
    start = clock.now()
    assert sls.verify("carol", None, passcode, access=Access.TRADING).ok
    clock.advance(start + 2 * DAY - 1 - clock.now())  # day 2, last second
    assert sls.verify("carol", None, passcode, access=Access.TRADING).ok
    clock.advance(1)  # day 3
    assert sls.verify("carol", None, passcode, access=Access.TRADING).outcome is OC.SCOPE_LIMITED
    assert sls.verify("carol", None, passcode, access=Access.PORTAL).outcome is OC.SCOPE_LIMITED
    assert sls.verify("carol", None, passcode, access=Access.ONLINE_CARD).ok
    clock.advance(start + 12 * DAY - 1 - clock.now())  # day 12, last second
    assert sls.verify("carol", None, passcode, access=Access.ONLINE_CARD).ok
    clock.advance(1)  # day 13
    assert sls.verify("carol", None, passcode, access=Access.ONLINE_CARD).outcome is OC.EXPIRED


def test_temporary_passcode_is_case_sensitive_lower_case_is_wrong(sls: SecureLogin) -> None:
    sls.create_user("carol")
    passcode = sls.issue_temporary_passcode("carol")
    assert sls.verify("carol", None, passcode.lower()).outcome is OC.WRONG
    assert sls.verify("carol", None, passcode + "!").outcome is OC.MALFORMED
    assert sls.verify("carol", None, passcode).ok


def test_temporary_passcode_is_stored_only_as_a_keyed_hash(
    sls: SecureLogin, tmp_path: Path
) -> None:
    sls.create_user("carol")
    passcode = sls.issue_temporary_passcode("carol")
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("sls.db*"))
    assert passcode.encode() not in raw
    assert hashlib.sha256(passcode.encode()).digest() not in raw


# -- online security code card -----------------------------------------------------------


def card_answer(codes: tuple[str, ...], indices: tuple[int, int] | None) -> str:
    assert indices is not None
    first, second = indices
    return codes[first - 1] + codes[second - 1]


def test_online_card_is_activated_with_two_codes_concatenated_and_valid_21_days(
    sls: SecureLogin, clock: ManualClock
) -> None:
    sls.create_user("dave")
    sls.issue_temporary_passcode("dave")
    start = clock.now()
    device, card = sls.issue_online_card("dave")
    assert device.state is DeviceState.PENDING
    assert len(card.codes) == 100
    assert all(len(c) == 3 and c.isdigit() for c in card.codes)
    activation = sls.issue_challenge("dave", device_id=device.id, purpose=Purpose.ACTIVATION)
    answer = card_answer(card.codes, activation.card_indices)
    spaced = answer[:3] + " " + answer[3:]
    assert sls.activate("dave", activation.token, spaced).outcome is OC.MALFORMED
    assert sls.activate("dave", activation.token, answer).ok
    clock.advance(start + 21 * DAY - 10 - clock.now())  # day 21
    challenge = sls.issue_challenge("dave", device_id=device.id)
    assert sls.verify("dave", challenge.token, card_answer(card.codes, challenge.card_indices)).ok
    clock.advance(start + 21 * DAY - clock.now())  # day 22
    with pytest.raises(InvalidInputError):
        sls.issue_challenge("dave", device_id=device.id)
    late = challenge.token
    assert sls.verify("dave", late, card_answer(card.codes, challenge.card_indices)).outcome in (
        OC.EXPIRED,
        OC.REPLAYED,
    )


def test_reactivating_the_permanent_device_ends_the_passcode_and_the_online_card(
    sls: SecureLogin,
) -> None:
    device_id = with_dsc(sls)
    sls.revoke_device("alice", device_id)
    passcode = sls.issue_temporary_passcode("alice")
    card_device, _ = sls.issue_online_card("alice")
    sls.reactivate_device("alice", device_id)
    assert sls.verify("alice", None, passcode).outcome is OC.DEVICE_NOT_ACTIVE
    states = {d.id: d.state for d in sls.devices("alice")}
    assert states[card_device.id] is DeviceState.REVOKED
    assert states[device_id] is DeviceState.ACTIVE


# -- SMS ---------------------------------------------------------------------------------


def test_sms_code_arrives_in_the_outbox_and_verifies_once(sls: SecureLogin, tmp_path: Path) -> None:
    sls.create_user("erin")
    sls.enroll_device("erin", DeviceType.SMS, phone="+41791234567")
    challenge = sls.issue_challenge("erin")
    (message,) = read_outbox(tmp_path / "data" / "sms-outbox.jsonl")
    assert message.to == "+41791234567"
    code = "".join(ch for ch in message.text if ch.isdigit())
    assert len(code) == 6
    assert sls.verify("erin", challenge.token, code).ok
    assert sls.verify("erin", challenge.token, code).outcome is OC.REPLAYED


# -- device life cycle, M2FS and sharing -------------------------------------------------


def test_a_shipped_device_auto_activates_3_weeks_after_shipment_unless_activated_first(
    sls: SecureLogin, clock: ManualClock
) -> None:
    device_id = with_dsc(sls, shipped=True)
    clock.advance(days=21, seconds=-1)
    assert sls.device("alice", device_id).state is DeviceState.PENDING
    clock.advance(1)
    assert sls.device("alice", device_id).state is DeviceState.ACTIVE
    assert login(sls) is OC.OK


def test_a_replacement_device_replaces_the_old_one_when_activated(sls: SecureLogin) -> None:
    old = with_dsc(sls)
    new_secret = bytes(range(40, 60))
    new = sls.enroll_device(
        "alice", DeviceType.DSC_PLUS, secret=new_secret, pin=PIN, shipped=True, replaces=old
    )
    activation = sls.issue_challenge("alice", device_id=new.id, purpose=Purpose.ACTIVATION)
    assert activation.challenge is not None
    answer = dsc_answer(activation.challenge, secret=new_secret)
    assert sls.activate("alice", activation.token, answer).ok
    assert sls.device("alice", old).state is DeviceState.REPLACED
    assert sls.device("alice", new.id).state is DeviceState.ACTIVE


def test_m2fs_a_user_with_several_devices_chooses_which_one_answers(sls: SecureLogin) -> None:
    dsc = with_dsc(sls)
    ib = sls.enroll_device("alice", DeviceType.IB_KEY, secret=IBKEY_SECRET, pin="9999")
    with pytest.raises(InvalidInputError, match="choose one"):
        sls.issue_challenge("alice")
    assert sls.issue_challenge("alice", device_id=ib.id).device_id == ib.id
    sls.choose_device("alice", dsc)
    assert sls.issue_challenge("alice").device_id == dsc


def test_a_revoked_device_no_longer_answers(sls: SecureLogin) -> None:
    device_id = with_dsc(sls)
    challenge = sls.issue_challenge("alice")
    sls.revoke_device("alice", device_id)
    outcome = sls.verify("alice", challenge.token, dsc_answer(challenge.challenge or "")).outcome
    assert outcome is OC.DEVICE_NOT_ACTIVE


def test_sharing_a_device_between_usernames_of_the_same_holder(sls: SecureLogin) -> None:
    device_id = with_dsc(sls)
    sls.create_user("alice2", PERSON)
    sls.share_device("alice", device_id, "alice2")
    assert login(sls, "alice2") is OC.OK


def test_sharing_refused_for_different_identification_information(sls: SecureLogin) -> None:
    device_id = with_dsc(sls)
    sls.create_user("zed", OTHER_PERSON)
    with pytest.raises(SharingError, match="different identification information"):
        sls.share_device("alice", device_id, "zed")


def test_sharing_matches_on_ssn_alone(sls: SecureLogin) -> None:
    sls.create_user("us1", Identity(ssn="123-45-6789"))
    device = sls.enroll_device("us1", DeviceType.DSC_PLUS, secret=DSC_SECRET, pin=PIN)
    sls.create_user("us2", Identity(date_of_birth="2000-01-01", ssn="123-45-6789"))
    sls.share_device("us1", device.id, "us2")


def test_sharing_refused_for_a_less_secure_device(sls: SecureLogin) -> None:
    sls.create_user("alice", PERSON)
    card = sls.import_device("alice", DeviceType.SECURITY_CODE_CARD)
    sls.create_user("alice2", PERSON)
    sls.enroll_device("alice2", DeviceType.DSC_PLUS, secret=DSC_SECRET, pin=PIN)
    with pytest.raises(SharingError, match="less secure device"):
        sls.share_device("alice", card.id, "alice2")


def test_sharing_refused_while_a_temporary_device_is_assigned(sls: SecureLogin) -> None:
    device_id = with_dsc(sls)
    sls.create_user("alice2", PERSON)
    sls.issue_temporary_passcode("alice2")
    with pytest.raises(SharingError, match="temporary device"):
        sls.share_device("alice", device_id, "alice2")


def test_ib_key_does_not_use_device_sharing(sls: SecureLogin) -> None:
    sls.create_user("bob", PERSON)
    ib = sls.enroll_device("bob", DeviceType.IB_KEY, secret=IBKEY_SECRET, pin="9999")
    sls.create_user("bob2", PERSON)
    with pytest.raises(SharingError, match="not shared"):
        sls.share_device("bob", ib.id, "bob2")


# -- policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_type", "per_day", "per_five"),
    [
        (None, 50_000, 100_000),
        (DeviceType.SMS, 200_000, 600_000),
        (DeviceType.IB_KEY, 1_000_000, 1_000_000),
        (DeviceType.SECURITY_CODE_CARD, 200_000, 600_000),
        (DeviceType.DIGITAL_SECURITY_CARD, 1_000_000, 1_500_000),
        (DeviceType.DSC_PLUS, None, None),
        (DeviceType.PLATINUM, None, None),
        (DeviceType.GOLD, None, None),
    ],
)
def test_withdrawal_limits_follow_the_strongest_active_device(
    sls: SecureLogin, device_type: DeviceType | None, per_day: int | None, per_five: int | None
) -> None:
    sls.create_user("frank")
    if device_type is not None:
        kwargs: dict[str, object] = {}
        if device_type is DeviceType.SMS:
            kwargs["phone"] = "+41790000000"
        if device_type in (DeviceType.DSC_PLUS, DeviceType.IB_KEY):
            kwargs["pin"] = PIN
        enroll = sls.import_device if device_type.is_legacy else sls.enroll_device
        enroll("frank", device_type, **kwargs)  # type: ignore[arg-type]
    limits = sls.withdrawal_limits("frank")
    assert (limits.per_day, limits.per_five_days) == (per_day, per_five)


def test_withdrawal_limits_take_the_strongest_of_several_devices(sls: SecureLogin) -> None:
    sls.create_user("frank")
    sls.enroll_device("frank", DeviceType.SMS, phone="+41790000000")
    sls.enroll_device("frank", DeviceType.IB_KEY, secret=IBKEY_SECRET, pin="9999")
    assert sls.withdrawal_limits("frank").device is DeviceType.IB_KEY


def test_trading_session_after_ib_key_is_12_hours_with_pin_30_with_biometrics() -> None:
    assert SecureLogin.trading_session_length("pin") == 12 * HOUR
    assert SecureLogin.trading_session_length("passcode") == 12 * HOUR
    assert SecureLogin.trading_session_length("fingerprint") == 30 * HOUR
    assert SecureLogin.trading_session_length("face") == 30 * HOUR


def test_security_levels_rank_dsc_plus_above_ib_key_above_the_printed_card() -> None:
    assert (
        DeviceType.DSC_PLUS.security_level
        < DeviceType.IB_KEY.security_level
        < DeviceType.SECURITY_CODE_CARD.security_level
        < DeviceType.SMS.security_level
    )
    assert DeviceType.SECURITY_CODE_CARD.is_legacy
    assert not DeviceType.DSC_PLUS.is_legacy


def test_opted_out_users_trade_without_a_second_factor(sls: SecureLogin) -> None:
    with_dsc(sls)
    assert sls.second_factor_required("alice", Access.TRADING)
    sls.set_opted_out("alice", True)
    assert not sls.second_factor_required("alice", Access.TRADING)
    assert sls.second_factor_required("alice", Access.PORTAL)
    sls.set_opted_out("alice", False)
    assert sls.second_factor_required("alice", Access.TRADING)


def test_closed_accounts_log_in_with_password_only_for_statements(sls: SecureLogin) -> None:
    with_dsc(sls)
    sls.close_account("alice")
    assert not sls.second_factor_required("alice", Access.PORTAL)
    assert login(sls) is OC.ACCOUNT_CLOSED


# -- batches -----------------------------------------------------------------------------


def test_a_mixed_batch_gives_per_item_outcomes_in_input_order(sls: SecureLogin) -> None:
    with_dsc(sls)
    sls.create_user("carol")
    passcode = sls.issue_temporary_passcode("carol")
    c1, c2 = sls.issue_challenge("alice"), sls.issue_challenge("alice")
    a1 = dsc_answer(c1.challenge or "")
    users = ["alice", "carol", "Bad!", "nobody", "alice", "alice", "carol"]
    tokens = [c1.token, None, None, None, c2.token, c1.token, None]
    responses = [a1, passcode, "x", "x", "1234 5678", a1, passcode.lower()]
    result = sls.verify_batch(users, tokens, responses)
    assert [result[i] for i in range(len(users))] == [
        OC.OK,
        OC.OK,
        OC.INVALID_USERNAME,
        OC.UNKNOWN_USER,
        OC.MALFORMED,
        OC.REPLAYED,
        OC.WRONG,
    ]
    assert result.outcomes.dtype == np.uint8


def test_every_outcome_has_a_human_message_without_secrets() -> None:
    for outcome in LoginOutcome:
        assert outcome.message
        assert outcome.message[0].isupper()


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pin": "12345"}, "pin"),  # a DSC+ PIN is 4 digits
        ({"pin": None}, "pin"),
        ({"pin": 4711}, "pin"),
        ({"secret": b"short"}, "secret"),
        ({"suite": "OCRA-1:HOTP-SHA1-8:QX06"}, "suite"),
        ({"shipped": True, "device_type": DeviceType.IB_KEY, "pin": "1234"}, "shipped"),
    ],
)
def test_bad_enrollment_names_the_field_and_never_quotes_a_secret_or_pin(
    sls: SecureLogin, kwargs: dict[str, object], field: str
) -> None:
    sls.create_user("alice")
    args: dict[str, object] = {"secret": DSC_SECRET, "pin": PIN}
    args.update(kwargs)
    device_type = args.pop("device_type", DeviceType.DSC_PLUS)
    with pytest.raises(InvalidInputError) as info:
        sls.enroll_device("alice", device_type, **args)  # type: ignore[arg-type]
    assert info.value.field == field
    text = str(info.value) + repr(info.value)
    for secret in ("12345", "4711", DSC_SECRET.hex(), repr(DSC_SECRET)):
        assert secret not in text


def test_batch_items_of_the_wrong_type_are_refused_per_item(sls: SecureLogin) -> None:
    with_dsc(sls)
    challenge = sls.issue_challenge("alice")
    answer = dsc_answer(challenge.challenge or "")
    result = sls.verify_batch(
        [None, "alice", "alice", "alice"],  # type: ignore[list-item]
        [challenge.token, 12345, challenge.token, challenge.token],  # type: ignore[list-item]
        [answer, answer, 12345678, answer],  # type: ignore[list-item]
    )
    assert [result[i] for i in range(4)] == [
        OC.INVALID_USERNAME,
        OC.CHALLENGE_INVALID,
        OC.MALFORMED,
        OC.OK,
    ]
    with pytest.raises(InvalidInputError, match="same length"):
        sls.verify_batch(["alice"], [], [])


def test_no_secret_pin_or_code_in_any_repr(sls: SecureLogin) -> None:
    device_id = with_dsc(sls)
    sls.create_user("erin")
    sls.enroll_device("erin", DeviceType.SMS, phone="+41791234567")
    passcode = sls.issue_temporary_passcode("alice")
    _, card = sls.issue_online_card("alice")
    shown = " ".join(
        repr(x)
        for x in (
            sls,
            sls.device("alice", device_id),
            sls.devices("erin"),
            sls.user("alice"),
            card,
            sls.store,
            PERSON,
        )
    )
    for secret in (passcode, DSC_SECRET.hex(), repr(DSC_SECRET), PIN, "+41791234567", "X1234567"):
        assert secret not in shown


def test_first_occurrences_keep_input_order_like_a_replay_check() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from sls_core.login.pipeline import _first_occurrences

    @given(st.lists(st.integers(0, 20), max_size=60))
    def check(values: list[int]) -> None:
        seen: set[int] = set()
        expected = []
        for v in values:
            expected.append(v not in seen)
            seen.add(v)
        first, distinct = _first_occurrences(np.array(values, dtype=np.uint64))
        assert first.tolist() == expected
        assert distinct.tolist() == sorted(set(values))  # what the store inserts, in key order

    check()


def test_batched_challenges_for_ocra_devices_and_code_cards_verify_in_one_batch(
    sls: SecureLogin,
) -> None:
    """issue_challenges serves a login storm of DSC+ and security code card users alike
    (a card challenge is two different index numbers); an SMS user is refused, since
    batching would text every phone in the batch, and nothing is issued."""
    from sls_core.card import card_codes

    with_dsc(sls)
    sls.create_user("carl")
    card_secret = bytes(range(3, 23))
    sls.import_device("carl", DeviceType.SECURITY_CODE_CARD, secret=card_secret)
    codes = list(card_codes(card_secret, 100))
    challenges = sls.issue_challenges(["alice", "carl", "carl"])
    assert challenges[0].challenge is not None
    assert challenges[0].card_indices is None
    answers = [dsc_answer(challenges[0].challenge)]
    for c in challenges[1:]:
        assert c.challenge is None
        assert c.card_indices is not None
        first, second = c.card_indices
        assert 1 <= first <= 100
        assert 1 <= second <= 100
        assert first != second
        answers.append(codes[first - 1] + codes[second - 1])
    result = sls.verify_batch(["alice", "carl", "carl"], [c.token for c in challenges], answers)
    assert [result[i] for i in range(3)] == [OC.OK, OC.OK, OC.OK]
    sls.create_user("erin")
    sls.enroll_device("erin", DeviceType.SMS, phone="+41791234567")
    with pytest.raises(InvalidInputError, match="OCRA devices and code cards") as info:
        sls.issue_challenges(["alice", "erin"])
    assert info.value.field == "usernames"
