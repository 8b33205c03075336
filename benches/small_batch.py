"""The fixed cost of a small store-backed verification batch, two copies of the code side by
side in one run.

A server verifies single Verify calls coalesced into tiny batches (a stream message
carries about 7 attempts at 5,000 logins/s), so what a batch of 1-8 attempts costs no
matter its size (the write transaction, the plan's columns, the audit lines) is what
pushes the open-loop tail up (issue 14). Run it from the project root with the
virtualenv's Python::

    python benches/small_batch.py --old /tmp/old-python [--new python] [--sizes 1,4,8]
        [--batches 2000] [--rounds 5] [--users 10k] [--kinds store,server] [--cold]
        [--out DIR]

Each contender (``--old`` and ``--new``: folders holding an ``sls_core`` package, with
its built native module) runs in a worker process of its own, which enrolls ``--users``
users with the load test's device mix (``benches/loadtest.py``: DSC+, IB Key, Platinum,
code cards; 1% wrong and 1% malformed answers) in a fresh SQLite store. The workers are
then asked in turn, round after round (which goes first swaps every round), to verify
``--batches`` batches of each size one after the other with ``wait=False``, as a server's
event loop does; only the loop of ``verify_batch`` calls is timed. Kind ``store`` is
``SecureLogin.verify_batch`` alone; ``server`` adds what the server does per batch of
coalesced calls: the audit lines (one caller and request id per item) inside the
transaction, and the outcome metrics after it. ``--cold`` flushes the CPU caches before
each batch, untimed: inside a server, gRPC's work between two stream messages leaves a
batch's code and data out of cache, and it runs about 1.7x slower than in a tight loop.

Both workers get the same attempts in the same order (same seed), so their verdicts must
be the same: the report says whether they were (``verdicts_equal``). The ratio old/new is
taken per round; the table gives its min and median. Writes ``DIR/small_batch.md`` and
``DIR/small_batch.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STARTED = time.perf_counter()
KINDS = ("store", "server")


#: The folder holding the sls_core package this Python imports (with its native module,
#: which a checkout's ``python/`` has only after ``maturin develop``).
def _installed() -> Path:
    spec = importlib.util.find_spec("sls_core")
    if spec is None or spec.origin is None:
        raise SystemExit("sls_core is not installed in this Python (make setup)")
    return Path(spec.origin).resolve().parents[1]


INSTALLED = _installed()
#: ``--cold``: touched between batches to push the code and data out of L2 (4 MB here).
EVICT_BYTES = 8 << 20


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def progress(text: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {text}", file=sys.stderr, flush=True)


# -- the worker: one copy of the code ----------------------------------------------------------
class Worker:
    """A contender's process: the workload, the audit trail and the metrics of one copy."""

    def __init__(self, data: Path, users: int) -> None:
        sys.path.insert(0, str(HERE))
        from loadtest import Workload
        from sls_core.server.audit import AuditTrail
        from sls_core.server.metrics import Metrics

        self.workload = Workload(data / "store", users)
        self.audit = AuditTrail(data / "audit.log")
        self.metrics = Metrics()

    def run(self, size: int, batches: int, kind: str, cold: bool = False) -> dict[str, Any]:
        """Times ``batches`` batches of ``size`` fresh attempts; returns the microseconds
        per batch and every verdict, in order. ``cold``: before each batch (untimed) the
        CPU caches are flushed by touching a buffer larger than L2, as a server's gRPC work
        between two stream messages does; only the batches are timed."""
        import numpy as np

        evict = np.zeros(EVICT_BYTES, np.uint8) if cold else None
        users, tokens, responses = self.workload.attempts(size * batches)
        sls, audit, metrics = self.workload.sls, self.audit, self.metrics
        server = kind == "server"
        callers = [("gateway-1", f"req-{k}") for k in range(size)]
        results = []

        def audited(result: Any, names: list[str]) -> None:
            audit.verdicts_of_calls(
                "login.verify", callers, names, result.device_ids, result.outcomes
            )

        spent = 0.0
        for b in range(batches):
            s = slice(b * size, (b + 1) * size)
            names = users[s]
            if evict is not None:
                evict[::64] += 1  # one write per cache line
            started = time.perf_counter()
            if server:
                result = sls.verify_batch(
                    names,
                    tokens[s],
                    responses[s],
                    wait=False,
                    before_commit=lambda r, names=names: audited(r, names),
                )
                metrics.outcomes("Verify", result.outcomes, batch=False)
            else:
                result = sls.verify_batch(names, tokens[s], responses[s], wait=False)
            spent += time.perf_counter() - started
            results.append(result)
        outcomes = [int(o) for r in results for o in r.outcomes.tolist()]
        return {"us_per_batch": spent / batches * 1e6, "outcomes": outcomes}


