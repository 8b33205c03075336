"""Side-by-side throughput report: sls_core against oath, pyotp and cryptography.

Run it from the project root with the virtualenv's Python (``make bench`` does)::

    python benches/report.py [--out DIR] [--quick] [--sizes 1 1k 100k 1M]

For each workload (OCRA scalar and batch verification, fresh key per item and prepared
``KeyTable``; HOTP and TOTP scalar and batch) it prints a Markdown table of verifications
per second for sls_core (one thread and every core) and for each peer, with the ratio,
the rate per core and the scaling from one thread to every core; then the performance
targets next to what was measured, marked met / not met (informational: the exit status
never depends on them). It writes ``DIR/results.json``, ``DIR/report.md`` and
``DIR/throughput.png`` (default ``DIR``: ``bench-results``); a line on stderr announces
each step (workload, batch size, contenders) with the seconds since the start.

How it times (the machine is assumed shared and noisy, so only ratios measured side by
side mean anything): every contender of a row runs once first and its answers are checked
(a wrong answer is a hard failure); then ``time.perf_counter`` times samples that each
repeat the call until it lasts ``--min-time`` seconds, the contenders interleaved in the
same loop so noise hits them alike, and the best of k samples counts (k = 5, or 3 from
1M items on). Peers run at most a capped prefix of a large batch (2,000 items for oath,
20,000 for pyotp and cryptography) and their per-item rate is extrapolated: a per-item
Python loop is linear in N. The largest rows also interleave a machine probe (hashlib
SHA-1, which releases the GIL, on one thread and on every core): on shared cores it says
how much scaling the machine allowed while that row ran.

``--quick`` (sizes 1, 1k, 20k, small samples, short timings) finishes in well under 30 s.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import sls_core
import workloads as wl

STARTED = time.perf_counter()
FULL_SIZES = (1, 1_000, 100_000, 1_000_000)
QUICK_SIZES = (1, 1_000, 20_000)
LARGE_BATCH = 1_000_000
"""From this many items on, k = 3 timed samples instead of 5."""

OCRA_FRESH = "batch, fresh key per item"
OCRA_PREPARED = "batch, prepared KeyTable"
OCRA_SCALAR_HASH = "scalar verify(), PIN hash"
OCRA_SCALAR_PIN = "scalar verify(), PIN"
KEYTABLE_BUILD = "KeyTable build (keys/s)"
OTP_BATCH = "batch, fresh key per item"
OTP_SCALAR = "scalar verify()"
MACHINE_PROBE = "machine probe: hashlib SHA-1"
MACHINE_PROBE_BYTES = 16 << 20
PEERS = {"ocra": ("oath",), "hotp": ("pyotp", "cryptography"), "totp": ("pyotp", "cryptography")}
PEER_COLORS = {"oath": "tab:red", "pyotp": "tab:purple", "cryptography": "tab:orange"}

TARGET_FRESH_PER_CORE = 2.8e6
TARGET_PREPARED_PER_CORE = 3.5e6
TARGET_VS_OATH = 100.0
TARGET_SCALING = 1.8
TARGET_SCALAR_SECONDS = 1e-6


@dataclass(frozen=True)
class Settings:
    """What one run measures and how long it times each sample."""

    sizes: tuple[int, ...]
    oath_sample: int
    otp_sample: int
    scalar_sample: int
    min_time: float
    repeats: int
    repeats_large: int

    def repeats_for(self, n: int) -> int:
        return self.repeats_large if n >= LARGE_BATCH else self.repeats


@dataclass
class Contender:
    """One thing timed in a row: a call doing ``items`` verifications, and its check."""

    family: str
    workload: str
    n: int
    impl: str
    threads: int | None
    items: int
    call: Callable[[], Any]
    check: Callable[[Any], bool]
    sampled: bool = False


@dataclass
class Measurement:
    """The best time per call of a :class:`Contender`, as stored in results.json."""

    family: str
    workload: str
    n: int
    impl: str
    threads: int | None
    items: int
    sampled: bool
    seconds: float
    calls_per_sample: int
    samples: int
    rate: float = field(init=False)

    def __post_init__(self) -> None:
        self.rate = self.items / self.seconds


def measure(contenders: Sequence[Contender], samples: int, min_time: float) -> list[Measurement]:
    """Checks each contender once, then times ``samples`` interleaved rounds; keeps the best."""
    calls: list[int] = []
    for contender in contenders:
        if not contender.check(contender.call()):
            raise SystemExit(f"wrong answers from {contender.impl} in {contender.workload}")
        started = time.perf_counter()
        contender.call()
        elapsed = time.perf_counter() - started
        calls.append(max(1, math.ceil(min_time / max(elapsed, 1e-9))))
    best = [math.inf] * len(contenders)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(samples):
            for i, contender in enumerate(contenders):
                call, count = contender.call, calls[i]
                started = time.perf_counter()
                for _ in range(count):
                    call()
                best[i] = min(best[i], (time.perf_counter() - started) / count)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [
        Measurement(
            family=c.family,
            workload=c.workload,
            n=c.n,
            impl=c.impl,
            threads=c.threads,
            items=c.items,
            sampled=c.sampled,
            seconds=seconds,
            calls_per_sample=count,
            samples=samples,
        )
        for c, seconds, count in zip(contenders, best, calls, strict=True)
    ]


def thread_counts() -> list[int]:
    """1, and every core when there is more than one."""
    return [1] if wl.ALL_THREADS == 1 else [1, wl.ALL_THREADS]


def threads_arg(threads: int) -> int | None:
    """The ``threads=`` argument for a thread count: every core is the default, None."""
    return None if threads == wl.ALL_THREADS else threads


def equals(expected: Any) -> Callable[[Any], bool]:
    return lambda got: bool(np.array_equal(np.asarray(got), np.asarray(expected)))


def ocra_scalar(settings: Settings) -> list[Measurement]:
    sample = wl.make_ocra(settings.scalar_sample).sample(settings.scalar_sample)
    m, accepted = len(sample), equals(sample.accepted)
    with_hash = partial(Contender, "ocra", OCRA_SCALAR_HASH, 1)
    with_pin = partial(Contender, "ocra", OCRA_SCALAR_PIN, 1)
    contenders = [
        with_hash("sls_core", 1, m, sample.sls_core_pin_hash, accepted),
        with_pin("sls_core", 1, m, sample.sls_core_pin, accepted),
        with_pin("oath", None, m, sample.oath, accepted),
    ]
    return measure(contenders, settings.repeats, settings.min_time)


def ocra_batch(settings: Settings, n: int) -> list[Measurement]:
    work = wl.make_ocra(n)
    outcomes = equals(work.expected)
    fresh = partial(Contender, "ocra", OCRA_FRESH, n)
    prepared = partial(Contender, "ocra", OCRA_PREPARED, n)
    contenders = []
    for threads in thread_counts():
        arg = threads_arg(threads)
        contenders += [
            fresh("sls_core", threads, n, lambda a=arg: work.verify_fresh(a), outcomes),
            prepared("sls_core", threads, n, lambda a=arg: work.verify_prepared(a), outcomes),
        ]
    sample = work.sample(settings.oath_sample)
    m = len(sample)
    contenders.append(fresh("oath", None, m, sample.oath, equals(sample.accepted), m < n))
    if n == max(settings.sizes):
        contenders += machine_probe("ocra", n)
    results = measure(contenders, settings.repeats_for(n), settings.min_time)
    if n == max(settings.sizes):
        results += keytable_build(settings, work)
    return results


def keytable_build(settings: Settings, work: wl.OcraWorkload) -> list[Measurement]:
    """Times preparing a KeyTable of the batch's keys: a one-off setup cost per table."""
    build = partial(Contender, "ocra", KEYTABLE_BUILD, work.n)

    def prepare(threads: int) -> Callable[[], sls_core.KeyTable]:
        arg = threads_arg(threads)
        return lambda: sls_core.KeyTable(work.keys, algorithm="sha1", threads=arg)

    contenders = [
        build("sls_core", threads, work.n, prepare(threads), lambda t: len(t) == work.n)
        for threads in thread_counts()
    ]
    return measure(contenders, settings.repeats_for(work.n), settings.min_time)


