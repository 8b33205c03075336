"""The device simulator against a running server (issue 13): ``sls-core-simulator``
activates, recovers, lists and answers pushes through ``sls-core serve`` over gRPC and over
the HTTP/JSON API, so the server applies the SLS rules and audits the simulated app as it
audits a real one.

Real processes: the server is ``python -m sls_core.server serve`` on 127.0.0.1 (free
ports); the gateway and client services are :class:`SlsClient`; the simulator is its own
``main()`` (one test runs it as a process, to see what a shell sees).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_fixtures import CALL_TIMEOUT, ROOT, START_TIMEOUT, Pki, free_port, make_pki, spawn_server
from sls_core.client import SlsClient, TlsSettings
from sls_core.outcome import LoginOutcome
from sls_core.server.audit import read_records
from sls_core.simulator import main as simulator_main
from sls_core.values import PushStatus

pytest_plugins = ["grpc_fixtures"]

TRANSPORTS = ("grpc", "http")
APP_PIN = "12ab"


@dataclass
class Server:
    """A running ``sls-core serve`` with its gRPC and HTTP ports and its data dir."""

    address: str
    http_url: str
    data_dir: Path

    def connect(self, transport: str) -> list[str]:
        """The simulator's options to reach this server by ``transport``."""
        return ["--server", self.address] if transport == "grpc" else ["--http", self.http_url]

    def audit(self, event: str) -> list[dict[str, Any]]:
        return [r for r in read_records(self.data_dir / "audit.jsonl") if r["event"] == event]


@dataclass
class Run:
    code: int
    out: str
    err: str


def wait_http_ready(url: str, context: Any = None) -> None:
    end = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own server
                url + "/readyz", timeout=1.0, context=context
            ) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < end, f"no HTTP API at {url}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("served") / "data"
    http_port = free_port()
    with spawn_server(data, "--http-listen", f"127.0.0.1:{http_port}") as process:
        running = Server(process.address, f"http://127.0.0.1:{http_port}", data)
        wait_http_ready(running.http_url)
        yield running
        assert process.terminate() == 0, process.log()


@pytest.fixture(scope="module")
def gateway(server: Server) -> Iterator[SlsClient]:
    """The login gateway and client services (a plaintext development server: every
    caller may administer)."""
    with SlsClient(server.address, timeout=CALL_TIMEOUT, linger=0) as client:
        yield client


