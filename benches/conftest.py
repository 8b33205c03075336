"""pytest-benchmark setup for ``benches/test_bench_*.py``.

Two modes:

* Smoke (the default: ``pyproject.toml`` adds ``--benchmark-disable``): each benchmark
  runs once as a test of what it measures, and every batch is capped at
  :data:`SMOKE_MAX_ITEMS` items so the whole folder takes seconds.
* Benchmark (``--benchmark-enable``, e.g. ``make bench-pytest``): full sizes, with
  pytest-benchmark's statistics per group. Batches and per-item loops run different
  numbers of items per round (a peer loop runs a capped sample), so the per-round times
  of a group are not comparable; the summary printed at the end, and ``items_per_second``
  in ``--benchmark-json``, give verifications per second from each benchmark's best round.

``benches/report.py`` is the side-by-side table with ratios; these benchmarks are the
same workloads under pytest-benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

SMOKE_MAX_ITEMS = 1_000


@dataclass
class _Rate:
    group: str
    name: str
    items: int
    best_seconds: float


_RATES: list[_Rate] = []


def benchmarks_disabled(config: pytest.Config) -> bool:
    """True in the smoke run (same rule as pytest-benchmark's own session)."""
    return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")


@pytest.fixture(scope="session")
def batch_items(pytestconfig: pytest.Config) -> Callable[[int], int]:
    """``batch_items(n)``: ``n``, capped at :data:`SMOKE_MAX_ITEMS` in the smoke run."""
    smoke = benchmarks_disabled(pytestconfig)
    return lambda n: min(n, SMOKE_MAX_ITEMS) if smoke else n


@pytest.fixture
def measure(benchmark: Any, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``measure(group, items, fn, *args, **kwargs)``: benchmarks ``fn`` in ``group`` and
    returns its result; ``items`` (verifications per call) gives the rate in the summary."""
    recorded: list[tuple[str, int]] = []

    def run(group: str, items: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        benchmark.group = group
        benchmark.extra_info["items"] = items
        recorded.append((group, items))
        return benchmark(fn, *args, **kwargs)

    yield run
    stats = getattr(benchmark, "stats", None)
    if recorded and stats is not None:
        group, items = recorded[-1]
        _RATES.append(_Rate(group, request.node.name, items, stats.stats.min))


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]
) -> None:
    """Adds verifications per second (best round) to ``--benchmark-json`` output."""
    for bench in output_json.get("benchmarks", []):
        items = bench.get("extra_info", {}).get("items")
        best = bench.get("stats", {}).get("min")
        if items and best:
            bench["extra_info"]["items_per_second"] = items / best


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Prints verifications per second per benchmark group, fastest first."""
    if not _RATES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("verifications per second (best round; peers on a sample)")
    for group in sorted({rate.group for rate in _RATES}):
        write(f"{group}:")
        rates = [rate for rate in _RATES if rate.group == group]
        rates.sort(key=lambda rate: rate.best_seconds / rate.items)
        for rate in rates:
            per_second = rate.items / rate.best_seconds
            write(f"  {per_second:>16,.0f}/s  {rate.name}  ({rate.items:,} items per call)")
