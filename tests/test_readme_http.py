"""The README's HTTP section: its curl lines run, in order, against a test server with
the HTTP/JSON API, and answer what the comments under them show (issue 13: "the README's
HTTP section has curl examples that a test runs")."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from grpc_fixtures import InProcessServer
from http_fixtures import serve_http
from sls_core.devices import DeviceType
from sls_core.simulator import dsc_response

pytest_plugins = ["grpc_fixtures"]

README = Path(__file__).resolve().parent.parent / "README.md"
SECRET = bytes(range(1, 21))
PIN = "4711"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## The HTTP/JSON API\n")
    return text[start : text.index("\n## ", start + 1)]


def _examples() -> list[tuple[str, str]]:
    """(curl command, the comment lines under it) in README order."""
    out: list[tuple[str, str]] = []
    for block in re.findall(r"```sh\n(.*?)```", _section(), re.S):
        for line in block.splitlines():
            if line.startswith("curl "):
                out.append((line, ""))
            elif line.startswith("#") and out:
                command, comment = out[-1]
                out[-1] = (command, comment + line)
    return out


def test_the_section_comes_right_before_benchmarks_and_names_the_dev_address() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.index("## The HTTP/JSON API") < text.index("## Benchmarks")
    assert "\n## " not in text[text.index("## The HTTP/JSON API") + 1 : text.index("## Benchmarks")]
    assert "SLS=http://127.0.0.1:8080" in _section()
    assert len(_examples()) >= 6


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_readme_curl_examples_run_against_a_server(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve_http(serve)
    server.sls.create_user("alice")
    server.sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    assert server.server.http is not None
    env = dict(os.environ, SLS=f"http://127.0.0.1:{server.server.http.port}")
    for command, comment in _examples():
        done = subprocess.run(  # noqa: S603 - the README's own curl lines
            ["bash", "-c", command],  # noqa: S607
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, (command, done.stderr)
        answer: Any = json.loads(done.stdout)
        assert "error" not in answer, (command, answer)
        _expect(command, comment, answer)
        # What the reader would carry on to the next line.
        if "token" in answer and answer.get("challenge"):
            env["TOKEN"] = answer["token"]
            env["RESPONSE"] = dsc_response(SECRET, PIN, answer["challenge"])
        detail = answer.get("detail") if isinstance(answer, dict) else None
        if isinstance(detail, dict) and "multi_challenge" in detail:
            env["TRANSACTION_ID"] = detail["transaction_id"]
            shown = detail["multi_challenge"][0]["attributes"]["challenge"]
            env["RESPONSE"] = dsc_response(SECRET, PIN, shown)


def _expect(command: str, comment: str, answer: Any) -> None:
    outcome = re.search(r'"outcome":"([A-Z_]+)"', comment)
    if outcome:
        got = answer["items"][0]["outcome"] if "items" in answer else answer["outcome"]
        assert got == outcome.group(1), (command, answer)
    authentication = re.search(r'"authentication":"([A-Z]+)"', comment)
    if authentication:
        assert answer["result"]["authentication"] == authentication.group(1), (command, answer)
