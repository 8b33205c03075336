"""SLS-RULES "One rule for every way in": every way a user gets in or changes their second
factor is refused when the user is locked, the account is closed, or the device is not
active at the moment of the answer; an answer is valid only for its purpose and task.

The matrix below prepares each way in (a challenge issued, a push sent, an offer shown)
while everything is in order, then applies one blocking state, then answers: the answer
must never be OK, and the outcome must name the reason. It runs twice: through the Python
API, and through gRPC (an in-process server on 127.0.0.1 and the gateway client), where
the blocking states are still set on the domain beneath the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpc_fixtures import GrpcIbKey, InProcessServer
from sls_core import ocra
from sls_core.client import SlsClient
from sls_core.clock import DAY, MINUTE, ManualClock
from sls_core.devices import DeviceState, DeviceType
from sls_core.errors import SlsError
from sls_core.ibkey import ActivationError
from sls_core.login import SecureLogin
from sls_core.outcome import LoginOutcome
from sls_core.simulator import SimulatedApp
from sls_core.sms import read_outbox
from sls_core.values import Challenge, Purpose, PushChallenge

pytest_plugins = ["grpc_fixtures", "pg_fixtures"]

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


class PythonFront:
    """The ways in, called on the domain directly."""

    def __init__(self, sls: SecureLogin) -> None:
        self.sls = sls
        self.ibkey: Any = sls.ibkey

    def issue_challenge(self, username: str, **kw: Any) -> Challenge:
        return self.sls.issue_challenge(username, **kw)

    def verify(self, username: str, token: str | None, response: str, **kw: Any) -> OC:
        return self.sls.verify(username, token, response, **kw).outcome

    def activate(self, username: str, token: str, response: str, purpose: Purpose) -> OC:
        return self.sls.activate(username, token, response).outcome

    def create_push(self, username: str, device_id: int) -> PushChallenge:
        return self.sls.ibkey.create_push(username, device_id=device_id)

    def answer_push(self, challenge_id: int, signature: bytes) -> OC:
        return self.sls.ibkey.answer_push(challenge_id, 1, signature)

    def create_activation(self, username: str) -> str:
        return self.sls.ibkey.create_activation(username).payload

    def issue_temporary_passcode(self, username: str) -> str:
        return self.sls.issue_temporary_passcode(username)


class GrpcFront:
    """The same ways in, through the gateway client and the server's RPCs."""

    def __init__(self, server: InProcessServer) -> None:
        self.client = SlsClient(server.address)
        self.ibkey: Any = GrpcIbKey(server.stubs())

    def issue_challenge(self, username: str, **kw: Any) -> Challenge:
        return self.client.issue_challenge(username, **kw)

    def verify(self, username: str, token: str | None, response: str, **kw: Any) -> OC:
        return self.client.verify(username, token, response, **kw).outcome

    def activate(self, username: str, token: str, response: str, purpose: Purpose) -> OC:
        return self.client.verify(username, token, response, purpose=purpose).outcome

    def create_push(self, username: str, device_id: int) -> PushChallenge:
        return self.client.create_push(username, device_id=device_id)

    def answer_push(self, challenge_id: int, signature: bytes) -> OC:
        return self.client.answer_push(challenge_id, 1, signature)

    def create_activation(self, username: str) -> str:
        return self.client.create_activation(username).payload

    def issue_temporary_passcode(self, username: str) -> str:
        return self.client.issue_temporary_passcode(username)


@dataclass
class World:
    sls: SecureLogin
    clock: ManualClock
    outbox: Path
    dsc: int
    front: PythonFront | GrpcFront
    app: SimulatedApp | None = None
    ibkey_device: int | None = None


Attempt = Callable[[], OC]


def dsc(challenge: str | None) -> str:
    assert challenge is not None
    return ocra.compute(SUITE, SECRET, question=challenge, pin=PIN)


@pytest.fixture(params=["python", "grpc"])
def world(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    serve: Callable[..., InProcessServer],
    store_url: str | None,
) -> Iterator[World]:
    clock = ManualClock(1_800_000_000.0)
    front: PythonFront | GrpcFront
    opened: SecureLogin | None = None
    if request.param == "python":
        sls = opened = SecureLogin.open(tmp_path / "data", clock=clock, store=store_url)
        front, outbox = PythonFront(sls), tmp_path / "data" / "sms-outbox.jsonl"
    else:
        server = serve(tmp_path / "data", clock=clock, store=store_url)
        sls, front = server.sls, GrpcFront(server)
        outbox = tmp_path / "data" / "sms-outbox.jsonl"
    sls.create_user("alice")
    device = sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    yield World(sls, clock, outbox, device.id, front)
    if opened is not None:
        opened.store.close()


def _with_ibkey(w: World) -> None:
    w.app = SimulatedApp()
    payload = w.front.create_activation("alice")
    user = w.app.activate(w.front.ibkey, payload=payload, pin=APP_PIN)
    w.ibkey_device = user.device_id


def _outcome_of(call: Callable[[], object]) -> OC:
    """Runs an API that raises on refusal (in Python or as a gRPC status); the refusal as
    an outcome, read from the reason it names."""
    try:
        call()
    except ActivationError as e:
        return _REASONS.get(e.reason, OC.CHALLENGE_INVALID)
    except (SlsError, grpc.RpcError) as e:
        text = str(e.details()) if isinstance(e, grpc.RpcError) else str(e)  # type: ignore[attr-defined]
        for words, outcome in (
            ("locked", OC.LOCKED),
            ("closed", OC.ACCOUNT_CLOSED),
            ("already used or expired", OC.EXPIRED),
        ):
            if words in text:
                return outcome
        return OC.DEVICE_NOT_ACTIVE
    return OC.OK


