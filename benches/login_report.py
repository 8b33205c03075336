"""Store-backed login verification: attempts per second with replay and lockout enforced
and durable, next to the kernel-only rate of the same work, measured in one run.

Run it from the project root with the virtualenv's Python (``make bench`` does)::

    python benches/login_report.py [--out DIR] [--devices 1k 1M] [--batch 100k]
        [--stores sqlite postgresql] [--sqlite-synchronous NORMAL|FULL] [--rounds 5] [--quick]

For each store and number of enrolled DSC+ devices (each user one device, suite
``OCRA-1:HOTP-SHA1-8:QN06-PSHA1``, secrets and PIN hashes AES-GCM encrypted in the store),
it issues a batch of login challenges to random users, computes the right answers (plus 1%
wrong ones and 1% malformed ones, so lockout counting and the malformed path run too), then
times ``SecureLogin.verify_batch`` (store-backed: token check, directory, kernel, replay and
lockout in one transaction, committed) against ``ocra.verify_batch`` on the same keys,
questions and responses (kernel only), alternated (which goes first swaps every round),
fresh challenges for every store-backed round (a challenge verifies once). The ratio
store / kernel is taken per round (the two runs of a round are seconds apart, so a busy
machine slows both); the table gives its min and median and the 0.25 target (issue 14).

``postgresql`` starts a private, durable PostgreSQL (``scripts/pg_local.py``: fsync and
synchronous commit on) for the run and stops it after. Writes ``DIR/login.md`` and
``DIR/login.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from sls_core import default_threads, ocra
from sls_core.clock import ManualClock
from sls_core.devices import DeviceType
from sls_core.login import SecureLogin
from sls_core.outcome import LoginOutcome
from sls_core.sealing import MasterKeyRing
from sls_core.store import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
PIN = "2580"
#: Store-backed attempts/s over kernel-only attempts/s of the same work (issue 14).
TARGET_RATIO = 0.25


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

    def __init__(
        self,
        root: Path,
        devices: int,
        batch: int,
        seed: int = 7,
        *,
        store: str | None = None,
        synchronous: str | None = None,
    ) -> None:
        self.clock = ManualClock()
        self.rng = np.random.default_rng(seed)
        self.names = [f"user{i}" for i in range(devices)]
        self.secrets = [self.rng.bytes(20) for _ in range(devices)]
        started = time.perf_counter()
        setup = open_service(root, self.clock, store, synchronous)
        setup.enroll_bulk(self.names, DeviceType.DSC_PLUS, self.secrets, pins=[PIN] * devices)
        self.enroll_seconds = time.perf_counter() - started
        started = time.perf_counter()
        # A second service, as another server process would be: it loads the directory.
        self.sls = open_service(root, self.clock, store, synchronous)
        self.sls.user(self.names[0])
        self.load_seconds = time.perf_counter() - started
        setup.store.close()
        self.batch = batch
        self.pin_hash = hashlib.sha1(PIN.encode()).digest()  # noqa: S324 - the suite's PIN hash

    def close(self) -> None:
        self.sls.store.close()

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


def timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``call``'s result and how long it took (seconds)."""
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return result, time.perf_counter() - started


def open_service(
    root: Path, clock: ManualClock, store: str | None, synchronous: str | None
) -> SecureLogin:
    """``SecureLogin.open`` on ``root`` (SQLite) or ``store`` (a PostgreSQL URL); with
    ``synchronous``, SQLite opened with that setting instead of the store's default."""
    if store is not None or synchronous is None:
        return SecureLogin.open(root, clock=clock, store=store)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file = root / "master-key.json"
    if key_file.exists():
        keyring = MasterKeyRing.load(key_file=key_file)
    else:
        keyring = MasterKeyRing.generate_file(key_file)
    backend = SqliteStore(root / "sls.db", keyring=keyring, synchronous=synchronous)
    return SecureLogin(backend, clock=clock)


