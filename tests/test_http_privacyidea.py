"""privacyIDEA-compatible validation: a gateway written for privacyIDEA's
``/validate/triggerchallenge``, ``/validate/check`` and ``/validate/polltransaction`` logs
users in through sls_core (challenge-response, push, temporary passcode), with
privacyIDEA's request fields and response shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from grpc_fixtures import InProcessServer
from http_fixtures import HttpClient, http_client, serve_http
from sls_core.devices import DeviceType
from sls_core.simulator import SimulatedApp, dsc_response

pytest_plugins = ["grpc_fixtures"]

SECRET = bytes(range(1, 21))
PIN = "4711"


@pytest.fixture
def gateway(serve: Callable[..., InProcessServer]) -> tuple[InProcessServer, HttpClient]:
    server = serve_http(serve)
    server.sls.create_user("alice")
    server.sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    return server, http_client(server)


def _trigger(http: HttpClient, user: str) -> dict[str, Any]:
    status, answer = http.post("/validate/triggerchallenge", form={"user": user})
    assert status == 200, answer
    assert answer["result"] == {"status": True, "value": 1, "authentication": "CHALLENGE"}
    return answer["detail"]  # type: ignore[no-any-return]


def _check(http: HttpClient, **form: str) -> dict[str, Any]:
    status, answer = http.post("/validate/check", form=form)
    assert status == 200, answer
    return answer  # type: ignore[no-any-return]


def test_triggerchallenge_then_check_with_the_transaction_id_accepts_once(
    gateway: tuple[InProcessServer, HttpClient],
) -> None:
    _, http = gateway
    detail = _trigger(http, "alice")
    transaction_id = detail["transaction_id"]
    assert detail["transaction_ids"] == [transaction_id]
    [challenge] = detail["multi_challenge"]
    assert challenge["transaction_id"] == transaction_id
    assert (challenge["type"], challenge["client_mode"]) == ("ocra", "interactive")
    shown = challenge["attributes"]["challenge"]
    assert shown in challenge["message"]
    assert detail["message"] == challenge["message"]
    answer = dsc_response(SECRET, PIN, shown)
    accepted = _check(
        http, user="alice", realm="", transaction_id=transaction_id, **{"pass": answer}
    )
    assert accepted["result"] == {"status": True, "value": True, "authentication": "ACCEPT"}
    assert accepted["detail"]["serial"] == challenge["serial"]
    again = _check(http, user="alice", transaction_id=transaction_id, **{"pass": answer})
    assert again["result"]["authentication"] == "REJECT"
    assert again["detail"]["sls_outcome"] == "REPLAYED"


def test_a_wrong_answer_is_rejected_and_json_bodies_work_too(
    gateway: tuple[InProcessServer, HttpClient],
) -> None:
    _, http = gateway
    status, answer = http.post("/validate/check", {"user": "alice", "pass": ""})
    assert status == 200
    assert answer["result"] == {"status": True, "value": False, "authentication": "CHALLENGE"}
    transaction_id = answer["detail"]["transaction_id"]
    shown = answer["detail"]["multi_challenge"][0]["attributes"]["challenge"]
    wrong = f"{(int(dsc_response(SECRET, PIN, shown)) + 1) % 10**8:08d}"
    body = {"user": "alice", "pass": wrong, "transaction_id": transaction_id}
    status, answer = http.post("/validate/check", body)
    assert answer["result"] == {"status": True, "value": False, "authentication": "REJECT"}
    assert answer["detail"]["sls_outcome"] == "WRONG"
    assert wrong not in json.dumps(answer)


def test_a_locked_user_is_rejected_even_with_the_right_answer(
    gateway: tuple[InProcessServer, HttpClient],
) -> None:
    _, http = gateway
    for _ in range(10):
        assert http.post("/v1/password-failures", {"username": "alice"})[0] == 200
    detail = _trigger(http, "alice")
    shown = detail["multi_challenge"][0]["attributes"]["challenge"]
    answer = _check(
        http,
        user="alice",
        transaction_id=detail["transaction_id"],
        **{"pass": dsc_response(SECRET, PIN, shown)},
    )
    assert answer["result"]["authentication"] == "REJECT"
    assert answer["detail"]["sls_outcome"] == "LOCKED"


def test_push_then_poll_then_check_redeems_the_approval_once(
    gateway: tuple[InProcessServer, HttpClient],
) -> None:
    server, http = gateway
    server.sls.create_user("erin")
    app = SimulatedApp(None)
    offer = server.sls.ibkey.create_activation("erin")
    app.activate(server.sls.ibkey, manual_code=offer.manual_code, pin="9876")
    detail = _trigger(http, "erin")
    transaction_id = detail["transaction_id"]
    push, offline = detail["multi_challenge"]
    assert (push["type"], push["client_mode"]) == ("push", "poll")
    assert (offline["type"], offline["client_mode"]) == ("ocra", "interactive")
    assert detail["preferred_client_mode"] == "poll"
    poll = f"/validate/polltransaction?transaction_id={transaction_id}"
    assert http.get(poll)[1]["result"]["value"] is False
    early = _check(http, user="erin", transaction_id=transaction_id, **{"pass": ""})
    assert early["result"]["authentication"] == "REJECT"  # not answered yet: nothing used up
    assert [outcome for _, outcome in app.answer_pushes(server.sls.ibkey)] == [0]  # OK
    assert http.get(poll)[1]["result"]["value"] is True
    accepted = _check(http, user="erin", transaction_id=transaction_id, **{"pass": ""})
    assert accepted["result"]["authentication"] == "ACCEPT"
    # One approval logs in one login once; its offline challenge is used up as well.
    again = _check(http, user="erin", transaction_id=transaction_id, **{"pass": ""})
    assert again["detail"]["sls_outcome"] == "REPLAYED"
    response = app.respond("erin", offline["attributes"]["challenge"], "9876")
    late = _check(http, user="erin", transaction_id=transaction_id, **{"pass": response})
    assert late["detail"]["sls_outcome"] == "REPLAYED"
    # Another user's login cannot redeem it.
    other = _check(http, user="alice", transaction_id=transaction_id, **{"pass": ""})
    assert other["result"]["authentication"] == "REJECT"
    trail = server.config.audit_path
    assert trail is not None
    events = [json.loads(line) for line in trail.read_text().splitlines()]
    assert any(e.get("event") == "push_redeem" and e.get("outcome") == "OK" for e in events)


def test_a_temporary_passcode_verifies_directly(
    gateway: tuple[InProcessServer, HttpClient],
) -> None:
    server, http = gateway
    passcode = server.sls.issue_temporary_passcode("alice")
    accepted = _check(http, user="alice", **{"pass": passcode})
    assert accepted["result"]["authentication"] == "ACCEPT"
    wrong = _check(http, user="alice", **{"pass": "X" * len(passcode)})
    assert wrong["result"]["authentication"] == "REJECT"


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"pass": "1"}, "user: missing parameter"),
        ({"user": "alice", "serial": "x"}, "serial: unknown parameter"),
    ],
)
def test_bad_parameters_are_privacyidea_errors(
    gateway: tuple[InProcessServer, HttpClient], form: dict[str, str], message: str
) -> None:
    _, http = gateway
    status, answer = http.post("/validate/check", form=form)
    assert status == 400
    assert answer["result"]["status"] is False
    assert answer["result"]["error"] == {"code": 905, "message": f"ERR905: {message}"}
    status, answer = http.post("/validate/check", {"user": 7})
    assert answer["result"]["error"]["message"] == "ERR905: user: must be a string"
