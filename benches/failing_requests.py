"""Do failing requests stall the logins of other processes? (issue 11, finding 1)

Run it from the project root with the virtualenv's Python (``make bench`` does)::

    python benches/failing_requests.py [--devices 200k] [--seconds 6] [--rates 0 50 100 200]
        [--rate 100] [--quick] [--out DIR]

With DEVICES enrolled DSC+ users in one SQLite store, a *login* process verifies single
logins back to back (issue a challenge, answer it right: two write transactions each) and
records each login's latency, for SECONDS, once per offered noise rate in ``--rates``: at 0
alone, otherwise while a *noise* process sharing the store sends that many requests a second
that fail inside a write transaction (challenges for usernames that do not exist).
``--rate R`` is the older form of ``--rates 0 R``. Before the fix, each failure made the
noise process's next write reload the whole directory under the write lock (seconds at 200k
devices) and every login waited; now a failure rolls back only what it wrote. The report
gives p50/p90/p99/p99.9/max of every run, the failing requests a second the noise process
really sent, and the p99 ratio of the busiest run to the quiet one (target: about 1, within
the noise). Progress goes to stderr. Writes ``DIR/failing_requests.md``, ``.json`` and
``.png`` (latency percentiles against the offered failing-request rate, and each run's
latency by percentile). Never logs a secret, PIN or code (secrets derive from the user
number).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sls_core import ocra
from sls_core.devices import DeviceType
from sls_core.errors import InvalidInputError
from sls_core.login import SecureLogin

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
PIN = "4711"
STARTED = time.perf_counter()
DEFAULT_RATES = (0.0, 50.0, 100.0, 200.0)
NOISE_READY_TIMEOUT_S = 300.0
PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p99_9_ms": 99.9}
"""The latency percentiles reported per run (and ``max_ms``), as JSON keys."""


def progress(text: str) -> None:
    """One line on stderr, with the seconds since the start: long steps show they move."""
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {text}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    lowered = text.lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(lowered[-1:], 1)
    try:
        value = int(float(lowered.rstrip("km")) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a device count is a number, optionally with k or M: {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a device count must be at least 1: {text!r}")
    return value


def parse_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a rate is a number of requests/s: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"a rate must be 0 or more requests/s: {text!r}")
    return value


def _secret(i: int) -> bytes:
    return i.to_bytes(4, "big") * 5


def _noise(root: str, rate: float, stop_at: float, ready: Any, sent: Any) -> None:
    """Failing requests at ``rate`` a second until ``stop_at`` (time.time()); counts them in
    ``sent`` so the report can tell the rate offered from the rate achieved."""
    sls = SecureLogin.open(root)
    sls.warm()
    ready.set()
    n, start = 0, time.time()
    while time.time() < stop_at:
        # Refused inside a write transaction: "username: no such user".
        with contextlib.suppress(InvalidInputError):
            sls.issue_challenge(f"nosuchuser{n}")
        n += 1
        with sent.get_lock():
            sent.value += 1
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


def _summary(latencies: Sequence[float], seconds: float) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000.0
    summary = {"logins": float(len(ms)), "logins_per_s": len(ms) / seconds}
    summary |= {key: float(np.percentile(ms, q)) for key, q in PERCENTILES.items()}
    summary["max_ms"] = float(ms.max())
    return summary


def _run_with_noise(
    root: Path, sls: SecureLogin, devices: int, seconds: float, rate: float
) -> tuple[list[float], float]:
    """Logins while a second process sends failing requests at ``rate``: the latencies and
    the failing requests a second it really sent during the logins."""
    ctx = multiprocessing.get_context("spawn")
    ready, sent = ctx.Event(), ctx.Value("q", 0)
    stop_at = time.time() + NOISE_READY_TIMEOUT_S + seconds
    noise = ctx.Process(target=_noise, args=(str(root), rate, stop_at, ready, sent))
    progress(f"starting the noise process ({rate:g} failing requests/s), loading the store ...")
    noise.start()
    try:
        deadline = time.perf_counter() + NOISE_READY_TIMEOUT_S
        while not ready.wait(0.5):
            if not noise.is_alive():
                raise SystemExit(f"the noise process stopped (exit code {noise.exitcode})")
            if time.perf_counter() > deadline:
                raise SystemExit(f"the noise process was not ready in {NOISE_READY_TIMEOUT_S:g} s")
        progress(f"logins for {seconds:g} s with {rate:g} failing requests/s offered ...")
        before, began = sent.value, time.perf_counter()
        latencies = _logins(sls, devices, seconds)
        sent_per_s = (sent.value - before) / (time.perf_counter() - began)
    finally:
        noise.terminate()
        noise.join()
    return latencies, sent_per_s


def run(
    devices: int, seconds: float, rates: Sequence[float], root: Path
) -> tuple[dict[str, Any], dict[float, list[float]]]:
    """Every run's summary (as stored in the JSON) and its raw latencies, by offered rate."""
    progress(f"enrolling {devices:,} DSC+ devices in one SQLite store ...")
    setup = SecureLogin.open(root)
    names = [f"user{i}" for i in range(devices)]
    started = time.perf_counter()
    setup.enroll_bulk(
        names, DeviceType.DSC_PLUS, [_secret(i) for i in range(devices)], pins=[PIN] * devices
    )
    enroll = time.perf_counter() - started
    setup.store.close()
    progress(f"enrolled in {enroll:.1f} s; loading the store in the login process ...")
    sls = SecureLogin.open(root)
    sls.warm()
    runs: list[dict[str, Any]] = []
    latencies: dict[float, list[float]] = {}
    for rate in rates:
        if rate == 0:
            progress(f"logins for {seconds:g} s alone ...")
            latencies[rate], sent_per_s = _logins(sls, devices, seconds), 0.0
        else:
            latencies[rate], sent_per_s = _run_with_noise(root, sls, devices, seconds, rate)
        summary = _summary(latencies[rate], seconds)
        runs.append({"noise_rate_per_s": rate, "noise_sent_per_s": sent_per_s, **summary})
        progress(
            f"  {summary['logins']:.0f} logins, p50 {summary['p50_ms']:.2f} ms, "
            f"p99 {summary['p99_ms']:.2f} ms, max {summary['max_ms']:.1f} ms"
        )
    sls.store.close()
    quiet, busiest = runs[0], runs[-1]
    result = {
        "devices": devices,
        "seconds": seconds,
        "rates_per_s": list(rates),
        "enroll_s": enroll,
        "runs": runs,
        # The two-run summary of the first version of this report: alone vs the busiest run.
        "noise_rate_per_s": busiest["noise_rate_per_s"],
        "alone": quiet,
        "with_failing_requests": busiest,
        "p99_ratio": busiest["p99_ms"] / quiet["p99_ms"],
    }
    return result, latencies