def run(
    devices: int,
    batch: int,
    rounds: int,
    root: Path,
    *,
    store: str | None = None,
    synchronous: str | None = None,
) -> dict[str, Any]:
    scenario = Scenario(root, devices, batch, store=store, synchronous=synchronous)
    store_times: list[float] = []
    kernel_times: list[float] = []
    counts: dict[str, int] = {}
    try:
        for round_no in range(rounds):
            users, tokens, responses, keys, questions = scenario.attempts()
            pin_hashes = [scenario.pin_hash] * batch

            # Alternate which goes first: neither always gets the warmer (or colder) cache.
            if round_no % 2:
                kernel, kernel_seconds = timed(
                    ocra.verify_batch, SUITE, keys, questions, responses, pin_hashes=pin_hashes
                )
                result, store_seconds = timed(scenario.sls.verify_batch, users, tokens, responses)
            else:
                result, store_seconds = timed(scenario.sls.verify_batch, users, tokens, responses)
                kernel, kernel_seconds = timed(
                    ocra.verify_batch, SUITE, keys, questions, responses, pin_hashes=pin_hashes
                )
            store_times.append(store_seconds)
            kernel_times.append(kernel_seconds)
            # The same verdicts, or the comparison means nothing.
            ok_store = result.outcomes == LoginOutcome.OK
            if not np.array_equal(ok_store, kernel == 0):
                raise SystemExit("store-backed and kernel-only verdicts differ")
            counts = {
                LoginOutcome(int(k)).name: int(v)
                for k, v in zip(*np.unique(result.outcomes, return_counts=True), strict=True)
            }
            scenario.clock.advance(1)
    finally:
        scenario.close()
    ratios = [k / s for s, k in zip(store_times, kernel_times, strict=True)]
    return {
        "store": "postgresql" if store is not None else "sqlite",
        "durability": (
            "fsync, synchronous_commit=on"
            if store is not None
            else f"WAL, synchronous={synchronous or 'NORMAL'}"
        ),
        "devices": devices,
        "batch": batch,
        "rounds": rounds,
        "store_attempts_per_s": batch / min(store_times),
        "kernel_attempts_per_s": batch / min(kernel_times),
        "store_attempts_per_s_median": batch / statistics.median(store_times),
        "kernel_attempts_per_s_median": batch / statistics.median(kernel_times),
        "store_seconds_per_round": store_times,
        "kernel_seconds_per_round": kernel_times,
        "ratio_per_round": ratios,
        "ratio_min": min(ratios),
        "ratio_median": statistics.median(ratios),
        "target_ratio": TARGET_RATIO,
        "met": statistics.median(ratios) >= TARGET_RATIO,
        "enroll_seconds": scenario.enroll_seconds,
        "directory_load_seconds": scenario.load_seconds,
        "outcomes_last_round": counts,
        "load_average": os.getloadavg(),
    }


def render(rows: Sequence[dict[str, Any]], threads: int) -> str:
    lines = [
        "## Store-backed login verification (replay + lockout durable)",
        "",
        f"Batches of attempts, {threads} kernel threads; store / kernel is the ratio of the"
        " two rates within each round (min and median over the rounds); rates are the"
        " median rounds; `met` when the median ratio reaches the target.",
        "",
        "| store | enrolled devices | batch | store-backed | kernel only "
        f"| store / kernel min | median | target ≥ {TARGET_RATIO:.2f} | enroll | directory load |",
        "|:--|---:|---:|---:|---:|---:|---:|:--|---:|---:|",
    ]
    for r in rows:
        store = f"{r['store']} ({r['durability']})"
        lines.append(
            f"| {store} | {size_label(r['devices'])} | {size_label(r['batch'])} "
            f"| {r['store_attempts_per_s_median'] / 1e3:,.0f}k "
            f"| {r['kernel_attempts_per_s_median'] / 1e6:.2f}M "
            f"| {r['ratio_min']:.2f} | {r['ratio_median']:.2f} "
            f"| {'met' if r['met'] else 'not met'} | {r['enroll_seconds']:.1f} s "
            f"| {r['directory_load_seconds']:.1f} s |"
        )
    return "\n".join(lines) + "\n"


def pg_local() -> ModuleType:
    """scripts/pg_local.py, imported by path (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location("pg_local", ROOT / "scripts" / "pg_local.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """A durable private PostgreSQL (no ``--fast``) for this run: its URL."""
    local = pg_local()
    # Not a TemporaryDirectory: the server runs as the postgres user when we are root.
    directory = Path(tempfile.mkdtemp(prefix="sls-pg-login-"))
    try:
        yield local.start(directory, fast=False)
    finally:
        local.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


def fresh_schema(url: str, name: str) -> str:
    """A new empty schema in ``url``'s database, and the URL that uses it."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return f"{url}?options={urllib.parse.quote(f'-csearch_path={name}')}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--devices", nargs="+", default=["1k", "1M"])
    parser.add_argument("--batch", default="100k")
    parser.add_argument("--stores", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite"])
    parser.add_argument(
        "--sqlite-synchronous",
        choices=["NORMAL", "FULL"],
        help="SQLite's synchronous setting (default: the store's own, NORMAL)",
    )
    parser.add_argument("--rounds", "--samples", type=int, default=5, dest="rounds")
    parser.add_argument("--quick", action="store_true", help="1k devices, 10k attempts")
    args = parser.parse_args(argv)
    devices = [1_000] if args.quick else [parse_size(d) for d in args.devices]
    batch = 10_000 if args.quick else parse_size(args.batch)
    rows = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(private_postgres()) if "postgresql" in args.stores else None
        for kind in args.stores:
            for n in devices:
                print(
                    f"  {kind}: {size_label(n)} devices, batches of {size_label(batch)} ...",
                    flush=True,
                )
                with tempfile.TemporaryDirectory(prefix="sls-bench-") as tmp:
                    url = None
                    if kind == "postgresql":
                        assert server is not None
                        url = fresh_schema(server, f"login_{size_label(n).lower()}")
                    synchronous = args.sqlite_synchronous if kind == "sqlite" else None
                    rows.append(
                        run(n, batch, args.rounds, Path(tmp), store=url, synchronous=synchronous)
                    )
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
