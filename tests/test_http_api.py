"""The HTTP/JSON API beside gRPC: the same domain, roles, TLS, audit and metrics; bad input
is a 4xx naming the field and the rule; /openapi.json matches the routes; /readyz follows
the gRPC health."""

from __future__ import annotations

import json
import re
import socket
import ssl
import urllib.error
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import pytest
from grpc_health.v1 import health_pb2

from grpc_fixtures import InProcessServer, Pki
from http_fixtures import HttpClient, http_client, serve_http
from sls_core.api.v1 import activation_pb2, admin_pb2, verification_pb2
from sls_core.devices import DeviceType
from sls_core.server.config import ConfigError, ServerConfig, TlsConfig
from sls_core.server.http_api import ApiError, json_to_message, message_to_json
from sls_core.simulator import dsc_response

pytest_plugins = ["grpc_fixtures"]

SECRET = bytes(range(1, 21))
PIN = "4711"
ROLES = {"gateway1": "gateway", "ops": "admin"}


@pytest.fixture
def api(serve: Callable[..., InProcessServer]) -> tuple[InProcessServer, HttpClient]:
    server = serve_http(serve)
    server.sls.create_user("alice")
    server.sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    return server, http_client(server)


def test_challenge_then_verify_ok_then_replayed_wrong_and_malformed(
    api: tuple[InProcessServer, HttpClient],
) -> None:
    server, http = api
    status, c = http.post("/v1/challenges", {"username": "alice"})
    assert status == 200
    assert c["device_type"] == "DSC_PLUS"
    assert len(c["challenge"]) == 6
    assert set(c) >= {"token", "challenge", "card_indices", "device_id", "expires_at"}
    answer = dsc_response(SECRET, PIN, c["challenge"])
    request = {"username": "alice", "token": c["token"], "response": answer}
    status, verdict = http.post("/v1/verify", request)
    assert (status, verdict["outcome"]) == (200, "OK")
    assert verdict["device_id"] == c["device_id"]
    assert verdict["message"] == "The second factor is correct."
    assert http.post("/v1/verify", request)[1]["outcome"] == "REPLAYED"
    # The same domain as gRPC: a challenge issued over gRPC is answered over HTTP.
    grpc_challenge = server.sls.issue_challenge("alice")
    wrong = f"{(int(dsc_response(SECRET, PIN, grpc_challenge.challenge or '')) + 1) % 10**8:08d}"
    request = {"username": "alice", "token": grpc_challenge.token, "response": wrong}
    assert http.post("/v1/verify", request)[1]["outcome"] == "WRONG"
    request["response"] = "1234 567"
    assert http.post("/v1/verify", request)[1]["outcome"] == "MALFORMED"


def test_batch_answers_each_item_in_order_within_the_grpc_limits(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve_http(serve, max_batch_items=3)
    http = http_client(server)
    server.sls.create_user("alice")
    server.sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    c = server.sls.issue_challenge("alice")
    good = dsc_response(SECRET, PIN, c.challenge or "")
    items = [
        {"username": "alice", "token": c.token, "response": good},
        {"username": "alice", "token": c.token, "response": good},
        {"username": "Alice", "token": c.token, "response": good},
    ]
    status, answer = http.post("/v1/verify:batch", {"items": items, "access": "PORTAL"})
    assert status == 200
    assert [i["outcome"] for i in answer["items"]] == ["OK", "REPLAYED", "UNKNOWN_USER"]
    assert all(i["message"] for i in answer["items"])
    status, refused = http.post("/v1/verify:batch", {"items": items * 2})
    assert status == 429
    assert refused["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert "at most 3 items" in refused["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"username": 5}, "username", "must be a string"),
        ({"username": "alice", "colour": "red"}, "colour", "unknown field"),
        ({"username": "alice", "purpose": "LUNCH"}, "purpose", "must be one of"),
        ({"username": "alice", "device_id": -1}, "device_id", "must be an integer"),
        ({"username": "alice", "device_id": True}, "device_id", "must be an integer"),
        ([1, 2], "body", "must be a JSON object"),
    ],
)
def test_bad_input_is_400_naming_the_field_and_the_rule(
    api: tuple[InProcessServer, HttpClient], body: object, field: str, rule: str
) -> None:
    _, http = api
    status, answer = http.post("/v1/challenges", body)
    assert status == 400
    assert answer["error"]["field"] == field
    assert answer["error"]["rule"].startswith(rule)


