"""``sls-core admin``: client services over gRPC against a running server (issue 13).

Each command runs as the operator would run it (``remote_admin.main`` with the command
line's words, and once as a real ``sls-core admin`` process); the server is a real one on
127.0.0.1, so the roles, the SLS rules and the audit trail are the server's own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from grpc_fixtures import ROOT, InProcessServer, Pki, free_port
from sls_core import remote_admin
from sls_core.client import SlsClient
from sls_core.server.config import TlsConfig
from sls_core.simulator import dsc_response

pytest_plugins = ["grpc_fixtures"]

PIN = "4711"


def admin(
    server: InProcessServer, capsys: pytest.CaptureFixture[str], *words: str
) -> tuple[int, str, str]:
    """Runs ``sls-core admin --target SERVER WORDS``: (exit status, stdout, stderr)."""
    status = remote_admin.main(["--target", server.address, *words])
    out, err = capsys.readouterr()
    return status, out, err


def audit_events(server: InProcessServer) -> list[dict[str, object]]:
    path = server.config.audit_path
    assert path is not None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_create_enroll_show_and_revoke(
    server: InProcessServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status, out, _ = admin(server, capsys, "user", "create", "alice")
    assert status == 0
    assert "created alice" in out

    monkeypatch.setenv("ALICE_PIN", PIN)
    status, out, err = admin(
        server, capsys, "--json", "devices", "enroll", "alice", "dsc_plus", "--pin-env", "ALICE_PIN"
    )
    assert status == 0, err
    device = json.loads(out)
    assert device["type"] == "dsc_plus"
    assert device["state"] == "active"
    assert PIN not in out

    status, out, _ = admin(server, capsys, "user", "show", "alice")
    assert status == 0
    assert "security level: 1" in out
    assert "not locked" in out
    assert f"{device['id']}" in out
    assert "dsc_plus" in out

    status, out, _ = admin(server, capsys, "devices", "revoke", "alice", str(device["id"]))
    assert status == 0
    assert "revoked" in out
    status, out, _ = admin(server, capsys, "--json", "devices", "list", "alice")
    [listed] = json.loads(out)
    assert listed["state"] == "revoked"

    # The server wrote each change down with the caller; never the PIN.
    events = {e.get("event") for e in audit_events(server)}
    assert {"admin.CreateUser", "admin.EnrollDevice", "admin.RevokeDevice"} <= events
    assert PIN not in server.config.audit_path.read_text()  # type: ignore[union-attr]


def test_a_pin_is_never_taken_from_the_command_line(
    server: InProcessServer, capsys: pytest.CaptureFixture[str]
) -> None:
    admin(server, capsys, "user", "create", "bob")
    status, _, err = admin(
        server, capsys, "devices", "enroll", "bob", "dsc_plus", "--pin-env", "NO_SUCH_VARIABLE"
    )
    assert status == 1
    assert "NO_SUCH_VARIABLE is not set" in err
    with pytest.raises(SystemExit) as exited:
        remote_admin.main(["--target", server.address, "devices", "enroll", "bob", "dsc_plus", PIN])
    assert exited.value.code == 2


def test_unlock_ends_the_lock_and_is_audited(
    server: InProcessServer, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = bytes(range(1, 21))
    with SlsClient(server.address, timeout=10, linger=0) as client:
        client.create_user("carol")
        from sls_core.devices import DeviceType

        client.enroll_device("carol", DeviceType.DSC_PLUS, secret=secret, pin=PIN)
        # SLS-RULES "Lockout": consecutive wrong answers lock the user.
        for _ in range(10):
            challenge = client.issue_challenge("carol")
            client.verify("carol", challenge.token, "00000000")
        assert client.lockout_status("carol").locked

        status, out, err = admin(server, capsys, "user", "show", "carol")
        assert status == 0, err
        assert "locked until" in out

        status, out, err = admin(server, capsys, "unlock", "carol")
        assert status == 0, err
        assert "carol: unlocked (0 failures now)" in out
        assert not client.lockout_status("carol").locked
        challenge = client.issue_challenge("carol")
        answer = dsc_response(secret, PIN, challenge.challenge)
        assert client.verify("carol", challenge.token, answer).outcome.name == "OK"
    unlocks = [e for e in audit_events(server) if e.get("event") == "admin.Unlock"]
    assert len(unlocks) == 1
    assert unlocks[0].get("username") == "carol"


def test_a_temporary_passcode_is_shown_once_and_logs_in(
    server: InProcessServer, capsys: pytest.CaptureFixture[str]
) -> None:
    admin(server, capsys, "user", "create", "dave")
    status, out, err = admin(server, capsys, "--json", "passcode", "dave")
    assert status == 0, err
    passcode = json.loads(out)["passcode"]
    assert passcode
    with SlsClient(server.address, timeout=10, linger=0) as client:
        # A static code: it answers without a challenge (SLS-RULES "Temporary passcode").
        assert client.verify("dave", None, passcode).outcome.name == "OK"
    assert passcode not in server.config.audit_path.read_text()  # type: ignore[union-attr]


def test_refusals_are_one_line_with_the_servers_reason(
    server: InProcessServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = admin(server, capsys, "devices", "list", "nobody")
    assert (status, out) == (1, "")
    assert err.startswith("sls-core admin: NOT_FOUND")
    assert err.count("\n") == 1

    admin(server, capsys, "user", "create", "erin")
    status, _, err = admin(server, capsys, "user", "create", "erin")
    assert status == 1
    assert err.startswith("sls-core admin: ALREADY_EXISTS")
    assert "Traceback" not in err


def test_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = remote_admin.main(
        ["--target", f"127.0.0.1:{free_port()}", "--timeout", "2", "user", "show", "x"]
    )
    _, err = capsys.readouterr()
    assert status == 1
    assert err.startswith("sls-core admin: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_only_the_admin_role_administers(
    serve: Callable[..., InProcessServer], pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca, require_client_auth=True
    )
    server = serve(tls=tls, roles={"gateway1": "gateway", "ops": "admin"})

    def as_caller(cn: str, *words: str) -> tuple[int, str, str]:
        cert, key = pki.clients[cn]
        tls_args = ["--tls-ca", str(pki.ca), "--tls-cert", str(cert), "--tls-key", str(key)]
        status = remote_admin.main(["--target", server.address, *tls_args, *words])
        out, err = capsys.readouterr()
        return status, out, err

    status, _, err = as_caller("gateway1", "user", "create", "frank")
    assert status == 1
    assert err.startswith("sls-core admin: PERMISSION_DENIED")
    status, _, err = as_caller("ops", "user", "create", "frank")
    assert status == 0, err
    created = [e for e in audit_events(server) if e.get("event") == "admin.CreateUser"]
    assert [e.get("caller") for e in created] == ["ops"]


def test_status_shows_the_servers_version_store_counts_and_health(
    server: InProcessServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from sls_core.server.main import _version

    for name in ("gina", "hank"):
        admin(server, capsys, "user", "create", name)
    status, out, err = admin(server, capsys, "status")
    assert status == 0, err
    assert out.startswith(f"sls-core {_version()}: SERVING")
    assert "store: sqlite, schema version " in out
    assert "users: 2, devices: 0" in out
    status, out, err = admin(server, capsys, "--json", "status")
    assert status == 0, err
    answer = json.loads(out)
    assert answer["store_backend"] == "sqlite"
    assert answer["users"] == 2
    assert answer["serving"] is True
    assert answer["started_at"].endswith("Z")
    assert answer["uptime"] >= 0


def test_sls_core_admin_is_a_subcommand_of_sls_core(tmp_path: Path) -> None:
    """The real command line: ``sls-core --help`` names it, and it runs without a server
    config or a data directory (a client only)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "sls_core.server", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "admin" in help_text
    done = subprocess.run(  # noqa: S603 - our own command
        [
            sys.executable,
            "-m",
            "sls_core.server",
            "admin",
            "--target",
            f"127.0.0.1:{free_port()}",
            "--timeout",
            "1",
            "status",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("sls-core admin: ")
    assert "Traceback" not in done.stderr
