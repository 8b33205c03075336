"""Single-verify rate over HTTP/JSON beside gRPC, against one `sls-core serve` process
(plaintext on loopback, the embedded store): N DSC+ users, challenges issued first, then
`--calls` single Verify calls with `--concurrency` in flight, each answered correctly once.

    .venv/bin/python scripts/http_verify_rate.py --calls 4000 --concurrency 64

Prints calls/s and latency percentiles per protocol. A measurement, not a benchmark suite
(benches/loadtest.py is the load test)."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc.aio

from sls_core.api.v1 import verification_pb2, verification_pb2_grpc
from sls_core.devices import DeviceType
from sls_core.login import SecureLogin
from sls_core.simulator import dsc_response

SECRET = bytes(range(1, 21))
PIN = "4711"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _challenges(stub: verification_pb2_grpc.VerificationServiceStub, users: int, n: int):
    out = []
    for i in range(n):
        name = f"u{i % users}"
        c = await stub.IssueChallenge(verification_pb2.IssueChallengeRequest(username=name))
        out.append((name, c.token, dsc_response(SECRET, PIN, c.challenge)))
    return out


async def _run(calls, concurrency, one) -> tuple[float, list[float]]:
    queue = list(calls)
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            item = queue.pop()
            t = time.perf_counter()
            assert await one(*item) == "OK"
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, sorted(latencies)


def _server_cpu(pid: int) -> float:
    """The server process's CPU seconds (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _report(name: str, seconds: float, latencies: list[float], cpu: float) -> None:
    n = len(latencies)

    def p(q: float) -> float:
        return latencies[min(n - 1, int(q * n))] * 1000

    print(
        f"{name:5s} {n / seconds:8.0f} verifies/s   p50 {p(0.5):6.2f} ms   "
        f"p99 {p(0.99):6.2f} ms   server CPU {cpu / n * 1e6:5.0f} us/call   ({n} calls)"
    )


async def _measure(
    pid: int, grpc_address: str, http_base: str, users: int, calls: int, conc: int
) -> None:
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        stub = verification_pb2_grpc.VerificationServiceStub(channel)

        async def by_grpc(name: str, token: str, response: str) -> str:
            answer = await stub.Verify(
                verification_pb2.VerifyRequest(username=name, token=token, response=response)
            )
            return "OK" if answer.outcome == 1 else str(answer.outcome)

        connector = aiohttp.TCPConnector(limit=conc)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def by_http(name: str, token: str, response: str) -> str:
                body = {"username": name, "token": token, "response": response}
                async with session.post(f"{http_base}/v1/verify", json=body) as answer:
                    return str((await answer.json())["outcome"])

            for name, one in (("grpc", by_grpc), ("http", by_http)) * 2:
                work = await _challenges(stub, users, calls)
                cpu = _server_cpu(pid)
                seconds, latencies = await _run(work, conc, one)
                _report(name, seconds, latencies, _server_cpu(pid) - cpu)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        sls = SecureLogin.open(data)
        for i in range(args.users):
            sls.create_user(f"u{i}")
            sls.enroll_device(f"u{i}", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
        sls.store.close()
        grpc_port, http_port = _port(), _port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sls_core.server",
                "serve",
                "--data-dir",
                str(data),
                "--listen",
                f"127.0.0.1:{grpc_port}",
                "--http-listen",
                f"127.0.0.1:{http_port}",
                "--log-level",
                "WARNING",
            ],
            env=dict(os.environ),
        )
        try:
            end = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", http_port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > end or server.poll() is not None:
                        raise SystemExit("server did not start") from None
                    time.sleep(0.1)
            asyncio.run(
                _measure(
                    server.pid,
                    f"127.0.0.1:{grpc_port}",
                    f"http://127.0.0.1:{http_port}",
                    args.users,
                    args.calls,
                    args.concurrency,
                )
            )
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