# -- the ways in: each prepares its attempt while all is well ---------------------------------


def way_challenge_response(w: World) -> Attempt:
    c = w.front.issue_challenge("alice", device_id=w.dsc)
    return lambda: w.front.verify("alice", c.token, dsc(c.challenge))


def way_step_up(w: World) -> Attempt:
    c = w.front.issue_challenge(
        "alice", device_id=w.dsc, purpose=Purpose.STEP_UP, task="withdrawal"
    )
    return lambda: w.front.verify("alice", c.token, dsc(c.challenge), task="withdrawal")


def way_code_card(w: World) -> Attempt:
    w.sls.create_user("cardholder")
    card_secret = bytes(range(50, 70))
    device = w.sls.import_device("cardholder", DeviceType.SECURITY_CODE_CARD, secret=card_secret)
    w.sls.revoke_device("alice", w.dsc)  # the blocking states below act on this card instead
    w.dsc = device.id
    from sls_core import card

    codes = card.card_codes(card_secret, 100)
    c = w.front.issue_challenge("cardholder")
    assert c.card_indices is not None
    first, second = c.card_indices
    answer = codes[first - 1] + codes[second - 1]
    return lambda: w.front.verify("cardholder", c.token, answer)


def way_sms(w: World) -> Attempt:
    device = w.sls.enroll_device("alice", DeviceType.SMS, phone="+41791234567")
    w.dsc = device.id
    c = w.front.issue_challenge("alice", device_id=device.id)
    (message,) = read_outbox(w.outbox)
    code = "".join(ch for ch in message.text if ch.isdigit())
    return lambda: w.front.verify("alice", c.token, code)


def way_push_approval(w: World) -> Attempt:
    _with_ibkey(w)
    assert w.app is not None
    assert w.ibkey_device is not None
    w.dsc = w.ibkey_device
    p = w.front.create_push("alice", device_id=w.ibkey_device)
    signature = w.app.sign(p.message(1))
    return lambda: w.front.answer_push(p.challenge_id, signature)


def way_recovery_pin(w: World) -> Attempt:
    _with_ibkey(w)
    assert w.app is not None
    assert w.ibkey_device is not None
    w.dsc = w.ibkey_device
    app = w.app
    return lambda: _outcome_of(lambda: app.recover(w.front.ibkey, "alice", APP_PIN))


def way_ibkey_activation(w: World) -> Attempt:
    payload = w.front.create_activation("alice")
    app = SimulatedApp()
    return lambda: _outcome_of(lambda: app.activate(w.front.ibkey, payload=payload))


def way_device_activation(w: World) -> Attempt:
    shipped = w.sls.enroll_device(
        "alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN, shipped=True
    )
    w.dsc = shipped.id
    c = w.front.issue_challenge("alice", device_id=shipped.id, purpose=Purpose.ACTIVATION)
    return lambda: w.front.activate("alice", c.token, dsc(c.challenge), Purpose.ACTIVATION)


def way_reactivation(w: World) -> Attempt:
    w.front.issue_temporary_passcode("alice")  # suspends the card
    c = w.front.issue_challenge("alice", device_id=w.dsc, purpose=Purpose.REACTIVATION)
    return lambda: w.front.activate("alice", c.token, dsc(c.challenge), Purpose.REACTIVATION)


def way_temporary_passcode(w: World) -> Attempt:
    passcode = w.front.issue_temporary_passcode("alice")
    w.dsc = next(d.id for d in w.sls.devices("alice") if d.type is DeviceType.TEMPORARY_PASSCODE)
    return lambda: w.front.verify("alice", None, passcode)


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
#: Ways in with no RPC (none today: every way in is also a gRPC call).
PYTHON_ONLY: set[str] = set()
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
    world: World, way: str, block: str
) -> None:
    w = world
    if way in PYTHON_ONLY and isinstance(w.front, GrpcFront):
        pytest.skip("no RPC for this way in")
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
def test_every_way_in_succeeds_when_nothing_blocks_it(world: World, way: str) -> None:
    """The matrix's control row: the same attempts, unblocked, are OK."""
    if way in PYTHON_ONLY and isinstance(world.front, GrpcFront):
        pytest.skip("no RPC for this way in")
    assert WAYS[way](world)() is OC.OK


def test_a_login_answer_is_not_a_step_up_answer_nor_the_reverse(world: World) -> None:
    front = world.front
    login = front.issue_challenge("alice")
    step = front.issue_challenge("alice", purpose=Purpose.STEP_UP, task="withdrawal")
    answer = dsc(login.challenge)
    assert front.verify("alice", login.token, answer, task="withdrawal") is OC.CHALLENGE_INVALID
    assert front.verify("alice", step.token, dsc(step.challenge)) is OC.CHALLENGE_INVALID


def test_a_step_up_answer_is_valid_only_for_its_task_and_once(world: World) -> None:
    front = world.front
    step = front.issue_challenge("alice", purpose=Purpose.STEP_UP, task="withdrawal")
    answer = dsc(step.challenge)
    assert step.task == "withdrawal"
    assert front.verify("alice", step.token, answer, task="bank_instructions") is (
        OC.CHALLENGE_INVALID
    )
    assert front.verify("alice", step.token, answer, task="withdrawal") is OC.OK
    assert front.verify("alice", step.token, answer, task="withdrawal") is OC.REPLAYED


def test_an_activation_answer_is_not_a_login_answer(world: World) -> None:
    shipped = world.sls.enroll_device(
        "alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN, shipped=True
    )
    c = world.front.issue_challenge("alice", device_id=shipped.id, purpose=Purpose.ACTIVATION)
    assert world.front.verify("alice", c.token, dsc(c.challenge)) is OC.CHALLENGE_INVALID