def test_garbage_empty_bodies_unknown_routes_and_domain_refusals_are_json(
    api: tuple[InProcessServer, HttpClient],
) -> None:
    _, http = api
    assert http.post("/v1/verify", raw=b"{not json")[0] == 400
    assert http.post("/v1/verify", raw=b"")[1]["error"]["field"] == "body"
    assert http.post("/v1/verify:batch", {"items": [{"username": "a", "pin": "1"}]})[1]["error"][
        "field"
    ] == ("items[0].pin")
    assert http.get("/v1/nothing")[0] == 404
    assert http.get("/v1/verify")[0] == 405
    # A domain refusal names the field too; the response never echoes what was sent.
    status, answer = http.post(
        "/v1/verify",
        {
            "username": "alice",
            "token": "t",
            "response": "87654321",
            "purpose": "LOGIN",
            "task": "x",
        },
    )
    assert status == 400
    assert "87654321" not in json.dumps(answer)


def test_password_failures_push_status_and_activation_in_the_same_style(
    api: tuple[InProcessServer, HttpClient],
) -> None:
    _, http = api
    status, lockout = http.post("/v1/password-failures", {"username": "alice"})
    assert (status, lockout["consecutive_failures"]) == (200, 1)
    status, offer = http.post("/v1/activations", {"username": "alice"})
    assert status == 200
    assert offer["payload"].startswith("SLS1:")
    assert set(offer) >= {"manual_code", "expires_at", "qr_png", "qr_svg"}
    status, answer = http.post("/v1/activations:complete", {"manual_code": "AAAA", "payload": "x"})
    assert (status, answer["error"]["field"]) == (400, "payload")
    assert answer["error"]["rule"] == "give only one of manual_code and payload"
    status, answer = http.post("/v1/pushes", {"username": "alice"})
    assert status == 400  # a DSC+ takes no pushes
    status, answer = http.get("/v1/pushes/99?wait=0s")
    assert (status, answer["error"]["field"]) == (404, "challenge_id")
    assert (answer["error"]["code"], answer["error"]["reason"]) == ("NOT_FOUND", "PUSH_NOT_FOUND")
    assert http.get("/v1/pushes/99?colour=red")[1]["error"]["field"] == "colour"


def test_the_openapi_document_describes_exactly_the_served_routes(
    api: tuple[InProcessServer, HttpClient],
) -> None:
    server, http = api
    status, document = http.get("/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.1")
    served = {
        (r.method, r.resource.canonical)
        for r in server.server.http.app.router.routes()  # type: ignore[union-attr]
        if r.method != "HEAD"
    }
    described = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert described == served
    schemas = document["components"]["schemas"]

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(document):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    verify = document["paths"]["/v1/verify"]["post"]
    assert "gateway" in verify["description"]


def test_readyz_follows_the_grpc_health(api: tuple[InProcessServer, HttpClient]) -> None:
    server, http = api
    assert http.get("/healthz") == (200, {"status": "live"})
    assert http.get("/readyz") == (200, {"status": "serving"})
    server.server._store_healthy = False
    server.run(server.server._publish_health())
    grpc_status = server.stubs().health.Check(health_pb2.HealthCheckRequest()).status
    assert grpc_status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert http.get("/readyz")[0] == 503
    assert http.get("/healthz")[0] == 200
    server.server._store_healthy = True
    server.run(server.server._publish_health())
    assert http.get("/readyz")[0] == 200


def test_calls_are_audited_and_counted_like_grpc(serve: Callable[..., InProcessServer]) -> None:
    server = serve_http(serve)
    http = http_client(server)
    server.sls.create_user("alice")
    assert http.post("/v1/password-failures", {"username": "alice"})[0] == 200
    trail = server.config.audit_path
    assert trail is not None
    lines = [json.loads(line) for line in trail.read_text().splitlines()]
    assert any(line.get("event") == "password_failure" for line in lines)
    metrics = server.server.metrics
    sample = metrics.registry.get_sample_value(
        "sls_http_requests_total", {"route": "POST /v1/password-failures", "status": "200"}
    )
    assert sample == 1.0