def simulate(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    code = simulator_main(list(argv))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def assert_one_line_error(run: Run, *secrets: str) -> None:
    assert run.code != 0
    assert run.err.startswith("error: "), run.err
    assert run.err.count("\n") == 1, run.err
    assert "Traceback" not in run.err
    for secret in secrets:
        assert secret not in run.out + run.err


def activate(
    server: Server,
    gateway: SlsClient,
    capsys: pytest.CaptureFixture[str],
    state: Path,
    username: str,
    transport: str,
) -> int:
    """A new user with IB Key activated by the simulator; the device id."""
    gateway.create_user(username)
    offer = gateway.create_activation(username)
    run = simulate(
        capsys,
        "--state",
        str(state),
        "activate",
        *server.connect(transport),
        "--code",
        offer.manual_code,
        "--pin",
        APP_PIN,
    )
    assert run.code == 0, run.err
    found = re.fullmatch(rf"activated {username} \(device (\d+)\)\n", run.out)
    assert found is not None, run.out
    return int(found.group(1))


# -- activation ----------------------------------------------------------------------------


@pytest.mark.parametrize(("transport", "source"), [("grpc", "--qr"), ("http", "--code")])
def test_the_app_activates_through_the_server_which_audits_it(
    server: Server,
    gateway: SlsClient,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    transport: str,
    source: str,
) -> None:
    username = f"activate{transport}"
    gateway.create_user(username)
    offer = gateway.create_activation(username)
    png = tmp_path / "activation.png"
    png.write_bytes(offer.qr_png)
    state = tmp_path / "app.json"
    code = str(png) if source == "--qr" else offer.manual_code
    connection = server.connect(transport)
    argv = ["--state", str(state), "activate", *connection, source, code, "--pin", APP_PIN]
    run = simulate(capsys, *argv)
    assert run.code == 0, run.err
    found = re.fullmatch(rf"activated {username} \(device (\d+)\)\n", run.out)
    assert found is not None, run.out
    assert APP_PIN not in run.out
    assert offer.manual_code not in run.out
    assert (state.stat().st_mode & 0o077) == 0
    [line] = [r for r in server.audit("activation") if r["username"] == username]
    assert (line["outcome"], line["device_id"]) == ("OK", int(found.group(1)))
    assert re.fullmatch(r"insecure:(ipv4:)?127\.0\.0\.1(:\d+)?", line["caller"])
    # The server holds the device: the app's offline answer logs the user in.
    challenge = gateway.issue_challenge(username)
    assert challenge.challenge is not None
    run = simulate(
        capsys,
        "--state",
        str(state),
        "respond",
        "--user",
        username,
        "--challenge",
        challenge.challenge,
        "--pin",
        APP_PIN,
    )
    verdict = gateway.verify(username, challenge.token, run.out.strip())
    assert verdict.outcome is LoginOutcome.OK


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_used_activation_code_is_refused_in_one_line_and_audited(
    server: Server,
    gateway: SlsClient,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    transport: str,
) -> None:
    username = f"reused{transport}"
    gateway.create_user(username)
    offer = gateway.create_activation(username)
    first = ["--state", str(tmp_path / "a.json"), "activate", *server.connect(transport)]
    assert simulate(capsys, *first, "--code", offer.manual_code).code == 0
    other = ["--state", str(tmp_path / "b.json"), "activate", *server.connect(transport)]
    run = simulate(capsys, *other, "--code", offer.manual_code, "--pin", APP_PIN)
    assert_one_line_error(run, offer.manual_code, APP_PIN)
    assert run.code == 1
    assert run.err == "error: CompleteActivation: FAILED_PRECONDITION: already used or expired\n"
    refused = [r for r in server.audit("activation") if r["outcome"] == "already used or expired"]
    assert refused, "the refused attempt is audited"


# -- recovery ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_reinstalled_app_recovers_with_the_pin_and_each_try_is_audited(
    server: Server,
    gateway: SlsClient,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    transport: str,
) -> None:
    username = f"recover{transport}"
    activate(server, gateway, capsys, tmp_path / "old.json", username, transport)
    reinstalled = ["--state", str(tmp_path / "new.json"), "recover", *server.connect(transport)]
    run = simulate(capsys, *reinstalled, "--user", username, "--pin", "9z9z")
    assert_one_line_error(run, "9z9z")
    assert run.err == "error: Recover: FAILED_PRECONDITION: wrong recovery PIN\n"
    run = simulate(capsys, *reinstalled, "--user", username, "--pin", APP_PIN)
    assert run.code == 0, run.err
    assert run.out.startswith(f"recovered {username} (device ")
    assert APP_PIN not in run.out
    lines = [r["outcome"] for r in server.audit("recovery") if r["username"] == username]
    assert lines == ["WRONG", "OK"]
    assert gateway.lockout_status(username).consecutive_failures == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unknown_user_is_not_found_in_one_line(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path, transport: str
) -> None:
    argv = ["--state", str(tmp_path / "app.json"), "recover", *server.connect(transport)]
    run = simulate(capsys, *argv, "--user", "nobody", "--pin", APP_PIN)
    assert_one_line_error(run, APP_PIN)
    assert run.code == 1
    assert "NOT_FOUND" in run.err


