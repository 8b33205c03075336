"""The HTTP/JSON API through a client generated from its own ``/openapi.json`` (issue 13:
"curl and a generated OpenAPI client can run every verification flow").

A real server (``python -m sls_core.server serve``, plaintext, on 127.0.0.1) serves the
document; openapi-python-client turns it into a Python package in a temporary directory
(offline: it reads the document from a file), and every flow below goes through that
package's typed calls and models: DSC+ (OCRA), the Security Code Card, SMS, the temporary
passcode, verify:batch, password failures and the lockout, IB Key activation, offline
login, push and recovery, privacyIDEA's ``/validate/*``, health, the document itself, and
refusals that name the field and the rule.

Each flow declares the operations it calls and must call exactly those; together the flows
must declare every operation of the document, so a new route without a flow fails here.
Set-up that the HTTP API has no route for (users, devices, a temporary passcode) goes
through the same server's gRPC AdminService. Nothing here prints a secret, PIN or code.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import importlib.util
import json
import re
import subprocess
import sys
import time
import typing
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from grpc_fixtures import CALL_TIMEOUT, START_TIMEOUT, ServerProcess, Stubs, free_port, spawn_server
from sls_core import activation, ocra, push, qr
from sls_core.api.v1 import admin_pb2, common_pb2
from sls_core.card import card_codes
from sls_core.simulator import dsc_response
from sls_core.sms import read_outbox

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="openapi-python-client needs Python 3.11 or later"
)

SECRET = bytes(range(1, 21))
PIN = "4711"
#: The generated package's name (else it is derived from the document's title).
PACKAGE = "sls_openapi_client"
#: The server's body limit: small enough for a test to go past, large enough for every
#: answer of the flows (the biggest, an activation QR code, is a few KB).
MAX_MESSAGE_BYTES = 256 * 1024


# -- the server and the generated client ----------------------------------------------------


@dataclass
class Served:
    """The server process, its HTTP base URL and data dir, and gRPC admin stubs."""

    process: ServerProcess
    base_url: str
    data_dir: Path
    stubs: Stubs

    def create_user(self, username: str) -> None:
        request = admin_pb2.CreateUserRequest(username=username)
        self.stubs.admin.CreateUser(request, timeout=CALL_TIMEOUT)

    def enroll(self, username: str, device_type: int, **fields: Any) -> common_pb2.Device:
        request = admin_pb2.EnrollDeviceRequest(username=username, type=device_type, **fields)
        return self.stubs.admin.EnrollDevice(request, timeout=CALL_TIMEOUT).device

    def temporary_passcode(self, username: str) -> str:
        request = admin_pb2.IssueTemporaryPasscodeRequest(username=username)
        return self.stubs.admin.IssueTemporaryPasscode(request, timeout=CALL_TIMEOUT).passcode

    def with_dsc_plus(self, username: str) -> common_pb2.Device:
        self.create_user(username)
        return self.enroll(username, common_pb2.DEVICE_TYPE_DSC_PLUS, secret=SECRET, pin=PIN)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=CALL_TIMEOUT) as answer:  # noqa: S310 - our server
        return json.loads(answer.read())


def _wait_http_ready(base_url: str, server: ServerProcess) -> None:
    end = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if _get_json(base_url + "/readyz") == {"status": "serving"}:
                return
        except (OSError, urllib.error.URLError):
            pass
        assert server.process.poll() is None, f"server exited:\n{server.log()}"
        assert time.monotonic() < end, f"no HTTP API at {base_url}:\n{server.log()}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("openapi-server")
    config = root / "sls-core.toml"
    config.write_text(f"max_message_bytes = {MAX_MESSAGE_BYTES}\n", encoding="utf-8")
    http_port = free_port()
    data_dir = root / "data"
    args = ("--config", str(config), "--http-listen", f"127.0.0.1:{http_port}")
    with spawn_server(data_dir, *args, "--log-level", "WARNING") as server:
        base_url = f"http://127.0.0.1:{http_port}"
        _wait_http_ready(base_url, server)
        stubs = server.stubs()
        try:
            yield Served(server, base_url, data_dir, stubs)
        finally:
            stubs.channel.close()
        assert server.terminate() == 0, server.log()


def _for_the_generator(document: dict[str, Any]) -> dict[str, Any]:
    """The document with JSON request bodies only. openapi-python-client 0.29 writes code
    that does not import (``Unset`` undefined) for a required body with two content types
    (openapi-generators/openapi-python-client#1451); privacyIDEA's routes also take forms,
    which tests/test_http_privacyidea.py covers."""
    copy = json.loads(json.dumps(document))
    for operations in copy["paths"].values():
        for operation in operations.values():
            body = operation.get("requestBody")
            if body is not None:
                body["content"] = {"application/json": body["content"]["application/json"]}
    return copy


def _document_operations(document: dict[str, Any]) -> set[str]:
    return {f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops}


def _generated_operations(package_dir: Path) -> dict[str, ModuleType]:
    """``"POST /v1/verify"`` -> the generated module that calls it (its method and URL
    template are in its source; the module's name comes from the operationId)."""
    found: dict[str, ModuleType] = {}
    for source in sorted((package_dir / "api").rglob("*.py")):
        text = source.read_text(encoding="utf-8")
        method = re.search(r'"method": "(\w+)"', text)
        url = re.search(r'"url": "([^"]+)"', text)
        if method is None or url is None:
            continue
        name = ".".join(source.relative_to(package_dir.parent).with_suffix("").parts)
        found[f"{method.group(1).upper()} {url.group(1)}"] = importlib.import_module(name)
    return found


@dataclass
class GeneratedApi:
    """The generated package, one client of the server, and the operations called."""

    models: ModuleType
    types: ModuleType
    client: Any
    #: /openapi.json as the server serves it.
    document: dict[str, Any]
    #: ``"POST /v1/verify"`` -> its generated module.
    operations: dict[str, ModuleType]
    generator_output: str
    called: set[str] = field(default_factory=set)

    def call(self, operation: str, body: Any = None, /, **parameters: Any) -> Any:
        """The generated ``sync_detailed`` of ``operation``: a Response with the status and
        the parsed answer (the 200 model, or the error model of a 4xx/5xx)."""
        self.called.add(operation)
        if body is not None:
            parameters["body"] = body
        return self.operations[operation].sync_detailed(client=self.client, **parameters)

    def ok(self, operation: str, body: Any = None, /, **parameters: Any) -> Any:
        """The parsed answer of a call that must succeed."""
        answer = self.call(operation, body, **parameters)
        assert answer.status_code == 200, (operation, answer.status_code, answer.content)
        return answer.parsed

    def body(self, operation: str, fields: dict[str, Any]) -> Any:
        """The request model of an operation whose body schema is inline (its class is
        named after the operationId, so it is taken from the generated signature)."""
        hints = typing.get_type_hints(self.operations[operation].sync_detailed)
        return hints["body"].from_dict(fields)


@pytest.fixture(scope="module")
def generated(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeneratedApi]:
    if importlib.util.find_spec("openapi_python_client") is None:
        pytest.fail("openapi-python-client is missing: `make setup` installs it")
    import httpx  # openapi-python-client's own dependency, as the generated code's

    root = tmp_path_factory.mktemp("openapi-client")
    document = _get_json(served.base_url + "/openapi.json")
    source = root / "openapi.json"
    source.write_text(json.dumps(_for_the_generator(document)), encoding="utf-8")
    config = root / "generator.json"
    # No post hooks: the generated code is imported as written (no ruff pass needed).
    config.write_text(
        json.dumps({"package_name_override": PACKAGE, "post_hooks": []}), encoding="utf-8"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(source),
            "--config",
            str(config),
            "--meta",
            "none",
            "--output-path",
            str(root / PACKAGE),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=root,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"openapi-python-client refused the document:\n{output}"
    sys.path.insert(0, str(root))
    try:
        package = importlib.import_module(PACKAGE)
        operations = _generated_operations(root / PACKAGE)
        client = package.Client(
            base_url=served.base_url,
            raise_on_unexpected_status=True,
            timeout=httpx.Timeout(CALL_TIMEOUT),
        )
        with client:
            yield GeneratedApi(
                importlib.import_module(f"{PACKAGE}.models"),
                importlib.import_module(f"{PACKAGE}.types"),
                client,
                document,
                operations,
                output,
            )
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


@pytest.fixture
def api(generated: GeneratedApi) -> GeneratedApi:
    """The generated client with a fresh record of the operations called."""
    return dataclasses.replace(generated, called=set())


# -- the flows ------------------------------------------------------------------------------

FlowRun = Callable[[GeneratedApi, Served], None]


@dataclass(frozen=True)
class Flow:
    run: FlowRun
    operations: frozenset[str]


FLOWS: dict[str, Flow] = {}


def flow(*operations: str) -> Callable[[FlowRun], FlowRun]:
    """Registers a flow with the operations (``"METHOD /path"``) it calls."""

    def register(run: FlowRun) -> FlowRun:
        FLOWS[run.__name__] = Flow(run, frozenset(operations))
        return run

    return register


def _wrong(response: str) -> str:
    """Another answer of the same length and digits only: a guess, not malformed."""
    return f"{(int(response) + 1) % 10 ** len(response):0{len(response)}d}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _issue(api: GeneratedApi, username: str, **fields: Any) -> Any:
    request = api.models.IssueChallengeRequest(username=username, **fields)
    return api.ok("POST /v1/challenges", request)


def _verify(api: GeneratedApi, username: str, token: str, response: str, **fields: Any) -> Any:
    request = api.models.VerifyRequest(username=username, token=token, response=response, **fields)
    return api.ok("POST /v1/verify", request)


@flow("POST /v1/challenges", "POST /v1/verify")
def a_dsc_plus_answer_verifies_once_then_is_replayed_and_guesses_are_wrong(
    api: GeneratedApi, served: Served
) -> None:
    m = api.models
    device = served.with_dsc_plus("alice")
    issued = _issue(api, "alice")
    assert isinstance(issued, m.IssueChallengeResponse)
    assert issued.device_type is m.IssueChallengeResponseDeviceType.DSC_PLUS
    assert issued.device_id == device.device_id
    assert issued.purpose is m.IssueChallengeResponsePurpose.LOGIN
    assert re.fullmatch(r"[0-9]{6}", issued.challenge)
    assert issued.card_indices == []
    now = datetime.now(timezone.utc)
    assert now < issued.expires_at < now + timedelta(hours=1)
    answer = dsc_response(SECRET, PIN, issued.challenge)
    verdict = _verify(api, "alice", issued.token, answer)
    assert isinstance(verdict, m.VerifyResponse)
    assert (verdict.outcome, verdict.device_id) == (m.VerifyResponseOutcome.OK, device.device_id)
    assert verdict.message == "The second factor is correct."
    again = _verify(api, "alice", issued.token, answer)
    assert again.outcome is m.VerifyResponseOutcome.REPLAYED
    issued = _issue(api, "alice")
    answer = dsc_response(SECRET, PIN, issued.challenge)
    spaced = _verify(api, "alice", issued.token, answer[:4] + " " + answer[4:])
    assert spaced.outcome is m.VerifyResponseOutcome.MALFORMED  # not a guess: still usable
    guess = _verify(api, "alice", issued.token, _wrong(answer))
    assert guess.outcome is m.VerifyResponseOutcome.WRONG


@flow("POST /v1/challenges", "POST /v1/verify")
def a_security_code_card_answer_is_its_two_codes_concatenated(
    api: GeneratedApi, served: Served
) -> None:
    m = api.models
    served.create_user("cora")
    request = admin_pb2.ImportDeviceRequest(
        username="cora", type=common_pb2.DEVICE_TYPE_SECURITY_CODE_CARD, secret=SECRET
    )
    card = served.stubs.admin.ImportDevice(request, timeout=CALL_TIMEOUT).device
    codes = card_codes(SECRET, 100)
    issued = _issue(api, "cora")
    assert issued.device_type is m.IssueChallengeResponseDeviceType.SECURITY_CODE_CARD
    assert (issued.device_id, issued.challenge) == (card.device_id, "")
    first, second = issued.card_indices
    assert first != second
    answer = codes[first - 1] + codes[second - 1]
    assert _verify(api, "cora", issued.token, answer).outcome is m.VerifyResponseOutcome.OK


@flow("POST /v1/challenges", "POST /v1/verify")
def an_sms_code_from_the_test_sender_verifies_once(api: GeneratedApi, served: Served) -> None:
    m = api.models
    phone = "+41790000013"
    served.create_user("sami")
    served.enroll("sami", common_pb2.DEVICE_TYPE_SMS, phone=phone)
    issued = _issue(api, "sami")
    assert issued.device_type is m.IssueChallengeResponseDeviceType.SMS
    assert (issued.challenge, issued.card_indices) == ("", [])
    sent = [msg for msg in read_outbox(served.data_dir / "sms-outbox.jsonl") if msg.to == phone]
    assert len(sent) == 1
    code = "".join(ch for ch in sent[0].text if ch.isdigit())
    assert _verify(api, "sami", issued.token, code).outcome is m.VerifyResponseOutcome.OK
    again = _verify(api, "sami", issued.token, code)
    assert again.outcome is m.VerifyResponseOutcome.REPLAYED


@flow("POST /v1/verify")
def a_temporary_passcode_verifies_without_a_challenge(api: GeneratedApi, served: Served) -> None:
    m = api.models
    served.create_user("tina")
    passcode = served.temporary_passcode("tina")
    assert _verify(api, "tina", "", passcode).outcome is m.VerifyResponseOutcome.OK
    online_card = _verify(api, "tina", "", passcode, access=m.VerifyRequestAccess.ONLINE_CARD)
    assert online_card.outcome is m.VerifyResponseOutcome.OK
    assert _verify(api, "tina", "", _wrong_passcode(passcode)).outcome is (
        m.VerifyResponseOutcome.WRONG
    )


def _wrong_passcode(passcode: str) -> str:
    return ("3" if passcode[0] != "3" else "4") + passcode[1:]


@flow("POST /v1/challenges", "POST /v1/verify:batch")
def a_batch_answers_each_item_in_order(api: GeneratedApi, served: Served) -> None:
    m = api.models
    device = served.with_dsc_plus("bea")
    first, second = _issue(api, "bea"), _issue(api, "bea")
    good = dsc_response(SECRET, PIN, first.challenge)
    items = [
        {"username": "bea", "token": first.token, "response": good},
        {"username": "bea", "token": first.token, "response": good},
        {
            "username": "bea",
            "token": second.token,
            "response": _wrong(dsc_response(SECRET, PIN, second.challenge)),
        },
        {"username": "nobody", "token": second.token, "response": good},
    ]
    body = api.body("POST /v1/verify:batch", {"items": items, "access": "PORTAL"})
    answer = api.ok("POST /v1/verify:batch", body)
    assert all(isinstance(item, m.VerifyResponse) for item in answer.items)
    assert [item.outcome for item in answer.items] == [
        m.VerifyResponseOutcome.OK,
        m.VerifyResponseOutcome.REPLAYED,
        m.VerifyResponseOutcome.WRONG,
        m.VerifyResponseOutcome.UNKNOWN_USER,
    ]
    assert [item.device_id for item in answer.items[:3]] == [device.device_id] * 3


@flow("POST /v1/password-failures", "POST /v1/challenges", "POST /v1/verify")
def ten_password_failures_lock_the_user_even_against_a_right_answer(
    api: GeneratedApi, served: Served
) -> None:
    m = api.models
    served.with_dsc_plus("dan")
    issued = _issue(api, "dan")
    request = m.RecordPasswordFailureRequest(username="dan")
    for failures in range(1, 10):
        status = api.ok("POST /v1/password-failures", request)
        assert isinstance(status, m.RecordPasswordFailureResponse)
        assert status.consecutive_failures == failures
        assert isinstance(status.locked_until, api.types.Unset)  # not locked: left out
    status = api.ok("POST /v1/password-failures", request)
    assert status.consecutive_failures == 10
    now = datetime.now(timezone.utc)
    assert now + timedelta(hours=23) < status.locked_until <= now + timedelta(hours=24)
    locked = _verify(api, "dan", issued.token, dsc_response(SECRET, PIN, issued.challenge))
    assert locked.outcome is m.VerifyResponseOutcome.LOCKED


class IbKeyApp:
    """The IB Key app's side through the generated client: its X25519 and push keys, the
    OCRA secret it agrees with the server (never sent), its answers and signatures."""

    def __init__(self, pin: str) -> None:
        self.pin = pin
        self.push_seed, self.push_public = push.push_keypair()
        self.secret = b""
        self.suite = ""

    def _agree(self, api: GeneratedApi, operation: str, body: Any, private: Any) -> Any:
        done = api.ok(operation, body)
        assert isinstance(done, api.models.CompleteActivationResponse)
        self.secret = bytes(
            activation.derive_ocra_secret(
                private,
                base64.b64decode(done.server_public),
                base64.b64decode(done.session_id),
                done.username,
            )
        )
        self.suite = done.suite
        return done

    def activate(self, api: GeneratedApi, **code: str) -> Any:
        """Completes an offer from what was scanned (``payload``) or typed (``manual_code``)."""
        private, public = activation.x25519_keypair()
        body = api.models.CompleteActivationRequest(
            app_public=_b64(bytes(public)),
            push_public=_b64(bytes(self.push_public)),
            pin=self.pin,
            **code,
        )
        return self._agree(api, "POST /v1/activations:complete", body, private)

    def recover(self, api: GeneratedApi, username: str) -> Any:
        """After a reinstall: new keys, the user re-enabled with the IB Key PIN."""
        self.push_seed, self.push_public = push.push_keypair()
        private, public = activation.x25519_keypair()
        body = api.models.RecoverRequest(
            username=username,
            recovery_pin=self.pin,
            app_public=_b64(bytes(public)),
            push_public=_b64(bytes(self.push_public)),
        )
        return self._agree(api, "POST /v1/activations:recover", body, private)

    def respond(self, challenge: str) -> str:
        uses_pin = ocra.parse_suite(self.suite).pin_algorithm is not None
        return ocra.compute(
            self.suite, self.secret, question=challenge, pin=self.pin if uses_pin else None
        )

    def pending(self, api: GeneratedApi) -> list[Any]:
        body = api.models.ListPendingPushesRequest(push_public=_b64(bytes(self.push_public)))
        return list(api.ok("POST /v1/pushes:pending", body).pushes)

    def answer(self, api: GeneratedApi, pending: Any, *, approve: bool) -> Any:
        """Signs and sends the decision on one pending push; the outcome."""
        decision = 1 if approve else 2
        expires_at = int(pending.expires_at.timestamp())  # whole seconds, as signed
        message = push.approval_message(
            pending.challenge_id, pending.user_id, pending.device_id, expires_at, decision
        )
        m = api.models
        body = m.AnswerPushRequest(
            challenge_id=pending.challenge_id,
            decision=m.AnswerPushRequestDecision.APPROVE
            if approve
            else m.AnswerPushRequestDecision.DECLINE,
            signature=_b64(bytes(push.sign_approval(self.push_seed, bytes(message)))),
        )
        return api.ok("POST /v1/pushes:answer", body).outcome


def _activated_ib_key(api: GeneratedApi, served: Served, username: str, pin: str) -> IbKeyApp:
    """A new user whose IB Key the app activates from the portal's QR code."""
    m = api.models
    served.create_user(username)
    offer = api.ok("POST /v1/activations", m.CreateActivationRequest(username=username))
    assert isinstance(offer, m.CreateActivationResponse)
    assert offer.payload.startswith("SLS1:")
    assert re.fullmatch(r"[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{2}", offer.manual_code)
    assert qr.decode_png(base64.b64decode(offer.qr_png)) == offer.payload
    assert offer.expires_at > datetime.now(timezone.utc)
    app = IbKeyApp(pin)
    done = app.activate(api, payload=offer.payload)
    assert done.username == username
    assert (done.device.type_, done.device.state) == (
        m.DeviceType.IB_KEY,
        m.DeviceState.ACTIVE,
    )
    return app


ACTIVATION = ("POST /v1/activations", "POST /v1/activations:complete")


@flow(*ACTIVATION, "POST /v1/challenges", "POST /v1/verify")
def an_ib_key_activated_from_the_qr_code_answers_offline_and_the_offer_is_used_up(
    api: GeneratedApi, served: Served
) -> None:
    m = api.models
    app = _activated_ib_key(api, served, "ivan", "12ab")
    issued = _issue(api, "ivan")
    assert issued.device_type is m.IssueChallengeResponseDeviceType.IB_KEY
    verdict = _verify(api, "ivan", issued.token, app.respond(issued.challenge))
    assert verdict.outcome is m.VerifyResponseOutcome.OK
    # A second offer for an enrolled user is refused with its reason, typed as the Error.
    offer = api.ok("POST /v1/activations", m.CreateActivationRequest(username="ivan"))
    body = m.CompleteActivationRequest(
        manual_code=offer.manual_code,
        app_public=_b64(bytes(activation.x25519_keypair()[1])),
        push_public=_b64(bytes(app.push_public)),
    )
    refused = api.call("POST /v1/activations:complete", body)
    assert refused.status_code == 400
    assert isinstance(refused.parsed, m.Error)
    assert refused.parsed.error.code == "FAILED_PRECONDITION"
    assert refused.parsed.error.reason == "ACTIVATION_ALREADY_ENROLLED"
    assert refused.parsed.error.message == "already enrolled"


@flow(
    *ACTIVATION,
    "POST /v1/pushes",
    "POST /v1/pushes:pending",
    "POST /v1/pushes:answer",
    "GET /v1/pushes/{challenge_id}",
)
def a_push_is_approved_or_declined_by_the_app_and_the_gateway_polls_the_decision(
    api: GeneratedApi, served: Served
) -> None:
    m = api.models
    app = _activated_ib_key(api, served, "pia", "9876")
    created = api.ok("POST /v1/pushes", m.CreatePushRequest(username="pia")).push
    assert isinstance(created, m.Push)
    # Nobody answers yet: the gateway's wait ends with the push still pending.
    status = api.ok("GET /v1/pushes/{challenge_id}", challenge_id=created.challenge_id, wait="0.2s")
    assert status.status is m.GetPushStatusResponseStatus.PENDING
    (pending,) = app.pending(api)
    assert (pending.challenge_id, pending.device_id) == (created.challenge_id, created.device_id)
    assert app.answer(api, pending, approve=True) is m.AnswerPushResponseOutcome.OK
    assert app.answer(api, pending, approve=True) is m.AnswerPushResponseOutcome.REPLAYED
    status = api.ok("GET /v1/pushes/{challenge_id}", challenge_id=created.challenge_id)
    assert status.status is m.GetPushStatusResponseStatus.APPROVED
    declined = api.ok("POST /v1/pushes", m.CreatePushRequest(username="pia")).push
    (pending,) = app.pending(api)
    assert app.answer(api, pending, approve=False) is m.AnswerPushResponseOutcome.DECLINED
    status = api.ok("GET /v1/pushes/{challenge_id}", challenge_id=declined.challenge_id)
    assert status.status is m.GetPushStatusResponseStatus.DECLINED


@flow(*ACTIVATION, "POST /v1/activations:recover", "POST /v1/challenges", "POST /v1/verify")
def a_reinstalled_app_recovers_with_the_ib_key_pin_and_logs_in_with_new_keys(
    api: GeneratedApi, served: Served
) -> None:
    m = api.models
    app = _activated_ib_key(api, served, "rita", "4321")
    old_secret = app.secret
    done = app.recover(api, "rita")
    assert (done.username, done.device.type_) == ("rita", m.DeviceType.IB_KEY)
    assert app.secret != old_secret
    issued = _issue(api, "rita")
    verdict = _verify(api, "rita", issued.token, app.respond(issued.challenge))
    assert verdict.outcome is m.VerifyResponseOutcome.OK


@flow("POST /validate/triggerchallenge", "POST /validate/check")
def privacyidea_challenge_response_and_a_temporary_passcode_are_accepted(
    api: GeneratedApi, served: Served
) -> None:
    m = api.models
    served.with_dsc_plus("paul")
    trigger = api.body("POST /validate/triggerchallenge", {"user": "paul"})
    started = api.ok("POST /validate/triggerchallenge", trigger)
    assert isinstance(started, m.PrivacyIdeaResponse)
    assert started.result.authentication is m.PrivacyIdeaResponseResultAuthentication.CHALLENGE
    transaction_id = started.detail["transaction_id"]
    shown = started.detail["multi_challenge"][0]["attributes"]["challenge"]
    check = {"user": "paul", "transaction_id": transaction_id}
    answer = api.body("POST /validate/check", {**check, "pass": dsc_response(SECRET, PIN, shown)})
    accepted = api.ok("POST /validate/check", answer)
    assert accepted.result.authentication is m.PrivacyIdeaResponseResultAuthentication.ACCEPT
    assert accepted.result.value is True
    replayed = api.ok("POST /validate/check", answer)
    assert replayed.result.authentication is m.PrivacyIdeaResponseResultAuthentication.REJECT
    passcode = served.temporary_passcode("paul")
    with_passcode = api.body("POST /validate/check", {"user": "paul", "pass": passcode})
    accepted = api.ok("POST /validate/check", with_passcode)
    assert accepted.result.authentication is m.PrivacyIdeaResponseResultAuthentication.ACCEPT


@flow(
    *ACTIVATION,
    "POST /validate/triggerchallenge",
    "GET /validate/polltransaction",
    "POST /v1/pushes:pending",
    "POST /v1/pushes:answer",
    "POST /validate/check",
)
def privacyidea_push_is_polled_then_redeemed_once_approved(
    api: GeneratedApi, served: Served
) -> None:
    m = api.models
    app = _activated_ib_key(api, served, "quinn", "2468")
    trigger = api.body("POST /validate/triggerchallenge", {"user": "quinn"})
    started = api.ok("POST /validate/triggerchallenge", trigger)
    transaction_id = started.detail["transaction_id"]
    assert "push" in [entry["type"] for entry in started.detail["multi_challenge"]]
    poll = api.ok("GET /validate/polltransaction", transaction_id=transaction_id)
    assert poll.result.value is False
    (pending,) = app.pending(api)
    assert app.answer(api, pending, approve=True) is m.AnswerPushResponseOutcome.OK
    poll = api.ok("GET /validate/polltransaction", transaction_id=transaction_id)
    assert poll.result.value is True
    redeem = api.body(
        "POST /validate/check", {"user": "quinn", "pass": "", "transaction_id": transaction_id}
    )
    accepted = api.ok("POST /validate/check", redeem)
    assert accepted.result.authentication is m.PrivacyIdeaResponseResultAuthentication.ACCEPT
    again = api.ok("POST /validate/check", redeem)  # one approval, one login
    assert again.result.authentication is m.PrivacyIdeaResponseResultAuthentication.REJECT


@flow("POST /v1/challenges", "POST /validate/check", "GET /validate/polltransaction")
def bad_input_is_refused_with_an_error_model_naming_the_field_and_the_rule(
    api: GeneratedApi, served: Served
) -> None:
    m = api.models
    refused = api.call("POST /v1/challenges", m.IssueChallengeRequest(username="no body!"))
    assert refused.status_code == 400
    assert isinstance(refused.parsed, m.Error)
    error = refused.parsed.error
    assert (error.code, error.reason, error.field) == (
        "INVALID_ARGUMENT",
        "INVALID_INPUT",
        "username",
    )
    assert error.rule == "invalid characters: only letters and digits (1-64)"
    assert error.message == f"username: {error.rule}"
    unknown = api.call("POST /v1/challenges", m.IssueChallengeRequest(username="nobody"))
    assert unknown.status_code == 404
    assert (unknown.parsed.error.reason, unknown.parsed.error.field) == (
        "USER_NOT_FOUND",
        "username",
    )
    # privacyIDEA's routes answer errors in privacyIDEA's envelope, as the document says.
    no_user = api.call("POST /validate/check", api.body("POST /validate/check", {"user": ""}))
    assert no_user.status_code == 400
    assert isinstance(no_user.parsed, m.PrivacyIdeaResponse)
    assert no_user.parsed.result.status is False
    assert no_user.parsed.result.error.code == 905  # privacyIDEA's parameter error
    # The document says transaction_id is required (the generated call cannot leave it
    # out); an empty one is privacyIDEA's parameter error.
    no_transaction = api.call("GET /validate/polltransaction", transaction_id="")
    assert no_transaction.status_code == 400
    assert no_transaction.parsed.result.error.code == 905


@flow("GET /healthz", "GET /readyz", "GET /openapi.json")
def health_readiness_and_the_document_itself_are_served(api: GeneratedApi, served: Served) -> None:
    assert api.ok("GET /healthz").status == "live"
    assert api.ok("GET /readyz").status == "serving"
    assert api.ok("GET /openapi.json").to_dict() == api.document


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FLOWS))
def test_each_flow_runs_through_the_generated_client(
    name: str, api: GeneratedApi, served: Served
) -> None:
    declared = FLOWS[name]
    declared.run(api, served)
    assert api.called == declared.operations


def test_every_operation_of_the_document_is_exercised_by_a_flow(generated: GeneratedApi) -> None:
    declared = set().union(*(f.operations for f in FLOWS.values()))
    assert _document_operations(generated.document) == declared


def test_the_generator_makes_one_call_per_operation_of_the_document_without_warnings(
    generated: GeneratedApi,
) -> None:
    assert set(generated.operations) == _document_operations(generated.document)
    assert "Warning" not in generated.generator_output, generated.generator_output


def test_the_generated_calls_are_named_after_the_grpc_methods(generated: GeneratedApi) -> None:
    names = {op: module.__name__.rpartition(".")[2] for op, module in generated.operations.items()}
    assert {
        "POST /v1/challenges": "issue_challenge",
        "POST /v1/verify": "verify",
        "POST /v1/verify:batch": "verify_batch",
        "GET /v1/pushes/{challenge_id}": "get_push_status",
        "POST /v1/activations:complete": "complete_activation",
        # privacyIDEA's routes share Verify's role and quota: named by method and path.
        "POST /validate/check": "post_validate_check",
        "GET /healthz": "get_healthz",
    }.items() <= names.items()


def test_a_body_over_the_size_limit_is_an_error_model_too(generated: GeneratedApi) -> None:
    m = generated.models
    too_long = m.IssueChallengeRequest(username="a" * MAX_MESSAGE_BYTES)
    refused = generated.call("POST /v1/challenges", too_long)
    assert refused.status_code == 413
    assert isinstance(refused.parsed, m.Error)
    assert refused.parsed.error.reason == "BODY_TOO_LARGE"