def test_mutual_tls_and_roles_as_on_grpc(serve: Callable[..., InProcessServer], pki: Pki) -> None:
    tls = TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca, require_client_auth=True
    )
    server = serve_http(serve, tls=tls, roles=ROLES)
    server.sls.create_user("alice")
    gateway = http_client(server, pki, "gateway1")
    assert gateway.post("/v1/password-failures", {"username": "alice"})[0] == 200
    trail = server.config.audit_path
    assert trail is not None
    [line] = [json.loads(x) for x in trail.read_text().splitlines() if "password_failure" in x]
    assert line["caller"] == "gateway1"  # the certificate's CN, as over gRPC
    refused = (ssl.SSLError, ConnectionError, urllib.error.URLError)
    stranger = http_client(server, pki, "rogue")
    with pytest.raises(refused):  # another CA: the handshake fails
        stranger.post("/v1/password-failures", {"username": "alice"})
    with pytest.raises(refused):  # no certificate at all under mutual TLS
        http_client(server, pki).post("/v1/password-failures", {"username": "alice"})
    ops = http_client(server, pki, "ops")
    assert ops.get("/healthz")[0] == 200


def test_a_caller_without_the_role_is_403(serve: Callable[..., InProcessServer], pki: Pki) -> None:
    tls = TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca, require_client_auth=True
    )
    server = serve_http(serve, tls=tls, roles={"ops": "admin"})
    server.sls.create_user("alice")
    unknown_cn = http_client(server, pki, "gateway1")  # a valid certificate, no role
    status, answer = unknown_cn.post("/v1/password-failures", {"username": "alice"})
    assert (status, answer["error"]["code"]) == (403, "PERMISSION_DENIED")
    assert "no role may not call" in answer["error"]["message"]
    assert unknown_cn.get("/readyz")[0] == 200  # open to every caller


def test_quotas_are_shared_with_grpc(serve: Callable[..., InProcessServer], pki: Pki) -> None:
    tls = TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca, require_client_auth=True
    )
    server = serve_http(serve, tls=tls, roles=ROLES, quotas={"CreateActivation": 1})
    http = http_client(server, pki, "gateway1")
    server.sls.create_user("alice")
    assert http.post("/v1/activations", {"username": "alice"})[0] == 200
    status, answer = http.post("/v1/activations", {"username": "alice"})
    assert (status, answer["error"]["code"]) == (429, "RESOURCE_EXHAUSTED")
    assert "retry in" in answer["error"]["message"]
    # The same caller over gRPC finds the same bucket empty.
    stubs = server.stubs(grpc.secure_channel(server.address, pki.credentials("gateway1")))
    with pytest.raises(grpc.RpcError) as refused:
        stubs.activation.CreateActivation(activation_pb2.CreateActivationRequest(username="alice"))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_config_and_cli_http_listen() -> None:
    from sls_core.server.config import config_from_mapping
    from sls_core.server.main import _config, _parser

    assert ServerConfig().http_listen is None
    assert config_from_mapping({"http_listen": "127.0.0.1:8081"}).http_listen == "127.0.0.1:8081"
    assert config_from_mapping({"http_listen": ""}).http_listen is None
    dev = _config(_parser().parse_args(["serve"]))
    assert (dev.http_listen, dev.http_listen_implicit) == ("127.0.0.1:8080", True)
    off = _config(_parser().parse_args(["serve", "--http-listen", "off"]))
    assert off.http_listen is None
    chosen = _config(_parser().parse_args(["serve", "--http-listen", "127.0.0.1:9000"]))
    assert (chosen.http_listen, chosen.http_listen_implicit) == ("127.0.0.1:9000", False)
    with pytest.raises(ConfigError, match="http_listen"):
        ServerConfig(http_listen="0.0.0.0:8080").validated()  # plaintext off loopback
    with pytest.raises(ConfigError, match="http_listen"):
        ServerConfig(listen="127.0.0.1:7000", http_listen="127.0.0.1:7000").validated()


def test_a_taken_port_fails_the_start_unless_it_is_the_development_default(
    serve: Callable[..., InProcessServer],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match="cannot listen on"):
            serve(http_listen=address)
        server = serve(http_listen=address, http_listen_implicit=True)
        assert server.server.http is None  # a warning; gRPC serves all the same
        health = server.stubs().health.Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


# -- times: the proto3 JSON mapping -----------------------------------------------------------