def render(result: dict[str, Any]) -> str:
    quiet, busiest = result["alone"], result["with_failing_requests"]
    lines = [
        "## Logins while another process sends failing requests",
        "",
        f"{result['devices']:,} DSC+ devices in one SQLite store; single logins (challenge + "
        f"answer) back to back for {result['seconds']:g} s per run; noise: failing requests "
        "(unknown usernames) from a second process at the offered rate (0: alone). "
        f"`os.cpu_count()` = {os.cpu_count()}.",
        "",
        "| noise offered /s | noise sent /s | logins | logins/s | p50 ms | p90 ms | p99 ms "
        "| p99.9 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        offered = "0 (alone)" if r["noise_rate_per_s"] == 0 else f"{r['noise_rate_per_s']:g}"
        lines.append(
            f"| {offered} | {r['noise_sent_per_s']:.0f} | {r['logins']:.0f} "
            f"| {r['logins_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['p99_9_ms']:.2f} | {r['max_ms']:.1f} |"
        )
    lines += [
        "",
        f"p99 at {busiest['noise_rate_per_s']:g} failing requests/s / alone: "
        f"{result['p99_ratio']:.2f} (target: about 1). With {quiet['logins']:.0f} logins "
        "alone, p99.9 and max rest on a run's few slowest logins: read them as hints.",
    ]
    return "\n".join(lines) + "\n"


def machine_text() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def plot(result: dict[str, Any], latencies: dict[float, list[float]], path: Path) -> None:
    """Left: each percentile against the offered failing-request rate. Right: each run's
    latency by percentile (a log 'nines' axis), so the tails of the runs compare at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    runs = result["runs"]
    rates = [r["noise_rate_per_s"] for r in runs]
    styles = {
        "p50_ms": ("p50", "-", "o"),
        "p90_ms": ("p90", "-", "s"),
        "p99_ms": ("p99", "--", "^"),
        "p99_9_ms": ("p99.9", "--", "v"),
        "max_ms": ("max", ":", "x"),
    }
    figure, (by_rate, by_percentile) = plt.subplots(1, 2, figsize=(14, 5.5))
    colours = ("tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple")
    for (key, (label, style, marker)), colour in zip(styles.items(), colours, strict=True):
        by_rate.plot(rates, [r[key] for r in runs], style, marker=marker, color=colour, label=label)
    by_rate.set_xticks(rates, [f"{x:g}" if x else "0\n(alone)" for x in rates])
    by_rate.set_xlabel("failing requests offered by the noise process, requests/s")
    by_rate.set_title("login latency percentiles against offered failing-request rate")
    by_rate.legend(title="percentile", fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    # x = -log10(1 - q): 90% at 1, 99% at 2, 99.9% at 3; the last point is the slowest login.
    for i, r in enumerate(runs):
        ms = np.sort(np.asarray(latencies[r["noise_rate_per_s"]]) * 1000.0)
        quantiles = (np.arange(1, len(ms) + 1) - 0.5) / len(ms)
        label = "alone" if r["noise_rate_per_s"] == 0 else f"{r['noise_rate_per_s']:g} req/s"
        colour = "black" if r["noise_rate_per_s"] == 0 else plt.get_cmap("autumn")(i / len(runs))
        by_percentile.plot(-np.log10(1 - quantiles), ms, "-", color=colour, label=label)
    nines = [0.0, 50.0, 90.0, 99.0, 99.9, 99.99]
    by_percentile.set_xticks(
        [-np.log10(1 - q / 100) for q in nines], [f"p{q:g}" if q else "p0" for q in nines]
    )
    by_percentile.set_xlim(
        left=0, right=max(3.2, -np.log10(0.5 / max(map(len, latencies.values()))))
    )
    by_percentile.set_xlabel("percentile of the run's logins (log scale of nines)")
    by_percentile.set_title("latency by percentile, per noise rate")
    by_percentile.legend(
        title="noise offered", fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0)
    )
    for axis in (by_rate, by_percentile):
        axis.set_yscale("log")
        # Plain milliseconds (1, 2, 5, 10) on the log axis rather than powers of ten.
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.set_ylabel("login latency, ms (log scale)")
        axis.grid(True, which="both", alpha=0.3)
        axis.title.set_fontsize(10)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    figure.suptitle(
        f"Logins (challenge + answer) with {result['devices']:,} devices in one SQLite store, "
        f"{result['seconds']:g} s per run: {machine_text()}, {when}",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--devices", type=parse_size, help="enrolled devices (default 200k)")
    parser.add_argument("--seconds", type=float, help="seconds of logins per run (default 6)")
    parser.add_argument(
        "--rates",
        nargs="+",
        type=parse_rate,
        help="failing requests/s offered, one run each; 0 = alone (default 0 50 100 200)",
    )
    parser.add_argument("--rate", type=parse_rate, help="one noise rate: --rates 0 RATE")
    parser.add_argument("--quick", action="store_true", help="2k devices, 1 s per run")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    devices = args.devices if args.devices is not None else 2_000 if args.quick else 200_000
    seconds = args.seconds if args.seconds is not None else 1.0 if args.quick else 6.0
    if seconds <= 0:
        parser.error("--seconds must be more than 0")
    if args.rates and args.rate is not None:
        parser.error("give --rates or --rate, not both")
    rates = args.rates or ([0.0, args.rate] if args.rate is not None else DEFAULT_RATES)
    rates = sorted({0.0, *rates})  # the quiet run is the baseline of every ratio
    if len(rates) < 2:
        parser.error("--rates needs a rate above 0 to compare with the quiet run")
    with tempfile.TemporaryDirectory() as tmp:
        result, latencies = run(devices, seconds, rates, Path(tmp) / "data")
    report = render(result)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failing_requests.md").write_text(report)
    (args.out / "failing_requests.json").write_text(json.dumps(result, indent=2) + "\n")
    progress("plotting ...")
    plot(result, latencies, args.out / "failing_requests.png")
    for suffix in ("md", "json", "png"):
        progress(f"wrote {args.out / f'failing_requests.{suffix}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
