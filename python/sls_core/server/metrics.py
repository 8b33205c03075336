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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
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

__all__ = ["Metrics", "WorkerProcessCollector", "serve_metrics"]

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
        """Counts a batch's outcomes with one ``bincount``, not a Python step per item."""
        counts = np.bincount(outcomes, minlength=len(_OUTCOME_NAMES))
        for value in np.flatnonzero(counts).tolist():
            name = _OUTCOME_NAMES[value] if value < len(_OUTCOME_NAMES) else str(value)
            self._child(self.items, method, name).inc(int(counts[value]))
        locked = int(counts[LoginOutcome.LOCKED])
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
