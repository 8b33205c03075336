"""OpenTelemetry traces (:mod:`sls_core.server.telemetry`): a real ``sls-core serve`` with
tracing on gives one server span per gRPC call and per HTTP request (name, status code,
peer), continues the caller's ``traceparent``, puts the domain work and the store
transaction in child spans and never a secret, response, PIN or token in any span; it
sends them to the OTLP collector the OTEL_* variables name. Tracing off loads and installs
nothing of OpenTelemetry, and a start with tracing on but without the packages fails in
one line that names the extra."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from grpc_fixtures import CALL_TIMEOUT, ROOT, Stubs, free_port, wait_serving
from sls_core.api.v1 import admin_pb2, common_pb2, verification_pb2
from sls_core.server.config import ConfigError, ServerConfig, apply_environment
from sls_core.server.config import config_from_mapping as config_from_toml
from sls_core.server.telemetry import OTEL_EXTRA, require_tracing
from sls_core.simulator import dsc_response

V = verification_pb2
SECRET = bytes(range(101, 121))
PIN = "8642"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
SERVER = "SpanKind.SERVER"


@dataclass
class TracedServer:
    process: subprocess.Popen[bytes]
    address: str
    http_base: str
    stdout: Path
    stderr: Path

    def stop(self) -> None:
        """SIGTERM and wait: the spans still buffered are exported on the way out."""
        self.process.terminate()
        assert self.process.wait(CALL_TIMEOUT + 10) == 0, self.stderr.read_text()

    def spans(self) -> list[dict[str, Any]]:
        """The console exporter's spans: one JSON object per line on stdout."""
        lines = self.stdout.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


@contextlib.contextmanager
def traced_server(tmp_path: Path, *args: str, env: dict[str, str]) -> Iterator[TracedServer]:
    """``sls-core serve`` on free 127.0.0.1 ports (gRPC and HTTP); stdout and stderr apart,
    so the console exporter's lines never mix with the log's."""
    port, http_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    stdout, stderr = tmp_path / "spans.jsonl", tmp_path / "server.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(  # noqa: S603 - our own server
            [
                sys.executable,
                "-m",
                "sls_core.server",
                "serve",
                "--listen",
                address,
                "--http-listen",
                f"127.0.0.1:{http_port}",
                "--data-dir",
                str(tmp_path / "data"),
                *args,
            ],
            stdout=out,
            stderr=err,
            env={**os.environ, "SLS_CORE_THREADS": "1", **env},
            cwd=ROOT,
        )
    try:
        wait_serving(address, process=process)
        yield TracedServer(process, address, f"http://127.0.0.1:{http_port}", stdout, stderr)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def post_json(base: str, path: str, body: dict[str, Any], traceparent: str) -> tuple[int, Any]:
    request = urllib.request.Request(  # noqa: S310 - our own test server
        base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "traceparent": traceparent},
    )
    try:
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def enroll_dsc(stubs: Stubs, username: str) -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username=username), timeout=CALL_TIMEOUT)
    stubs.admin.EnrollDevice(
        admin_pb2.EnrollDeviceRequest(
            username=username, type=common_pb2.DEVICE_TYPE_DSC_PLUS, secret=SECRET, pin=PIN
        ),
        timeout=CALL_TIMEOUT,
    )


def by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [span for span in spans if span["name"] == name]


