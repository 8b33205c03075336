"""IB Key activation payloads and push approvals: items per second, one by one and in
batches, at several batch sizes, measured side by side in one run.

Run it from the project root with the virtualenv's Python (``make bench`` does)::

    python benches/ibkey_report.py [--out DIR] [--sizes 1k 10k 100k] [--quick]

Contenders at each batch size N: activation payload verification (Ed25519 signature,
expiry, fields), one call per payload from Python vs one ``verify_batch`` call; push
approval verification (Ed25519, strict), one call per signature vs
``verify_approvals_batch`` (ed25519-dalek batch verification per chunk, all cores); and the
store-backed ``IbKey.answer_pushes`` (signatures, once-only and expiry checks, one
transaction) at the sizes up to ``--store-max`` (at ``--store-max`` if none is that small).
A one-by-one loop runs at most ``--single-max`` items of the batch and its rate is
extrapolated (a per-item Python loop is linear in N).
The contenders of a size are interleaved in the same loop so noise hits them alike; each
sample repeats its call for at least ``--min-time`` seconds, and the best of ``--samples``
counts. Progress goes to stderr. Writes ``DIR/ibkey.md``, ``DIR/ibkey.json`` and
``DIR/ibkey.png`` (items/s against batch size, log-log). Never logs a key or a signature.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sls_core import activation, default_threads, push
from sls_core.clock import ManualClock
from sls_core.login import SecureLogin
from sls_core.simulator import SimulatedApp

STARTED = time.perf_counter()
FULL_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (100, 1_000, 3_000)

PAYLOADS = "activation payload verify"
APPROVALS = "push approval verify"
STORE_ANSWERS = "push answers, store-backed"
ONE_BY_ONE = "one call each"
BATCH = "batch"


def progress(text: str) -> None:
    """One line on stderr, with the seconds since the start: long steps show they move."""
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {text}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    scales = {"k": 1_000, "m": 1_000_000}
    suffix = text[-1:].lower()
    try:
        value = int(text[:-1]) * scales[suffix] if suffix in scales else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a batch size is a whole number, optionally with k or M: {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a batch size must be at least 1: {text!r}")
    return value


def size_label(n: int) -> str:
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n:,}"


@dataclass
class Contender:
    """One thing timed at one batch size: a call doing ``items`` verifications."""

    workload: str
    mode: str
    batch_size: int
    items: int
    call: Callable[[], None]


def measure(contenders: Sequence[Contender], samples: int, min_time: float) -> list[dict[str, Any]]:
    """Runs each contender once (its asserts check the answers), then times ``samples``
    interleaved rounds, each call repeated for at least ``min_time`` s; keeps the best."""
    repeats = []
    for contender in contenders:
        started = time.perf_counter()
        contender.call()
        elapsed = time.perf_counter() - started
        repeats.append(max(1, math.ceil(min_time / max(elapsed, 1e-9))))
    best = [math.inf] * len(contenders)
    for _ in range(samples):
        for i, contender in enumerate(contenders):
            started = time.perf_counter()
            for _ in range(repeats[i]):
                contender.call()
            best[i] = min(best[i], (time.perf_counter() - started) / repeats[i])
    return [
        {
            "workload": c.workload,
            "mode": c.mode,
            "batch_size": c.batch_size,
            "items": c.items,
            "rate": c.items / seconds,
        }
        for c, seconds in zip(contenders, best, strict=True)
    ]


class PayloadWork:
    """``n`` signed activation payloads and the verifier that accepts them."""

    def __init__(self, n: int) -> None:
        signer = activation.ActivationSigner({1: secrets.token_bytes(32)}, active=1)
        self.verifier = activation.ActivationVerifier(signer.public_keys())
        self.now = 1_800_000_000
        self.payloads = [
            signer.sign(
                session_id=secrets.token_bytes(16),
                username=f"user{i}",
                issued_at=self.now,
                expires_at=self.now + 600,
                server_public=secrets.token_bytes(32),
            )
            for i in range(n)
        ]
        width = max(map(len, self.payloads))
        self.column = np.array([p.encode() for p in self.payloads], dtype=f"S{width}")

    def contenders(self, n: int, single: int) -> list[Contender]:
        payloads, column, verifier, now = (
            self.payloads[:single],
            self.column[:n],
            self.verifier,
            self.now,
        )

        def one_by_one() -> None:
            for p in payloads:
                status, _ = verifier.verify(p, now)
                assert status == 0

        def batch() -> None:
            assert (verifier.verify_batch(column, now)["status"] == 0).all()

        return [
            Contender(PAYLOADS, ONE_BY_ONE, n, len(payloads), one_by_one),
            Contender(PAYLOADS, BATCH, n, n, batch),
        ]


class ApprovalWork:
    """``n`` signed push approvals (1,000 device keys at most, reused round robin)."""

    def __init__(self, n: int) -> None:
        keys = [push.push_keypair() for _ in range(min(n, 1000))]
        self.publics: list[bytes] = []
        self.messages: list[bytes] = []
        self.signatures: list[bytes] = []
        for i in range(n):
            seed, public = keys[i % len(keys)]
            message = bytes(push.approval_message(i, i, i, 1_800_000_120, 1))
            self.publics.append(bytes(public))
            self.messages.append(message)
            self.signatures.append(bytes(push.sign_approval(seed, message)))

    def contenders(self, n: int, single: int) -> list[Contender]:
        publics, messages, signatures = self.publics[:n], self.messages[:n], self.signatures[:n]

        def one_by_one() -> None:
            for k in range(single):
                assert push.verify_approval(publics[k], messages[k], signatures[k])

        def batch() -> None:
            assert (push.verify_approvals_batch(publics, messages, signatures) == 0).all()

        return [
            Contender(APPROVALS, ONE_BY_ONE, n, single, one_by_one),
            Contender(APPROVALS, BATCH, n, n, batch),
        ]


def store_rows(sizes: Sequence[int], samples: int) -> list[dict[str, Any]]:
    """``IbKey.answer_pushes`` on a SQLite store: pushes are answered once, so every sample
    creates fresh ones (untimed) and times the one call that answers them."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sls-bench-") as tmp:
        sls = SecureLogin.open(Path(tmp) / "data", clock=ManualClock())
        sls.create_user("bench")
        app = SimulatedApp(None)
        app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bench").payload)
        for n in sizes:
            times = []
            progress(
                f"N={size_label(n)}: {STORE_ANSWERS}, {samples} samples (each creates "
                f"{n:,} pushes, then answers them in one call) ..."
            )
            for _ in range(samples):
                pushes = [sls.ibkey.create_push("bench") for _ in range(n)]
                signatures = [app.sign(p.message(1)) for p in pushes]
                ids = [p.challenge_id for p in pushes]
                started = time.perf_counter()
                out = sls.ibkey.answer_pushes(ids, [1] * n, signatures)
                times.append(time.perf_counter() - started)
                assert (out == 0).all()
            rows.append(
                {
                    "workload": STORE_ANSWERS,
                    "mode": BATCH,
                    "batch_size": n,
                    "items": n,
                    "rate": n / min(times),
                }
            )
        sls.store.close()
    return rows


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "batch_threads": default_threads()}


