"""Open-loop latency of several server set-ups, alternated in rounds on one machine.

A noisy shared machine moves every latency run by run; what it moves alike is the
comparison of set-ups run side by side. Each round runs ``benches/loadtest.py --modes
open`` once per variant (a fresh data dir and server each time), in turn, and the report
gives per variant and offered rate the median and the min of p50/p99/p99.9 over the
rounds, with issue 14's target (p99 < 3 ms at 5,000/s) marked met or not met on the
median::

    python benches/open_loop_ab.py --rounds 3 --rate 1000,2500,5000 --seconds 6 \\
        --variant "2 workers=--workers 2" --variant "1 worker=--workers 1" \\
        --variant "old server=PYTHONPATH=/tmp/old-python --workers 2" --out DIR

A variant is ``NAME=[ENV=VALUE ...] [loadtest options]``: the environment settings go to
that variant's load test and its server (``PYTHONPATH`` there runs another copy of the
server's code with the same load generator). Writes ``DIR/open_loop_ab.md`` and
``DIR/open_loop_ab.json``, and keeps each run's own report in ``DIR/runs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: Issue 14's target for random arrivals.
TARGET_RATE, TARGET_P99_MS = 5000.0, 3.0
PERCENTILES = ("p50", "p99", "p99.9")


def parse_variant(text: str) -> tuple[str, dict[str, str], list[str]]:
    name, _, rest = text.partition("=")
    if not name or not rest.strip():
        raise argparse.ArgumentTypeError("--variant: NAME=[ENV=VALUE ...] [loadtest options]")
    words = shlex.split(rest)
    env: dict[str, str] = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return name.strip(), env, words


def run_once(
    variant: tuple[str, dict[str, str], list[str]], common: list[str], out: Path
) -> list[dict[str, Any]]:
    """One load test of one variant: its open-loop rows."""
    _name, env, options = variant
    command = [sys.executable, str(HERE / "loadtest.py"), "--modes", "open", *common, *options]
    command += ["--out", str(out)]
    subprocess.run(  # noqa: S603 - our own load test
        command, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL
    )
    rows: list[dict[str, Any]] = json.loads((out / "loadtest.json").read_text())["rows"]
    return [r for r in rows if r.get("loop") == "open"]


def summarize(runs: dict[str, list[list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Per variant and offered rate: median and min of each percentile over the rounds."""
    table = []
    for name, rounds in runs.items():
        rates = sorted({r["offered"] for rows in rounds for r in rows})
        for rate in rates:
            rows = [r for one in rounds for r in one if r["offered"] == rate]
            entry: dict[str, Any] = {
                "variant": name,
                "offered": rate,
                "rounds": len(rows),
                # What the variant ran against, and where: the targets table needs both.
                "server": rows[0].get("server", "sls-core"),
                "pin": rows[0].get("pin"),
            }
            for p in PERCENTILES:
                values = [r[p] for r in rows]
                entry[f"{p}_median"] = statistics.median(values)
                entry[f"{p}_min"] = min(values)
                entry[f"{p}_all"] = [round(v, 3) for v in values]
            entry["since_due_p99_median"] = statistics.median(r["since_due"]["p99"] for r in rows)
            entry["generator_late_p99_median"] = statistics.median(
                r["generator_late_p99"] for r in rows
            )
            entry["answered_median"] = statistics.median(r["rate"] for r in rows)
            table.append(entry)
    return table


def render(table: Sequence[dict[str, Any]], args: argparse.Namespace, load: str) -> str:
    lines = [
        "## Open-loop latency, variants alternated in rounds",
        "",
        f"`python benches/open_loop_ab.py --rounds {args.rounds} --seconds {args.seconds:g}"
        f" --rate {args.rate}` with {', '.join(f'`{v}`' for v in args.variant)};"
        f" {os.cpu_count()} CPUs, load average {load} (1/5/15 min, before and after)."
        " Median (min) over the rounds, in ms. Latency runs from when the gateway's login"
        " starts; *p99 since due* from when it was due (the generator's own lag added).",
        "",
        "| variant | offered/s | answered/s | p50 | p99 | p99.9 | p99 since due |"
        " generator late p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in table:
        cells = [f"{e[f'{p}_median']:.2f} ({e[f'{p}_min']:.2f})" for p in PERCENTILES]
        lines.append(
            f"| {e['variant']} | {e['offered']:,.0f} | {e['answered_median']:,.0f} |"
            f" {' | '.join(cells)} | {e['since_due_p99_median']:.2f} |"
            f" {e['generator_late_p99_median']:.2f} |"
        )
    lines.append("")
    for e in table:
        if e["offered"] == TARGET_RATE:
            met = e["p99_median"] < TARGET_P99_MS
            lines.append(
                f"{e['variant']}: p99 at {TARGET_RATE:,.0f}/s offered, median of"
                f" {e['rounds']} rounds {e['p99_median']:.2f} ms (each round:"
                f" {', '.join(f'{v:.2f}' for v in e['p99_all'])}); target p99 <"
                f" {TARGET_P99_MS:g} ms: {'met' if met else 'not met'}."
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--variant", action="append", required=True, help="NAME=[ENV=V] OPTS")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rate", default="1000,2500,5000")
    parser.add_argument("--users", default="10k")
    parser.add_argument("--out", type=Path, default=Path("bench-results/open-loop-ab"))
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    common = ["--seconds", f"{args.seconds:g}", "--rate", args.rate, "--users", args.users]
    before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs: dict[str, list[list[dict[str, Any]]]] = {name: [] for name, _, _ in variants}
    for k in range(args.rounds):
        # Each round in a rotated order: no variant always runs right after the same one.
        order = variants[k % len(variants) :] + variants[: k % len(variants)]
        for variant in order:
            name = variant[0]
            out = args.out / "runs" / f"{k}-{name.replace(' ', '_').replace('/', '_')}"
            print(f"round {k + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            runs[name].append(run_once(variant, common, out))
            print(f"  {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    load = f"{before} / " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    table = summarize(runs)
    text = render(table, args, load)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "open_loop_ab.md").write_text(text)
    (args.out / "open_loop_ab.json").write_text(
        json.dumps({"table": table, "runs": runs, "args": vars(args) | {"out": str(args.out)}})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