def otp_scalar(settings: Settings, kind: str) -> list[Measurement]:
    sample = wl.make_otp(kind, settings.scalar_sample).sample(settings.scalar_sample)
    m, accepted = len(sample), equals(sample.accepted)
    scalar = partial(Contender, kind, OTP_SCALAR, 1)
    contenders = [scalar("sls_core", 1, m, sample.sls_core, accepted)]
    contenders += [scalar(peer, None, m, getattr(sample, peer), accepted) for peer in PEERS[kind]]
    return measure(contenders, settings.repeats, settings.min_time)


def otp_batch(settings: Settings, kind: str, n: int) -> list[Measurement]:
    work = wl.make_otp(kind, n)

    def check(result: Any) -> bool:
        return bool(
            np.array_equal(result.outcomes, work.expected)
            and np.array_equal(result.matched, work.matched)
        )

    def verify(threads: int) -> Callable[[], Any]:
        arg = threads_arg(threads)
        return lambda: work.verify(arg)

    batch = partial(Contender, kind, OTP_BATCH, n)
    contenders = [batch("sls_core", t, n, verify(t), check) for t in thread_counts()]
    sample = work.sample(settings.otp_sample)
    m, accepted = len(sample), equals(sample.accepted)
    contenders += [
        batch(peer, None, m, getattr(sample, peer), accepted, m < n) for peer in PEERS[kind]
    ]
    if n == max(settings.sizes):
        contenders += machine_probe(kind, n)
    return measure(contenders, settings.repeats_for(n), settings.min_time)