def rate_text(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:.3g} M/s"
    if rate >= 1e3:
        return f"{rate / 1e3:.3g} k/s"
    return f"{rate:.3g}/s"


def render(rows: Sequence[dict[str, Any]], settings: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [
        "## IB Key: activation payloads and push approvals",
        "",
        f"{info['cpu']}, {info['cores']} cores; {info['batch_threads']} threads for batches. "
        f"Best of {settings['samples']} interleaved samples, each at least "
        f"{settings['min_time']:g} s. One-by-one loops run at most "
        f"{settings['single_max']:,} items of the batch (rate extrapolated).",
        "",
        "| workload | mode | batch size | items timed | items/s | batch / one by one |",
        "|---|---|---:|---:|---:|---:|",
    ]
    one = {(r["workload"], r["batch_size"]): r["rate"] for r in rows if r["mode"] == ONE_BY_ONE}
    for r in rows:
        base = one.get((r["workload"], r["batch_size"]))
        ratio = f"{r['rate'] / base:.2f}x" if base and r["mode"] == BATCH else "—"
        lines.append(
            f"| {r['workload']} | {r['mode']} | {r['batch_size']:,} | {r['items']:,} "
            f"| {r['rate']:,.0f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], info: dict[str, Any], when: str, path: Path) -> None:
    """Items/s against batch size, log-log: colour says the workload, line style the mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    colours = {PAYLOADS: "tab:blue", APPROVALS: "tab:orange", STORE_ANSWERS: "tab:green"}
    styles = {BATCH: ("-", "o"), ONE_BY_ONE: ("--", "x")}
    names = {
        (PAYLOADS, BATCH): "activation payloads, verify_batch",
        (PAYLOADS, ONE_BY_ONE): "activation payloads, verify() per item",
        (APPROVALS, BATCH): "push approvals, verify_approvals_batch",
        (APPROVALS, ONE_BY_ONE): "push approvals, verify_approval() per item",
        (STORE_ANSWERS, BATCH): "push answers, store-backed answer_pushes",
    }
    figure, axis = plt.subplots(figsize=(11, 5.5))
    for (workload, mode), label in names.items():
        points = sorted(
            (r["batch_size"], r["rate"])
            for r in rows
            if (r["workload"], r["mode"]) == (workload, mode)
        )
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        style, marker = styles[mode]
        axis.plot(xs, ys, style, marker=marker, color=colours[workload], label=label)
    axis.set_xscale("log")
    axis.set_yscale("log")
    # Ticks at the measured sizes and at 1-2-5 rates, labelled 10k and 20 k/s, not 10^4.
    sizes = sorted({r["batch_size"] for r in rows})
    axis.set_xticks(sizes, [size_label(n) for n in sizes])
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda y, _: rate_text(y)))
    axis.yaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel("batch size N (items per call; one-by-one loops: items in the batch)")
    axis.set_ylabel("items verified per second (log scale)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="contender")
    axis.set_title(
        f"IB Key verification throughput against batch size\n{info['cpu']}, "
        f"{info['cores']} cores ({info['batch_threads']} threads for batches), {when}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--sizes", nargs="+", type=parse_size, help="batch sizes, e.g. 1k 10k 100k")
    parser.add_argument(
        "--batch", type=parse_size, help="one batch size (older command lines): --sizes N"
    )
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--min-time", type=float, help="seconds each timed sample lasts at least")
    parser.add_argument("--single-max", type=parse_size, help="items a one-by-one loop runs")
    parser.add_argument("--store-max", type=parse_size, help="largest store-backed batch")
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    sizes = args.sizes or (
        [args.batch] if args.batch else QUICK_SIZES if args.quick else FULL_SIZES
    )
    sizes = sorted(set(sizes))
    settings = {
        "sizes": sizes,
        "samples": args.samples,
        "min_time": args.min_time or (0.02 if args.quick else 0.2),
        "single_max": args.single_max or (1_000 if args.quick else 5_000),
        "store_max": args.store_max or (1_000 if args.quick else 10_000),
    }
    largest = max(sizes)
    rows: list[dict[str, Any]] = []
    progress(f"signing {largest:,} activation payloads ...")
    payloads = PayloadWork(largest)
    progress(f"signing {largest:,} push approvals ...")
    approvals = ApprovalWork(largest)
    for n in sizes:
        single = min(n, settings["single_max"])
        progress(
            f"N={size_label(n)}: payloads and approvals, one by one ({single:,} items) "
            f"and batch ({n:,} items), {args.samples} samples ..."
        )
        contenders = payloads.contenders(n, single) + approvals.contenders(n, single)
        rows += measure(contenders, args.samples, settings["min_time"])
    # The store-backed call answers pushes it first creates one by one: small sizes only.
    store_sizes = [n for n in sizes if n <= settings["store_max"]] or [settings["store_max"]]
    rows += store_rows(store_sizes, args.samples)
    order = [PAYLOADS, APPROVALS, STORE_ANSWERS]
    rows.sort(key=lambda r: (order.index(r["workload"]), r["batch_size"], r["mode"] != ONE_BY_ONE))
    info = machine()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = render(rows, settings, info)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ibkey.md").write_text(text)
    document = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "cpu_count": os.cpu_count(),
        "settings": settings,
        "rows": rows,
    }
    (args.out / "ibkey.json").write_text(json.dumps(document, indent=2) + "\n")
    progress("plotting ...")
    plot(rows, info, when, args.out / "ibkey.png")
    for name in ("ibkey.md", "ibkey.json", "ibkey.png"):
        progress(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