def worker_main(data: Path, users: int) -> int:
    """Answers the controller's commands (one JSON line each) on stdout, one line each."""
    worker = Worker(data, users)
    import sls_core

    print(json.dumps({"ready": str(Path(sls_core.__file__).resolve().parent)}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        answer = worker.run(
            command["size"], command["batches"], command["kind"], command.get("cold", False)
        )
        print(json.dumps(answer), flush=True)
    return 0


# -- the controller ------------------------------------------------------------------------------
class Contender:
    def __init__(self, name: str, python_dir: Path, data: Path, users: int) -> None:
        self.name = name
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(python_dir.resolve()), *filter(None, [env.get("PYTHONPATH")])]
        )
        self.proc = subprocess.Popen(  # noqa: S603 - this script, run as a worker
            [sys.executable, __file__, "--worker", str(data), "--users", str(users)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            self.package = self._answer()["ready"]
        except BaseException:
            self.close()  # no pipe left open behind a worker that did not start
            raise

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the worker ended (exit {self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, size: int, batches: int, kind: str, cold: bool = False) -> dict[str, Any]:
        assert self.proc.stdin is not None
        command = {"size": size, "batches": batches, "kind": kind, "cold": cold}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):  # a worker that ended: the pipe is broken
                self.proc.stdin.close()
        self.proc.wait(timeout=60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def measure(
    old: Path,
    new: Path,
    *,
    sizes: Sequence[int],
    batches: int,
    rounds: int,
    users: int,
    kinds: Sequence[str],
    cold: bool = False,
) -> dict[str, Any]:
    """Every (kind, size) for both contenders, alternated in ``rounds``."""
    with tempfile.TemporaryDirectory(prefix="sls-small-batch-") as tmp:
        contenders = [Contender("old", old, Path(tmp) / "old", users)]
        try:
            contenders.append(Contender("new", new, Path(tmp) / "new", users))
            progress(f"old: {contenders[0].package}; new: {contenders[1].package}")
            times: dict[tuple[str, int, str], list[float]] = {}
            equal = True
            for r in range(rounds):
                for kind in kinds:
                    for size in sizes:
                        order = contenders if r % 2 == 0 else contenders[::-1]
                        answers = {c.name: c.run(size, batches, kind, cold) for c in order}
                        equal &= answers["old"]["outcomes"] == answers["new"]["outcomes"]
                        for name, answer in answers.items():
                            times.setdefault((kind, size, name), []).append(answer["us_per_batch"])
                        progress(
                            f"round {r + 1}/{rounds} {kind} x{size}: old"
                            f" {answers['old']['us_per_batch']:.1f} us, new"
                            f" {answers['new']['us_per_batch']:.1f} us per batch"
                        )
        finally:
            for c in contenders:
                c.close()
    rows = []
    for kind in kinds:
        for size in sizes:
            old_us, new_us = times[(kind, size, "old")], times[(kind, size, "new")]
            ratios = [o / n for o, n in zip(old_us, new_us, strict=True)]
            rows.append(
                {
                    "kind": kind,
                    "size": size,
                    "old_us": {"min": min(old_us), "median": statistics.median(old_us)},
                    "new_us": {"min": min(new_us), "median": statistics.median(new_us)},
                    "ratio": {"min": min(ratios), "median": statistics.median(ratios)},
                    "rounds": {"old_us": old_us, "new_us": new_us},
                }
            )
    return {"rows": rows, "verdicts_equal": equal}


def markdown(result: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = [
        "# Small verification batches: old vs new, side by side",
        "",
        f"`python benches/small_batch.py {settings['argv']}` on {os.cpu_count()} cores;"
        f" {settings['rounds']} rounds of {settings['batches']} batches per size,"
        f" {settings['users']} users (the load test's device mix), SQLite, `wait=False`.",
        "",
        "| kind | attempts per batch | old us/batch min / median | new us/batch min / median"
        " | old/new min / median |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['kind']} | {row['size']} | {row['old_us']['min']:.1f} /"
            f" {row['old_us']['median']:.1f} | {row['new_us']['min']:.1f} /"
            f" {row['new_us']['median']:.1f} | {row['ratio']['min']:.2f} /"
            f" {row['ratio']['median']:.2f} |"
        )
    lines += ["", f"Same verdicts from both: {'yes' if result['verdicts_equal'] else 'NO'}.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--old", type=Path, help="a folder holding the old sls_core package")
    parser.add_argument(
        "--new", type=Path, default=INSTALLED, help="default: the sls_core this Python imports"
    )
    parser.add_argument("--sizes", default="1,4,8")
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--users", default="10k")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument(
        "--cold",
        action="store_true",
        help="flush the CPU caches before each batch (untimed), as a server's gRPC work does",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker, parse_size(args.users))
    if args.old is None:
        parser.error("--old is required: a folder holding the sls_core to compare with")
    kinds = [k for k in args.kinds.split(",") if k]
    if not set(kinds) <= set(KINDS):
        parser.error(f"--kinds: each one of {', '.join(KINDS)}")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    settings = {
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "sizes": sizes,
        "batches": args.batches,
        "rounds": args.rounds,
        "users": parse_size(args.users),
        "kinds": kinds,
        "cold": args.cold,
    }
    result = measure(
        args.old,
        args.new,
        sizes=sizes,
        batches=args.batches,
        rounds=args.rounds,
        users=parse_size(args.users),
        kinds=kinds,
        cold=args.cold,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "small_batch.json").write_text(
        json.dumps({"settings": settings, **result}, indent=1)
    )
    (args.out / "small_batch.md").write_text(markdown(result, settings))
    print(markdown(result, settings))
    progress(f"wrote {args.out / 'small_batch.md'}")
    progress(f"wrote {args.out / 'small_batch.json'}")
    return 0 if result["verdicts_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