def machine_probe(family: str, n: int) -> list[Contender]:
    """hashlib SHA-1 over 16 MiB per thread (the GIL released), on one thread and on every
    core: timed in the same loop as a row, it shows how far anything can scale right then."""
    k = wl.ALL_THREADS
    if k < 2:
        return []
    data = bytes(MACHINE_PROBE_BYTES)

    def work() -> None:
        hashlib.sha1(data, usedforsecurity=False).digest()

    def serial() -> None:
        for _ in range(k):
            work()

    def parallel() -> None:
        workers = [threading.Thread(target=work) for _ in range(k)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    probe = partial(Contender, family, MACHINE_PROBE, n, "hashlib")
    return [
        probe(1, k * len(data), serial, lambda _: True),
        probe(k, k * len(data), parallel, lambda _: True),
    ]


def machine_scaling(results: Sequence[Measurement], family: str, n: int) -> float | None:
    one = _find(results, family, MACHINE_PROBE, n, "hashlib", 1)
    every = _find(results, family, MACHINE_PROBE, n, "hashlib", wl.ALL_THREADS)
    return every.rate / one.rate if one and every and wl.ALL_THREADS > 1 else None


# --- presentation ------------------------------------------------------------------------


def size_label(n: int) -> str:
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def parse_size(text: str) -> int:
    scales = {"k": 1_000, "m": 1_000_000}
    suffix = text[-1:].lower()
    value = int(text[:-1]) * scales[suffix] if suffix in scales else int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a batch size must be at least 1: {text!r}")
    return value


def rate_text(rate: float | None) -> str:
    if rate is None:
        return "—"
    if rate >= 1e6:
        return f"{rate / 1e6:.3g} M/s"
    if rate >= 1e3:
        return f"{rate / 1e3:.3g} k/s"
    return f"{rate:.3g}/s"


def ratio_text(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.3g}x"


def _find(
    results: Sequence[Measurement],
    family: str,
    workload: str,
    n: int,
    impl: str,
    threads: int | None = None,
) -> Measurement | None:
    for m in results:
        if (m.family, m.workload, m.n, m.impl) == (family, workload, n, impl) and (
            threads is None or m.threads == threads
        ):
            return m
    return None


@dataclass
class Row:
    workload: str
    n_text: str
    one_thread: Measurement | None
    all_threads: Measurement | None
    peers: dict[str, Measurement | None]

    @property
    def best(self) -> Measurement | None:
        return self.all_threads or self.one_thread


def family_rows(results: Sequence[Measurement], family: str, sizes: Sequence[int]) -> list[Row]:
    k = wl.ALL_THREADS
    peers = PEERS[family]
    rows: list[Row] = []

    def row(workload: str, n: int, n_text: str, peer_workload: str | None) -> Row:
        return Row(
            workload,
            n_text,
            _find(results, family, workload, n, "sls_core", 1),
            _find(results, family, workload, n, "sls_core", k) if k > 1 else None,
            {
                peer: _find(results, family, peer_workload, n, peer) if peer_workload else None
                for peer in peers
            },
        )

    if family == "ocra":
        rows.append(row(OCRA_SCALAR_HASH, 1, "1 call", OCRA_SCALAR_PIN))
        rows.append(row(OCRA_SCALAR_PIN, 1, "1 call", OCRA_SCALAR_PIN))
        rows += [row(OCRA_FRESH, n, size_label(n), OCRA_FRESH) for n in sizes]
        rows += [row(OCRA_PREPARED, n, size_label(n), OCRA_FRESH) for n in sizes]
        rows.append(row(KEYTABLE_BUILD, max(sizes), size_label(max(sizes)), None))
    else:
        rows.append(row(OTP_SCALAR, 1, "1 call", OTP_SCALAR))
        rows += [row(OTP_BATCH, n, size_label(n), OTP_BATCH) for n in sizes]
    return rows


def markdown_table(rows: Sequence[Row], peers: Sequence[str]) -> list[str]:
    k = wl.ALL_THREADS
    header = ["Workload", "N", "sls_core 1 thread", f"sls_core {k} threads"]
    header += [f"per core ({k} thr)", f"scaling 1→{k}"]
    header += list(peers) + [f"sls_core / {peer}" for peer in peers]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        one, every = row.one_thread, row.all_threads
        per_core = every.rate / k if every else None
        scaling = every.rate / one.rate if every and one else None
        cells = [row.workload, row.n_text, rate_text(one.rate if one else None)]
        cells += [rate_text(every.rate if every else None), rate_text(per_core)]
        cells.append(ratio_text(scaling))
        peer_rates = [row.peers[peer].rate if row.peers[peer] else None for peer in peers]
        cells += [
            rate_text(rate) + ("*" if row.peers[peer] and row.peers[peer].sampled else "")
            for peer, rate in zip(peers, peer_rates, strict=True)
        ]
        cells += [
            ratio_text(row.best.rate / rate if row.best and rate else None) for rate in peer_rates
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def footnotes(results: Sequence[Measurement], settings: Settings) -> list[str]:
    k, n = wl.ALL_THREADS, max(settings.sizes)
    notes = [
        "Rates are verifications per second (KeyTable build: keys prepared per second), from "
        f"the best of {settings.repeats} timed samples ({settings.repeats_large} from "
        f"{size_label(LARGE_BATCH)} items), each sample repeating the call for at least "
        f"{settings.min_time:g} s; the contenders of a row are interleaved in the same loop.",
        f"\\* Peer timed on the first {settings.oath_sample:,} items (oath) or "
        f"{settings.otp_sample:,} items (pyotp, cryptography) of the batch and its per-item "
        "rate extrapolated: a per-item Python loop is linear in N.",
        f"sls_core / peer uses the {k}-thread figure (the default `threads=None`) where there "
        "is one, else the single call. per core = the all-core rate divided by "
        f"{k}; scaling = all-core rate / one-thread rate.",
        f"Scalar rows: a Python loop over {settings.scalar_sample:,} distinct items calling "
        "the one-item API, loop included; peers build their object per call (pyotp.HOTP, "
        "cryptography HOTP/TOTP) as a server verifying a different user each time would.",
        "oath 1.4.5 cannot take a PIN hash (`P_digest` reads `hashlib.sha1.digest_size`, "
        "an AttributeError), so it gets the PIN and hashes it per item; sls_core batches "
        "take the stored SHA1(PIN), and the 'scalar verify(), PIN' row does oath's work.",
        "HOTP and TOTP: 6 digits, SHA-1, 20-byte keys, window 0 (one HMAC per item) for "
        "every contender: cryptography's TOTP has no window, pyotp's default is 0.",
        "Prepared rows: a KeyTable of the batch's N device keys, built beforehand (its "
        "build rate is the last OCRA row) and addressed through `key_index`, a random "
        "permutation, as a server's table indexed by device id would be.",
    ]
    probes = {family: machine_scaling(results, family, n) for family in PEERS}
    if all(probes.values()):
        measured = ", ".join(f"{family.upper()} {x:.2f}x" for family, x in probes.items())
        notes.append(
            f"Machine probe: hashlib SHA-1 over 16 MiB on {k} threads (GIL released) vs one "
            f"thread, timed in the same loop as each N={size_label(n)} row: {measured}. "
            "Scaling much below that is sls_core's; up to it, the machine's (shared cores)."
        )
    return notes


@dataclass
class Target:
    what: str
    goal: str
    measured: str
    met: bool | None


def targets(results: Sequence[Measurement], settings: Settings) -> list[Target]:
    n, k = max(settings.sizes), wl.ALL_THREADS
    label = size_label(n)

    def rate(workload: str, impl: str, threads: int | None = None) -> float | None:
        found = _find(results, "ocra", workload, n if "batch" in workload else 1, impl, threads)
        return found.rate if found else None

    fresh1, fresh_all = rate(OCRA_FRESH, "sls_core", 1), rate(OCRA_FRESH, "sls_core", k)
    prepared1 = rate(OCRA_PREPARED, "sls_core", 1)
    oath_rate = rate(OCRA_FRESH, "oath")
    scalar = rate(OCRA_SCALAR_HASH, "sls_core", 1)
    out: list[Target] = []
    if fresh1:
        out.append(
            Target(
                "OCRA batch, fresh key per item, per core",
                "≥ 2.8 M/s",
                f"{rate_text(fresh1)} (1 thread, N={label})",
                fresh1 >= TARGET_FRESH_PER_CORE,
            )
        )
    if prepared1:
        out.append(
            Target(
                "OCRA batch, prepared KeyTable, per core",
                "≥ 3.5 M/s",
                f"{rate_text(prepared1)} (1 thread, N={label})",
                prepared1 >= TARGET_PREPARED_PER_CORE,
            )
        )
    best = fresh_all or fresh1
    if best and oath_rate and fresh1:
        out.append(
            Target(
                "OCRA batch vs oath",
                "≥ 100x",
                f"{best / oath_rate:.3g}x ({k} threads; {fresh1 / oath_rate:.3g}x on 1), N={label}",
                best / oath_rate >= TARGET_VS_OATH,
            )
        )
    if fresh1 and fresh_all:
        probe = machine_scaling(results, "ocra", n)
        probe_text = f"; machine probe in the same loop: {probe:.3g}x" if probe else ""
        out.append(
            Target(
                f"Scaling 1 → {k} cores (fresh keys)",
                "≥ 1.8x",
                f"{fresh_all / fresh1:.3g}x (N={label}{probe_text})",
                fresh_all / fresh1 >= TARGET_SCALING,
            )
        )
    else:
        out.append(Target("Scaling 1 → 2 cores", "≥ 1.8x", "one core: not measurable", None))
    if scalar:
        out.append(
            Target(
                "OCRA scalar verify()",
                "≤ 1 µs",
                f"{1e6 / scalar:.3g} µs per call",
                1 / scalar <= TARGET_SCALAR_SECONDS,
            )
        )
    return out


def targets_table(found: Sequence[Target]) -> list[str]:
    lines = ["| Target | Goal | Measured | Status |", "|---|---|---|---|"]
    for target in found:
        status = "n/a" if target.met is None else ("met" if target.met else "**not met**")
        lines.append(f"| {target.what} | {target.goal} | {target.measured} | {status} |")
    return lines


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("sls_core", "numpy", "oath", "pyotp", "cryptography"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "sls_core_threads": wl.ALL_THREADS,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
    }


def machine_lines(info: dict[str, Any]) -> list[str]:
    v = info["versions"]
    return [
        f"- CPU: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable); "
        f"sls_core threads=None → {info['sls_core_threads']} threads",
        f"- Python {info['python']} ({info['implementation']}), numpy {v['numpy']}, "
        f"{info['platform']}",
        f"- sls_core {v['sls_core']}; peers: oath {v['oath']}, pyotp {v['pyotp']}, "
        f"cryptography {v['cryptography']}",
    ]


def render(
    results: Sequence[Measurement],
    settings: Settings,
    info: dict[str, Any],
    found: Sequence[Target],
    command: str,
) -> str:
    titles = {
        "ocra": f"OCRA verify, suite `{wl.SUITE}` (sls_core vs oath)",
        "hotp": "HOTP verify, RFC 4226 (sls_core vs pyotp, cryptography)",
        "totp": "TOTP verify, RFC 6238 (sls_core vs pyotp, cryptography)",
    }
    lines = ["# sls_core throughput", "", f"`{command}`", "", *machine_lines(info), ""]
    for family, title in titles.items():
        rows = family_rows(results, family, settings.sizes)
        lines += [f"## {title}", "", *markdown_table(rows, PEERS[family]), ""]
    lines += ["Notes:", ""]
    lines += [f"{i}. {note}" for i, note in enumerate(footnotes(results, settings), 1)]
    lines += ["", "## Targets (informational)", "", *targets_table(found), ""]
    return "\n".join(lines)


def plot(
    results: Sequence[Measurement], settings: Settings, info: dict[str, Any], path: Path
) -> None:
    """Verifications/s against batch size, log-log, one panel per family: colour says the
    contender, line style the thread count; each legend sits under its panel, off the lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    families = {"ocra": "OCRA (QN06-PSHA1)", "hotp": "HOTP", "totp": "TOTP (window 0)"}
    figure, axes = plt.subplots(1, 3, figsize=(16, 6.5), sharey=True)
    sizes = sorted(settings.sizes)
    for axis, (family, title) in zip(axes, families.items(), strict=True):
        batch = OCRA_FRESH if family == "ocra" else OTP_BATCH
        lines = [(batch, "fresh keys", "o", "tab:blue")]
        if family == "ocra":
            lines.append((OCRA_PREPARED, "KeyTable", "s", "tab:green"))
        for workload, name, marker, color in lines:
            for threads, style in zip(thread_counts(), ("-", "--"), strict=False):
                found = [_find(results, family, workload, n, "sls_core", threads) for n in sizes]
                points = [(n, m.rate) for n, m in zip(sizes, found, strict=True) if m]
                if points:
                    xs, ys = zip(*points, strict=True)
                    label = f"sls_core {name}, {threads} thread{'s' if threads > 1 else ''}"
                    axis.plot(xs, ys, style, marker=marker, color=color, label=label)
        for peer in PEERS[family]:
            found = [_find(results, family, batch, n, peer) for n in sizes]
            points = [(n, m.rate) for n, m in zip(sizes, found, strict=True) if m]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(
                    xs,
                    ys,
                    ":",
                    marker="x",
                    color=PEER_COLORS[peer],
                    label=f"{peer} (per-item loop)",
                )
        scalar_workload = OCRA_SCALAR_HASH if family == "ocra" else OTP_SCALAR
        scalar = _find(results, family, scalar_workload, 1, "sls_core", 1)
        if scalar:
            axis.axhline(
                scalar.rate,
                color="grey",
                linewidth=1,
                linestyle="-.",
                label="sls_core scalar verify() loop",
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        # Ticks at the measured sizes (1k, not 10^3) and at 1-2-5 rates (200 k/s, 1 M/s).
        axis.set_xticks(sizes, [size_label(n) for n in sizes])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda y, _: rate_text(y)))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.set_title(title)
        axis.set_xlabel("batch size N, items per call (log scale)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(
            fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, handlelength=3
        )
    axes[0].set_ylabel("verifications per second (log scale)")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    figure.suptitle(
        "sls_core verification throughput against batch size, vs peers\n"
        f"{info['cpu']}, {info['cores']} cores (threads=None: {wl.ALL_THREADS} threads), {when}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and short timings (< 30 s)"
    )
    parser.add_argument(
        "--sizes", nargs="+", type=parse_size, help="batch sizes, e.g. 1 1k 100k 1M"
    )
    parser.add_argument("--min-time", type=float, help="seconds each timed sample lasts at least")
    args = parser.parse_args(argv)
    if args.quick:
        settings = Settings(QUICK_SIZES, 500, 2_000, 500, 0.01, 3, 3)
    else:
        settings = Settings(
            FULL_SIZES, wl.OATH_SAMPLE, wl.OTP_PEER_SAMPLE, wl.OATH_SAMPLE, 0.1, 5, 3
        )
    if args.sizes:
        settings = replace(settings, sizes=tuple(sorted(set(args.sizes))))
    if args.min_time:
        settings = replace(settings, min_time=args.min_time)
    return args, settings


def progress(text: str) -> None:
    """One line on stderr, with the seconds since the start: long steps show they move."""
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {text}", file=sys.stderr, flush=True)


def items_text(n: int) -> str:
    return f"{n:,} item{'' if n == 1 else 's'}"


def plan(settings: Settings) -> list[tuple[str, Callable[[], list[Measurement]]]]:
    """Every step of a run, in order, with the line that announces it on stderr."""
    counts = thread_counts()
    threads = "1 thread" if counts == [1] else f"1 and {counts[-1]} threads"
    largest = max(settings.sizes)
    steps: list[tuple[str, Callable[[], list[Measurement]]]] = [
        (
            f"OCRA scalar verify(), {settings.scalar_sample:,} calls per loop "
            "(sls_core with PIN hash and PIN, oath)",
            partial(ocra_scalar, settings),
        )
    ]
    steps += [
        (
            f"OCRA batch N={size_label(n)}: sls_core fresh keys and KeyTable on {threads}, "
            f"oath on {items_text(min(n, settings.oath_sample))}, "
            f"{settings.repeats_for(n)} samples"
            + ("; then KeyTable build" if n == largest else ""),
            partial(ocra_batch, settings, n),
        )
        for n in settings.sizes
    ]
    for kind in ("hotp", "totp"):
        peers = " and ".join(PEERS[kind])
        steps.append(
            (
                f"{kind.upper()} scalar verify(), {settings.scalar_sample:,} calls per loop "
                f"(sls_core, {peers})",
                partial(otp_scalar, settings, kind),
            )
        )
        steps += [
            (
                f"{kind.upper()} batch N={size_label(n)}: sls_core on {threads}, "
                f"{peers} on {items_text(min(n, settings.otp_sample))}, "
                f"{settings.repeats_for(n)} samples",
                partial(otp_batch, settings, kind, n),
            )
            for n in settings.sizes
        ]
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    args, settings = parse_args(argv)
    command = " ".join(["python benches/report.py", *(argv or sys.argv[1:])])
    results: list[Measurement] = []
    steps = plan(settings)
    for i, (what, measure_step) in enumerate(steps, 1):
        progress(f"{i}/{len(steps)} {what} ...")
        results += measure_step()
    info = machine_info()
    found = targets(results, settings)
    text = render(results, settings, info, found, command)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(text + "\n")
    document = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": info,
        "settings": asdict(settings),
        "machine_probe_scaling": {
            family: machine_scaling(results, family, max(settings.sizes)) for family in PEERS
        },
        "measurements": [asdict(m) for m in results],
        "targets": [asdict(t) for t in found],
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    progress("plotting ...")
    plot(results, settings, info, args.out / "throughput.png")
    for name in ("report.md", "results.json", "throughput.png"):
        progress(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