# -- push login ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_push_login_is_listed_approved_seen_by_the_gateway_and_audited(
    server: Server,
    gateway: SlsClient,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    transport: str,
) -> None:
    username = f"push{transport}"
    state = tmp_path / "app.json"
    device_id = activate(server, gateway, capsys, state, username, transport)
    push = gateway.create_push(username)  # after the gateway checked the password
    app = ["--state", str(state)]
    run = simulate(capsys, *app, "pushes", *server.connect(transport))
    assert run.code == 0, run.err
    [listed] = run.out.splitlines()
    assert re.fullmatch(
        rf"push {push.challenge_id}\tuser \d+\tdevice {device_id}"
        r"\texpires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
        listed,
    ), listed
    run = simulate(capsys, *app, "approve", *server.connect(transport))
    assert run.code == 0, run.err
    assert run.out == f"push {push.challenge_id}: OK ({LoginOutcome.OK.message})\n"
    assert gateway.push_status(push.challenge_id) is PushStatus.APPROVED
    [line] = [r for r in server.audit("push_answer") if r["challenge_id"] == push.challenge_id]
    assert line["outcome"] == "OK"
    assert re.fullmatch(r"insecure:(ipv4:)?127\.0\.0\.1(:\d+)?", line["caller"])
    run = simulate(capsys, *app, "pushes", *server.connect(transport))
    assert run.out == "no push is waiting for this app\n"


def test_a_declined_push_is_declined_for_the_gateway_and_audited(
    server: Server, gateway: SlsClient, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = tmp_path / "app.json"
    activate(server, gateway, capsys, state, "decliner", "http")
    push = gateway.create_push("decliner")
    run = simulate(capsys, "--state", str(state), "approve", "--decline", "--http", server.http_url)
    assert run.code == 0, run.err
    assert run.out == f"push {push.challenge_id}: DECLINED ({LoginOutcome.DECLINED.message})\n"
    assert gateway.push_status(push.challenge_id) is PushStatus.DECLINED
    [line] = [r for r in server.audit("push_answer") if r["challenge_id"] == push.challenge_id]
    assert line["outcome"] == "DECLINED"
    # Declining is no guess (SLS-RULES "Lockout").
    assert gateway.lockout_status("decliner").consecutive_failures == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_locked_users_push_approval_is_refused_and_audited(
    server: Server,
    gateway: SlsClient,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    transport: str,
) -> None:
    """SLS-RULES "One rule for every way in": a push approval of a locked user is refused."""
    username = f"locked{transport}"
    state = tmp_path / "app.json"
    activate(server, gateway, capsys, state, username, transport)
    push = gateway.create_push(username)
    for _ in range(10):  # 10 wrong passwords lock the account
        gateway.record_password_failure(username)
    assert gateway.lockout_status(username).locked
    run = simulate(capsys, "--state", str(state), "approve", *server.connect(transport))
    assert run.code == 1
    assert run.out == f"push {push.challenge_id}: LOCKED ({LoginOutcome.LOCKED.message})\n"
    assert gateway.push_status(push.challenge_id) is not PushStatus.APPROVED
    [line] = [r for r in server.audit("push_answer") if r["challenge_id"] == push.challenge_id]
    assert line["outcome"] == "LOCKED"


# -- no server, wrong settings -------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unreachable_server_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, transport: str
) -> None:
    """As a shell sees it: the console script's exit status and stderr, no traceback."""
    port = free_port()  # nothing listens there
    where = ["--server", f"127.0.0.1:{port}"] if transport == "grpc" else []
    if transport == "http":
        where = ["--http", f"http://127.0.0.1:{port}"]
    argv = [
        "--state",
        str(tmp_path / "app.json"),
        "activate",
        *where,
        "--code",
        "K7QM-4TZ9-HX3P-AB",
    ]
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "sls_core.simulator", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: cannot reach the server at {where[1]}: ")
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr
    assert "K7QM" not in done.stderr


