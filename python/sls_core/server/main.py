"""``sls-core serve``: the command that starts the gRPC server.

::

    sls-core serve                                   # 127.0.0.1:50051, ./data, development
                                                     # (and HTTP/JSON on 127.0.0.1:8080)
    sls-core serve --config sls.toml --workers 2     # production: TLS, roles, metrics, audit
    python -m sls_core.server serve --listen 127.0.0.1:50052 --data-dir /tmp/sls

With no config file it runs on the embedded SQLite store in ``--data-dir`` with development
keys generated there (``master-key.json``, 0600) and says where they are.

``--workers N`` starts N server processes that share the port with SO_REUSEPORT, the
pattern gRPC recommends for Python. They are started with the multiprocessing *spawn*
context, so nothing is forked from a process in which gRPC or the kernel's thread pool
already run (this supervisor never imports grpc); it forwards SIGTERM/SIGINT to them,
restarts one that dies, and serves their summed Prometheus metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from sls_core.errors import SlsError
from sls_core.server.config import DEFAULT_HTTP_LISTEN, ConfigError, ServerConfig, load_config
from sls_core.server.logs import setup_logging

__all__ = ["main"]

log = logging.getLogger("sls_core.server")

#: A worker that dies sooner than this after its start is not restarted again and again.
_MIN_UPTIME = 5.0


def _version() -> str:
    """The installed package's version (the wheel's metadata), else the extension's."""
    from importlib import metadata

    try:
        return metadata.version("sls_core")
    except metadata.PackageNotFoundError:
        from sls_core import __version__

        return str(__version__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sls-core", description="sls_core gRPC server")
    parser.add_argument("--version", action="version", version=f"sls-core {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the gRPC server (and the HTTP/JSON API)")
    serve.add_argument("--config", help="TOML config file (see sls_core.server.config)")
    serve.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:50051)")
    serve.add_argument(
        "--http-listen",
        help="HOST:PORT of the HTTP/JSON API, or 'off' (default: the config's http_listen; "
        f"with no config file {DEFAULT_HTTP_LISTEN}, skipped with a warning when taken)",
    )
    serve.add_argument("--data-dir", help="embedded store and keys (default ./data)")
    serve.add_argument(
        "--store",
        help="postgresql://USER@HOST:PORT/DB, shared by several nodes "
        "(default: $SLS_CORE_STORE, the config's store, else SQLite in the data dir)",
    )
    serve.add_argument("--workers", type=int, help="server processes sharing the port")
    serve.add_argument("--metrics-port", type=int, help="Prometheus on 127.0.0.1:PORT")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    return parser


def _config(args: argparse.Namespace) -> ServerConfig:
    if args.config:
        config = load_config(args.config)
    else:
        config = ServerConfig(http_listen=DEFAULT_HTTP_LISTEN, http_listen_implicit=True)
    if args.http_listen is not None:
        off = args.http_listen.strip().lower() in ("", "off")
        config = dataclasses.replace(
            config, http_listen=None if off else args.http_listen, http_listen_implicit=False
        )
    return config.with_overrides(
        listen=args.listen,
        data_dir=args.data_dir,
        store=args.store or os.environ.get("SLS_CORE_STORE") or None,
        workers=args.workers,
        metrics_port=args.metrics_port,
        log_level=args.log_level.upper() if args.log_level else None,
    )


def _prepare(config: ServerConfig, *, announce: bool) -> None:
    """Creates the store and the development keys once, before any worker starts, and says
    where they are. Opening SecureLogin starts neither gRPC nor the kernel's thread pool."""
    from sls_core.login import SecureLogin

    key_file = config.data_dir / "master-key.json"
    existed = key_file.exists()
    sls = SecureLogin.open(config.data_dir, store=config.store)
    sls.store.close()
    if not announce:
        return
    using_env = "SLS_CORE_MASTER_KEYS" in os.environ
    keys = "SLS_CORE_MASTER_KEYS (environment)" if using_env else str(key_file.resolve())
    fields = {
        "data_dir": str(config.data_dir.resolve()),
        "store": repr(sls.store),
        "master_key": keys,
        "sms_outbox": str((config.data_dir / "sms-outbox.jsonl").resolve()),
        "audit_log": str(config.audit_path.resolve()) if config.audit_path else None,
    }
    if not using_env and not existed:
        log.warning("generated development master key", extra={"fields": fields})
    else:
        log.info("shared store" if config.store else "embedded store", extra={"fields": fields})


