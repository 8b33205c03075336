"""SLS-RULES "One rule for every way in": every way a user gets in or changes their second
factor is refused when the user is locked, the account is closed, or the device is not
active at the moment of the answer; an answer is valid only for its purpose and task.

The matrix below prepares each way in (a challenge issued, a push sent, an offer shown)
while everything is in order, then applies one blocking state, then answers: the answer
must never be OK, and the outcome must name the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sls_core import ocra
from sls_core.clock import DAY, MINUTE, ManualClock
from sls_core.devices import DeviceState, DeviceType
from sls_core.errors import InvalidInputError
from sls_core.ibkey import ActivationError
from sls_core.login import SecureLogin
from sls_core.outcome import LoginOutcome
from sls_core.simulator import SimulatedApp
from sls_core.sms import read_outbox
from sls_core.values import Purpose

OC = LoginOutcome

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
SECRET = bytes(range(20))
PIN = "4711"
APP_PIN = "a1b2"

#: What an ActivationError's reason means in LoginOutcome terms.
_REASONS = {
    ActivationError.LOCKED: OC.LOCKED,
    ActivationError.ACCOUNT_CLOSED: OC.ACCOUNT_CLOSED,
    ActivationError.NO_RECOVERY: OC.DEVICE_NOT_ACTIVE,
    ActivationError.USED_OR_EXPIRED: OC.EXPIRED,
}


@dataclass
class World:
    sls: SecureLogin
    clock: ManualClock
    tmp: Path
    dsc: int
    app: SimulatedApp | None = None
    ibkey_device: int | None = None


Attempt = Callable[[], OC]


def dsc(challenge: str | None) -> str:
    assert challenge is not None
    return ocra.compute(SUITE, SECRET, question=challenge, pin=PIN)


def _world(tmp_path: Path) -> World:
    clock = ManualClock(1_800_000_000.0)
    sls = SecureLogin.open(tmp_path / "data", clock=clock)
    sls.create_user("alice")
    device = sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    return World(sls, clock, tmp_path, device.id)


def _with_ibkey(w: World) -> None:
    w.app = SimulatedApp()
    offer = w.sls.ibkey.create_activation("alice")
    user = w.app.activate(w.sls.ibkey, payload=offer.payload, pin=APP_PIN)
    w.ibkey_device = user.device_id


def _outcome_of(call: Callable[[], object]) -> OC:
    """Runs an API that raises on refusal; the refusal as an outcome."""
    try:
        call()
    except ActivationError as e:
        return _REASONS.get(e.reason, OC.CHALLENGE_INVALID)
    except InvalidInputError as e:
        text = str(e)
        if "locked" in text:
            return OC.LOCKED
        if "closed" in text:
            return OC.ACCOUNT_CLOSED
        return OC.DEVICE_NOT_ACTIVE
    return OC.OK


# -- the ways in: each prepares its attempt while all is well ---------------------------------


def way_challenge_response(w: World) -> Attempt:
    c = w.sls.issue_challenge("alice", device_id=w.dsc)
    return lambda: w.sls.verify("alice", c.token, dsc(c.challenge)).outcome


def way_step_up(w: World) -> Attempt:
    c = w.sls.issue_challenge("alice", device_id=w.dsc, purpose=Purpose.STEP_UP, task="withdrawal")
    return lambda: w.sls.verify("alice", c.token, dsc(c.challenge), task="withdrawal").outcome


def way_code_card(w: World) -> Attempt:
    w.sls.create_user("cardholder")
    card_secret = bytes(range(50, 70))
    device = w.sls.import_device("cardholder", DeviceType.SECURITY_CODE_CARD, secret=card_secret)
    w.sls.revoke_device("alice", w.dsc)  # the blocking states below act on this card instead
    w.dsc = device.id
    from sls_core import card

    codes = card.card_codes(card_secret, 100)
    c = w.sls.issue_challenge("cardholder")
    assert c.card_indices is not None
    first, second = c.card_indices
    answer = codes[first - 1] + codes[second - 1]
    return lambda: w.sls.verify("cardholder", c.token, answer).outcome


def way_sms(w: World) -> Attempt:
    device = w.sls.enroll_device("alice", DeviceType.SMS, phone="+41791234567")
    w.dsc = device.id
    c = w.sls.issue_challenge("alice", device_id=device.id)
    (message,) = read_outbox(w.tmp / "data" / "sms-outbox.jsonl")
    code = "".join(ch for ch in message.text if ch.isdigit())
    return lambda: w.sls.verify("alice", c.token, code).outcome


def way_push_approval(w: World) -> Attempt:
    _with_ibkey(w)
    assert w.app is not None
    assert w.ibkey_device is not None
    w.dsc = w.ibkey_device
    p = w.sls.ibkey.create_push("alice", device_id=w.ibkey_device)
    signature = w.app.sign(p.message(1))
    return lambda: w.sls.ibkey.answer_push(p.challenge_id, 1, signature)


def way_recovery_pin(w: World) -> Attempt:
    _with_ibkey(w)
    assert w.app is not None
    assert w.ibkey_device is not None
    w.dsc = w.ibkey_device
    app = w.app
    return lambda: _outcome_of(lambda: app.recover(w.sls.ibkey, "alice", APP_PIN))


def way_ibkey_activation(w: World) -> Attempt:
    offer = w.sls.ibkey.create_activation("alice")
    app = SimulatedApp()
    return lambda: _outcome_of(lambda: app.activate(w.sls.ibkey, payload=offer.payload))


def way_device_activation(w: World) -> Attempt:
    shipped = w.sls.enroll_device(
        "alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN, shipped=True
    )
    w.dsc = shipped.id
    c = w.sls.issue_challenge("alice", device_id=shipped.id, purpose=Purpose.ACTIVATION)
    return lambda: w.sls.activate("alice", c.token, dsc(c.challenge)).outcome


def way_reactivation(w: World) -> Attempt:
    passcode_user_device = w.dsc
    w.sls.issue_temporary_passcode("alice", device_id=passcode_user_device)
    c = w.sls.issue_challenge("alice", device_id=w.dsc, purpose=Purpose.REACTIVATION)
    return lambda: w.sls.activate("alice", c.token, dsc(c.challenge)).outcome


def way_temporary_passcode(w: World) -> Attempt:
    passcode = w.sls.issue_temporary_passcode("alice")
    w.dsc = next(d.id for d in w.sls.devices("alice") if d.type is DeviceType.TEMPORARY_PASSCODE)
    return lambda: w.sls.verify("alice", None, passcode).outcome


WAYS: dict[str, Callable[[World], Attempt]] = {
    "challenge_response": way_challenge_response,
    "step_up": way_step_up,
    "code_card": way_code_card,
    "sms": way_sms,
    "push_approval": way_push_approval,
    "recovery_pin": way_recovery_pin,
    "ibkey_activation": way_ibkey_activation,
    "device_activation": way_device_activation,
    "reactivation": way_reactivation,
    "temporary_passcode": way_temporary_passcode,
}
#: The ways whose answer comes from one device of the user (device states apply).
DEVICE_WAYS = {
    "challenge_response",
    "step_up",
    "sms",
    "push_approval",
    "recovery_pin",
    "temporary_passcode",
}
TOKEN_WAYS = {"challenge_response", "step_up", "code_card", "sms", "device_activation"}


def _user_of(way: str) -> str:
    return "cardholder" if way == "code_card" else "alice"


def lock(w: World, way: str) -> OC:
    for _ in range(10):
        w.sls.record_password_failure(_user_of(way))
    return OC.LOCKED


def close(w: World, way: str) -> OC:
    w.sls.close_account(_user_of(way))
    return OC.ACCOUNT_CLOSED


def revoke(w: World, way: str) -> OC:
    w.sls.revoke_device(_user_of(way), w.dsc)
    return OC.DEVICE_NOT_ACTIVE


def suspend(w: World, way: str) -> OC:
    with w.sls.context.write() as tx:
        tx.store.update_device(w.dsc, state=DeviceState.SUSPENDED.value)
    return OC.DEVICE_NOT_ACTIVE


def replace(w: World, way: str) -> OC:
    w.sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN, replaces=w.dsc)
    return OC.DEVICE_NOT_ACTIVE


def expire(w: World, way: str) -> OC:
    w.clock.advance(13 * DAY if way == "temporary_passcode" else 11 * MINUTE)
    return OC.EXPIRED


BLOCKS: dict[str, Callable[[World, str], OC]] = {
    "locked": lock,
    "closed": close,
    "revoked": revoke,
    "suspended": suspend,
    "replaced": replace,
    "expired": expire,
}


def _cases() -> list[tuple[str, str]]:
    cases = []
    for way in WAYS:
        for block in BLOCKS:
            if block in ("revoked", "suspended", "replaced") and way not in DEVICE_WAYS:
                continue
            if block == "replaced" and way in (
                "push_approval",
                "recovery_pin",
                "temporary_passcode",
                "sms",
            ):
                continue  # replacement concerns physical devices
            if block == "expired" and way in ("recovery_pin",):
                continue  # a recovery PIN has no expiry
            cases.append((way, block))
    return cases


@pytest.mark.parametrize(("way", "block"), _cases())
def test_every_way_in_is_refused_in_every_blocking_state(
    tmp_path: Path, way: str, block: str
) -> None:
    w = _world(tmp_path)
    attempt = WAYS[way](w)
    expected = BLOCKS[block](w, way)
    outcome = attempt()
    assert outcome is not OC.OK
    if block == "expired" and way in TOKEN_WAYS | {"push_approval"}:
        assert outcome is OC.EXPIRED
    elif block == "expired" and way == "ibkey_activation":
        assert outcome is OC.EXPIRED  # "already used or expired"
    elif block == "expired" and way == "reactivation":
        assert outcome is OC.EXPIRED
    else:
        assert outcome is expected


@pytest.mark.parametrize("way", sorted(WAYS))
def test_every_way_in_succeeds_when_nothing_blocks_it(tmp_path: Path, way: str) -> None:
    """The matrix's control row: the same attempts, unblocked, are OK."""
    w = _world(tmp_path)
    assert WAYS[way](w)() is OC.OK


