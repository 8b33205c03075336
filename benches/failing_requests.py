"""Do failing requests stall the logins of other processes? (issue 11, finding 1)

Run it from the project root with the virtualenv's Python::

    python benches/failing_requests.py [--devices 200k] [--seconds 6] [--rate 100] [--out DIR]

With DEVICES enrolled DSC+ users in one SQLite store, a *login* process verifies single
logins back to back (issue a challenge, answer it right: two write transactions each) and
records each login's latency, for SECONDS, twice: once alone, once while a *noise* process
sharing the store sends RATE requests a second that fail inside a write transaction
(challenges for usernames that do not exist). Before the fix, each failure made the noise
process's next write reload the whole directory under the write lock (seconds at 200k
devices) and every login waited; now a failure rolls back only what it wrote. The report
gives p50/p99/max of both runs and the p99 ratio (target: about 1, within the noise).
Writes ``DIR/failing_requests.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sls_core import ocra
from sls_core.devices import DeviceType
from sls_core.errors import InvalidInputError
from sls_core.login import SecureLogin

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
PIN = "4711"


def parse_size(text: str) -> int:
    text = text.lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def _secret(i: int) -> bytes:
    return i.to_bytes(4, "big") * 5


def _noise(root: str, rate: float, stop_at: float, ready: Any) -> None:
    """Failing requests at ``rate`` a second until ``stop_at`` (time.time())."""
    sls = SecureLogin.open(root)
    sls.warm()
    ready.set()
    n, start = 0, time.time()
    while time.time() < stop_at:
        # Refused inside a write transaction: "username: no such user".
        with contextlib.suppress(InvalidInputError):
            sls.issue_challenge(f"nosuchuser{n}")
        n += 1
        time.sleep(max(0.0, start + n / rate - time.time()))


def _logins(sls: SecureLogin, users: int, seconds: float) -> list[float]:
    rng = np.random.default_rng(3)
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        i = int(rng.integers(users))
        began = time.perf_counter()
        c = sls.issue_challenge(f"user{i}")
        answer = ocra.compute(SUITE, _secret(i), question=c.challenge or "", pin=PIN)
        verdict = sls.verify(f"user{i}", c.token, answer)
        latencies.append(time.perf_counter() - began)
        assert verdict.ok, verdict.outcome
    return latencies


def _summary(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000.0
    return {
        "logins": float(len(ms)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def run(devices: int, seconds: float, rate: float, root: Path) -> dict[str, Any]:
    setup = SecureLogin.open(root)
    names = [f"user{i}" for i in range(devices)]
    started = time.perf_counter()
    setup.enroll_bulk(
        names, DeviceType.DSC_PLUS, [_secret(i) for i in range(devices)], pins=[PIN] * devices
    )
    enroll = time.perf_counter() - started
    setup.store.close()
    sls = SecureLogin.open(root)
    sls.warm()
    quiet = _summary(_logins(sls, devices, seconds))
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    noise = ctx.Process(target=_noise, args=(str(root), rate, time.time() + seconds + 60, ready))
    noise.start()
    try:
        ready.wait(120)
        loaded = _summary(_logins(sls, devices, seconds))
    finally:
        noise.terminate()
        noise.join()
    return {
        "devices": devices,
        "seconds": seconds,
        "noise_rate_per_s": rate,
        "enroll_s": enroll,
        "alone": quiet,
        "with_failing_requests": loaded,
        "p99_ratio": loaded["p99_ms"] / quiet["p99_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=parse_size, default=parse_size("200k"))
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{args.devices} devices, {args.seconds} s per run ...", file=sys.stderr)
        result = run(args.devices, args.seconds, args.rate, Path(tmp) / "data")
    alone, loaded = result["alone"], result["with_failing_requests"]
    lines = [
        "## Logins while another process sends failing requests",
        "",
        f"{args.devices:,} DSC+ devices in one SQLite store; single logins (challenge + "
        f"answer) back to back for {args.seconds:g} s; noise: {args.rate:g} failing "
        "requests/s (unknown usernames) from a second process. `os.cpu_count()` = "
        f"{os.cpu_count()}.",
        "",
        "| run | logins | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
        f"| alone | {alone['logins']:.0f} | {alone['p50_ms']:.2f} | {alone['p99_ms']:.2f} "
        f"| {alone['max_ms']:.1f} |",
        f"| with failing requests | {loaded['logins']:.0f} | {loaded['p50_ms']:.2f} | "
        f"{loaded['p99_ms']:.2f} | {loaded['max_ms']:.1f} |",
        "",
        f"p99 with failing requests / alone: {result['p99_ratio']:.2f} (target: about 1).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failing_requests.md").write_text(report)
    (args.out / "failing_requests.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