def test_times_travel_as_rfc_3339_strings_and_an_unset_one_is_left_out(
    api: tuple[InProcessServer, HttpClient],
) -> None:
    server, http = api
    server.clock.advance(0.5)  # 2027-01-15T08:00:00.5Z: the half second travels
    status, c = http.post("/v1/challenges", {"username": "alice"})
    assert status == 200
    assert c["expires_at"].endswith("Z")
    assert datetime.fromisoformat(c["expires_at"]) > datetime.fromtimestamp(server.clock.now(), UTC)
    # The same instant the gRPC answer carries, to the nanosecond.
    over_grpc = server.stubs().verification.IssueChallenge(
        verification_pb2.IssueChallengeRequest(username="alice")
    )
    assert over_grpc.expires_at.ToJsonString() == c["expires_at"]
    status, lockout = http.post("/v1/password-failures", {"username": "alice"})
    assert status == 200
    assert "locked_until" not in lockout  # unset: not locked
    for _ in range(9):
        status, lockout = http.post("/v1/password-failures", {"username": "alice"})
    assert lockout["consecutive_failures"] == 10
    assert lockout["locked_until"] == "2027-01-16T08:00:00.500Z"


@pytest.mark.parametrize("wait", ["soon", "2.5", "1m", "-", "2.5 s"])
def test_a_bad_duration_in_the_query_is_400_naming_the_field(
    api: tuple[InProcessServer, HttpClient], wait: str
) -> None:
    _, http = api
    status, answer = http.get(f"/v1/pushes/99?wait={urllib.parse.quote(wait)}")
    assert status == 400
    assert (answer["error"]["field"], answer["error"]["rule"]) == (
        "wait",
        'must be seconds with an "s", like "2.5s"',
    )


def test_a_negative_wait_is_refused_by_the_servicer_rule(
    api: tuple[InProcessServer, HttpClient],
) -> None:
    _, http = api
    status, answer = http.get("/v1/pushes/99?wait=-1.5s")
    assert (status, answer["error"]["field"], answer["error"]["rule"]) == (
        400,
        "wait",
        "must be 0 or more",
    )


def test_json_times_parse_both_ways_and_a_bad_timestamp_names_its_field() -> None:
    message = json_to_message(
        {"expires_at": "2026-12-05T02:02:03.5+01:00", "token": "t"},
        verification_pb2.IssueChallengeResponse,
    )
    assert isinstance(message, verification_pb2.IssueChallengeResponse)
    assert message.expires_at.ToNanoseconds() == 1_796_432_523_500_000_000
    assert message_to_json(message)["expires_at"] == "2026-12-05T01:02:03.500Z"
    for bad in ("yesterday", "12/05/2031", 1931432523.5, "2031-01-01T00:00:00"):
        with pytest.raises(ApiError) as caught:
            json_to_message({"expires_at": bad}, verification_pb2.IssueChallengeResponse)
        assert (caught.value.field, caught.value.http_status) == ("expires_at", 400)
        assert caught.value.rule == 'must be an RFC 3339 time like "2026-12-05T01:02:03.500Z"'
        assert str(bad) not in json.dumps(caught.value.body())
    nested = {"device": {"issued_at": "not a time"}}
    with pytest.raises(ApiError) as caught:
        json_to_message(nested, activation_pb2.CompleteActivationResponse)
    assert caught.value.field == "device.issued_at"
    session = json_to_message({"session_length": "108000s"}, admin_pb2.GetSessionLengthResponse)
    assert message_to_json(session) == {"session_length": "108000s"}


def test_the_openapi_document_types_times_as_strings(
    api: tuple[InProcessServer, HttpClient],
) -> None:
    _, http = api
    _, document = http.get("/openapi.json")
    schemas = document["components"]["schemas"]
    challenge = schemas["IssueChallengeResponse"]
    assert challenge["properties"]["expires_at"] == {"type": "string", "format": "date-time"}
    assert "expires_at" not in challenge["required"]  # unset: left out
    assert "token" in challenge["required"]
    device = schemas["Device"]["properties"]
    assert device["activated_at"] == {"type": "string", "format": "date-time"}
    (wait,) = [
        p
        for p in document["paths"]["/v1/pushes/{challenge_id}"]["get"]["parameters"]
        if p["name"] == "wait"
    ]
    pattern = re.compile(wait["schema"]["pattern"])
    assert wait["schema"]["type"] == "string"
    assert all(pattern.match(s) for s in ("0s", "2.5s", "-1.000000001s", "30s"))
    assert not any(pattern.match(s) for s in ("2.5", "1m", "s", "1.0000000001s"))
