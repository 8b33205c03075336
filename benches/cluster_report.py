"""Several sls_core nodes on one PostgreSQL store (issue 12): how fast PostgreSQL itself
consumes challenge ids once, how many store-backed attempts a second 1, 2, 3 nodes settle
together, and how long a node takes to start with a million enrolled devices.

Run it from the project root with the virtualenv's Python::

    python benches/cluster_report.py [--out DIR] [--devices 100k] [--batch 10k 100k]
        [--nodes 1 2 3] [--seconds 3] [--cold-devices 1M] [--cold-rounds 3]
        [--cold-baseline DIR] [--cold-only] [--profile] [--smoke]

It starts a private PostgreSQL (``scripts/pg_local.py``, durable: fsync and synchronous
commit on) in a temporary directory, stops and removes it at the end, and measures:

1. **Raw consume-once rate**: one connection consumes ``--raw-ids`` fresh challenge ids in
   batches of each ``--batch`` size, one committed transaction per batch, into a table of
   one row per id with a primary key and an expiry index (the plain way in SQL, and the
   store's ``consumed`` until schema 10 began keeping 64 ids a row), (a) COPY into a temporary
   table then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING``, (b) one
   ``INSERT ... SELECT unnest(%s::bigint[]) ... ON CONFLICT DO NOTHING RETURNING``; median
   of ``--raw-rounds`` rounds, the two methods interleaved.
2. **Store-backed attempts/s**: ``--devices`` DSC+ devices enrolled in bulk; for each
   batch size and each number of nodes, that many processes (multiprocessing, spawn), each
   with its own ``SecureLogin`` on the store, issue their challenges and compute the right
   answers first (untimed), then all call ``SecureLogin.verify_batch`` (replay and lockout
   committed) back to back for ``--seconds``. Aggregate attempts/s counts, over the window
   in which every node was busy, each batch's attempts pro rata to its overlap with the
   window. Also the ratio to the raw rate of the same batch size (target ≥ 0.70 from 10k
   on), each node's CPU seconds per attempt (``time.process_time``: every thread of the
   node) and PostgreSQL's (utime + stime of the postmaster and its children from /proc,
   before and after).
3. **Cold start** (issue 14): ``--cold-devices`` devices enrolled by
   ``SecureLogin.enroll_bulk`` on PostgreSQL and on SQLite; then ``--cold-rounds`` fresh
   processes are started one after another and each timed from its launch until its
   directory answers (interpreter and imports, ``SecureLogin.open``, ``warm()``, one
   lookup), against the target of ``COLD_TARGET_S_PER_MILLION`` seconds per million
   devices. ``--cold-baseline DIR`` (another checkout's ``python/`` folder, its extension
   built) starts a node on that code before each round's, for a before/after ratio taken
   side by side; ``--cold-only`` measures nothing else.

``--profile`` adds, after the figures, one node per batch size under cProfile while
PostgreSQL logs every statement's duration (``log_min_duration_statement = 0``, parameters
not logged; reset afterwards), and a directory load (``warm()``) under cProfile; its
figures are not in the table. It writes the statements' summed durations and the top
functions to ``DIR/cluster-profile-<batch>.txt`` and ``DIR/cluster-profile-warm.txt``.
``--smoke`` runs everything at tiny sizes (seconds; for a test). Writes ``DIR/cluster.md``,
``DIR/cluster.json`` and ``DIR/cluster.png`` (attempts/s against node count and batch size,
the raw consume-once rates as reference lines); never logs a secret (secrets are derived
from the device number).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import importlib.util
import io
import json
import math
import multiprocessing
import os
import pstats
import queue
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from login_report import parse_size, size_label
from sls_core import default_threads, ocra
from sls_core.devices import DeviceType
from sls_core.login import SecureLogin
from sls_core.outcome import LoginOutcome

ROOT = Path(__file__).resolve().parent.parent
SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
PIN = "2580"
PIN_HASH = hashlib.sha1(PIN.encode()).digest()  # noqa: S324 - the suite's PIN hash
TARGET_RATIO = 0.70
#: Challenges are issued in slices of this many (one write transaction each), so that
#: nodes preparing at the same time take turns at the write lock.
ISSUE_SLICE = 10_000
#: How long to wait for a node to get ready (directory load, issuing its challenges).
NODE_TIMEOUT = 900.0


def pg_local() -> ModuleType:
    """scripts/pg_local.py, imported by path (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location("pg_local", ROOT / "scripts" / "pg_local.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def schema_url(url: str, schema: str) -> str:
    """``url`` with ``search_path`` set to ``schema``: one database, several stores."""
    return f"{url}?options={urllib.parse.quote(f'-csearch_path={schema}')}"


def device_secret(i: int) -> bytes:
    """Device ``i``'s OCRA key: derived, so every process knows it without being sent it."""
    return hashlib.sha256(b"cluster-bench:%d" % i).digest()[:20]


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": sys.version.split()[0]}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def postgres_cpu(cluster: Path) -> float:
    """CPU seconds (user + system) of the postmaster, its live children and its reaped
    ones (``cutime``/``cstime``), from /proc."""
    postmaster = int((cluster / "postmaster.pid").read_text().split()[0])
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is the state (field 3)
        pid, ppid = int(entry), int(fields[1])
        if pid == postmaster:
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _wait_for(
    inbox: Any, count: int, procs: Sequence[Any], what: str, timeout: float = NODE_TIMEOUT
) -> list[Any]:
    """``count`` messages from ``inbox``; fails early if a process died."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            got.append(inbox.get(timeout=1.0))
            continue
        except queue.Empty:
            pass
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead:
            raise SystemExit(f"a node died while {what} (exit code {dead[0].exitcode})")
        if time.monotonic() > deadline:
            raise SystemExit(f"nodes still {what} after {timeout:g} s")
    return got


# -- 1. raw consume-once ----------------------------------------------------------------


class RawConsumer:
    """One connection consuming fresh challenge ids into a copy of ``consumed``."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url)
        self.conn.execute("CREATE SCHEMA IF NOT EXISTS bench_raw")
        self.conn.execute("DROP TABLE IF EXISTS bench_raw.consumed")
        # One row per id, index included: the store's consumed table up to schema 9.
        self.conn.execute(
            "CREATE TABLE bench_raw.consumed ("
            " challenge_id BIGINT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL)"
        )
        self.conn.execute("CREATE INDEX ON bench_raw.consumed(expires_at)")
        self.conn.execute(
            "CREATE TEMPORARY TABLE incoming (challenge_id BIGINT, expires_at DOUBLE PRECISION)"
            " ON COMMIT DELETE ROWS"
        )
        self.conn.commit()
        self.next_id = 1
        self.expires_at = time.time() + 900.0

    def settings(self) -> dict[str, str]:
        rows = {}
        for name in ("server_version", "synchronous_commit", "fsync", "shared_buffers"):
            row = self.conn.execute(f"SHOW {name}").fetchone()
            rows[name] = str(row[0]) if row else "?"
        self.conn.commit()
        return rows

    def fresh(self, n: int) -> list[int]:
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        return ids

    def copy_insert(self, ids: list[int]) -> int:
        with self.conn.cursor() as cur:
            with cur.copy("COPY incoming (challenge_id, expires_at) FROM STDIN") as copy:
                for challenge_id in ids:
                    copy.write_row((challenge_id, self.expires_at))
            cur.execute(
                "INSERT INTO bench_raw.consumed SELECT challenge_id, expires_at FROM incoming"
                " ON CONFLICT DO NOTHING RETURNING challenge_id"
            )
            taken = len(cur.fetchall())
        self.conn.commit()
        return taken

    def unnest_insert(self, ids: list[int]) -> int:
        taken = len(
            self.conn.execute(
                "INSERT INTO bench_raw.consumed (challenge_id, expires_at)"
                " SELECT unnest(%s::bigint[]), %s ON CONFLICT DO NOTHING RETURNING challenge_id",
                (ids, self.expires_at),
            ).fetchall()
        )
        self.conn.commit()
        return taken

    def rate(self, method: Callable[[list[int]], int], total: int, batch: int) -> float:
        """Ids consumed per second: ``total`` fresh ids in committed batches of ``batch``."""
        batches = [self.fresh(min(batch, total - s)) for s in range(0, total, batch)]
        started = time.perf_counter()
        for ids in batches:
            if method(ids) != len(ids):
                raise SystemExit("a fresh id was not consumed")
        return total / (time.perf_counter() - started)

    def close(self) -> None:
        self.conn.close()


def measure_raw(
    raw: RawConsumer, cluster: Path, batch: int, total: int, rounds: int
) -> dict[str, Any]:
    """Both methods at one batch size, interleaved; median rates, and the CPU per id of
    this client and of PostgreSQL over every round."""
    row: dict[str, Any] = {"batch": batch, "ids": total}
    for name in ("copy", "unnest"):
        row[f"{name}_rounds"] = []
        row[f"{name}_client_cpu_s"] = row[f"{name}_postgres_cpu_s"] = 0.0
    for _ in range(rounds):
        for name, method in (("copy", raw.copy_insert), ("unnest", raw.unnest_insert)):
            pg_before, cpu_before = postgres_cpu(cluster), time.process_time()
            row[f"{name}_rounds"].append(raw.rate(method, total, batch))
            row[f"{name}_client_cpu_s"] += time.process_time() - cpu_before
            row[f"{name}_postgres_cpu_s"] += postgres_cpu(cluster) - pg_before
    for name in ("copy", "unnest"):
        row[f"{name}_ids_per_s"] = statistics.median(row[f"{name}_rounds"])
        ids = total * rounds
        row[f"{name}_client_us_per_id"] = 1e6 * row[f"{name}_client_cpu_s"] / ids
        row[f"{name}_postgres_us_per_id"] = 1e6 * row[f"{name}_postgres_cpu_s"] / ids
    progress(
        f"raw, batches of {size_label(batch)}: COPY {row['copy_ids_per_s']:,.0f} ids/s,"
        f" unnest {row['unnest_ids_per_s']:,.0f} ids/s (load {load_average()})"
    )
    return row


# -- 2. store-backed, several nodes -----------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    index: int
    data_dir: str
    url: str
    devices: int
    batch: int
    batches: int
    seconds: float
    profile_to: str | None = None


Attempts = tuple[list[str], list[str], list[str]]


def _prepare(sls: SecureLogin, spec: NodeSpec, size: int, rng: np.random.Generator) -> Attempts:
    """One batch of right answers to fresh login challenges for random users."""
    pick = rng.integers(0, spec.devices, size)
    users = [f"user{i}" for i in pick.tolist()]
    challenges = []
    for start in range(0, size, ISSUE_SLICE):
        challenges += sls.issue_challenges(users[start : start + ISSUE_SLICE])
    codes = ocra.compute_batch(
        SUITE,
        [device_secret(i) for i in pick.tolist()],
        [c.challenge or "" for c in challenges],
        pin_hashes=[PIN_HASH] * size,
    )
    return users, [c.token for c in challenges], [c.decode() for c in codes]


def _node(spec: NodeSpec, ready: Any, go: Any, start_at: Any, results: Any, finish: Any) -> None:
    """One node: its own SecureLogin on the shared store; prepares its batches, reports
    ready, and at ``start_at`` verifies them back to back for ``spec.seconds``."""
    sls = SecureLogin.open(spec.data_dir, store=spec.url)
    sls.warm()
    rng = np.random.default_rng(1_000 + spec.index)
    warm_up = _prepare(sls, spec, min(spec.batch, 1_000), rng)
    sls.verify_batch(*warm_up)  # first pool connections, first catch-up: not timed
    batches = [_prepare(sls, spec, spec.batch, rng) for _ in range(spec.batches)]
    ready.put(spec.index)
    go.wait()
    begin = start_at.value
    deadline = begin + spec.seconds
    while time.monotonic() < begin:
        time.sleep(0.0005)
    profiler = cProfile.Profile() if spec.profile_to else None
    spans: list[tuple[float, float, int]] = []
    outcomes = np.zeros(256, np.int64)
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = time.process_time()
    if profiler is not None:
        profiler.enable()
    for users, tokens, responses in batches:
        if time.monotonic() >= deadline:
            break
        began = time.monotonic()
        result = sls.verify_batch(users, tokens, responses)
        spans.append((began, time.monotonic(), len(users)))
        outcomes += np.bincount(result.outcomes, minlength=256)
    if profiler is not None:
        profiler.disable()
    cpu = time.process_time() - cpu_before
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if profiler is not None and spec.profile_to:
        profiler.dump_stats(spec.profile_to)
    results.put(
        {
            "node": spec.index,
            "spans": spans,
            "attempts": sum(n for _, _, n in spans),
            "exhausted": len(spans) == len(batches),
            "outcomes": {
                LoginOutcome(k).name: int(v) for k, v in enumerate(outcomes.tolist()) if v
            },
            "cpu_s": cpu,
            "user_s": usage.ru_utime - usage_before.ru_utime,
            "system_s": usage.ru_stime - usage_before.ru_stime,
            "threads": default_threads(),
        }
    )
    finish.wait(NODE_TIMEOUT)  # PostgreSQL's CPU is read while this node's connections still live
    sls.store.close()


def windowed_rate(reports: Sequence[dict[str, Any]], begin: float) -> tuple[float, float]:
    """(attempts/s, window seconds): attempts of every batch pro rata to its overlap with
    the window from ``begin`` to the moment the first node finished its last batch."""
    end = min(r["spans"][-1][1] for r in reports if r["spans"])
    counted = 0.0
    for r in reports:
        for s, e, n in r["spans"]:
            overlap = min(e, end) - max(s, begin)
            if overlap > 0:
                counted += n * overlap / (e - s)
    return counted / (end - begin), end - begin


def run_nodes(
    url: str,
    data_dir: Path,
    cluster: Path,
    *,
    devices: int,
    batch: int,
    nodes: int,
    seconds: float,
    max_rate: float,
    profile_to: Path | None = None,
    window: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """``nodes`` processes verifying at once; ``window``: called as it opens and closes."""
    per_node = math.ceil(seconds * max_rate / (nodes * batch)) + 1
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go, finish = ctx.Event(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = []
    for i in range(nodes):
        spec = NodeSpec(
            i,
            str(data_dir),
            url,
            devices,
            batch,
            per_node,
            seconds,
            str(profile_to) if profile_to is not None and i == 0 else None,
        )
        procs.append(ctx.Process(target=_node, args=(spec, ready, go, start_at, results, finish)))
    started = time.perf_counter()
    for p in procs:
        p.start()
    try:
        _wait_for(ready, nodes, procs, "getting ready")
        prepare_s = time.perf_counter() - started
        begin = time.monotonic() + 0.2
        start_at.value = begin
        if window is not None:
            window[0]()
        pg_before = postgres_cpu(cluster)
        go.set()
        reports = _wait_for(results, nodes, procs, "verifying")
        pg_cpu = postgres_cpu(cluster) - pg_before
        if window is not None:
            window[1]()
        pg_wall = max(r["spans"][-1][1] for r in reports if r["spans"]) - begin
        finish.set()
        for p in procs:
            p.join(60)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    reports.sort(key=lambda r: r["node"])
    rate, window_s = windowed_rate(reports, begin)
    attempts = sum(r["attempts"] for r in reports)
    node_cpu = sum(r["cpu_s"] for r in reports)
    ok = sum(r["outcomes"].get("OK", 0) for r in reports)
    return {
        "batch": batch,
        "nodes": nodes,
        "devices": devices,
        "seconds": seconds,
        "attempts_per_s": rate,
        "window_s": window_s,
        "attempts": attempts,
        "ok_share": ok / attempts if attempts else 0.0,
        "any_node_ran_out": any(r["exhausted"] for r in reports),
        "prepare_s": prepare_s,
        "node_cpu_us_per_attempt": 1e6 * node_cpu / attempts,
        "node_cores_busy": node_cpu / pg_wall,
        "postgres_cpu_us_per_attempt": 1e6 * pg_cpu / attempts,
        "postgres_cores_busy": pg_cpu / pg_wall,
        "postgres_cpu_s": pg_cpu,
        "wall_s": pg_wall,
        "per_node": [
            {
                "node": r["node"],
                "attempts": r["attempts"],
                "batches": len(r["spans"]),
                "cpu_us_per_attempt": 1e6 * r["cpu_s"] / max(r["attempts"], 1),
                "user_s": r["user_s"],
                "system_s": r["system_s"],
                "outcomes": r["outcomes"],
                "ran_out": r["exhausted"],
                "kernel_threads": r["threads"],
            }
            for r in reports
        ],
    }


def enroll(sls: SecureLogin, devices: int) -> float:
    """``devices`` DSC+ users, one device each, in one bulk enrollment; seconds taken."""
    names = [f"user{i}" for i in range(devices)]
    secrets = [device_secret(i) for i in range(devices)]
    started = time.perf_counter()
    sls.enroll_bulk(names, DeviceType.DSC_PLUS, secrets, pins=[PIN] * devices)
    return time.perf_counter() - started


def profile_summary(path: Path, limit: int = 30) -> str:
    """The top functions of a cProfile dump, by own time and by cumulative time."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


class StatementLog:
    """PostgreSQL's own duration of every statement (``log_min_duration_statement = 0``,
    parameters not logged) between :meth:`open` and :meth:`close`, summed by statement."""

    _LINE = re.compile(r"duration: ([0-9.]+) ms\s+(statement|parse|bind|execute)[^:]*: (.*)")

    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log = url, log
        self.start = self.end = 0

    def _set(self, enabled: bool) -> None:
        with psycopg_connection(self.url) as conn:
            for name, value in (
                ("log_min_duration_statement", "0"),
                ("log_parameter_max_length", "0"),
            ):
                if enabled:
                    conn.execute(f"ALTER SYSTEM SET {name} = {value}")
                else:
                    conn.execute(f"ALTER SYSTEM RESET {name}")
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)  # every backend reloads its configuration at its next command

    def __enter__(self) -> StatementLog:
        self._set(True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._set(False)

    def open(self) -> None:
        self.start = self.log.stat().st_size

    def close(self) -> None:
        self.end = self.log.stat().st_size

    def summary(self) -> list[dict[str, Any]]:
        with self.log.open("rb") as f:
            f.seek(self.start)
            text = f.read(self.end - self.start).decode(errors="replace")
        totals: dict[str, list[float]] = {}
        for line in text.splitlines():
            found = self._LINE.search(line)
            if found is None:
                continue
            ms, phase, statement = float(found[1]), found[2], " ".join(found[3].split())
            key = statement[:90]
            entry = totals.setdefault(key, [0.0, 0.0])
            entry[0] += ms
            if phase in ("statement", "execute"):
                entry[1] += 1
        rows = [{"statement": k, "total_ms": v[0], "count": int(v[1])} for k, v in totals.items()]
        return sorted(rows, key=lambda r: -float(r["total_ms"]))


# -- 3. cold start ----------------------------------------------------------------------


#: Issue 14: a node restarting during a login storm serves within this many seconds per
#: million enrolled devices, from start to ready.
COLD_TARGET_S_PER_MILLION = 5.0


def cold_node(data_dir: str, url: str | None, launched: float) -> dict[str, Any]:
    """In a fresh interpreter: open the store, load the directory, answer one lookup."""
    entered = time.time()
    sls = SecureLogin.open(data_dir, store=url)
    opened = time.time()
    sls.warm()
    warmed = time.time()
    sls.user("user0")  # the directory answers
    answered = time.time()
    sls.store.close()
    return {
        "ready_s": answered - launched,
        "interpreter_and_imports_s": entered - launched,
        "open_s": opened - entered,
        "warm_s": warmed - opened,
        "first_lookup_s": answered - warmed,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _start_cold_node(data_dir: Path, url: str | None, code: Path | None) -> dict[str, Any]:
    """A new process (this script with ``--cold-node``) timed from its launch until the
    directory answers; ``code``: another source tree's ``python/`` folder to run instead
    (with its extension built), for a before/after in one session."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    launched = time.time()
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, __file__, "--cold-node", str(data_dir), url or "-", repr(launched)],
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"a cold node failed:\n{done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def cold_start(
    data_dir: Path, url: str | None, devices: int, rounds: int, baseline: Path | None
) -> dict[str, Any]:
    """Enrolls ``devices`` once, then starts ``rounds`` fresh nodes on them (alternating
    with the ``baseline`` code when given: its ratio is taken round by round)."""
    name = "PostgreSQL" if url else "SQLite"
    progress(f"cold start, {name}: enrolling {size_label(devices)} devices (one bulk call) ...")
    setup = SecureLogin.open(data_dir, store=url)
    enroll_s = enroll(setup, devices)
    setup.store.close()
    progress(f"cold start, {name}: enrolled in {enroll_s:.1f} s; starting nodes ...")
    runs: list[dict[str, Any]] = []
    baseline_runs: list[dict[str, Any]] = []
    for _ in range(rounds):
        if baseline is not None:
            baseline_runs.append(_start_cold_node(data_dir, url, baseline))
            progress(f"cold start, {name}: baseline ready in {baseline_runs[-1]['ready_s']:.1f} s")
        runs.append(_start_cold_node(data_dir, url, None))
        progress(f"cold start, {name}: ready in {runs[-1]['ready_s']:.1f} s")
    ready = [r["ready_s"] for r in runs]
    best = min(runs, key=lambda r: float(r["ready_s"]))
    row: dict[str, Any] = {
        "store": name,
        "devices": devices,
        "enroll_s": enroll_s,
        **best,
        "ready_runs_s": ready,
        "ready_median_s": statistics.median(ready),
        "target_s_per_million": COLD_TARGET_S_PER_MILLION,
    }
    per_million = 1e6 / devices
    row["ready_s_per_million"] = row["ready_median_s"] * per_million
    row["target_met"] = row["ready_s_per_million"] <= COLD_TARGET_S_PER_MILLION
    if baseline_runs:
        ratios = [b["ready_s"] / a["ready_s"] for b, a in zip(baseline_runs, runs, strict=True)]
        row["baseline_ready_runs_s"] = [b["ready_s"] for b in baseline_runs]
        row["baseline_ready_median_s"] = statistics.median(row["baseline_ready_runs_s"])
        row["speedup_min"], row["speedup_median"] = min(ratios), statistics.median(ratios)
    return row


# -- report -----------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    m, pg = result["machine"], result["raw"]["settings"]
    raw = {r["batch"]: r for r in result["raw"]["rows"]}
    lines = [
        "## Several nodes on one PostgreSQL store",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}); load average"
        f" {result['load_before']} before the run, {result['load_after']} after (1/5/15 min;"
        " other jobs may share the CPUs). PostgreSQL"
        f" {pg['server_version']} on loopback, synchronous_commit={pg['synchronous_commit']},"
        f" fsync={pg['fsync']}, shared_buffers={pg['shared_buffers']}.",
        f"Command: `{result['command']}`.",
        "",
        f"### Raw consume-once rate (one connection, {size_label(result['raw_ids'])} fresh ids"
        " per round, one committed transaction per batch, median of rounds)",
        "",
        "COPY: COPY into a temporary table, then `INSERT … SELECT … ON CONFLICT DO NOTHING"
        " RETURNING`; unnest: `INSERT … SELECT unnest(%s::bigint[]) … ON CONFLICT DO NOTHING"
        " RETURNING`. CPU µs/id: this client's and every postgres process's.",
        "",
        "| batch | COPY + INSERT | client / PostgreSQL µs per id"
        " | unnest INSERT | client / PostgreSQL µs per id |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in result["raw"]["rows"]:
        lines.append(
            f"| {size_label(r['batch'])} | {r['copy_ids_per_s'] / 1e3:,.0f}k ids/s"
            f" | {r['copy_client_us_per_id']:.1f} / {r['copy_postgres_us_per_id']:.1f}"
            f" | {r['unnest_ids_per_s'] / 1e3:,.0f}k ids/s"
            f" | {r['unnest_client_us_per_id']:.1f} / {r['unnest_postgres_us_per_id']:.1f} |"
        )
    lines += [
        "",
        "### Store-backed `SecureLogin.verify_batch` on PostgreSQL"
        f" ({size_label(result['devices'])} DSC+ devices, right answers, replay and lockout"
        " committed)",
        "",
        "Each node a process with its own `SecureLogin`; all verify at once for"
        f" {result['seconds']:g} s. Ratios are to the raw rate at the same batch size (target"
        f" ≥ {TARGET_RATIO:.2f} against the faster raw method, from batches of 10k). CPU"
        " µs/attempt: the nodes' CPU (every thread) and every postgres process's, over the"
        " attempts; cores: CPU seconds over wall seconds.",
        "",
        "| batch | nodes | attempts/s | / raw COPY | / raw unnest | target"
        " | node CPU µs/attempt | PostgreSQL CPU µs/attempt | node cores | PostgreSQL cores"
        " | window |",
        "|---:|---:|---:|---:|---:|:--|---:|---:|---:|---:|---:|",
    ]
    for r in result["store_backed"]:
        base = raw[r["batch"]]
        to_copy = r["attempts_per_s"] / base["copy_ids_per_s"]
        to_unnest = r["attempts_per_s"] / base["unnest_ids_per_s"]
        best = max(base["copy_ids_per_s"], base["unnest_ids_per_s"])
        met = "met" if r["attempts_per_s"] / best >= TARGET_RATIO else "not met"
        if r["batch"] < 10_000:
            met = "n/a"
        note = " (a node ran out)" if r["any_node_ran_out"] else ""
        lines.append(
            f"| {size_label(r['batch'])} | {r['nodes']} | {r['attempts_per_s'] / 1e3:,.0f}k"
            f" | {to_copy:.2f} | {to_unnest:.2f} | {met}"
            f" | {r['node_cpu_us_per_attempt']:.1f} | {r['postgres_cpu_us_per_attempt']:.1f}"
            f" | {r['node_cores_busy']:.2f} | {r['postgres_cores_busy']:.2f}"
            f" | {r['window_s']:.1f} s{note} |"
        )
    if not result["raw"]["rows"] and not result["store_backed"]:  # --cold-only
        lines = lines[:7]
    lines += [
        "",
        "### Cold start: a node from start to ready (a new process: interpreter and"
        " imports, `SecureLogin.open`, `warm()`, one lookup)",
        "",
        f"Target (issue 14): ≤ {COLD_TARGET_S_PER_MILLION:g} s per million devices, start →"
        " ready (the median of the rounds, scaled to a million: meaningful from a million"
        " devices up, as a start also has a fixed cost of imports). The breakdown is that of"
        " the fastest round. With `--cold-baseline`, each round also starts a node on the"
        " baseline code first; speed-up: baseline ready over this code's ready, min / median"
        " over the rounds.",
        "",
        "| store | devices | bulk enrollment | start → ready (min / median) | per million"
        " | target | imports | open | warm | max RSS | baseline ready (median) | speed-up |",
        "|---|---:|---:|---:|---:|:--|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["cold_start"]:
        met = "met" if r["target_met"] else "not met"
        baseline, speedup = "-", "-"
        if "speedup_median" in r:
            baseline = f"{r['baseline_ready_median_s']:.1f} s"
            speedup = f"{r['speedup_min']:.1f}x / {r['speedup_median']:.1f}x"
        lines.append(
            f"| {r['store']} | {size_label(r['devices'])} | {r['enroll_s']:.1f} s"
            f" | {r['ready_s']:.1f} s / {r['ready_median_s']:.1f} s"
            f" | {r['ready_s_per_million']:.1f} s | {met} (≤ {r['target_s_per_million']:g} s)"
            f" | {r['interpreter_and_imports_s']:.1f} s | {r['open_s']:.2f} s"
            f" | {r['warm_s']:.1f} s | {r['max_rss_mb']:,.0f} MB | {baseline} | {speedup} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    """Store-backed attempts/s against node count (one line per batch size) and against
    batch size (one line per node count), with PostgreSQL's raw consume-once rates as
    reference lines: how far the whole store path is from what the store itself allows.
    False (and no file) when nothing was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows, raw = result["store_backed"], {r["batch"]: r for r in result["raw"]["rows"]}
    if not rows or not raw:
        return False
    batches = sorted({r["batch"] for r in rows})
    node_counts = sorted({r["nodes"] for r in rows})
    rate = {(r["batch"], r["nodes"]): r["attempts_per_s"] for r in rows}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    thousands = FuncFormatter(lambda y, _pos: f"{y / 1e3:,.0f}k")
    figure, (by_nodes, by_batch) = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)

    for k, batch in enumerate(batches):
        color = colors[k % len(colors)]
        points = [(n, rate[batch, n]) for n in node_counts if (batch, n) in rate]
        xs, ys = zip(*points, strict=True)
        by_nodes.plot(
            xs, ys, "-o", color=color, label=f"store-backed, batches of {size_label(batch)}"
        )
        if batch in raw:
            for key, style, method in (("copy", "--", "COPY + INSERT"), ("unnest", ":", "unnest")):
                by_nodes.axhline(
                    raw[batch][f"{key}_ids_per_s"],
                    color=color,
                    linestyle=style,
                    linewidth=1.2,
                    label=f"raw consume-once, {method}, batches of {size_label(batch)}",
                )
    by_nodes.set_xticks(node_counts)
    by_nodes.set_xlabel("nodes (processes, each its own SecureLogin on the same PostgreSQL)")
    by_nodes.set_ylabel("attempts (or ids) per second")
    by_nodes.set_title("against node count")

    for k, nodes in enumerate(node_counts):
        points = [(b, rate[b, nodes]) for b in batches if (b, nodes) in rate]
        xs, ys = zip(*points, strict=True)
        by_batch.plot(
            xs,
            ys,
            "-o",
            color=colors[(k + len(batches)) % len(colors)],
            label=f"store-backed, {nodes} node{'s' if nodes > 1 else ''}",
        )
    raw_batches = sorted(raw)
    for key, style, method in (("copy", "--", "COPY + INSERT"), ("unnest", ":", "unnest")):
        by_batch.plot(
            raw_batches,
            [raw[b][f"{key}_ids_per_s"] for b in raw_batches],
            style,
            marker="x",
            color="grey",
            label=f"raw consume-once, {method} (one connection)",
        )
    by_batch.set_xscale("log")
    by_batch.set_xticks(raw_batches, [size_label(b) for b in raw_batches])
    by_batch.minorticks_off()
    by_batch.set_xlabel("batch size (attempts per verify_batch call)")
    by_batch.set_title("against batch size")

    for axis in (by_nodes, by_batch):
        axis.yaxis.set_major_formatter(thousands)
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="lower left")
    m = result["machine"]
    figure.suptitle(
        f"SecureLogin.verify_batch on one PostgreSQL ({size_label(result['devices'])} devices,"
        f" durable commits), {m['nproc']} CPUs shared by nodes and PostgreSQL"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


@contextlib.contextmanager
def private_postgres() -> Iterator[tuple[str, Path]]:
    """A durable private PostgreSQL (no ``--fast``): its URL and cluster directory."""
    local = pg_local()
    # Not a TemporaryDirectory: the server runs as the postgres user when we are root.
    directory = Path(tempfile.mkdtemp(prefix="sls-pg-bench-"))
    try:
        url = local.start(directory, fast=False)
        yield url, directory / "cluster"
    finally:
        local.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


def profile_nodes(
    args: argparse.Namespace, url: str, data_dir: Path, cluster: Path
) -> dict[str, Any]:
    """One node per batch size under cProfile, with PostgreSQL's statement durations over
    the same window; and a directory load (``warm()``) under cProfile."""
    found: dict[str, Any] = {}
    for batch in args.batch:
        label = size_label(batch)
        dump = args.out / f"cluster-profile-{label}.prof"
        progress(f"profiling one node, batches of {label} ...")
        with StatementLog(url, cluster.parent / "postgres.log") as log:
            row = run_nodes(
                url,
                data_dir,
                cluster,
                devices=args.devices,
                batch=batch,
                nodes=1,
                seconds=args.seconds,
                max_rate=args.max_rate,
                profile_to=dump,
                window=(log.open, log.close),
            )
        statements = log.summary()
        lines = [f"{r['total_ms']:10.1f} ms {r['count']:6d}x  {r['statement']}" for r in statements]
        text = (
            f"One node, batches of {label}, {row['attempts']} attempts in"
            f" {row['wall_s']:.2f} s ({row['attempts_per_s']:,.0f}/s, under cProfile and"
            " statement logging)\n\nPostgreSQL statement durations (server side):\n"
            + "\n".join(lines[:25])
            + "\n\n"
            + profile_summary(dump)
        )
        (args.out / f"cluster-profile-{label}.txt").write_text(text)
        found[label] = {
            "attempts_per_s": row["attempts_per_s"],
            "wall_s": row["wall_s"],
            "statements": statements[:25],
            "text": str(args.out / f"cluster-profile-{label}.txt"),
        }
    progress(f"profiling warm() with {size_label(args.devices)} devices ...")
    sls = SecureLogin.open(data_dir, store=url)
    dump = args.out / "cluster-profile-warm.prof"
    started = time.perf_counter()
    cProfile.runctx("sls.warm()", {}, {"sls": sls}, str(dump))
    found["warm"] = {
        "seconds": time.perf_counter() - started,
        "text": str(dump.with_suffix(".txt")),
    }
    dump.with_suffix(".txt").write_text(profile_summary(dump))
    sls.store.close()
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--devices", type=parse_size, default=parse_size("100k"))
    parser.add_argument("--batch", nargs="+", type=parse_size, default=[10_000, 100_000])
    parser.add_argument("--nodes", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed window per run")
    parser.add_argument(
        "--max-rate",
        type=float,
        default=250_000.0,
        help="attempts/s the nodes together are prepared for (challenges issued ahead)",
    )
    parser.add_argument("--raw-ids", type=parse_size, default=parse_size("100k"))
    parser.add_argument("--raw-rounds", type=int, default=3)
    parser.add_argument("--cold-devices", type=parse_size, default=parse_size("1M"))
    parser.add_argument("--cold-rounds", type=int, default=3, help="fresh nodes per store")
    parser.add_argument(
        "--cold-baseline",
        type=Path,
        help="another checkout's python/ folder (extension built) started alternately",
    )
    parser.add_argument("--cold-only", action="store_true", help="only the cold start")
    parser.add_argument("--profile", action="store_true", help="also one cProfile'd node")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.devices, args.batch, args.nodes, args.seconds = 2_000, [1_000], [1, 2], 0.3
        args.max_rate, args.raw_ids, args.raw_rounds, args.cold_devices = 100_000, 2_000, 1, 2_000
        args.cold_rounds = 1
    if args.cold_only:
        args.batch, args.profile = [], False
    command = "python benches/cluster_report.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result: dict[str, Any] = {
        "command": command.strip(),
        "machine": machine(),
        "load_before": load_average(),
        "devices": args.devices,
        "seconds": args.seconds,
        "raw_ids": args.raw_ids,
        "raw": {"rows": []},
        "store_backed": [],
        "cold_start": [],
        "profiles": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    progress(f"load average {result['load_before']}; starting PostgreSQL ...")
    with private_postgres() as (url, cluster), tempfile.TemporaryDirectory() as tmp:
        with psycopg_connection(url) as conn:
            for schema in ("bench_raw", "nodes", "cold"):
                conn.execute(f"CREATE SCHEMA {schema}")
        raw = RawConsumer(schema_url(url, "bench_raw"))
        result["raw"]["settings"] = raw.settings()
        nodes_url, nodes_dir = schema_url(url, "nodes"), Path(tmp) / "nodes"
        if not args.cold_only:
            raw.rate(raw.copy_insert, 10_000, 10_000)  # warm-up, not counted
            raw.rate(raw.unnest_insert, 10_000, 10_000)
            setup = SecureLogin.open(nodes_dir, store=nodes_url)
            progress(f"enrolling {size_label(args.devices)} devices for the nodes ...")
            result["nodes_enroll_s"] = enroll(setup, args.devices)
            setup.store.close()
        for batch in args.batch:
            # The raw rate next to the store-backed runs it is compared with (shared CPUs).
            result["raw"]["rows"].append(
                measure_raw(raw, cluster, batch, args.raw_ids, args.raw_rounds)
            )
            for nodes in args.nodes:
                label = f"{nodes} node(s), batches of {size_label(batch)}"
                progress(f"{label}: preparing challenges ...")
                row = run_nodes(
                    nodes_url,
                    nodes_dir,
                    cluster,
                    devices=args.devices,
                    batch=batch,
                    nodes=nodes,
                    seconds=args.seconds,
                    max_rate=args.max_rate,
                )
                row["load_after"] = load_average()
                result["store_backed"].append(row)
                progress(
                    f"{label}: {row['attempts_per_s']:,.0f} attempts/s over"
                    f" {row['window_s']:.1f} s (prepared in {row['prepare_s']:.0f} s;"
                    f" load {row['load_after']})"
                )
        raw.close()
        if args.profile:
            result["profiles"] = profile_nodes(args, nodes_url, nodes_dir, cluster)
        for name, store_url in (("pg", schema_url(url, "cold")), ("sqlite", None)):
            row = cold_start(
                Path(tmp) / f"cold-{name}",
                store_url,
                args.cold_devices,
                args.cold_rounds,
                args.cold_baseline,
            )
            row["load_after"] = load_average()
            result["cold_start"].append(row)
    result["load_after"] = load_average()
    text = render(result)
    print(text)
    (args.out / "cluster.md").write_text(text)
    (args.out / "cluster.json").write_text(json.dumps(result, indent=2, default=str))
    if plot(result, args.out / "cluster.png"):
        progress(f"wrote {args.out / 'cluster.png'}")
    return 0


@contextlib.contextmanager
def psycopg_connection(url: str) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cold-node"]:  # one cold node (see _start_cold_node)
        data_dir, url, launched = sys.argv[2:5]
        print(json.dumps(cold_node(data_dir, None if url == "-" else url, float(launched))))
        raise SystemExit(0)
    raise SystemExit(main())