def _worker(config: ServerConfig, index: int) -> None:
    """One server process (spawned: a fresh interpreter that imports grpc itself)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the server's own handler is set
    setup_logging(config.log_level)
    from sls_core.server.app import run

    try:
        run(config)
    except OSError as e:
        log.error("worker cannot start", extra={"fields": {"worker": index, "error": str(e)}})
        sys.exit(3)


class _Supervisor:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: dict[int, tuple[Any, float]] = {}
        self.stopping = False
        self.failed = False

    def start(self, index: int) -> None:
        process = self.ctx.Process(
            target=_worker, args=(self.config, index), name=f"sls-core-worker-{index}"
        )
        # Started ignoring SIGHUP (an ignored signal stays ignored across exec), so that a
        # log rotation while it starts does not kill it before its handler is set.
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGHUP, previous)
        self.workers[index] = (process, time.monotonic())
        log.info("worker started", extra={"fields": {"worker": index, "pid": process.pid}})

    def forward(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info("stopping workers", extra={"fields": {"signal": signal.Signals(signum).name}})
        self.stopping = True
        for process, _ in self.workers.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    def reopen(self, signum: int, _frame: Any) -> None:
        """SIGHUP: every worker reopens its audit file (log rotation)."""
        for process, _ in self.workers.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    def run(self) -> int:
        for index in range(self.config.workers):
            self.start(index)
        while self.workers:
            alive = [p.sentinel for p, _ in self.workers.values() if p.is_alive()]
            if alive:
                multiprocessing.connection.wait(alive, timeout=1.0)
            for index, (process, started) in list(self.workers.items()):
                if process.is_alive():
                    continue
                process.join()
                self._dead(process)
                del self.workers[index]
                if self.stopping:
                    continue
                log.error(
                    "worker exited",
                    extra={"fields": {"worker": index, "exitcode": process.exitcode}},
                )
                if time.monotonic() - started < _MIN_UPTIME:
                    self.failed = True
                    self.forward(signal.SIGTERM, None)
                else:
                    self.start(index)
        return 1 if self.failed else 0

    def _dead(self, process: Any) -> None:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ and process.pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]


def _serve_workers(config: ServerConfig) -> int:
    metrics_dir: str | None = None
    if config.metrics_port:
        # Set before any worker imports prometheus_client, so they write to shared files.
        metrics_dir = tempfile.mkdtemp(prefix="sls-core-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    supervisor = _Supervisor(config)
    signal.signal(signal.SIGTERM, supervisor.forward)
    signal.signal(signal.SIGINT, supervisor.forward)
    signal.signal(signal.SIGHUP, supervisor.reopen)
    http = None
    try:
        if config.metrics_port:
            from sls_core.server.metrics import serve_metrics

            http = serve_metrics(config.metrics_port)
        log.info(
            "supervising",
            extra={
                "fields": {
                    "workers": config.workers,
                    "listen": config.listen,
                    "http_listen": config.http_listen,
                }
            },
        )
        return supervisor.run()
    finally:
        if http is not None:
            http.shutdown()
            http.server_close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    # A log rotation (SIGHUP) must not end the server while it starts; the supervisor or
    # the server sets its own handler once it has something to reopen.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
    except ConfigError as e:
        print(f"sls-core: config error: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        _prepare(config, announce=True)
    except SlsError as e:
        # A start that cannot open the store (a missing or wrong master key, a file of a
        # newer version) is one line that says what to do, not a traceback.
        print(f"sls-core: cannot start: {e}", file=sys.stderr)
        return 2
    if config.workers == 1:
        from sls_core.server.app import run

        try:
            run(config)
        except OSError as e:
            log.error("cannot start", extra={"fields": {"error": str(e)}})
            return 3
        return 0
    return _serve_workers(config)


if __name__ == "__main__":
    raise SystemExit(main())