def test_plaintext_to_another_host_is_refused_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    app = ["--state", str(tmp_path / "app.json"), "pushes"]
    run = simulate(capsys, *app, "--http", "http://192.0.2.1:8080")
    assert_one_line_error(run)
    assert (run.code, run.err) == (
        2,
        "error: --http: plaintext only to a loopback address: use https://\n",
    )
    run = simulate(capsys, *app, "--server", "192.0.2.1:50051")
    assert_one_line_error(run)
    assert run.code == 2
    assert run.err.startswith("error: --tls-ca: TLS settings are required")
    # Settings are checked before any connection, each error naming its option.
    missing = str(tmp_path / "missing.pem")
    run = simulate(capsys, *app, "--server", "127.0.0.1:1", "--tls-ca", missing)
    assert (run.code, run.err) == (
        2,
        "error: --tls-ca: cannot read the file (No such file or directory)\n",
    )
    run = simulate(capsys, *app, "--http", "https://127.0.0.1:1", "--tls-cert", missing)
    assert (run.code, run.err) == (
        2,
        "error: --tls-key: give both the client certificate and its key, or neither\n",
    )


# -- mutual TLS: the audit names the app's certificate ---------------------------------------


def wait_tls_serving(address: str, pki: Pki) -> None:
    end = time.monotonic() + START_TIMEOUT
    with grpc.secure_channel(address, pki.credentials("ops")) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < end, f"no TLS server at {address}"
            time.sleep(0.1)


def test_over_mutual_tls_the_audit_names_the_apps_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path / "pki", clients=("ibkey-app", "ops"))
    http_port = free_port()
    config = tmp_path / "sls.toml"
    config.write_text(
        f"""
[tls]
cert = "{pki.server_cert}"
key = "{pki.server_key}"
client_ca = "{pki.ca}"
require_client_auth = true
[roles]
"ibkey-app" = "gateway"
"ops" = "admin"
"""
    )
    data = tmp_path / "data"
    args = ("--config", str(config), "--http-listen", f"127.0.0.1:{http_port}")
    with spawn_server(data, *args, wait=False) as process:
        wait_tls_serving(process.address, pki)
        cert, key = pki.clients["ops"]
        tls = TlsSettings(ca_cert=pki.ca, client_cert=cert, client_key=key)
        with SlsClient(process.address, tls=tls, timeout=CALL_TIMEOUT, linger=0) as ops:
            ops.create_user("tina")
            offer = ops.create_activation("tina")
            app_cert, app_key = pki.clients["ibkey-app"]
            tls_options = ["--tls-ca", str(pki.ca), "--tls-cert", str(app_cert)]
            tls_options += ["--tls-key", str(app_key)]
            state = ["--state", str(tmp_path / "app.json")]
            grpc_server = ["--server", process.address, *tls_options]
            run = simulate(capsys, *state, "activate", *grpc_server, "--code", offer.manual_code)
            assert run.code == 0, run.err
            push = ops.create_push("tina")
            https = ["--http", f"https://127.0.0.1:{http_port}", *tls_options]
            run = simulate(capsys, *state, "approve", *https)
            assert run.code == 0, run.err
            assert ops.push_status(push.challenge_id) is PushStatus.APPROVED
            # Without the app's certificate the server does not let it in.
            no_cert = ["--server", process.address, "--tls-ca", str(pki.ca)]
            run = simulate(capsys, *state, "pushes", *no_cert)
            assert_one_line_error(run)
            assert run.code == 1
        records = list(read_records(data / "audit.jsonl"))
        activation = [r for r in records if r["event"] == "activation"]
        answers = [r for r in records if r["event"] == "push_answer"]
        assert [(r["caller"], r["outcome"]) for r in activation] == [("ibkey-app", "OK")]
        assert [(r["caller"], r["outcome"]) for r in answers] == [("ibkey-app", "OK")]
        assert process.terminate() == 0, process.log()
    assert os.stat(data / "audit.jsonl").st_size > 0
