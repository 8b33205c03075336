"""sls_core's OCRA kernel against a plain C loop on OpenSSL's SHA-1, one core, side by side.

Run it from the project root with the virtualenv's Python (``make bench`` does)::

    python benches/kernel_report.py [--out DIR] [--items 2M] [--rounds 5] [--quick]

It builds ``benches/ocra_ref.c`` with the system C compiler and libcrypto (Debian's
``gcc`` and ``libssl-dev``; ``scripts/system-packages.sh`` installs them) as
``cc -std=c11 -O3 -march=native ... -lcrypto``, writes one set of inputs for suite
``OCRA-1:HOTP-SHA1-8:QN06-PSHA1`` (random 20-byte keys, each item's key picked at random,
6-digit questions, stored SHA1(PIN)s, right answers from ``ocra.compute_batch`` with one
wrong and one malformed answer in every 64 items), checks that the C program's verdicts
equal ``ocra.verify_batch``'s, and then times both on the same inputs:

* fresh key per item: a keys column with each item's own key (6 SHA-1 compressions);
* prepared ``KeyTable`` addressed through ``key_index`` (4 compressions);

each against two C loops: the plain one (SHA1_Init/Update/Final, SHA_CTX key states: the
target's reference) and one on the bare block function (SHA1_Transform on a message padded
once, keys as 20-byte states: the kernel's own shortcuts, to show what is left);

with 1,000 distinct keys (they stay in the cache) and with 1M (each item's key is a cache
miss; prepared mode only). ``ocra.verify_batch`` runs with ``threads=1``; the C program is
single-threaded and stays running (``--serve``), so single passes of the three contenders
alternate: a round times k passes of each, the one going first rotating, and keeps each
one's best by the CPU time of the timed thread (C reads ``CLOCK_THREAD_CPUTIME_ID`` around
its loop, Python ``time.thread_time`` around the call, which runs on the calling thread
with ``threads=1``): on a machine shared with other work, the time spent waiting for a
core is left out. Wall-clock ratios go in the JSON too. The ratio sls_core / C of each
round is one sample; the table gives the min and the median over the rounds against the
target of 0.9. Writes ``DIR/kernel.md`` and ``DIR/kernel.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import sls_core
from sls_core import ocra

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
KEY_BYTES = 20
QUESTION_DIGITS = 6
RESPONSE_DIGITS = 8
BAD_EVERY = 64
"""Item ``i`` is wrong when ``i % 64 == 62`` and malformed when ``i % 64 == 63``."""
TARGET = 0.9
SOURCE = Path(__file__).with_name("ocra_ref.c")
CFLAGS = ["-std=c11", "-O3", "-march=native", "-Wall", "-Wextra", "-Werror"]
MAGIC = b"OCRAREF1"


@dataclass
class Workload:
    """``items`` OCRA verifications whose keys are drawn from ``keys`` distinct keys."""

    label: str
    key_table: npt.NDArray[np.uint8]
    key_index: npt.NDArray[np.uint64]
    questions: npt.NDArray[np.bytes_]
    pin_hashes: npt.NDArray[np.uint8]
    responses: npt.NDArray[np.bytes_]
    expected: npt.NDArray[np.uint8]
    modes: tuple[str, ...]

    @property
    def items(self) -> int:
        return len(self.key_index)

    @property
    def keys(self) -> int:
        return len(self.key_table)


def size_label(n: int) -> str:
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n:,}"


def parse_size(text: str) -> int:
    scales = {"k": 1_000, "m": 1_000_000}
    suffix = text[-1:].lower()
    value = int(text[:-1]) * scales[suffix] if suffix in scales else int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def make_workload(items: int, keys: int, modes: tuple[str, ...], seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    key_table = rng.integers(0, 256, size=(keys, KEY_BYTES), dtype=np.uint8)
    key_index = rng.integers(0, keys, size=items, dtype=np.uint64)
    digits = rng.integers(ord("0"), ord("9") + 1, size=(items, QUESTION_DIGITS), dtype=np.uint8)
    questions = digits.view(f"S{QUESTION_DIGITS}").reshape(items)
    pin_digests = b"".join(
        hashlib.sha1(b"%04d" % pin).digest()  # noqa: S324 -- PSHA1 is SHA-1 by RFC 6287
        for pin in range(10_000)
    )
    pin_table = np.frombuffer(pin_digests, dtype=np.uint8).reshape(10_000, 20)
    pin_hashes = np.ascontiguousarray(pin_table[rng.integers(0, 10_000, size=items)])
    right = ocra.compute_batch(
        SUITE, np.ascontiguousarray(key_table[key_index]), questions, pin_hashes=pin_hashes
    )
    matrix = right.view(np.uint8).reshape(items, RESPONSE_DIGITS).copy()
    expected = np.zeros(items, dtype=np.uint8)
    wrong = np.arange(BAD_EVERY - 2, items, BAD_EVERY)
    malformed = np.arange(BAD_EVERY - 1, items, BAD_EVERY)
    matrix[wrong, -1] = (matrix[wrong, -1] - ord("0") + 1) % 10 + ord("0")
    matrix[malformed, 3] = ord("x")
    expected[wrong] = sls_core.Outcome.WRONG
    expected[malformed] = sls_core.Outcome.MALFORMED
    responses = matrix.view(f"S{RESPONSE_DIGITS}").reshape(items)
    label = f"{size_label(keys)} keys"
    return Workload(label, key_table, key_index, questions, pin_hashes, responses, expected, modes)


def write_input(work: Workload, path: Path) -> None:
    """The C program's input file (layout in ocra_ref.c's header comment)."""
    suite = SUITE.encode()
    header = np.array(
        [work.items, work.keys, KEY_BYTES, QUESTION_DIGITS, RESPONSE_DIGITS, 20, len(suite)],
        dtype="<u8",
    )
    with path.open("wb") as out:
        out.write(MAGIC)
        out.write(header.tobytes())
        out.write(suite)
        for column in (
            work.key_table,
            work.key_index.astype("<u8"),
            work.questions,
            work.pin_hashes,
            work.responses,
        ):
            out.write(np.ascontiguousarray(column).tobytes())


def build_reference(folder: Path) -> tuple[Path, str]:
    """Compiles ocra_ref.c; returns the binary and the compile command."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise SystemExit(
            "kernel_report: no C compiler (install gcc and libssl-dev: scripts/system-packages.sh)"
        )
    binary = folder / "ocra_ref"
    command = [compiler, *CFLAGS, "-o", str(binary), str(SOURCE), "-lcrypto"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise SystemExit(
            "kernel_report: building ocra_ref.c failed (libssl-dev missing? run "
            f"scripts/system-packages.sh):\n{done.stderr}"
        )
    shown = [Path(compiler).name, *CFLAGS, "-o", "ocra_ref", "benches/ocra_ref.c", "-lcrypto"]
    return binary, " ".join(shown)


def run_reference(
    binary: Path, data: Path, mode: str, repeats: int, verdicts: Path | None = None
) -> dict[str, Any]:
    command = [str(binary), str(data), "--mode", mode, "--repeats", str(repeats)]
    if verdicts:
        command += ["--verdicts", str(verdicts)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise SystemExit(f"kernel_report: ocra_ref failed: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def sls_core_calls(work: Workload) -> dict[str, Callable[[], npt.NDArray[np.uint8]]]:
    """``ocra.verify_batch`` with ``threads=1`` for each key mode."""
    calls: dict[str, Callable[[], npt.NDArray[np.uint8]]] = {}
    if "fresh" in work.modes:
        keys = np.ascontiguousarray(work.key_table[work.key_index])

        def fresh() -> npt.NDArray[np.uint8]:
            return ocra.verify_batch(
                SUITE, keys, work.questions, work.responses, pin_hashes=work.pin_hashes, threads=1
            )

        calls["fresh"] = fresh
    if "prepared" in work.modes:
        table = sls_core.KeyTable(work.key_table, algorithm="sha1")

        def prepared() -> npt.NDArray[np.uint8]:
            return ocra.verify_batch(
                SUITE,
                table,
                work.questions,
                work.responses,
                pin_hashes=work.pin_hashes,
                key_index=work.key_index,
                threads=1,
            )

        calls["prepared"] = prepared
    return calls


class Reference:
    """The C program in ``--serve`` mode: one timed pass per request, inputs loaded once."""

    def __init__(self, binary: Path, data: Path) -> None:
        self.process = subprocess.Popen(  # noqa: S603
            [str(binary), str(data), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def seconds(self, mode: str) -> tuple[float, float]:
        """Wall-clock and CPU seconds of one pass in ``mode``."""
        assert self.process.stdin
        assert self.process.stdout
        self.process.stdin.write(mode + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        try:
            wall, cpu = (float(x) for x in answer.split())
        except ValueError:
            raise SystemExit(f"kernel_report: ocra_ref --serve answered {answer!r}") from None
        return wall, cpu

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)
        if self.process.stdout:
            self.process.stdout.close()


def seconds(call: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one call (``threads=1`` runs on this thread)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    call()
    return time.perf_counter() - wall, time.thread_time() - cpu


@dataclass
class WallRates:
    """The same passes timed by the wall clock (informational: they count the time another
    process had the core)."""

    c_rates: list[float] = field(default_factory=list)
    c_block_rates: list[float] = field(default_factory=list)
    sls_rates: list[float] = field(default_factory=list)


@dataclass
class Row:
    """One workload and key mode: the rates of each round (from the CPU time of the timed
    thread: on a shared machine, the time it waited for a core is left out) and ratios."""

    keys: str
    mode: str
    items: int
    c_rates: list[float] = field(default_factory=list)
    """The plain C loop (SHA1_Init/Update/Final): what the target is measured against."""
    c_block_rates: list[float] = field(default_factory=list)
    """The C loop on the bare block function with a message padded once (informational)."""
    sls_rates: list[float] = field(default_factory=list)
    wall: WallRates = field(default_factory=WallRates)

    @property
    def ratios(self) -> list[float]:
        return [s / c for s, c in zip(self.sls_rates, self.c_rates, strict=True)]

    @property
    def block_ratios(self) -> list[float]:
        return [s / c for s, c in zip(self.sls_rates, self.c_block_rates, strict=True)]

    def summary(self) -> dict[str, Any]:
        ratios, block = self.ratios, self.block_ratios
        return {
            **asdict(self),
            "ratios": ratios,
            "ratio_min": min(ratios),
            "ratio_median": statistics.median(ratios),
            "met": min(ratios) >= TARGET,
            "block_ratios": block,
            "block_ratio_min": min(block),
            "block_ratio_median": statistics.median(block),
            "wall_ratios": [
                s / c for s, c in zip(self.wall.sls_rates, self.wall.c_rates, strict=True)
            ],
        }


def measure(
    work: Workload,
    binary: Path,
    folder: Path,
    rounds: int,
    repeats: int,
    step: Callable[[str], None],
) -> tuple[list[Row], str]:
    data = folder / f"input-{work.keys}.bin"
    write_input(work, data)
    calls = sls_core_calls(work)
    mode = "both" if len(work.modes) == 2 else work.modes[0]
    verdicts = folder / f"verdicts-{work.keys}.bin"
    openssl = str(run_reference(binary, data, mode, 1, verdicts)["openssl"])
    c_verdicts = np.fromfile(verdicts, dtype=np.uint8)
    if not np.array_equal(c_verdicts, work.expected):
        raise SystemExit(f"kernel_report: the C verdicts are not the expected ones ({work.label})")
    for name, call in calls.items():
        if not np.array_equal(call(), c_verdicts):
            raise SystemExit(f"kernel_report: sls_core {name} disagrees with C ({work.label})")
    rows = {name: Row(work.label, name, work.items) for name in work.modes}
    reference = Reference(binary, data)
    try:
        for round_ in range(rounds):
            step(f"{work.label}: round {round_ + 1}/{rounds}")
            for name, call in calls.items():
                contenders: list[Callable[[], tuple[float, float]]] = [
                    lambda name=name: reference.seconds(name),
                    lambda name=name: reference.seconds(f"{name}-block"),
                    lambda call=call: seconds(call),
                ]
                best_cpu = [float("inf")] * len(contenders)
                best_wall = [float("inf")] * len(contenders)
                # Single passes of each, the one going first rotating: a slow spell of the
                # shared machine hits them alike.
                for repeat in range(repeats):
                    first = (round_ + repeat) % len(contenders)
                    for i in [*range(first, len(contenders)), *range(first)]:
                        wall, cpu = contenders[i]()
                        best_wall[i] = min(best_wall[i], wall)
                        best_cpu[i] = min(best_cpu[i], cpu)
                row = rows[name]
                for rates, best in (
                    ((row.c_rates, row.c_block_rates, row.sls_rates), best_cpu),
                    ((row.wall.c_rates, row.wall.c_block_rates, row.wall.sls_rates), best_wall),
                ):
                    for column, seconds_ in zip(rates, best, strict=True):
                        column.append(work.items / seconds_)
    finally:
        reference.close()
    return list(rows.values()), openssl


MODE_TEXT = {
    "fresh": "fresh key per item (6 compressions)",
    "prepared": "prepared KeyTable, key_index (4 compressions)",
}


def rate_text(rate: float) -> str:
    return f"{rate / 1e6:.2f} M/s"


def render(rows: Sequence[Row], info: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = [
        "# OCRA kernel vs a C loop on OpenSSL SHA-1 (one core)",
        "",
        f"`{settings['command']}`",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores; {info['openssl']}",
        f"- C reference: `{settings['compile']}`",
        f"- suite `{SUITE}`, {size_label(settings['items'])} items per call, "
        f"{settings['rounds']} rounds; a round keeps the best of {settings['repeats']} "
        "alternated passes of each side",
        "",
        "| Keys | Mode | C loop | C block fn | sls_core 1 thread | sls_core / C loop: min "
        "| median | target | status | sls_core / C block fn: min | median |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s = row.summary()
        status = "met" if s["met"] else "**not met**"
        rates = (row.c_rates, row.c_block_rates, row.sls_rates)
        lines.append(
            f"| {row.keys} | {MODE_TEXT[row.mode]} | "
            + " | ".join(rate_text(statistics.median(r)) for r in rates)
            + f" | {s['ratio_min']:.3f} | {s['ratio_median']:.3f} | ≥ {TARGET} | {status} "
            f"| {s['block_ratio_min']:.3f} | {s['block_ratio_median']:.3f} |"
        )
    lines += [
        "",
        "Rates are items per CPU second of the timed thread (CLOCK_THREAD_CPUTIME_ID in C, "
        "`time.thread_time` around the call in Python: on a shared machine the time spent "
        "waiting for a core is left out), medians over the rounds. Each round times every "
        "contender on the same inputs in alternated single passes, keeping each one's best; "
        "a ratio is sls_core's rate over C's in the same round. *C loop*: "
        "SHA1_Init/Update/Final per hash and SHA_CTX key states, as one would write it "
        "(the target's reference). *C block fn*: SHA1_Transform on a message "
        "padded once, only each item's fields rewritten, keys as 2 x 20 bytes of state: the "
        "same shortcuts the kernel takes (informational). The verdicts (OK, WRONG, MALFORMED) "
        "of every contender are checked equal before timing.",
    ]
    walls = "; ".join(
        f"{row.keys} {row.mode} {statistics.median(row.summary()['wall_ratios']):.3f}"
        for row in rows
    )
    lines[-1] += f" By the wall clock instead, sls_core / C loop (median): {walls}."
    if any(row.keys != rows[0].keys for row in rows):
        lines[-1] += (
            f" The {rows[-1].keys} row is the cache-miss regime: there C reads two 96-byte "
            "SHA_CTX per item, the KeyTable 40 bytes."
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    parser.add_argument("--items", type=parse_size, help="items per call (default 2M)")
    parser.add_argument("--rounds", type=int, help="alternated rounds (default 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per side and round")
    parser.add_argument("--quick", action="store_true", help="200k items, 3 rounds, 1k keys only")
    args = parser.parse_args(argv)
    args.items = args.items or (200_000 if args.quick else 2_000_000)
    args.rounds = args.rounds or (3 if args.quick else 5)
    command = " ".join(["python benches/kernel_report.py", *(argv or sys.argv[1:])])
    started = time.perf_counter()

    def step(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="sls-kernel-bench-") as tmp:
        folder = Path(tmp)
        binary, compile_text = build_reference(folder)
        scenarios = [(1_000, ("fresh", "prepared"))]
        if not args.quick:
            scenarios.append((1_000_000, ("prepared",)))
        for seed, (keys, modes) in enumerate(scenarios, 6287):
            step(f"inputs: {size_label(args.items)} items, {size_label(keys)} keys")
            work = make_workload(args.items, keys, modes, seed)
            measured, openssl = measure(work, binary, folder, args.rounds, args.repeats, step)
            rows += measured
            del work
    info = {**machine_info(), "openssl": openssl}
    settings = {
        "command": command,
        "compile": compile_text,
        "items": args.items,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "sls_core": sls_core.__version__ if hasattr(sls_core, "__version__") else "dev",
    }
    text = render(rows, info, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel.md").write_text(text + "\n")
    document = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "settings": settings,
        "target": TARGET,
        "rows": [row.summary() for row in rows],
    }
    (args.out / "kernel.json").write_text(json.dumps(document, indent=2) + "\n")
    step(f"done; wrote {args.out}/kernel.md, kernel.json")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
