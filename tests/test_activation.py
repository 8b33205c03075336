"""IB Key activation (QR code read back by a real QR reader, manual string, SMS token),
push approvals and the device simulator: SLS-RULES "IB Key activation by QR code"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sls_core.clock import MINUTE, ManualClock
from sls_core.devices import DeviceState, DeviceType
from sls_core.errors import InvalidInputError
from sls_core.ibkey import ACTIVATION_TTL, PUSH_TTL, ActivationError, validate_ibkey_pin
from sls_core.login import SecureLogin
from sls_core.outcome import LoginOutcome
from sls_core.simulator import SimulatedApp, dsc_response
from sls_core.simulator import main as simulator_main
from sls_core.sms import read_outbox

pytest_plugins = ["pg_fixtures"]

OC = LoginOutcome


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_000.0)


@pytest.fixture
def sls(tmp_path: Path, clock: ManualClock, store_url: str | None) -> Iterator[SecureLogin]:
    """The domain on SQLite, and again on PostgreSQL."""
    service = SecureLogin.open(tmp_path / "data", clock=clock, store=store_url)
    service.create_user("bob")
    yield service
    service.store.close()


@pytest.fixture
def app(tmp_path: Path) -> SimulatedApp:
    return SimulatedApp(tmp_path / "app.json")


def login_offline(sls: SecureLogin, app: SimulatedApp, user: str, pin: str | None) -> OC:
    challenge = sls.issue_challenge(user)
    assert challenge.challenge is not None
    return sls.verify(user, challenge.token, app.respond(user, challenge.challenge, pin)).outcome


def test_activation_by_a_qr_code_read_with_a_real_reader_enrolls_ib_key(
    sls: SecureLogin, app: SimulatedApp
) -> None:
    offer = sls.ibkey.create_activation("bob")
    assert offer.payload.startswith("SLS1:")
    user = app.activate(sls.ibkey, qr_png=offer.qr_png(), pin="12ab")
    device = sls.device("bob", user.device_id)
    assert device.type is DeviceType.IB_KEY
    assert device.state is DeviceState.ACTIVE
    # Both sides derived the same OCRA secret: offline challenge/response works with PIN.
    assert login_offline(sls, app, "bob", "12ab") is OC.OK


def test_activation_by_the_manual_string_resolves_to_the_same_session(
    sls: SecureLogin, app: SimulatedApp
) -> None:
    offer = sls.ibkey.create_activation("bob")
    typed = offer.manual_code.lower().replace("-", " ")  # people type in any case, spaced
    app.activate(sls.ibkey, manual_code=typed)
    assert login_offline(sls, app, "bob", None) is OC.OK  # iOS: no PIN in the computation


def test_a_qr_code_already_used_for_an_attempt_is_refused_as_already_used_or_expired(
    sls: SecureLogin, app: SimulatedApp, tmp_path: Path
) -> None:
    offer = sls.ibkey.create_activation("bob")
    app.activate(sls.ibkey, payload=offer.payload)
    other_app = SimulatedApp(tmp_path / "other.json")
    with pytest.raises(ActivationError, match="already used or expired"):
        other_app.activate(sls.ibkey, payload=offer.payload)
    with pytest.raises(ActivationError, match="already used or expired"):
        other_app.activate(sls.ibkey, manual_code=offer.manual_code)


def test_a_refused_attempt_still_uses_the_qr_code_up(sls: SecureLogin, app: SimulatedApp) -> None:
    app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bob").payload)
    offer = sls.ibkey.create_activation("bob")
    with pytest.raises(ActivationError, match="already enrolled"):
        app.activate(sls.ibkey, payload=offer.payload)
    with pytest.raises(ActivationError, match="already used or expired"):
        app.activate(sls.ibkey, payload=offer.payload)


def test_an_expired_qr_code_is_refused_as_already_used_or_expired(
    sls: SecureLogin, app: SimulatedApp, clock: ManualClock
) -> None:
    offer = sls.ibkey.create_activation("bob")
    clock.advance(ACTIVATION_TTL)
    with pytest.raises(ActivationError, match="already used or expired"):
        app.activate(sls.ibkey, payload=offer.payload)
    with pytest.raises(ActivationError, match="already used or expired"):
        app.activate(sls.ibkey, manual_code=offer.manual_code)


def test_a_username_already_on_the_app_is_refused_as_already_enrolled(
    sls: SecureLogin, app: SimulatedApp
) -> None:
    app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bob").payload)
    with pytest.raises(ActivationError, match="already enrolled"):
        app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bob").payload)


def test_one_app_holds_several_users_add_user(sls: SecureLogin, app: SimulatedApp) -> None:
    sls.create_user("bob2")
    app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bob").payload, pin="1234")
    app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bob2").payload, pin="1234")
    assert [u.username for u in app.state.users] == ["bob", "bob2"]
    assert login_offline(sls, app, "bob", "1234") is OC.OK
    assert login_offline(sls, app, "bob2", "1234") is OC.OK


def test_a_mistyped_manual_string_is_caught_by_its_check_character(
    sls: SecureLogin, app: SimulatedApp
) -> None:
    offer = sls.ibkey.create_activation("bob")
    code = offer.manual_code
    at = next(i for i, ch in enumerate(code) if ch.isalnum())
    replacement = "A" if code[at] != "A" else "B"
    with pytest.raises(ActivationError, match="not a valid activation code"):
        app.activate(sls.ibkey, manual_code=code[:at] + replacement + code[at + 1 :])
    app.activate(sls.ibkey, manual_code=code)  # the mistype did not use the offer up


def test_activation_by_an_sms_token_ends_in_the_same_enrollment(
    sls: SecureLogin, app: SimulatedApp, tmp_path: Path
) -> None:
    sls.enroll_device("bob", DeviceType.SMS, phone="+41790001122")
    sls.ibkey.send_sms_activation("bob")
    (message,) = read_outbox(tmp_path / "data" / "sms-outbox.jsonl")
    token = message.text.split()[-1].rstrip(".")
    user = app.activate(sls.ibkey, manual_code=token, pin="9x9x")
    assert sls.device("bob", user.device_id).type is DeviceType.IB_KEY


def test_activating_ib_key_ends_the_temporary_passcode(sls: SecureLogin, app: SimulatedApp) -> None:
    passcode = sls.issue_temporary_passcode("bob")
    app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bob").payload)
    assert sls.verify("bob", None, passcode).outcome is OC.DEVICE_NOT_ACTIVE


@pytest.mark.parametrize("pin", ["abc", "1234567", "12 4", "", "p\u00efn1"])
def test_ib_key_pin_is_4_to_6_letters_digits_or_special_characters(pin: str) -> None:
    with pytest.raises(InvalidInputError, match="4 to 6"):
        validate_ibkey_pin(pin)


@pytest.mark.parametrize("pin", ["1234", "a!b@c#", "Zz9$"])
def test_valid_ib_key_pins(pin: str) -> None:
    assert validate_ibkey_pin(pin) == pin


# -- push --------------------------------------------------------------------------------


@pytest.fixture
def activated(sls: SecureLogin, app: SimulatedApp) -> SimulatedApp:
    app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bob").payload, pin="1234")
    return app


def test_a_push_approved_on_the_app_is_ok_once(sls: SecureLogin, activated: SimulatedApp) -> None:
    push = sls.ibkey.create_push("bob")
    assert sls.ibkey.push_status(push.challenge_id) == "pending"
    assert activated.answer_pushes(sls.ibkey) == [(push.challenge_id, OC.OK)]
    assert sls.ibkey.push_status(push.challenge_id) == "approved"
    signature = activated.sign(push.message(1))
    assert sls.ibkey.answer_push(push.challenge_id, 1, signature) is OC.REPLAYED


def test_a_declined_push_is_declined(sls: SecureLogin, activated: SimulatedApp) -> None:
    push = sls.ibkey.create_push("bob")
    assert activated.answer_pushes(sls.ibkey, approve=False) == [(push.challenge_id, OC.DECLINED)]
    assert sls.ibkey.push_status(push.challenge_id) == "declined"


def test_an_approval_for_another_challenge_or_user_is_refused(
    sls: SecureLogin, activated: SimulatedApp
) -> None:
    first = sls.ibkey.create_push("bob")
    second = sls.ibkey.create_push("bob")
    signature_for_first = activated.sign(first.message(1))
    assert sls.ibkey.answer_push(second.challenge_id, 1, signature_for_first) is OC.WRONG
    assert sls.ibkey.answer_push(second.challenge_id, 2, activated.sign(second.message(1))) is (
        OC.WRONG  # a decline cannot reuse an approval's signature, nor the reverse
    )
    assert sls.ibkey.answer_push(first.challenge_id, 1, signature_for_first) is OC.OK


def test_a_push_answered_after_expiry_is_expired(
    sls: SecureLogin, activated: SimulatedApp, clock: ManualClock
) -> None:
    push = sls.ibkey.create_push("bob")
    clock.advance(PUSH_TTL + 2)
    assert sls.ibkey.push_status(push.challenge_id) == "expired"
    signature = activated.sign(push.message(1))
    assert sls.ibkey.answer_push(push.challenge_id, 1, signature) is OC.EXPIRED


def test_when_the_push_does_not_arrive_the_login_falls_back_to_challenge_response(
    sls: SecureLogin, activated: SimulatedApp
) -> None:
    push = sls.ibkey.create_push("bob")
    assert sls.ibkey.wait_push(push.challenge_id, timeout=0.05) == "pending"
    assert login_offline(sls, activated, "bob", "1234") is OC.OK


def test_push_goes_to_the_m2fs_choice_never_to_all_devices(
    sls: SecureLogin, activated: SimulatedApp, tmp_path: Path
) -> None:
    second_app = SimulatedApp(tmp_path / "tablet.json")
    second_app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bob").payload)
    with pytest.raises(InvalidInputError, match="choose one"):
        sls.ibkey.create_push("bob")
    chosen = second_app.user("bob").device_id
    sls.choose_device("bob", chosen)
    push = sls.ibkey.create_push("bob")
    assert push.device_id == chosen
    assert activated.answer_pushes(sls.ibkey) == []  # the other app gets nothing
    assert second_app.answer_pushes(sls.ibkey) == [(push.challenge_id, OC.OK)]


def test_push_answers_in_a_batch_get_their_own_verdicts(
    sls: SecureLogin, activated: SimulatedApp
) -> None:
    pushes = [sls.ibkey.create_push("bob") for _ in range(4)]
    signatures = [activated.sign(p.message(1)) for p in pushes]
    signatures[1] = signatures[0]  # signed for another challenge
    signatures[2] = b"short"
    outcomes = sls.ibkey.answer_pushes([p.challenge_id for p in pushes], [1, 1, 1, 2], signatures)
    assert outcomes.tolist() == [OC.OK, OC.WRONG, OC.MALFORMED, OC.WRONG]


# -- simulator command line --------------------------------------------------------------


def test_the_simulator_command_line_answers_offline_from_its_state_file(
    sls: SecureLogin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Activated through the library (the command line needs a running server: see
    # test_simulator_remote.py); ``respond`` then reads the keys back from the file.
    state = tmp_path / "cli-app.json"
    SimulatedApp(state).activate(sls.ibkey, payload=sls.ibkey.create_activation("bob").payload)
    assert (state.stat().st_mode & 0o077) == 0
    challenge = sls.issue_challenge("bob")
    assert challenge.challenge is not None
    argv = ["--state", str(state), "respond", "--user", "bob", "--challenge", challenge.challenge]
    assert simulator_main(argv) == 0
    response = capsys.readouterr().out.strip()
    assert sls.verify("bob", challenge.token, response).ok
    assert (
        simulator_main(["--state", str(state), "respond", "--user", "nobody", "--challenge", "1"])
        == 2
    )
    assert capsys.readouterr().err == "error: user: not on this app: activate it first\n"


def test_the_simulator_no_longer_writes_into_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: the app talks to a running server, which audits it; ``--data-dir`` (the old
    way straight into SQLite) is refused with one line saying what to do instead."""
    data = tmp_path / "cli-data"
    argv = ["--state", str(tmp_path / "app.json"), "activate", "--data-dir", str(data)]
    assert simulator_main([*argv, "--code", "K7QM-4TZ9-HX3P-AB"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--server HOST:PORT" in err
    assert "K7QM" not in err
    assert not data.exists()


def test_the_simulator_plays_the_dsc_plus(capsys: pytest.CaptureFixture[str]) -> None:
    secret = bytes(range(20))
    assert (
        simulator_main(["dsc", "--secret", secret.hex(), "--pin", "4711", "--challenge", "123456"])
        == 0
    )
    assert capsys.readouterr().out.strip() == dsc_response(secret, "4711", "123456")


def test_activation_offers_expire_after_ten_minutes() -> None:
    assert ACTIVATION_TTL == 10 * MINUTE


# -- recovery PIN ------------------------------------------------------------------------


def test_the_recovery_pin_re_enables_the_app_after_reinstalling(
    sls: SecureLogin, app: SimulatedApp, tmp_path: Path
) -> None:
    app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bob").payload, pin="7a7a")
    reinstalled = SimulatedApp(tmp_path / "reinstalled.json")  # keys lost
    with pytest.raises(InvalidInputError, match="not on this app"):
        reinstalled.respond("bob", "123456", "7a7a")
    reinstalled.recover(sls.ibkey, "bob", "7a7a")
    assert login_offline(sls, reinstalled, "bob", "7a7a") is OC.OK
    assert login_offline(sls, app, "bob", "7a7a") is OC.WRONG  # the old keys are gone
    push = sls.ibkey.create_push("bob")
    assert reinstalled.answer_pushes(sls.ibkey) == [(push.challenge_id, OC.OK)]


def test_a_wrong_recovery_pin_counts_toward_lockout(
    sls: SecureLogin, app: SimulatedApp, tmp_path: Path
) -> None:
    app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bob").payload, pin="7a7a")
    reinstalled = SimulatedApp(tmp_path / "reinstalled.json")
    for _ in range(10):
        with pytest.raises(ActivationError, match="wrong recovery PIN"):
            reinstalled.recover(sls.ibkey, "bob", "0000")
    assert sls.lockout_status("bob").locked_until is not None
    with pytest.raises(ActivationError, match="locked"):
        reinstalled.recover(sls.ibkey, "bob", "7a7a")


def test_without_a_pin_there_is_no_recovery(sls: SecureLogin, app: SimulatedApp) -> None:
    app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bob").payload)
    with pytest.raises(ActivationError, match="no IB Key with a recovery PIN"):
        SimulatedApp(None).recover(sls.ibkey, "bob", "1234")


def test_a_copy_of_the_database_cannot_rebuild_a_pending_activation_code(
    sls: SecureLogin, tmp_path: Path, store_url: str | None
) -> None:
    """Issue 11, finding 4: pending offers keep only keyed hashes of their session id and
    manual prefix; what a stolen copy holds does not open the offer."""
    import sqlite3

    from sls_core import activation

    offer = sls.ibkey.create_activation("bob")
    prefix = bytes(activation.parse_manual_code(offer.manual_code))
    query = "SELECT session_id, manual_prefix FROM activations"
    if store_url is None:
        db = sqlite3.connect(tmp_path / "data" / "sls.db")
        ((stored_session, stored_prefix),) = db.execute(query).fetchall()
        db.close()
    else:
        import psycopg

        with psycopg.connect(store_url) as conn:
            ((stored_session, stored_prefix),) = conn.execute(query).fetchall()
    assert stored_prefix != prefix
    assert offer.manual_code not in (activation.manual_code(stored_session),)
    attacker = SimulatedApp()
    with pytest.raises(ActivationError):
        attacker.activate(sls.ibkey, manual_code=activation.manual_code(stored_session))
    # The real code still works (an attempt by an unknown code does not use the offer).
    assert SimulatedApp().activate(sls.ibkey, manual_code=offer.manual_code).device_id > 0