def children(spans: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [span for span in spans if span["parent_id"] == parent["context"]["span_id"]]


def every_text(spans: list[dict[str, Any]]) -> str:
    """Everything a span says in words: names, attribute values, event attributes, status
    descriptions, resource (not the random ids, timestamps and port numbers, which could
    hold any digits by chance)."""
    parts: list[str] = []
    for span in spans:
        parts.append(span["name"])
        words = {k: v for k, v in span["attributes"].items() if not k.endswith(".port")}
        parts.append(json.dumps(words))
        parts.append(json.dumps(span["status"]))
        parts.append(json.dumps(span["resource"]))
        parts.extend(json.dumps(event["attributes"]) for event in span["events"])
    return "\n".join(parts)


def test_grpc_and_http_calls_are_server_spans_that_continue_the_callers_trace(
    tmp_path: Path,
) -> None:
    with traced_server(tmp_path, "--tracing", "console", env={}) as server:
        channel = grpc.insecure_channel(server.address)
        stubs = Stubs.over(channel)
        enroll_dsc(stubs, "alice")
        caller = (("traceparent", TRACEPARENT),)
        challenge = stubs.verification.IssueChallenge(
            V.IssueChallengeRequest(username="alice"), timeout=CALL_TIMEOUT
        )
        grpc_response = dsc_response(SECRET, PIN, challenge.challenge)
        verdict = stubs.verification.Verify(
            V.VerifyRequest(username="alice", token=challenge.token, response=grpc_response),
            metadata=caller,
            timeout=CALL_TIMEOUT,
        )
        assert verdict.outcome == common_pb2.OUTCOME_OK
        with pytest.raises(grpc.RpcError) as refused:
            stubs.verification.IssueChallenge(
                V.IssueChallengeRequest(username="nobody"), timeout=CALL_TIMEOUT
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        stream = stubs.verification.VerifyStream(
            iter([V.VerifyBatchRequest(usernames=["alice"], tokens=["x"], responses=["1"])]),
            timeout=CALL_TIMEOUT,
        )
        assert len(list(stream)) == 1
        # Health is not traced, and a Watch (a stream written as a coroutine) still works.
        watch = stubs.health.Watch(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()

        http_challenge = stubs.verification.IssueChallenge(
            V.IssueChallengeRequest(username="alice"), timeout=CALL_TIMEOUT
        )
        http_response = dsc_response(SECRET, PIN, http_challenge.challenge)
        body = {"username": "alice", "token": http_challenge.token, "response": http_response}
        # A client that also puts the answer in the query: it must not reach a span.
        status, answer = post_json(
            server.http_base, f"/v1/verify?otp={http_response}", body, TRACEPARENT
        )
        assert (status, answer["outcome"]) == (200, "OK")
        probe = server.http_base + "/healthz"
        with urllib.request.urlopen(probe, timeout=CALL_TIMEOUT) as r:  # noqa: S310 - ours
            assert r.status == 200  # a probe: not traced
        other_trace = f"00-{'1' * 32}-{'2' * 16}-01"
        status, _ = post_json(server.http_base, "/v1/challenges", {"username": "x"}, other_trace)
        assert status == 404
        channel.close()
        server.stop()
        spans = server.spans()

    (verify,) = by_name(spans, "/sls.v1.VerificationService/Verify")
    assert verify["kind"] == SERVER
    assert verify["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert verify["parent_id"] == f"0x{CALLER_SPAN_ID}"
    attributes = verify["attributes"]
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "sls.v1.VerificationService"
    assert attributes["rpc.method"] == "Verify"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["net.peer.ip"] == "127.0.0.1"
    assert verify["status"]["status_code"] == "UNSET"
    assert verify["resource"]["attributes"]["service.name"] == "sls-core"
    # The verdict's store transaction, inside the call's span.
    assert [s["name"] for s in children(spans, verify)] == ["sls.store.write"]

    issues = by_name(spans, "/sls.v1.VerificationService/IssueChallenge")
    codes = {span["attributes"]["rpc.grpc.status_code"]: span for span in issues}
    assert sorted(codes) == [0, grpc.StatusCode.NOT_FOUND.value[0]]
    issued, refused_span = codes[0], codes[grpc.StatusCode.NOT_FOUND.value[0]]
    assert issued["parent_id"] is None  # no traceparent: a trace of its own
    (domain,) = children(spans, issued)
    assert domain["name"] == "sls.domain SecureLogin.issue_challenge"
    assert [s["name"] for s in children(spans, domain)] == ["sls.store.write"]
    assert children(spans, domain)[0]["attributes"]["db.system.name"] == "sqlite"
    # A refusal (abort_with_status) carries its code; the client's error is no server error.
    assert refused_span["status"]["status_code"] == "UNSET"

    (stream_span,) = by_name(spans, "/sls.v1.VerificationService/VerifyStream")
    assert stream_span["attributes"]["rpc.grpc.status_code"] == 0
    assert not [s for s in spans if "grpc.health" in s["name"] or "/healthz" in s["name"]]

    (http_verify,) = by_name(spans, "POST /v1/verify")
    assert http_verify["kind"] == SERVER
    assert http_verify["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert http_verify["parent_id"] == f"0x{CALLER_SPAN_ID}"
    http_attributes = http_verify["attributes"]
    assert http_attributes["http.status_code"] == 200
    assert http_attributes["http.route"] == "/v1/verify"
    assert http_attributes["http.target"] == "/v1/verify"
    assert "?" not in http_attributes["http.url"]
    assert http_attributes["net.peer.ip"] == "127.0.0.1"
    assert [s["name"] for s in children(spans, http_verify)] == ["sls.store.write"]
    (not_found,) = by_name(spans, "POST /v1/challenges")
    assert not_found["attributes"]["http.status_code"] == 404
    assert not_found["context"]["trace_id"] == f"0x{'1' * 32}"

    text = every_text(spans)
    for secret in (
        grpc_response,
        http_response,
        challenge.token,
        http_challenge.token,
        PIN,
        SECRET.hex(),
        base64.b64encode(SECRET).decode(),
        base64.b32encode(SECRET).decode(),
    ):
        assert secret not in text


class _Collector(http.server.ThreadingHTTPServer):
    """A tiny OTLP/HTTP collector: keeps what is posted to it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.received: list[tuple[str, str, bytes]] = []


class _CollectorHandler(http.server.BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[_Collector]:
    server = _Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(CALL_TIMEOUT)


def test_otlp_sends_the_spans_to_the_collector_the_otel_variables_name(
    tmp_path: Path, collector: _Collector
) -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    env = {
        "SLS_CORE_TRACING": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "sls-core-eu1",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }
    with traced_server(tmp_path, env=env) as server:
        channel = grpc.insecure_channel(server.address)
        stubs = Stubs.over(channel)
        enroll_dsc(stubs, "bob")
        challenge = stubs.verification.IssueChallenge(
            V.IssueChallengeRequest(username="bob"), timeout=CALL_TIMEOUT
        )
        response = dsc_response(SECRET, PIN, challenge.challenge)
        stubs.verification.Verify(
            V.VerifyRequest(username="bob", token=challenge.token, response=response),
            metadata=(("traceparent", TRACEPARENT),),
            timeout=CALL_TIMEOUT,
        )
        channel.close()
        server.stop()
        assert server.stdout.read_text() == ""  # otlp prints nothing

    assert collector.received
    spans = []
    for path, content_type, body in collector.received:
        assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
        export = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert resource["service.name"] == "sls-core-eu1"
            assert resource["deployment.environment"] == "test"
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    (verify,) = [s for s in spans if s.name == "/sls.v1.VerificationService/Verify"]
    assert verify.trace_id == bytes.fromhex(TRACE_ID)
    assert verify.parent_span_id == bytes.fromhex(CALLER_SPAN_ID)
    assert verify.kind == verify.SPAN_KIND_SERVER
    assert any(s.name == "sls.store.write" and s.parent_span_id == verify.span_id for s in spans)
    everything = b"".join(body for _, _, body in collector.received)
    for secret in (response.encode(), challenge.token.encode(), SECRET):
        assert secret not in everything


_PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path

    import grpc
    from aiohttp import web

    from sls_core.api.v1 import verification_pb2, verification_pb2_grpc
    from sls_core.server.app import SlsServer
    from sls_core.server.config import ServerConfig

    made_by_aiohttp = web.Application


    async def probe() -> dict:
        config = ServerConfig(
            listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            data_dir=Path(sys.argv[1]),
            tracing=sys.argv[2],
        ).validated()
        server = SlsServer(config)
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = verification_pb2_grpc.VerificationServiceStub(channel)
            try:
                await stub.IssueChallenge(verification_pb2.IssueChallengeRequest(username="x"))
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND
        found = {
            "tracing": server.tracing is not None,
            "http_app_is_aiohttps": type(server.http.app) is made_by_aiohttp,
            "http_middlewares": [m.__module__ for m in server.http.app.middlewares],
            "opentelemetry": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
        }
        await server.stop()
        return found


    print(json.dumps(asyncio.run(probe())))
    """
)


@pytest.mark.parametrize("tracing", ["off", "console"])
def test_tracing_off_loads_and_installs_nothing_of_opentelemetry(
    tmp_path: Path, tracing: str
) -> None:
    """A fresh process serves a call with tracing off; "console" shows what is installed
    when it is on."""
    probe = subprocess.run(  # noqa: S603 - our own probe
        [sys.executable, "-c", _PROBE, str(tmp_path / "data"), tracing],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "SLS_CORE_THREADS": "1"},
        check=False,
    )
    assert probe.returncode == 0, probe.stderr.decode()
    found = json.loads(probe.stdout.decode().splitlines()[-1])
    if tracing == "off":
        assert not found["tracing"]
        assert found["http_app_is_aiohttps"]
        assert found["opentelemetry"] == []
        assert set(found["http_middlewares"]) == {"sls_core.server.http_api"}
    else:
        assert found["tracing"]
        assert not found["http_app_is_aiohttps"]  # the instrumentation's application
        assert found["http_middlewares"][:2] == [
            "opentelemetry.instrumentation.aiohttp_server",  # the span
            "sls_core.server.telemetry",  # its peer, its target without the query
        ]
        assert "opentelemetry.instrumentation.grpc" in found["opentelemetry"]


@pytest.fixture
def without_opentelemetry(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``opentelemetry`` is an empty package that shadows the
    installed one: as if the otel extra were not installed."""
    shadow = tmp_path / "shadow" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('"""Shadows the installed OpenTelemetry (a test)."""\n')
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "SLS_CORE_THREADS": "1"}


def _serve(data_dir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own server
        [
            sys.executable,
            "-m",
            "sls_core.server",
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--http-listen",
            "off",
            "--data-dir",
            str(data_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_tracing_on_without_the_packages_fails_the_start_in_one_line_naming_the_extra(
    tmp_path: Path, without_opentelemetry: dict[str, str]
) -> None:
    env = without_opentelemetry
    flag = _serve(tmp_path / "a", "--tracing", "otlp", env=env)
    variable = _serve(tmp_path / "b", env={**env, "SLS_CORE_TRACING": "console"})
    workers = _serve(tmp_path / "c", "--workers", "2", "--tracing", "console", env=env)
    for started, mode in ((flag, "otlp"), (variable, "console"), (workers, "console")):
        assert started.returncode == 2
        assert started.stderr.splitlines() == [
            f'sls-core: config error: tracing: "{mode}" needs the OpenTelemetry packages, '
            f"which are not installed: {OTEL_EXTRA}"
        ]
    assert not (tmp_path / "a").exists()  # refused before the store was opened


def test_the_server_runs_without_the_packages_when_tracing_is_off(
    tmp_path: Path, without_opentelemetry: dict[str, str]
) -> None:
    port = free_port()
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own server
            [
                sys.executable,
                "-m",
                "sls_core.server",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--http-listen",
                "off",
                "--data-dir",
                str(tmp_path / "data"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=without_opentelemetry,
            cwd=ROOT,
        )
    try:
        wait_serving(f"127.0.0.1:{port}", process=process)
        process.terminate()
        assert process.wait(CALL_TIMEOUT + 10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_tracing_is_a_config_key_and_a_variable() -> None:
    assert ServerConfig().tracing == "off"
    assert config_from_toml({"tracing": "OTLP"}).tracing == "otlp"
    assert apply_environment(ServerConfig(), {"SLS_CORE_TRACING": "console"}).tracing == "console"
    with pytest.raises(ConfigError, match=r"^tracing: must be one of off, console, otlp$"):
        config_from_toml({"tracing": "jaeger"})
    with pytest.raises(ConfigError, match=r"^tracing: must be a string$"):
        config_from_toml({"tracing": True})
    with pytest.raises(ConfigError) as bad_variable:
        apply_environment(ServerConfig(), {"SLS_CORE_TRACING": "zipkin"})
    assert bad_variable.value.field == "SLS_CORE_TRACING"


def test_an_otlp_protocol_python_cannot_send_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigError) as refused:
        require_tracing("otlp")
    assert refused.value.field == "OTEL_EXPORTER_OTLP_PROTOCOL"
    assert refused.value.rule == "must be one of http/protobuf, grpc"
    require_tracing("console")  # the console exporter does not use it
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")  # the traces' own wins
    require_tracing("otlp")
