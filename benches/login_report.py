"""Store-backed login verification: attempts per second with replay and lockout enforced
and durable, next to the kernel-only rate of the same work, measured in one run.

Run it from the project root with the virtualenv's Python (``make bench`` does)::

    python benches/login_report.py [--out DIR] [--devices 1k 1M] [--batch 100k] [--quick]

For each number of enrolled DSC+ devices (each user one device, suite
``OCRA-1:HOTP-SHA1-8:QN06-PSHA1``, secrets and PIN hashes AES-GCM encrypted in the SQLite
store), it issues a batch of login challenges to random users, computes the right answers
(plus 1% wrong ones and 1% malformed ones, so lockout counting and the malformed path run
too), then times ``SecureLogin.verify_batch`` (store-backed: token check, directory, kernel,
replay and lockout in one transaction, committed) against ``ocra.verify_batch`` on the same
keys, questions and responses (kernel only), interleaved, best of k samples, fresh
challenges for every store-backed sample (a challenge verifies once). Writes
``DIR/login.md`` and ``DIR/login.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sls_core import default_threads, ocra
from sls_core.clock import ManualClock
from sls_core.devices import DeviceType
from sls_core.login import SecureLogin
from sls_core.outcome import LoginOutcome

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
PIN = "2580"
TARGET = 300_000.0


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


class Scenario:
    """A store with ``devices`` enrolled users and batches of attempts against it."""

    def __init__(self, root: Path, devices: int, batch: int, seed: int = 7) -> None:
        self.clock = ManualClock()
        self.rng = np.random.default_rng(seed)
        self.names = [f"user{i}" for i in range(devices)]
        self.secrets = [self.rng.bytes(20) for _ in range(devices)]
        started = time.perf_counter()
        setup = SecureLogin.open(root, clock=self.clock)
        setup.enroll_bulk(self.names, DeviceType.DSC_PLUS, self.secrets, pins=[PIN] * devices)
        self.enroll_seconds = time.perf_counter() - started
        started = time.perf_counter()
        # A second service, as another server process would be: it loads the directory.
        self.sls = SecureLogin.open(root, clock=self.clock)
        self.sls.user(self.names[0])
        self.load_seconds = time.perf_counter() - started
        self.batch = batch
        self.pin_hash = hashlib.sha1(PIN.encode()).digest()  # noqa: S324 - the suite's PIN hash

    def attempts(self) -> tuple[list[str], list[str], list[str], list[bytes], list[str]]:
        """Users, tokens, responses, keys and questions of one fresh batch."""
        pick = self.rng.integers(0, len(self.names), self.batch)
        users = [self.names[i] for i in pick]
        challenges = self.sls.issue_challenges(users)
        keys = [self.secrets[i] for i in pick]
        questions = [c.challenge or "" for c in challenges]
        codes = ocra.compute_batch(SUITE, keys, questions, pin_hashes=[self.pin_hash] * self.batch)
        responses = [c.decode() for c in codes]
        for i in self.rng.choice(self.batch, self.batch // 50, replace=False).tolist():
            if i % 2:
                responses[i] = f"{(int(responses[i]) + 1) % 10**8:08d}"  # wrong
            else:
                responses[i] = responses[i][:4] + " " + responses[i][4:]  # malformed
        return users, [c.token for c in challenges], responses, keys, questions


def run(devices: int, batch: int, samples: int, root: Path) -> dict[str, Any]:
    scenario = Scenario(root, devices, batch)
    store_times: list[float] = []
    kernel_times: list[float] = []
    counts: dict[str, int] = {}
    for _ in range(samples):
        users, tokens, responses, keys, questions = scenario.attempts()
        started = time.perf_counter()
        result = scenario.sls.verify_batch(users, tokens, responses)
        store_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        kernel = ocra.verify_batch(
            SUITE, keys, questions, responses, pin_hashes=[scenario.pin_hash] * batch
        )
        kernel_times.append(time.perf_counter() - started)
        # The same verdicts, or the comparison means nothing.
        ok_store = result.outcomes == LoginOutcome.OK
        if not np.array_equal(ok_store, kernel == 0):
            raise SystemExit("store-backed and kernel-only verdicts differ")
        counts = {
            LoginOutcome(int(k)).name: int(v)
            for k, v in zip(*np.unique(result.outcomes, return_counts=True), strict=True)
        }
        scenario.clock.advance(1)
    store_rate = batch / min(store_times)
    kernel_rate = batch / min(kernel_times)
    return {
        "devices": devices,
        "batch": batch,
        "samples": samples,
        "store_attempts_per_s": store_rate,
        "kernel_attempts_per_s": kernel_rate,
        "store_share_of_kernel": store_rate / kernel_rate,
        "enroll_seconds": scenario.enroll_seconds,
        "directory_load_seconds": scenario.load_seconds,
        "outcomes_last_sample": counts,
    }


def render(rows: Sequence[dict[str, Any]], threads: int) -> str:
    lines = [
        "## Store-backed login verification (SQLite, replay + lockout durable)",
        "",
        f"Batches of attempts, {threads} kernel threads; best of k samples; `attempts/s`.",
        "",
        "| enrolled devices | batch | store-backed | kernel only | store / kernel |"
        " target ≥ 300k/s | enroll | directory load |",
        "|---:|---:|---:|---:|---:|:--|---:|---:|",
    ]
    for r in rows:
        met = "met" if r["store_attempts_per_s"] >= TARGET else "not met"
        lines.append(
            f"| {size_label(r['devices'])} | {size_label(r['batch'])} "
            f"| {r['store_attempts_per_s'] / 1e3:,.0f}k | {r['kernel_attempts_per_s'] / 1e6:.2f}M "
            f"| {r['store_share_of_kernel']:.1%} | {met} | {r['enroll_seconds']:.1f} s "
            f"| {r['directory_load_seconds']:.1f} s |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--devices", nargs="+", default=["1k", "1M"])
    parser.add_argument("--batch", default="100k")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1k devices, 10k attempts")
    args = parser.parse_args(argv)
    devices = [1_000] if args.quick else [parse_size(d) for d in args.devices]
    batch = 10_000 if args.quick else parse_size(args.batch)
    rows = []
    for n in devices:
        with tempfile.TemporaryDirectory(prefix="sls-bench-") as tmp:
            print(f"  {size_label(n)} devices, batches of {size_label(batch)} ...", flush=True)
            rows.append(run(n, batch, args.samples, Path(tmp)))
    text = render(rows, default_threads())
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "login.md").write_text(text)
    (args.out / "login.json").write_text(
        json.dumps({"rows": rows, "cpu_count": os.cpu_count(), "python": sys.version}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
