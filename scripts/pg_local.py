#!/usr/bin/env python3
"""A private PostgreSQL for tests and benchmarks: initdb in a directory of its own, run as the
``postgres`` user when started by root, listening on 127.0.0.1 only, on a free port.

    python scripts/pg_local.py start DIR [--fast]   # prints the URL: postgresql://sls@127.0.0.1:PORT/sls
    python scripts/pg_local.py stop DIR
    python scripts/pg_local.py restart DIR          # same port (a restart under load)

``--fast`` turns fsync and synchronous commit off: for the test suite only (a crash of the
machine would lose the test cluster, which nobody keeps); benchmarks run without it.
PostgreSQL's server binaries come from Debian's packages (``scripts/system-packages.sh``
installs them when missing). Importable: ``start(directory, fast=...) -> url``, ``stop``.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DATABASE = "sls"
ROLE = "sls"


def binaries() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise SystemExit("no PostgreSQL server binaries: run scripts/system-packages.sh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(command: list[str], owner: str | None) -> list[str]:
    """Root may not run initdb or postgres: run them as ``owner`` (the postgres user)."""
    if owner is None:
        return command
    return ["runuser", "-u", owner, "--", *command]


def _owner() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise SystemExit(
            "running as root needs a 'postgres' user (Debian's package makes it)"
        ) from None
    return "postgres"


def _run(command: list[str], owner: str | None) -> None:
    done = subprocess.run(_as_owner(command, owner), capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise SystemExit(f"{Path(command[0]).name} failed: {said[-1] if said else done.returncode}")


def _running(bin_dir: Path, cluster: Path, owner: str | None) -> bool:
    status = subprocess.run(
        _as_owner([str(bin_dir / "pg_ctl"), "-D", str(cluster), "status"], owner),
        capture_output=True,
    )
    return status.returncode == 0


def _cluster(directory: Path) -> Path:
    return directory / "cluster"


def start(directory: str | os.PathLike[str], *, fast: bool = False, port: int | None = None) -> str:
    """Initialises (once) and starts the cluster in ``directory``; returns its URL."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    owner = _owner()
    if owner is not None:
        info = pwd.getpwnam(owner)
        os.chown(directory, info.pw_uid, info.pw_gid)
    bin_dir = binaries()
    cluster = _cluster(directory)
    if not (cluster / "PG_VERSION").exists():
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(cluster),
                "-U",
                ROLE,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            owner,
        )
    port_file = directory / "port"
    if _running(bin_dir, cluster, owner) and port_file.exists():
        port = int(port_file.read_text())  # already up (started before): the same cluster
        _ensure_database(bin_dir, port, owner)
        return f"postgresql://{ROLE}@127.0.0.1:{port}/{DATABASE}"
    if port is None:
        port = int(port_file.read_text()) if port_file.exists() else _free_port()
    settings = [
        "listen_addresses='127.0.0.1'",
        f"port={port}",
        f"unix_socket_directories='{directory}'",
        "max_connections=200",
        "shared_buffers=256MB",
    ]
    if fast:
        settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
    options = " ".join(f"-c {s}" for s in settings)
    _run(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(cluster),
            "-l",
            str(directory / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        ],
        owner,
    )
    port_file.write_text(str(port))
    url = f"postgresql://{ROLE}@127.0.0.1:{port}/{DATABASE}"
    _ensure_database(bin_dir, port, owner)
    return url


def _ensure_database(bin_dir: Path, port: int, owner: str | None) -> None:
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(
            _as_owner(
                [
                    str(bin_dir / "psql"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    ROLE,
                    "-d",
                    "postgres",
                    "-tAc",
                    f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'",  # noqa: S608 - a constant
                ],
                owner,
            ),
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"PostgreSQL on port {port} does not answer: {done.stderr.strip()}")
        time.sleep(0.2)
    if done.stdout.strip() != "1":
        createdb = [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port)]
        _run([*createdb, "-U", ROLE, DATABASE], owner)


def stop(directory: str | os.PathLike[str], *, mode: str = "fast") -> None:
    """Stops the cluster in ``directory`` (``mode``: smart, fast or immediate)."""
    cluster = _cluster(Path(directory).resolve())
    if not (cluster / "postmaster.pid").exists():
        return
    _run([str(binaries() / "pg_ctl"), "-D", str(cluster), "-m", mode, "-w", "stop"], _owner())


def restart(directory: str | os.PathLike[str], *, fast: bool = False) -> str:
    """Stops and starts the cluster again on the same port."""
    stop(directory)
    return start(directory, fast=fast)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "restart"))
    parser.add_argument("directory")
    parser.add_argument("--fast", action="store_true", help="fsync off: tests only")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop(args.directory)
        return 0
    url = (start if args.action == "start" else restart)(args.directory, fast=args.fast)
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
