"""The deployment as an operator meets it: the systemd unit in ``deploy/systemd/`` verifies
(``systemd-analyze verify``, offline) and agrees with the sample ``sls.toml``, the server
runs under the unit's MemoryDenyWriteExecute, and a failed ``sls-core serve`` (bad config,
port taken, missing key, unreachable database) prints one clear line and exits non-zero."""

from __future__ import annotations

import configparser
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sls_core.login import SecureLogin
from sls_core.server.config import config_from_mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "systemd"
UNIT = DEPLOY / "sls-core.service"
SAMPLE_CONFIG = DEPLOY / "sls.toml"
INSTALLED_BINARY = "/opt/sls-core/bin/sls-core"
START_TIMEOUT = 60.0


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if sys.platform != "linux":
            pytest.skip("the systemd unit is verified on Linux")
        pytest.fail(
            "systemd-analyze not found: install Debian's systemd package "
            "(`make system` runs scripts/system-packages.sh, which does)"
        )
    return found


def _unit_for_here(tmp_path: Path) -> Path:
    """The unit with ExecStart on this venv's sls-core: verify wants an existing binary."""
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    here = Path(sys.executable).with_name("sls-core")
    binary = here if here.exists() else Path(sys.executable)
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_BINARY, str(binary)))
    return copy


