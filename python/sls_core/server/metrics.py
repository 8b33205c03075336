"""Prometheus metrics of the gRPC server and its HTTP/JSON API: requests and items by method
(or route) and outcome, latency, batch sizes and lockouts.

Labels are method names, route templates (``POST /v1/verify``, ``GET
/v1/pushes/{challenge_id}``), status codes and outcome names only: never a username, a
device or anything a caller typed. With several worker processes the metrics go through
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor
before it starts the workers) and the supervisor serves the sum of them.

Process and runtime metrics: ``process_*`` (CPU seconds, resident and virtual memory, open
and maximum file descriptors, start time; read from ``/proc``, so Linux only) per process
with a ``worker`` label (``"0"``, ``"1"``, ...; the supervisor's own as ``"supervisor"``),
never summed; ``python_info``; and ``python_gc_*`` with one worker only (the garbage
collector can only be asked in-process, and the supervisor's own would mislead).

Debug timing (:class:`PhaseTimes`, off unless ``SLS_CORE_DEBUG_PHASES`` names a directory):
where a verification batch spends its time (queued, on the loop or a thread, before its
audit lines, waiting for the audit lock, writing them, committing), how late the event loop
runs its timers and how long the garbage collector pauses it. Each worker writes what it
saw to ``DIR/phases-<pid>.json`` on SIGUSR1 (the load test asks after each run) and starts
afresh. It holds durations only; when off, each call site pays one ``is None`` test.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from sls_core.outcome import LoginOutcome

__all__ = ["DEBUG_PHASES_ENV", "Metrics", "PhaseTimes", "WorkerProcessCollector", "serve_metrics"]

#: Names the directory debug phase timings are written to (unset: no timing at all).
DEBUG_PHASES_ENV = "SLS_CORE_DEBUG_PHASES"
#: How often the event-loop lag probe asks to be woken (its lateness is the lag).
LOOP_PROBE_SECONDS = 0.002
#: At most this many samples of one phase between two dumps (the rest are only counted).
_MAX_SAMPLES = 500_000

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
_OUTCOME_NAMES = [o.name for o in LoginOutcome]
#: At most this many outcomes are counted by Python (see ``Metrics.outcomes``).
_FEW_OUTCOMES = 64


class Metrics:
    """One set of metrics per server (its own registry, so tests can run several servers in
    one process). Label children are cached: a request costs a few dict lookups."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sls_grpc_requests",
            "gRPC calls by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "sls_grpc_request_seconds",
            "Server time of a gRPC call, by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "sls_grpc_requests_in_progress",
            "gRPC calls being served, by method.",
            ["method"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.items = Counter(
            "sls_verify_items",
            "Decisions (login attempts, push answers) by method and outcome.",
            ["method", "outcome"],
            registry=r,
        )
        self.batch_items = Histogram(
            "sls_verify_batch_items",
            "Items per VerifyBatch / VerifyStream message.",
            ["method"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.lockouts = Counter(
            "sls_locked_outcomes",
            "Attempts refused because the user is locked out (LOCKED outcomes).",
            registry=r,
        )
        self.quota_refusals = Counter(
            "sls_quota_refusals",
            "Calls refused because their caller was over its per-minute quota.",
            ["method"],
            registry=r,
        )
        self.http_requests = Counter(
            "sls_http_requests",
            "HTTP/JSON calls by route and HTTP status.",
            ["route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "sls_http_request_seconds",
            "Server time of an HTTP/JSON call, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_progress = Gauge(
            "sls_http_requests_in_progress",
            "HTTP/JSON calls being served, by route.",
            ["route"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def quota_refused(self, method: str) -> None:
        self._child(self.quota_refusals, method).inc()

    def started(self, method: str) -> None:
        self._child(self.in_progress, method).inc()

    def finished(self, method: str, code: str, seconds: float) -> None:
        self._child(self.in_progress, method).dec()
        self._child(self.requests, method, code).inc()
        self._child(self.latency, method).observe(seconds)

    def http_started(self, route: str) -> None:
        self._child(self.http_in_progress, route).inc()

    def http_finished(self, route: str, status: int, seconds: float) -> None:
        self._child(self.http_in_progress, route).dec()
        self._child(self.http_requests, route, str(status)).inc()
        self._child(self.http_latency, route).observe(seconds)

    def outcomes(self, method: str, outcomes: npt.NDArray[np.uint8], *, batch: bool) -> None:
        """Counts a batch's outcomes with one ``bincount``, not a Python step per item (a
        few items are counted by Python: ``bincount`` costs more per call than the work).
        One increment per outcome present, in the order of the outcome values."""
        if len(outcomes) > _FEW_OUTCOMES:
            bins = np.bincount(outcomes, minlength=len(_OUTCOME_NAMES))
            counts = dict(zip(np.flatnonzero(bins).tolist(), bins[bins > 0].tolist(), strict=True))
        else:
            counts = {}
            for value in outcomes.tolist():
                counts[value] = counts.get(value, 0) + 1
        for value in sorted(counts):
            name = _OUTCOME_NAMES[value] if value < len(_OUTCOME_NAMES) else str(value)
            self._child(self.items, method, name).inc(counts[value])
        locked = counts.get(int(LoginOutcome.LOCKED), 0)
        if locked:
            self.lockouts.inc(locked)
        if batch:
            self._child(self.batch_items, method).observe(len(outcomes))

    def outcome(self, method: str, outcome: LoginOutcome) -> None:
        self._child(self.items, method, outcome.name).inc()
        if outcome is LoginOutcome.LOCKED:
            self.lockouts.inc()


class WorkerProcessCollector(Collector):
    """``process_*`` of several processes, one series each with a ``worker`` label.

    ``workers`` is called at each scrape: worker label -> pid (or ``"self"``), so a restarted
    worker shows up with its new pid (and a new ``process_start_time_seconds``).
    """

    def __init__(self, workers: Callable[[], Mapping[str, int | str]]) -> None:
        self._workers = workers

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for worker, pid in self._workers().items():
            one = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            for metric in one.collect():
                family = families.get(metric.name)
                if family is None:
                    family = Metric(metric.name, metric.documentation, metric.type)
                    families[metric.name] = family
                for sample in metric.samples:
                    labels = {**sample.labels, "worker": worker}
                    family.add_sample(sample.name, labels, sample.value)
        return list(families.values())


def serve_metrics(
    address: tuple[str, int],
    registry: CollectorRegistry | None = None,
    workers: Callable[[], Mapping[str, int | str]] | None = None,
) -> Any:
    """Serves ``/metrics`` on ``address`` (host, port) from a daemon thread, with the process
    and runtime metrics. With ``registry``: that one process (``worker="0"``). Without: the
    sum of every worker's files in ``PROMETHEUS_MULTIPROC_DIR`` (the supervisor), and the
    ``process_*`` of ``workers()`` (label -> pid) and of the supervisor itself."""
    host, port = address
    if registry is None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]

        def processes() -> dict[str, int | str]:
            return {**(workers() if workers is not None else {}), "supervisor": "self"}

        registry.register(WorkerProcessCollector(processes))
    else:
        registry.register(WorkerProcessCollector(lambda: {"0": "self"}))
        registry.register(GC_COLLECTOR)
    registry.register(PLATFORM_COLLECTOR)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


class PhaseTimes:
    """Debug timing of where verification waits (see the module docstring): durations in
    seconds by phase name, per process, summarised as percentiles by :meth:`summary`.

    A batch's own phases are kept per thread between :meth:`batch_started` and
    :meth:`batch_finished`; the audit trail reports its lock wait and write through
    :meth:`audit_written`, so the time after the audit lines (the COMMIT, with any WAL
    checkpoint it runs, and the unlock) is known without touching the store. Appends
    rely on the GIL (``array.append`` is atomic), so worker threads need no lock."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._samples: dict[str, array[float]] = {}
        self._dropped: dict[str, int] = {}
        self._local = threading.local()
        self._since = time.monotonic()
        self._gc_started = 0.0
        self._probe: asyncio.TimerHandle | None = None

    @classmethod
    def from_environment(cls) -> PhaseTimes | None:
        directory = os.environ.get(DEBUG_PHASES_ENV)
        return cls(directory) if directory else None

    def add(self, phase: str, seconds: float) -> None:
        samples = self._samples.get(phase)
        if samples is None:
            samples = self._samples.setdefault(phase, array("d"))
        if len(samples) < _MAX_SAMPLES:
            samples.append(seconds)
        else:
            self._dropped[phase] = self._dropped.get(phase, 0) + 1

    def batch_started(self) -> float:
        """Marks the start of a verification batch on this thread; returns the time."""
        local = self._local
        local.audit = None
        local.started = time.perf_counter()
        return local.started  # type: ignore[no-any-return]

    def audit_written(self, called: float, locked: float, written: float) -> None:
        """The audit trail's write: called, file lock taken, bytes appended and unlocked."""
        self.add("audit lock wait", locked - called)
        self.add("audit append", written - locked)
        if getattr(self._local, "started", None) is not None:
            self._local.audit = (called, written)

    def batch_finished(self, where: str) -> None:
        """Ends this thread's batch (``where``: ``inline``, ``thread``): its run time, and
        split at its audit write: before it (locks, BEGIN, kernel, settle) and after it
        (COMMIT with any checkpoint, unlock)."""
        local = self._local
        started = getattr(local, "started", None)
        if started is None:
            return
        now = time.perf_counter()
        self.add(f"batch run ({where})", now - started)
        if local.audit is not None:
            called, written = local.audit
            self.add("batch before audit", called - started)
            self.add("batch commit after audit", now - written)
        local.started = None

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts the event-loop lag probe and the garbage collector's pause timing."""
        gc.callbacks.append(self._on_gc)
        expected = time.perf_counter() + LOOP_PROBE_SECONDS

        def probe() -> None:
            nonlocal expected
            now = time.perf_counter()
            self.add("event loop lag", max(0.0, now - expected))
            expected = now + LOOP_PROBE_SECONDS
            self._probe = loop.call_later(LOOP_PROBE_SECONDS, probe)

        self._probe = loop.call_later(LOOP_PROBE_SECONDS, probe)

    def unwatch(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.add(f"gc pause (gen {info['generation']})", time.perf_counter() - self._gc_started)

    def summary(self) -> dict[str, Any]:
        """Per phase: count, total, p50/p99/p99.9/max in milliseconds, over the window."""
        import numpy as np

        phases: dict[str, dict[str, float]] = {}
        for phase, samples in sorted(self._samples.items()):
            if not samples:
                continue
            values = np.frombuffer(samples, dtype=np.float64) * 1e3
            p50, p99, p999 = np.percentile(values, (50, 99, 99.9)).tolist()
            phases[phase] = {
                "count": len(values) + self._dropped.get(phase, 0),
                "total_ms": round(float(values.sum()), 3),
                "p50_ms": round(p50, 4),
                "p99_ms": round(p99, 4),
                "p99.9_ms": round(p999, 4),
                "max_ms": round(float(values.max()), 4),
                "over_1ms": int((values >= 1.0).sum()),
            }
        return {
            "pid": os.getpid(),
            "seconds": round(time.monotonic() - self._since, 3),
            "phases": phases,
        }

    def dump(self) -> Path:
        """Writes :meth:`summary` to ``DIR/phases-<pid>.json`` (whole, by a rename) and
        starts a new window."""
        summary = self.summary()
        self._samples, self._dropped = {}, {}
        self._since = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"phases-{os.getpid()}.json"
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(summary, indent=1))
        partial.replace(path)
        return path