def test_a_login_answer_is_not_a_step_up_answer_nor_the_reverse(tmp_path: Path) -> None:
    w = _world(tmp_path)
    login = w.sls.issue_challenge("alice")
    step = w.sls.issue_challenge("alice", purpose=Purpose.STEP_UP, task="withdrawal")
    assert (
        w.sls.verify("alice", login.token, dsc(login.challenge), task="withdrawal").outcome
        is OC.CHALLENGE_INVALID
    )
    assert w.sls.verify("alice", step.token, dsc(step.challenge)).outcome is OC.CHALLENGE_INVALID


def test_a_step_up_answer_is_valid_only_for_its_task_and_once(tmp_path: Path) -> None:
    w = _world(tmp_path)
    step = w.sls.issue_challenge("alice", purpose=Purpose.STEP_UP, task="withdrawal")
    answer = dsc(step.challenge)
    assert step.task == "withdrawal"
    other = w.sls.verify("alice", step.token, answer, task="bank_instructions")
    assert other.outcome is OC.CHALLENGE_INVALID
    assert w.sls.verify("alice", step.token, answer, task="withdrawal").ok
    assert w.sls.verify("alice", step.token, answer, task="withdrawal").outcome is OC.REPLAYED


def test_an_activation_answer_is_not_a_login_answer(tmp_path: Path) -> None:
    w = _world(tmp_path)
    shipped = w.sls.enroll_device(
        "alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN, shipped=True
    )
    c = w.sls.issue_challenge("alice", device_id=shipped.id, purpose=Purpose.ACTIVATION)
    assert w.sls.verify("alice", c.token, dsc(c.challenge)).outcome is OC.CHALLENGE_INVALID
