"""Gateway load test: many concurrent gateways against ``sls-core serve`` on 127.0.0.1.

Run it from the project root with the virtualenv's Python (``make loadtest``)::

    python benches/loadtest.py [--seconds 10] [--workers N] [--users 10k]
        [--modes open,threads,async,http,batch] [--rate 5000] [--open-connections 1]
        [--max-in-flight 1] [--gateways 64] [--async-gateways 4,8,16] [--async-connections 1]
        [--http-clients 4,8,16]
        [--linger 0.0005]
        [--batch 10k] [--batches 48] [--rounds 3] [--connections 2] [--in-flight 1]
        [--pin GENERATOR/SERVER] [--debug-phases] [--out DIR]

It enrolls ``--users`` DSC+ users in a fresh data dir, starts the server (``--workers``
processes sharing the gRPC port and the HTTP/JSON one; by default one per CPU the server
may use: every CPU, or the server's pinned ones with ``--pin``), pre-issues login challenges
through the embedded store (so the timed phase measures verification only), computes the
right answers as the device simulator would, spoils 1% (wrong) and 1% (malformed, a
space inside) so that lockout counting and the malformed path run, then for a bounded time:

* **open**: logins arrive at ``--rate`` per second (Poisson; a comma-separated list runs
  one open loop per rate), answered or not, spread over ``--open-connections`` gateways
  (``AsyncSlsClient`` each, micro-batching with ``--max-in-flight``); latency
  percentiles, each login's wait in its gateway and its batch's round trip, the cores
  each process kept busy and how long each waited for a CPU (run queue), and the worst
  latency of every 100 ms (in the JSON) show where a tail comes from. ``--pin 0/1`` runs
  the generator and the server on disjoint CPUs; ``--debug-phases`` adds the server's
  own timing of its batches (``SLS_CORE_DEBUG_PHASES``) to the report;
* **threads** / **async**: closed loops, ``--gateways`` threads (``SlsClient``) or
  ``--async-gateways`` tasks, each calling ``verify`` one attempt at a time;
* **http**: closed loops over HTTP/JSON, ``--http-clients`` asyncio tasks (aiohttp), each
  on a keep-alive connection of its own, posting ``/v1/verify`` one attempt at a time (no
  client micro-batching: one request per attempt), beside the gRPC rows;
* **batch**: ``--connections`` gateways send VerifyBatch calls of ``--batch`` attempts
  (``--in-flight`` outstanding each), alternating in ``--rounds`` with the same
  store-backed work through ``SecureLogin.verify_batch`` in this process: the in-process
  rate VerifyBatch is compared with, measured side by side.

Traffic goes to 127.0.0.1 only, bounded in count and time. Progress lines go to stderr.
Writes ``DIR/loadtest.md``, ``DIR/loadtest.json`` and ``DIR/loadtest.png`` (latency
percentiles against load, gRPC and HTTP side by side).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sls_core import card, ocra
from sls_core.client import SlsClient
from sls_core.devices import DeviceType
from sls_core.login import SecureLogin
from sls_core.outcome import LoginOutcome

STARTED = time.perf_counter()
SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
SUITE_NO_PIN = "OCRA-1:HOTP-SHA1-8:QN06"
#: Gateways send their micro-batches as messages of one VerifyStream per client
#: (``--transport stream``, the default) or as VerifyBatch calls (``batch``).
STREAM = True
PIN = "2580"
PIN_HASH = hashlib.sha1(PIN.encode()).digest()  # noqa: S324 - the suite's PIN hash


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The device mix of the gateways' users (shares of ``--users``): what a broker's login
#: storm sees, mostly hardware and app OCRA devices, some printed cards.
DEVICE_MIX = (
    (DeviceType.DSC_PLUS, 0.6),  # OCRA with the device PIN in the computation
    (DeviceType.IB_KEY, 0.2),  # the app (Android: with its PIN)
    (DeviceType.PLATINUM, 0.1),  # legacy OCRA token without a PIN
    (DeviceType.SECURITY_CODE_CARD, 0.1),  # two printed codes, concatenated
)


class Workload:
    """Users with a mix of devices (``DEVICE_MIX``) and a supply of fresh attempts (a
    challenge verifies once), answered as the devices would: OCRA computed as the DSC+
    and the IB Key app compute it (``sls_core.simulator``), card codes read off the
    card's grid; then 1% are made wrong and 1% malformed."""

    def __init__(self, data: Path, users: int, seed: int = 11) -> None:
        self.rng = np.random.default_rng(seed)
        self.names = [f"gw{i}" for i in range(users)]
        self.secrets = [self.rng.bytes(20) for _ in range(users)]
        self.sls = SecureLogin.open(data)
        self.types: list[DeviceType] = []
        for device_type, share in DEVICE_MIX:
            self.types += [device_type] * round(users * share)
        self.types = (self.types + [DeviceType.DSC_PLUS] * users)[:users]
        self.cards: dict[int, list[str]] = {}
        for device_type, _share in DEVICE_MIX:
            rows = [i for i, t in enumerate(self.types) if t is device_type]
            if not rows:
                continue
            names = [self.names[i] for i in rows]
            secrets = [self.secrets[i] for i in rows]
            if device_type is DeviceType.SECURITY_CODE_CARD:
                for i, name, secret in zip(rows, names, secrets, strict=True):
                    self.sls.create_user(name)
                    self.sls.import_device(name, device_type, secret=secret)  # legacy: imported
                    self.cards[i] = list(card.card_codes(secret, 100))
            else:
                pins = [PIN] * len(rows) if _uses_pin(device_type) else None
                self.sls.enroll_bulk(names, device_type, secrets, pins=pins)
        self.index = {name: i for i, name in enumerate(self.names)}

    def attempts(self, n: int) -> tuple[list[str], list[str], list[str]]:
        pick = self.rng.integers(0, len(self.names), n).tolist()
        users = [self.names[i] for i in pick]
        challenges = self.sls.issue_challenges(users)
        responses = [""] * n
        for device_type, _share in DEVICE_MIX:
            rows = [k for k, i in enumerate(pick) if self.types[i] is device_type]
            if not rows:
                continue
            if device_type is DeviceType.SECURITY_CODE_CARD:
                for k in rows:
                    first, second = challenges[k].card_indices or (1, 2)
                    codes = self.cards[pick[k]]
                    responses[k] = codes[first - 1] + codes[second - 1]
                continue
            with_pin = _uses_pin(device_type)
            answers = ocra.compute_batch(
                SUITE if with_pin else SUITE_NO_PIN,
                [self.secrets[pick[k]] for k in rows],
                [challenges[k].challenge or "" for k in rows],
                pin_hashes=[PIN_HASH] * len(rows) if with_pin else None,
            )
            for k, answer in zip(rows, answers, strict=True):
                responses[k] = answer.decode()
        for k in self.rng.choice(n, max(1, n // 50), replace=False).tolist():
            typed = responses[k]
            if k % 2:  # wrong: the last digit off by one
                responses[k] = typed[:-1] + str((int(typed[-1]) + 1) % 10)
            else:  # malformed: a space inside
                responses[k] = typed[:4] + " " + typed[4:]
        return users, [c.token for c in challenges], responses


def _uses_pin(device_type: DeviceType) -> bool:
    return device_type in (DeviceType.DSC_PLUS, DeviceType.IB_KEY)


def progress(text: str) -> None:
    """One line on stderr, with the seconds since the start: long steps show they move."""
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {text}", file=sys.stderr, flush=True)


def parse_cpus(text: str) -> set[int]:
    """``0``, ``0,2`` or ``1-3``: a set of CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def parse_pin(text: str) -> tuple[set[int], set[int]] | None:
    """``--pin GENERATOR/SERVER`` (e.g. ``0/1``): the CPUs of each side; ``none``: None."""
    if text == "none":
        return None
    generator, _, server = text.partition("/")
    pin = parse_cpus(generator), parse_cpus(server)
    if not all(pin) or pin[0] & pin[1]:
        raise argparse.ArgumentTypeError("--pin: two disjoint CPU lists, GENERATOR/SERVER")
    return pin


def default_workers(pin: tuple[set[int], set[int]] | None) -> int:
    """Server processes when ``--workers`` is not given: one per CPU the server may use,
    as a deployment runs one per core. A second process on a server's one pinned CPU only
    competes with the first (an open loop's one connection reaches one process): p99 2.94
    against 2.64 ms at 5,000/s, alternated rounds."""
    return len(pin[1]) if pin else (os.cpu_count() or 1)


def start_server(
    data: Path,
    port: int,
    http_port: int,
    workers: int,
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> subprocess.Popen[bytes]:
    """``sls-core serve`` with ``workers`` processes; on ``cpus`` only (every process it
    starts inherits them) when given, with ``env`` added to its environment."""
    command = [
        sys.executable,
        "-m",
        "sls_core.server",
        "serve",
        "--data-dir",
        str(data),
        "--listen",
        f"127.0.0.1:{port}",
        "--http-listen",
        f"127.0.0.1:{http_port}",
        "--workers",
        str(workers),
        "--log-level",
        "WARNING",
    ]
    return _spawn(command, log, env=env, cpus=cpus)


def _spawn(
    command: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> subprocess.Popen[bytes]:
    """``command`` with its output in ``log``, on ``cpus`` only when given."""
    mine = os.sched_getaffinity(0)
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        if cpus is not None:  # inherited at the fork: no moment on the wrong CPUs
            os.sched_setaffinity(0, cpus)
        try:
            return subprocess.Popen(  # noqa: S603
                command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        finally:
            os.sched_setaffinity(0, mine)


def start_floor_server(
    port: int, log: Path, *, work_us: float = 0.0, cpus: set[int] | None = None
) -> subprocess.Popen[bytes]:
    """``benches/stream_floor.py``: a server that answers without domain work (after
    ``work_us`` of busy CPU per message)."""
    command = [sys.executable, str(Path(__file__).with_name("stream_floor.py"))]
    command += ["--listen", f"127.0.0.1:{port}", "--work-us", f"{work_us:g}"]
    return _spawn(command, log, cpus=cpus)


def wait_floor_ready(port: int, timeout: float = 30.0) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise SystemExit("the floor server did not start") from None


def wait_ready(port: int, http_port: int, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with SlsClient(f"127.0.0.1:{port}", timeout=2.0, linger=0) as client:
                client.wait_ready(timeout=2.0)
                client.session_length("pin")
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2.0):
                return
        except Exception:  # not up yet
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU time used so far by this process and by each server process (Linux /proc)."""
    mine = os.times()
    used = {"load generator": mine.user + mine.system}
    tick = os.sysconf("SC_CLK_TCK")
    for k, pid in enumerate([server_pid, *_children(server_pid)]):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[f"server process {k}"] = (int(fields[11]) + int(fields[12])) / tick
    return used


def cpu_share(before: dict[str, float], after: dict[str, float], elapsed: float) -> dict[str, str]:
    """Cores each process kept busy between two :func:`cpu_seconds` readings."""
    return {k: f"{(after[k] - before.get(k, 0.0)) / elapsed:.2f}" for k in after}


def run_queue_seconds(server_pid: int) -> dict[str, float]:
    """Seconds the threads of this process and of each server process have spent ready to
    run but waiting for a CPU (Linux schedstat): what other work on the machine cost them."""
    waited = {}
    for k, pid in enumerate([os.getpid(), server_pid, *_children(server_pid)]):
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile
        waited["load generator" if k == 0 else f"server process {k - 1}"] = total / 1e9
    return waited


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (an affinity is a thread's own; threads
    started later inherit their starter's)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except OSError:
            continue  # a thread that ended meanwhile


def serving_processes(server_pid: int, port: int) -> list[int]:
    """The server processes that listen on ``port`` (not a supervisor or a helper)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                listening.add(int(fields[9]))
    return [pid for pid in [server_pid, *_children(server_pid)] if _sockets_of(pid) & listening]


class ServerPhases:
    """The server's debug timing (``SLS_CORE_DEBUG_PHASES``, see
    ``sls_core.server.metrics.PhaseTimes``): each serving process writes what it timed
    since its last dump to ``DIR/phases-<pid>.json`` when sent SIGUSR1."""

    def __init__(self, directory: Path, server_pid: int, port: int) -> None:
        self.directory, self.server_pid, self.port = directory, server_pid, port

    def collect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Asks every serving process for its timings and merges them: per phase the
        count summed, each percentile the worst of the processes."""
        import signal

        pids = serving_processes(self.server_pid, self.port)
        for pid in pids:
            (self.directory / f"phases-{pid}.json").unlink(missing_ok=True)
            os.kill(pid, signal.SIGUSR1)
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            paths = [self.directory / f"phases-{pid}.json" for pid in pids]
            if all(path.exists() for path in paths):
                found = [json.loads(path.read_text()) for path in paths]
                break
            time.sleep(0.05)
        merged: dict[str, dict[str, float]] = {}
        for one in found:
            for phase, stats in one["phases"].items():
                into = merged.setdefault(phase, {})
                for key, value in stats.items():
                    summed = key in ("count", "total_ms", "over_1ms")
                    into[key] = into.get(key, 0) + value if summed else max(into.get(key, 0), value)
        return {"processes": len(found), "phases": merged}


def _connections_to(port: int) -> dict[int, int]:
    """Established loopback TCP connections to ``port``: socket inode -> client port, for
    the server's side of each, and -inode -> client port for a client's side (Linux
    /proc/net/tcp and tcp6: gRPC's sockets are dual-stack)."""
    found = {}
    lines = [
        line
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for line in Path(table).read_text().splitlines()[1:]
    ]
    for line in lines:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state == "01" and int(local.split(":")[1], 16) == port:
            found[inode] = int(remote.split(":")[1], 16)
        elif state == "01" and int(remote.split(":")[1], 16) == port:
            found[-inode] = int(local.split(":")[1], 16)
    return found


def _sockets_of(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def worker_of_new_connection(server_pid: int, port: int, known: set[int]) -> tuple[int, int]:
    """(client port, server process index) of this process's one connection to ``port``
    not in ``known``: SO_REUSEPORT gives each connection to one server process, chosen
    by a hash, and the load test needs to know which."""
    table = _connections_to(port)
    mine = _sockets_of(os.getpid())
    client_ports = {cport for inode, cport in table.items() if inode < 0 and -inode in mine}
    (new,) = client_ports - known
    for k, pid in enumerate([server_pid, *_children(server_pid)]):
        theirs = _sockets_of(pid)
        if any(inode in theirs and cport == new for inode, cport in table.items() if inode > 0):
            return new, k
    raise RuntimeError("no server process holds the connection")


def percentiles(latencies: list[float]) -> dict[str, float]:
    values = np.array(latencies) * 1e3
    return {f"p{p:g}": float(np.percentile(values, p)) for p in (50, 95, 99, 99.9)}


def run_single(
    port: int,
    load: tuple[list[str], list[str], list[str]],
    gateways: int,
    seconds: float,
    linger: float,
) -> dict[str, Any]:
    users, tokens, responses = load
    latencies: list[float] = []
    outcomes: list[int] = []
    lock = threading.Lock()
    cursor = iter(range(len(users)))
    stop = time.monotonic() + seconds
    with SlsClient(f"127.0.0.1:{port}", timeout=10.0, linger=linger, stream=STREAM) as client:

        def gateway() -> None:
            mine_l, mine_o = [], []
            while time.monotonic() < stop:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    break
                started = time.perf_counter()
                verdict = client.verify(users[i], tokens[i], responses[i])
                mine_l.append(time.perf_counter() - started)
                mine_o.append(int(verdict.outcome))
            with lock:
                latencies.extend(mine_l)
                outcomes.extend(mine_o)

        threads = [threading.Thread(target=gateway) for _ in range(gateways)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
    return {
        "mode": f"single Verify, {gateways} gateway threads (client micro-batching)",
        "transport": "gRPC",
        "loop": "closed",
        "concurrency": gateways,
        "requests": len(latencies),
        "rate": len(latencies) / elapsed,
        **percentiles(latencies),
        "ok_share": outcomes.count(LoginOutcome.OK) / max(1, len(outcomes)),
    }


def run_single_async(
    server_pid: int,
    workers: int,
    port: int,
    load: tuple[list[str], list[str], list[str]],
    gateways: int,
    seconds: float,
    linger: float,
    max_in_flight: int,
    connections: int,
) -> dict[str, Any]:
    """Like run_single, with ``gateways`` asyncio tasks on one event loop, taking turns
    over ``connections`` clients (AsyncSlsClient) spread over the server processes: the
    load generator costs one thread, not a GIL-contended thread per gateway."""
    users, tokens, responses = load
    latencies: list[float] = []
    outcomes: list[int] = []
    cores: dict[str, str] = {}

    async def drive() -> float:
        cursor = iter(range(len(users)))
        stop = time.monotonic() + seconds
        clients = await balanced_clients(
            server_pid, port, workers, connections, linger, max_in_flight
        )

        async def gateway(client: Any) -> None:
            while time.monotonic() < stop:
                i = next(cursor, None)
                if i is None:
                    return
                started = time.perf_counter()
                verdict = await client.verify(users[i], tokens[i], responses[i])
                latencies.append(time.perf_counter() - started)
                outcomes.append(int(verdict.outcome))

        used_before = cpu_seconds(server_pid)
        began = time.perf_counter()
        await asyncio.gather(*(gateway(clients[g % connections]) for g in range(gateways)))
        elapsed = time.perf_counter() - began
        cores.update(cpu_share(used_before, cpu_seconds(server_pid), elapsed))
        for client in clients:
            await client.close()
        return elapsed

    elapsed = asyncio.run(drive())
    return {
        "mode": f"single Verify, {gateways} asyncio gateways over {connections} connections"
        f" (closed loop, client micro-batching, max_in_flight {max_in_flight})",
        "transport": "gRPC",
        "loop": "closed",
        "concurrency": gateways,
        "requests": len(latencies),
        "rate": len(latencies) / elapsed,
        **percentiles(latencies),
        "ok_share": outcomes.count(LoginOutcome.OK) / max(1, len(outcomes)),
        "cores_busy": cores,
    }


def run_http(
    server_pid: int,
    http_port: int,
    load: tuple[list[str], list[str], list[str]],
    clients: int,
    seconds: float,
) -> dict[str, Any]:
    """Closed loop over HTTP/JSON: ``clients`` asyncio tasks on one event loop, each
    posting ``/v1/verify`` one attempt at a time over a keep-alive connection of its own
    (one aiohttp session whose pool holds ``clients`` connections; SO_REUSEPORT spreads
    them over the server processes). HTTP/1.1 has one request in flight a connection and
    nothing batches them: the rate a gateway speaking HTTP gets, beside the gRPC rows."""
    import aiohttp

    users, tokens, responses = load
    latencies: list[float] = []
    outcomes: list[str] = []
    statuses: dict[int, int] = {}
    cores: dict[str, str] = {}
    url = f"http://127.0.0.1:{http_port}/v1/verify"

    async def drive() -> float:
        cursor = iter(range(len(users)))
        connector = aiohttp.TCPConnector(limit=clients)
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            # Every connection opened before the clock starts, as a gateway's pool would be.
            async def ready() -> None:
                async with session.get(f"http://127.0.0.1:{http_port}/readyz") as reply:
                    await reply.read()

            await asyncio.gather(*(ready() for _ in range(clients)))
            stop = time.monotonic() + seconds

            async def gateway() -> None:
                while time.monotonic() < stop:
                    i = next(cursor, None)
                    if i is None:
                        return
                    body = {"username": users[i], "token": tokens[i], "response": responses[i]}
                    started = time.perf_counter()
                    async with session.post(url, json=body) as reply:
                        verdict = await reply.json()
                    latencies.append(time.perf_counter() - started)
                    statuses[reply.status] = statuses.get(reply.status, 0) + 1
                    outcomes.append(str(verdict.get("outcome")))

            used_before = cpu_seconds(server_pid)
            began = time.perf_counter()
            await asyncio.gather(*(gateway() for _ in range(clients)))
            elapsed = time.perf_counter() - began
            cores.update(cpu_share(used_before, cpu_seconds(server_pid), elapsed))
        return elapsed

    elapsed = asyncio.run(drive())
    return {
        "mode": f"HTTP POST /v1/verify, {clients} aiohttp clients, a keep-alive connection"
        " each (closed loop, one request per attempt)",
        "transport": "HTTP",
        "loop": "closed",
        "concurrency": clients,
        "requests": len(latencies),
        "rate": len(latencies) / elapsed,
        **percentiles(latencies),
        "ok_share": outcomes.count("OK") / max(1, len(outcomes)),
        "http_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "cores_busy": cores,
    }


class _Spread:
    """Places gateway connections evenly over the server processes: SO_REUSEPORT hashes
    each connection to one process, and two connections land on the same one half the
    time, which would measure one process rather than the server. A connection that lands
    on a process that already has its share is to be closed and opened again."""

    def __init__(self, server_pid: int, port: int, workers: int, connections: int) -> None:
        self.server_pid, self.port = server_pid, port
        self.share = -(-connections // workers)
        self.taken: dict[int, int] = {}
        self.known: set[int] = set()

    def admits_newest(self) -> bool:
        """Whether this process's newest connection to the port is kept (and counted)."""
        client_port, worker = worker_of_new_connection(self.server_pid, self.port, self.known)
        if self.taken.get(worker, 0) >= self.share:
            return False
        self.taken[worker] = self.taken.get(worker, 0) + 1
        self.known.add(client_port)
        return True


async def balanced_clients(
    server_pid: int,
    port: int,
    workers: int,
    connections: int,
    linger: float,
    max_in_flight: int,
) -> list[Any]:
    """``connections`` asyncio gateway clients, each on a connection of its own, spread
    evenly over the server processes (see :class:`_Spread`)."""
    from sls_core.client import AsyncSlsClient

    spread = _Spread(server_pid, port, workers, connections)
    clients: list[Any] = []
    for _attempt in range(connections * 20):
        if len(clients) == connections:
            break
        client = AsyncSlsClient(
            f"127.0.0.1:{port}",
            timeout=10.0,
            linger=linger,
            max_in_flight=max_in_flight,
            channel_options=[("grpc.use_local_subchannel_pool", 1)],
            stream=STREAM,
        )
        await client.wait_ready(timeout=10.0)
        if spread.admits_newest():
            clients.append(client)
        else:
            await client.close()
            await asyncio.sleep(0.05)  # let the closed connection leave the table
    return clients


def balanced_sync_clients(
    server_pid: int, port: int, workers: int, connections: int
) -> list[SlsClient]:
    """:func:`balanced_clients` for blocking clients (VerifyBatch gateways)."""
    spread = _Spread(server_pid, port, workers, connections)
    clients: list[SlsClient] = []
    for _attempt in range(connections * 20):
        if len(clients) == connections:
            break
        client = SlsClient(
            f"127.0.0.1:{port}",
            timeout=60.0,
            linger=0,
            channel_options=[("grpc.use_local_subchannel_pool", 1)],
        )
        client.wait_ready(timeout=10.0)
        if spread.admits_newest():
            clients.append(client)
        else:
            client.close()
            time.sleep(0.05)  # let the closed connection leave the table
    return clients


def run_open_loop(
    server_pid: int,
    workers: int,
    port: int,
    load: tuple[list[str], list[str], list[str]],
    rate: float,
    seconds: float,
    linger: float,
    max_in_flight: int,
    connections: int,
    phases: ServerPhases | None = None,
) -> dict[str, Any]:
    """Open loop: logins arrive at ``rate`` per second (Poisson arrivals, as users press
    Enter independently), whether or not earlier ones were answered, spread over
    ``connections`` gateways (each an ``AsyncSlsClient`` on a connection of its own, so the
    server's processes share them). A closed loop would hide a slow server by slowing its
    own arrivals; this one reports the latency a user sees at that load."""
    import asyncio

    from sls_core.client import AsyncSlsClient

    users, tokens, responses = load
    count = min(len(users), int(rate * seconds))
    gaps = np.random.default_rng(5).exponential(1.0 / rate, count)
    due = np.cumsum(gaps).tolist()
    latencies: list[float] = []
    since_due: list[float] = []
    starts: list[float] = []
    late: list[float] = []
    cores: dict[str, str] = {}
    waited: dict[str, str] = {}
    outcomes: list[int] = []
    timed: dict[str, Any] = {}
    batch_sent: dict[str, tuple[float, float]] = {}
    client_waits: list[float] = []
    trips: list[float] = []

    async def drive() -> float:
        clients = await balanced_clients(
            server_pid, port, workers, connections, linger, max_in_flight
        )
        if phases is not None:
            phases.collect()  # what came before this run (the warm-up) is left out
        untimed = [_time_batches(client, batch_sent) for client in clients]

        async def login(i: int, client: AsyncSlsClient) -> None:
            started = time.perf_counter()
            verdict = await client.verify(users[i], tokens[i], responses[i])
            now = time.perf_counter()
            latencies.append(now - started)
            since_due.append(now - began - due[i])
            starts.append(started - began)
            outcomes.append(int(verdict.outcome))
            sent = batch_sent.pop(tokens[i], None)
            if sent is not None:  # split: waiting in the gateway, then its batch's trip
                client_waits.append(sent[0] - started)
                trips.append(sent[1] - sent[0])

        tasks = []
        used_before = cpu_seconds(server_pid)
        queued_before = run_queue_seconds(server_pid)
        began = time.perf_counter()
        for i in range(count):
            wait = began + due[i] - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            # How far behind its schedule the generator started this login (its own lag).
            late.append(time.perf_counter() - began - due[i])
            tasks.append(asyncio.ensure_future(login(i, clients[i % connections])))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
        cores.update(cpu_share(used_before, cpu_seconds(server_pid), elapsed))
        waited.update(cpu_share(queued_before, run_queue_seconds(server_pid), elapsed))
        if phases is not None:
            timed.update(phases.collect())
        for client, restore in zip(clients, untimed, strict=True):
            restore()
            await client.close()
        return elapsed

    elapsed = asyncio.run(drive())
    return {
        "mode": f"single Verify, open loop at {rate:,.0f}/s offered, {connections} gateway"
        f" connections (client micro-batching, max_in_flight {max_in_flight})",
        "transport": "gRPC",
        "loop": "open",
        "requests": len(latencies),
        "offered": rate,
        "rate": len(latencies) / elapsed,
        **percentiles(latencies),
        "generator_late_p99": float(np.percentile(np.array(late) * 1e3, 99)),
        # From the moment each login was due, not from when the generator got to it.
        "since_due": percentiles(since_due),
        # A login's latency, split: waiting in its gateway until its micro-batch left
        # (behind the batch in flight), then that batch's round trip to the server.
        **({"gateway_wait": percentiles(client_waits)} if client_waits else {}),
        **({"batch_round_trip": percentiles(trips)} if trips else {}),
        # The worst latency in each 100 ms of the run: where the tail comes from.
        "worst_per_100ms": _worst_per_window(starts, latencies, 0.1),
        "ok_share": outcomes.count(LoginOutcome.OK) / max(1, len(outcomes)),
        "cores_busy": cores,
        # Threads ready to run but waiting for a CPU, in CPU-seconds per second.
        "run_queue_wait": waited,
        **({"server_phases": timed} if timed else {}),
    }


def _time_batches(client: Any, sent: dict[str, tuple[float, float]]) -> Callable[[], None]:
    """Notes when each micro-batch of ``client`` left and came back, by challenge token
    (each token is verified once): the gateway's own split of a login's latency. Wraps
    the client's batch call (its private ``_batcher._rpc``): a measuring aid of this
    benchmark only, which changes nothing of what is sent; returns what unwraps it."""
    batcher = getattr(client, "_batcher", None)
    if batcher is None:
        return lambda: None
    rpc = batcher._rpc

    async def timed(request: Any, *, timeout: float) -> Any:
        left = time.perf_counter()
        try:
            return await rpc(request, timeout=timeout)
        finally:
            back = time.perf_counter()
            for token in request.tokens:
                sent[token] = (left, back)

    batcher._rpc = timed

    def restore() -> None:
        batcher._rpc = rpc

    return restore


def _worst_per_window(starts: list[float], latencies: list[float], window: float) -> list[float]:
    slot = (np.array(starts) / window).astype(int)
    worst = np.zeros(slot.max() + 1 if len(slot) else 0)
    np.maximum.at(worst, slot, np.array(latencies) * 1e3)
    return [round(float(w), 2) for w in worst]


def run_batch(
    server_pid: int,
    workers: int,
    port: int,
    loads: list[tuple[list[str], list[str], list[str]]],
    connections: int,
    in_flight: int,
) -> dict[str, Any]:
    """VerifyBatch calls over ``connections`` gateway connections (SO_REUSEPORT gives each
    connection to one server process), each keeping ``in_flight`` calls outstanding: a
    gateway builds its next batch while the server verifies the last one."""
    latencies: list[float] = []
    items = 0
    lock = threading.Lock()
    slots = connections * in_flight
    shares = [loads[k::slots] for k in range(slots)]
    clients = balanced_sync_clients(server_pid, port, workers, connections)

    def gateway(client: SlsClient, share: list[tuple[list[str], list[str], list[str]]]) -> None:
        nonlocal items
        for users, tokens, responses in share:
            started = time.perf_counter()
            result = client.verify_batch(users, tokens, responses)
            with lock:
                latencies.append(time.perf_counter() - started)
                items += len(result.outcomes)

    threads = [
        threading.Thread(target=gateway, args=(clients[k % connections], share))
        for k, share in enumerate(shares)
    ]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    for client in clients:
        client.close()
    return {
        "mode": f"VerifyBatch ({connections} connections, {in_flight} calls in flight each)",
        "requests": len(latencies),
        "items": items,
        "elapsed": elapsed,
        "latencies": latencies,
    }


def run_in_process(
    work: Workload, loads: list[tuple[list[str], list[str], list[str]]]
) -> dict[str, Any]:
    items = 0
    began = time.perf_counter()
    for users, tokens, responses in loads:
        items += len(work.sls.verify_batch(users, tokens, responses).outcomes)
    elapsed = time.perf_counter() - began
    return {"mode": "in-process SecureLogin.verify_batch", "items": items, "elapsed": elapsed}


def run_side_by_side(
    server_pid: int,
    port: int,
    work: Workload,
    batch_loads: list[tuple[list[str], list[str], list[str]]],
    local_loads: list[tuple[list[str], list[str], list[str]]],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """VerifyBatch through the server and the same work in this process, in alternating
    rounds, so that a noisy neighbour on a shared machine weighs on both sides alike."""
    rounds = max(1, min(args.rounds, len(batch_loads), len(local_loads)))
    served: list[dict[str, Any]] = []
    local: list[dict[str, Any]] = []
    for k in range(rounds):
        served.append(
            run_batch(
                server_pid,
                args.workers,
                port,
                batch_loads[k::rounds],
                args.connections,
                args.in_flight,
            )
        )
        local.append(run_in_process(work, local_loads[k::rounds]))
    rows = []
    for parts in (served, local):
        items = sum(p["items"] for p in parts)
        row = {
            "mode": parts[0]["mode"],
            "items": items,
            "rate": items / sum(p["elapsed"] for p in parts),
        }
        if "latencies" in parts[0]:
            latencies = [x for p in parts for x in p["latencies"]]
            row |= {"requests": len(latencies), **percentiles(latencies)}
        rows.append(row)
    return rows


def render(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "## Load test, gRPC and HTTP/JSON (127.0.0.1)",
        "",
        f"{args.workers} server processes; {args.users:,} users (device mix); 1% wrong and 1%"
        f" malformed answers; gRPC clients micro-batch over {args.transport_name} with"
        f" max_in_flight {args.max_in_flight}"
        f" (threads: linger {args.linger * 1e3:g} ms); HTTP clients send one request per"
        f" attempt; VerifyBatch of {args.batch:,}. Load average {args.load_before} before,"
        f" {args.load_after} after (1/5/15 min). {_pinning(args)} Plot: `loadtest.png`.",
        "",
        "| mode | requests | attempts/s | p50 ms | p95 ms | p99 ms | p99.9 ms | cores busy |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        p = [f"{r[k]:.2f}" if k in r else "—" for k in ("p50", "p95", "p99", "p99.9")]
        cores = ", ".join(
            f"{name.replace('server process', 'server')} {busy}"
            for name, busy in r.get("cores_busy", {}).items()
            if float(busy) >= 0.05
        )
        lines.append(
            f"| {r['mode']} | {r.get('requests', '—')} | {r['rate']:,.0f} | {' | '.join(p)}"
            f" | {cores or '—'} |"
        )
    batch = next((r for r in rows if r["mode"].startswith("VerifyBatch")), None)
    local = next((r for r in rows if r["mode"].startswith("in-process")), None)
    opened_runs = [r for r in rows if r.get("loop") == "open"]
    closed_runs = [r for r in rows if "asyncio gateways" in r["mode"]]
    http_runs = [r for r in rows if r.get("transport") == "HTTP"]
    lines.append("")
    if batch and local:
        lines.append(
            f"VerifyBatch end to end is {batch['rate'] / local['rate']:.0%} of the in-process"
            " store-backed rate, measured in alternating rounds (target ≥ 80%)."
        )
    for closed in closed_runs:
        met = closed["rate"] >= 5000 and closed["p99"] <= 2.0
        lines.append(
            f"Single Verify, closed loop, {closed['mode'].split(', ')[1].split(' asyncio')[0]}"
            f" asyncio gateways: {closed['rate']:,.0f} requests/s with p99 {closed['p99']:.2f} ms"
            f" (target ≥ 5,000/s with p99 ≤ 2 ms: {'met' if met else 'not met'})."
        )
    grpc_at = {r["concurrency"]: r for r in closed_runs}
    for http in http_runs:
        same = grpc_at.get(http["concurrency"])
        beside = (
            f" (gRPC with as many asyncio gateways: {same['rate']:,.0f}/s, p99"
            f" {same['p99']:.2f} ms)"
            if same
            else ""
        )
        lines.append(
            f"Single verify over HTTP/JSON, closed loop, {http['concurrency']} clients:"
            f" {http['rate']:,.0f} requests/s with p99 {http['p99']:.2f} ms{beside}."
        )
    for opened in opened_runs:
        waited = opened.get("run_queue_wait", {})
        queued = ", ".join(
            f"{name.replace('server process', 'server')} {share}"
            for name, share in waited.items()
            if float(share) >= 0.01
        )
        target = ""
        if opened["offered"] == OPEN_LOOP_TARGET_RATE:
            met = opened["p99"] < OPEN_LOOP_TARGET_P99_MS
            target = (
                f" (target p99 < {OPEN_LOOP_TARGET_P99_MS:g} ms at"
                f" {OPEN_LOOP_TARGET_RATE:,.0f}/s: {'met' if met else 'not met'})"
            )
        lines.append(
            f"Single Verify, open loop at {opened['offered']:,.0f} logins/s offered: answered"
            f" {opened['rate']:,.0f}/s with p50 {opened['p50']:.2f} ms, p99"
            f" {opened['p99']:.2f} ms{target}, p99.9 {opened['p99.9']:.2f} ms; the generator"
            f" itself ran p99 {opened['generator_late_p99']:.2f} ms behind its schedule"
            f" (timed from when each login was due, p99 {opened['since_due']['p99']:.2f} ms);"
            f" waiting for a CPU (run queue, CPU-s/s): {queued or 'none'}."
        )
    for opened in opened_runs:
        if "server_phases" in opened:
            lines += ["", *render_phases(opened)]
    return "\n".join(lines) + "\n"


#: Issue 14's target for random arrivals.
OPEN_LOOP_TARGET_RATE = 5000.0
OPEN_LOOP_TARGET_P99_MS = 3.0

#: What each debug-timing phase measures, in the order a batch meets them.
PHASE_MEANINGS = {
    "coalescing queue wait": "a single Verify call waiting for the batch before it",
    "thread queue wait": "a batch waiting for a worker thread",
    "batch before audit": "locks, BEGIN, kernel checks, settling replay and lockout",
    "audit lock wait": "hashing the lines and waiting for the audit file lock",
    "audit append": "chaining the seal and writing the lines",
    "batch commit after audit": "COMMIT (with any WAL checkpoint) and unlocking",
    "batch run (inline)": "a whole batch run on the event loop",
    "batch run (thread)": "a whole batch run on a worker thread",
    "batch run (inline, refused: writer busy)": "an inline try that found the writer busy",
    "loop wake-up after thread": "from a thread's return to the loop resuming the call",
    "batch server time (inline)": "a stream message, server side, run on the loop",
    "batch server time (thread)": "a stream message, server side, run on a thread",
    "event loop lag": "how late a 2 ms timer fires (the loop busy or off its CPU)",
}


def render_phases(row: dict[str, Any]) -> list[str]:
    """The server's debug timing of one open-loop run as a table (milliseconds; each
    percentile the worst of the server processes, counts summed)."""
    timed = row["server_phases"]
    lines = [
        f"Where the time goes at {row['offered']:,.0f}/s offered (server debug timing,"
        f" {timed['processes']} processes; percentiles the worst process's):",
        "",
        "| phase | what | count | total ms | p50 ms | p99 ms | p99.9 ms | max ms | ≥ 1 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    phases = timed["phases"]
    order = [*PHASE_MEANINGS, *sorted(set(phases) - set(PHASE_MEANINGS))]
    for phase in order:
        if phase not in phases:
            continue
        st = phases[phase]
        what = PHASE_MEANINGS.get(phase, "pause of the whole process" if "gc" in phase else "")
        lines.append(
            f"| {phase} | {what} | {st['count']:,} | {st['total_ms']:,.1f} | {st['p50_ms']:.3f}"
            f" | {st['p99_ms']:.3f} | {st['p99.9_ms']:.3f} | {st['max_ms']:.3f}"
            f" | {st.get('over_1ms', 0):,} |"
        )
    return lines


def _pinning(args: argparse.Namespace) -> str:
    if not args.pin:
        return "Load generator and server on any of the CPUs (not pinned)."
    generator, server = (",".join(map(str, sorted(cpus))) for cpus in args.pin)
    return f"Load generator pinned to CPU {generator}, server processes to CPU {server}."


def plot(rows: Sequence[dict[str, Any]], args: argparse.Namespace, path: Path) -> bool:
    """Latency percentiles against load, one line per transport and percentile: closed-loop
    runs at the rate their clients reached (labelled with their count), open-loop runs at
    the rate offered. False (and no file) when no run fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        "gRPC, asyncio gateways (closed loop)": (
            [r for r in rows if "asyncio gateways" in r["mode"]],
            "tab:blue",
            "rate",
        ),
        "HTTP/JSON, aiohttp clients (closed loop)": (
            [r for r in rows if r.get("transport") == "HTTP"],
            "tab:orange",
            "rate",
        ),
        "gRPC, Poisson arrivals (open loop)": (
            [r for r in rows if r.get("loop") == "open"],
            "tab:green",
            "offered",
        ),
    }
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter

    styles: tuple[tuple[str, Any, str], ...] = (
        ("p50", "-", "o"),
        ("p95", "--", "s"),
        ("p99", ":", "^"),
    )
    figure, axis = plt.subplots(figsize=(11, 6))
    drawn: list[Line2D] = []
    for name, (runs, color, x_key) in series.items():
        runs = sorted(runs, key=lambda r: float(r[x_key]))
        if not runs:
            continue
        xs = [float(r[x_key]) for r in runs]
        for key, style, marker in styles:
            axis.plot(xs, [r[key] for r in runs], style, marker=marker, color=color)
        drawn.append(Line2D([], [], color=color, linewidth=3, label=name))
        for r, x in zip(runs, xs, strict=True):
            note = f"{r['concurrency']} clients" if "concurrency" in r else "offered"
            axis.annotate(
                note,
                (x, r["p99"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
                color=color,
            )
    if not drawn:
        plt.close(figure)
        return False
    axis.set_yscale("log")
    # Plain milliseconds (1, 2, 5, 10) on the log axis rather than powers of ten.
    axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    axis.set_xlim(left=0)
    axis.set_xlabel(
        "load, single verifications per second (closed loop: reached by N clients, labelled;"
        " open loop: offered)"
    )
    axis.set_ylabel("latency, ms (log scale)")
    axis.grid(True, which="both", alpha=0.3)
    # Colour says which run, line style which percentile: two short legends beside the axes.
    runs_legend = axis.legend(
        handles=drawn, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="runs"
    )
    axis.add_artist(runs_legend)
    axis.legend(
        handles=[
            Line2D([], [], color="black", linestyle=style, marker=marker, label=key)
            for key, style, marker in styles
        ],
        fontsize=9,
        loc="upper left",
        bbox_to_anchor=(1.01, 0.6),
        title="latency",
    )
    shared = "the load generator on its own" if args.pin else "shared with the load generator"
    axis.set_title(
        f"sls-core serve on 127.0.0.1, {args.workers} server processes, {os.cpu_count()} CPUs"
        f" {shared}"
    )
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--gateways", type=int, default=64)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="sls-core serve processes (default: one per CPU the server may use, the pinned"
        " ones with --pin, as a deployment runs one per core)",
    )
    parser.add_argument("--users", type=parse_size, default=10_000)
    parser.add_argument("--batch", type=parse_size, default=10_000)
    parser.add_argument("--batches", type=int, default=48)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating VerifyBatch / in-process rounds"
    )
    parser.add_argument("--linger", type=float, default=0.0005)
    parser.add_argument(
        "--connections", type=int, default=2, help="VerifyBatch gateway connections"
    )
    parser.add_argument(
        "--in-flight", type=int, default=1, help="VerifyBatch calls outstanding per connection"
    )
    parser.add_argument(
        "--async-gateways",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[4, 8, 16],
        help="asyncio gateways, one closed-loop run for each count in the list",
    )
    parser.add_argument(
        "--rate",
        type=lambda text: [float(n) for n in text.split(",")],
        default=[5000.0],
        help="open loop: logins/s, one open-loop run for each rate in the list",
    )
    parser.add_argument(
        "--http-clients",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[4, 8, 16],
        help="HTTP clients (keep-alive connections), one closed-loop run for each count",
    )
    parser.add_argument(
        "--open-connections",
        type=int,
        default=1,
        help="open loop: gateway connections, spread over the server processes (one, as"
        " the closed loop's --async-connections: each connection carries one micro-batch"
        " at a time, and two would split the arrivals into twice the batches)",
    )
    parser.add_argument(
        "--async-connections",
        type=int,
        default=1,
        help="asyncio gateways: connections they share, spread over the server processes",
    )
    parser.add_argument("--max-in-flight", type=int, default=1, help="client batches in flight")
    parser.add_argument(
        "--transport",
        choices=("stream", "batch"),
        default="stream",
        help="client micro-batches as VerifyStream messages or VerifyBatch calls",
    )
    parser.add_argument(
        "--modes",
        default="open,threads,async,http,batch",
        help="which of open, threads, async, http, batch (with its in-process rate) to run",
    )
    parser.add_argument(
        "--pin",
        type=parse_pin,
        default=None,
        metavar="GENERATOR/SERVER",
        help="run the load generator and the server on disjoint CPUs, e.g. 0/1 on 2 cores"
        " (default: none, both anywhere)",
    )
    parser.add_argument(
        "--debug-phases",
        action="store_true",
        help="open loop: the server times where each batch spends its time"
        " (SLS_CORE_DEBUG_PHASES) and the report breaks the latency down",
    )
    parser.add_argument(
        "--server",
        choices=("sls-core", "floor"),
        default="sls-core",
        help="open loop: against sls-core serve, or against benches/stream_floor.py, which"
        " answers at once without any domain work (what gRPC and asyncio cost here)",
    )
    parser.add_argument(
        "--floor-work-us",
        type=float,
        default=0.0,
        help="--server floor: busy CPU per message before it answers, microseconds",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = default_workers(args.pin)
    floor = args.server == "floor"
    if floor and (set(args.modes.split(",")) != {"open"} or args.debug_phases):
        parser.error("--server floor: only --modes open, without --debug-phases")
    if not 0 <= args.floor_work_us <= 100_000 or (args.floor_work_us and not floor):
        parser.error("--floor-work-us: between 0 and 100000, with --server floor")
    global STREAM
    STREAM = args.transport == "stream"
    args.transport_name = "one VerifyStream per client" if STREAM else "VerifyBatch calls"
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    anywhere = os.sched_getaffinity(0)
    try:
        with tempfile.TemporaryDirectory(prefix="sls-load-") as tmp:
            data = Path(tmp) / "data"
            progress(f"enrolling {args.users:,} users (load average {args.load_before}) ...")
            work = Workload(data, args.users)
            modes = set(args.modes.split(","))
            unknown = modes - {"open", "threads", "async", "http", "batch"}
            if unknown:
                parser.error(f"--modes: unknown {', '.join(sorted(unknown))}")
            progress("issuing challenges and computing the answers ...")
            none: tuple[list[str], list[str], list[str]] = ([], [], [])
            single_load = work.attempts(int(args.seconds * 10_000)) if "threads" in modes else none
            sweep = args.async_gateways if "async" in modes else []
            async_loads = [work.attempts(int(args.seconds * 8_000)) for _ in sweep]
            args.async_gateways = sweep
            args.http_clients = args.http_clients if "http" in modes else []
            # HTTP answers one request per attempt: fewer a second than gRPC's micro-batches.
            http_loads = [work.attempts(int(args.seconds * 4_000)) for _ in args.http_clients]
            args.rate = args.rate if "open" in modes else []
            open_loads = [work.attempts(int(args.seconds * rate) + 1) for rate in args.rate]
            batches = args.batches if "batch" in modes else 0
            batch_loads = [work.attempts(args.batch) for _ in range(batches)]
            local_loads = [work.attempts(args.batch) for _ in range(batches)]
            # The prepared attempts are a few hundred thousand objects that live to the end: out
            # of the collector's sight, so that a full collection does not stall the gateways
            # for tens of milliseconds in the middle of a measurement.
            gc.freeze()
            port, http_port = free_port(), free_port()
            env = {}
            if args.debug_phases:
                env["SLS_CORE_DEBUG_PHASES"] = str(Path(tmp) / "phases")
            if floor:
                progress("starting benches/stream_floor.py (no domain work) ...")
                args.workers = 1
                server = start_floor_server(
                    port,
                    Path(tmp) / "server.log",
                    work_us=args.floor_work_us,
                    cpus=args.pin[1] if args.pin else None,
                )
            else:
                progress(f"starting sls-core serve ({args.workers} processes) ...")
                server = start_server(
                    data,
                    port,
                    http_port,
                    args.workers,
                    Path(tmp) / "server.log",
                    env=env,
                    cpus=args.pin[1] if args.pin else None,
                )
            if args.pin:
                pin_threads(os.getpid(), args.pin[0])
            phases = ServerPhases(Path(tmp) / "phases", server.pid, port) if env else None
            try:
                if floor:
                    wait_floor_ready(port)
                else:
                    wait_ready(port, http_port)
                    # Warm-up, untimed: each server process loads its directory on first use.
                    with SlsClient(f"127.0.0.1:{port}", timeout=60.0, linger=0) as client:
                        for users, tokens, responses in [work.attempts(500) for _ in range(4)]:
                            client.verify_batch(users, tokens, responses)
                    work.sls.verify_batch(*work.attempts(500))
                rows = []
                for rate, load in zip(args.rate, open_loads, strict=True):
                    progress(f"open loop, {rate:,.0f} logins/s offered, {args.seconds:g} s ...")
                    row = run_open_loop(
                        server.pid,
                        args.workers,
                        port,
                        load,
                        rate,
                        args.seconds,
                        args.linger,
                        args.max_in_flight,
                        args.open_connections,
                        phases,
                    )
                    row["server"] = args.server
                    row["pin"] = [sorted(cpus) for cpus in args.pin] if args.pin else None
                    if floor:
                        row["mode"] += ", floor server: no domain work" + (
                            f", {args.floor_work_us:g} µs busy per message"
                            if args.floor_work_us
                            else ""
                        )
                    rows.append(row)
                if "threads" in modes:
                    progress(f"closed loop, {args.gateways} gateway threads ...")
                    rows.append(
                        run_single(
                            port,
                            single_load,
                            args.gateways,
                            args.seconds / 2,
                            args.linger,
                        )
                    )
                for gateways, load in zip(args.async_gateways, async_loads, strict=True):
                    progress(f"closed loop, {gateways} asyncio gRPC gateways ...")
                    rows.append(
                        run_single_async(
                            server.pid,
                            args.workers,
                            port,
                            load,
                            gateways,
                            args.seconds / 2,
                            args.linger,
                            args.max_in_flight,
                            args.async_connections,
                        )
                    )
                for clients, load in zip(args.http_clients, http_loads, strict=True):
                    progress(f"closed loop, {clients} HTTP clients ...")
                    rows.append(run_http(server.pid, http_port, load, clients, args.seconds / 2))
                if "batch" in modes:
                    progress(f"VerifyBatch and in-process verify_batch, {args.rounds} rounds ...")
                    rows += run_side_by_side(server.pid, port, work, batch_loads, local_loads, args)
            finally:
                server.terminate()
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
    finally:
        pin_threads(os.getpid(), anywhere)  # run inside a test: the rest runs anywhere
    args.load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(rows, args)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loadtest.md").write_text(text)
    if plot(rows, args, args.out / "loadtest.png"):
        progress(f"wrote {args.out / 'loadtest.png'}")
    (args.out / "loadtest.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "args": vars(args)
                | {
                    "out": str(args.out),
                    "pin": [sorted(cpus) for cpus in args.pin] if args.pin else None,
                },
                "cpu_count": os.cpu_count(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