def _service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    result = subprocess.run(  # noqa: S603 - systemd's own tool
        [analyze, "verify", "--man=no", str(_unit_for_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # An unknown or misspelt directive is only a warning (exit 0): none is allowed.
    assert (result.returncode, result.stderr.strip()) == (0, "")


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    unit = _unit_for_here(tmp_path)
    result = subprocess.run(  # noqa: S603 - systemd's own tool
        [analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert exposure is not None, result.stdout[-2000:]
    assert float(exposure.group(1)) <= 2.0


def test_the_unit_keeps_the_promises_an_operator_expects() -> None:
    service = _service_section()
    for key, value in {
        "User": "sls",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "sls",
        "LogsDirectory": "sls",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }.items():
        assert service.get(key) == value, key
    sysusers = (DEPLOY / "sls-core.sysusers.conf").read_text()
    assert re.search(r"^u sls ", sysusers, re.M)


def test_the_sysusers_and_tmpfiles_snippets_make_the_user_and_the_config_directory(
    tmp_path: Path,
) -> None:
    """Both applied to an empty root: the ``sls`` user, then /etc/sls as root:sls 0750."""
    analyze = _systemd_analyze()  # the same package ships both tools
    tools = Path(analyze).parent
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        (tmp_path / "etc" / name).touch()
    sysusers = [str(tools / "systemd-sysusers"), f"--root={tmp_path}"]
    subprocess.run(  # noqa: S603 - systemd's own tool
        [*sysusers, str(DEPLOY / "sls-core.sysusers.conf")],
        capture_output=True,
        timeout=60,
        check=True,
    )
    user = (tmp_path / "etc" / "passwd").read_text().split(":")
    assert (user[0], user[5]) == ("sls", "/var/lib/sls")
    if os.geteuid() != 0:
        return  # only root may give /etc/sls to the group sls
    subprocess.run(  # noqa: S603 - systemd's own tool
        [
            str(tools / "systemd-tmpfiles"),
            f"--root={tmp_path}",
            "--create",
            str(DEPLOY / "sls-core.tmpfiles.conf"),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    config_dir = (tmp_path / "etc" / "sls").stat()
    assert oct(config_dir.st_mode & 0o777) == oct(0o750)
    assert (config_dir.st_uid, config_dir.st_gid) == (0, int(user[3]))


def test_the_sample_config_is_valid_and_matches_the_unit(tmp_path: Path) -> None:
    data = tomllib.loads(SAMPLE_CONFIG.read_text())
    service = _service_section()
    assert data["data_dir"] == f"/var/lib/{service['StateDirectory']}"
    assert Path(data["audit_log"]).parent == Path("/var/log", service["LogsDirectory"])
    credential, _, source = service["LoadCredential"].partition(":")
    assert data["tls"]["key"] == f"/run/credentials/{UNIT.name}/{credential}"
    assert source.startswith("/etc/sls/")
    # Every key is one the server knows; the TLS files exist only on the real host.
    for name in ("cert", "key", "client_ca"):
        stand_in = tmp_path / name
        stand_in.write_text("-")
        data["tls"][name] = str(stand_in)
    config = config_from_mapping(data, SAMPLE_CONFIG.parent)
    assert config.data_dir == Path("/var/lib/sls")
    assert config.tls is not None
    assert config.tls.require_client_auth


# --- a failed start: one line, non-zero ----------------------------------------------------


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLS_CORE_")}


def _serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and server
        [sys.executable, "-m", "sls_core.server", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=_environment(),
    )


def _one_line(result: subprocess.CompletedProcess[str], code: int, start: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(start), result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_a_config_that_is_not_toml(tmp_path: Path) -> None:
    (tmp_path / "sls.toml").write_text('listen = "127.0.0.1:0\n')
    _one_line(
        _serve("--config", "sls.toml", cwd=tmp_path),
        2,
        "sls-core: config error: config: not valid TOML",
    )


def test_an_unknown_config_key(tmp_path: Path) -> None:
    (tmp_path / "sls.toml").write_text('lisen = "127.0.0.1:0"\n')
    line = _one_line(_serve("--config", "sls.toml", cwd=tmp_path), 2, "sls-core: config error:")
    assert line == "sls-core: config error: lisen: unknown key"


def test_the_grpc_port_taken(tmp_path: Path, taken_port: int) -> None:
    result = _serve(
        "--listen", f"127.0.0.1:{taken_port}", "--http-listen", "off", "--data-dir", "d",
        cwd=tmp_path,
    )  # fmt: skip
    line = _one_line(result, 3, "sls-core: cannot start:")
    assert line.endswith(f"on 127.0.0.1:{taken_port} (listen): address already in use")
    assert not (tmp_path / "d").exists()  # checked before anything is created


def test_an_http_port_asked_for_and_taken(tmp_path: Path, taken_port: int) -> None:
    result = _serve(
        "--listen", "127.0.0.1:0", "--http-listen", f"127.0.0.1:{taken_port}",
        "--data-dir", "d", cwd=tmp_path,
    )  # fmt: skip
    line = _one_line(result, 3, "sls-core: cannot start:")
    assert line.endswith(f"on 127.0.0.1:{taken_port} (http_listen): address already in use")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_metrics_port_taken(tmp_path: Path, taken_port: int, workers: str) -> None:
    result = _serve(
        "--listen", "127.0.0.1:0", "--http-listen", "off", "--data-dir", "d",
        "--metrics-port", str(taken_port), "--workers", workers, cwd=tmp_path,
    )  # fmt: skip
    line = _one_line(result, 3, "sls-core: cannot start:")
    assert line.endswith(f"on 127.0.0.1:{taken_port} (metrics_port): address already in use")


def test_the_master_key_missing_over_an_existing_store(tmp_path: Path) -> None:
    sls = SecureLogin.open(tmp_path / "d")
    sls.store.close()
    (tmp_path / "d" / "master-key.json").unlink()
    result = _serve(
        "--listen", "127.0.0.1:0", "--http-listen", "off", "--data-dir", "d", cwd=tmp_path
    )
    line = _one_line(result, 2, "sls-core: cannot start: key_file: the master key is missing")
    assert "restore the key file from its backup" in line
    assert not (tmp_path / "d" / "master-key.json").exists()  # no new key over old secrets


def test_an_unreachable_postgresql(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    result = _serve(
        "--listen", "127.0.0.1:0", "--http-listen", "off", "--data-dir", "d",
        "--store", "postgresql://sls@127.0.0.1:1/sls", cwd=tmp_path,
    )  # fmt: skip
    _one_line(result, 2, "sls-core: cannot start: store: unavailable")


def _pid(log_line: str) -> int:
    try:
        return int(json.loads(log_line).get("pid", 0))
    except ValueError:  # not one of our JSON lines (gRPC's core writes its own)
        return 0


# --- MemoryDenyWriteExecute -----------------------------------------------------------------

#: prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), Linux 6.3+: what MemoryDenyWriteExecute=yes
#: enforces, inherited by every later exec and spawned worker. Exit 77: kernel without it.
_UNDER_MDWE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def test_the_server_serves_and_reloads_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """Two workers start under MDWE; the unit's ExecReload (SIGHUP to the main process)
    makes each reopen its audit file, as after a logrotate."""
    if sys.platform != "linux":
        pytest.skip("PR_SET_MDWE is Linux's")
    command = [sys.executable, "-c", _UNDER_MDWE, "-m", "sls_core.server", "serve"]
    command += ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--workers", "2"]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and server
        [*command, "--data-dir", str(tmp_path / "d")],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=_environment(),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stderr = process.stderr

    def read() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []

    def wait_for(message: str, count: int, *, every: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        next_call = 0.0
        while len({_pid(line) for line in seen if f'"message":"{message}"' in line}) < count:
            if every is not None and time.monotonic() > next_call:
                every()
                next_call = time.monotonic() + 1.0
            if process.poll() is not None:
                if process.returncode == 77:
                    pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
                pytest.fail(f"exited {process.returncode}: {''.join(seen)}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {message!r} from both workers: {''.join(seen)}")
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                continue

    try:
        wait_for("serving", 2)
        audit = tmp_path / "d" / "audit.jsonl"
        audit.rename(audit.with_name("audit.jsonl.1"))
        # Again each second: a worker sets its handler just after it says "serving".
        wait_for("audit log reopened", 2, every=lambda: process.send_signal(signal.SIGHUP))
        assert audit.exists()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        reader.join(timeout=10)
        stderr.close()
    assert code == 0


# -- a runtime-only install --------------------------------------------------------------

#: What a server never needs: test, lint, type-check, benchmark and code-generation tools.
_DEVELOPMENT_TOOLS = {
    "pytest",
    "hypothesis",
    "ruff",
    "mypy",
    "pytest-benchmark",
    "matplotlib",
    "oath",
    "pyotp",
    "pypdf",
    "grpcio-tools",
    "mypy-protobuf",
    "maturin",
    "openapi-python-client",
}


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_a_runtime_install_brings_no_development_tool() -> None:
    """``pip install .`` installs the runtime dependencies only: none of them is a test,
    lint or benchmark tool, the development extras hold those, and no module of the
    package imports one (it would fail on a runtime-only install)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    assert runtime & _DEVELOPMENT_TOOLS == set()
    extras = {
        _requirement_name(r)
        for name in ("test", "bench", "dev")
        for r in project["optional-dependencies"][name]
    }
    assert {"pytest", "ruff", "mypy", "pytest-benchmark"} <= extras
    modules = {name.replace("-", "_") for name in _DEVELOPMENT_TOOLS}
    imports = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted((ROOT / "python" / "sls_core").rglob("*.py"))
        for module in imports.findall(path.read_text())
        if module in modules
    ]
    assert offenders == []
