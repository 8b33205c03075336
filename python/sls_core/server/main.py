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
import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from sls_core.errors import SlsError
from sls_core.server.config import (
    DEFAULT_HTTP_LISTEN,
    TRACING_MODES,
    ConfigError,
    ServerConfig,
    apply_environment,
    load_config,
    split_host_port,
)
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
    # Listed for --help only: main() hands `admin ...` to sls_core.remote_admin unparsed.
    commands.add_parser("admin", help="client services over gRPC: sls-core admin --help")
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
        "(default: $SLS_CORE_STORE_URL or $SLS_CORE_STORE, the config's store, else SQLite "
        "in the data dir)",
    )
    serve.add_argument("--workers", type=int, help="server processes sharing the port")
    serve.add_argument("--metrics-port", type=int, help="Prometheus on 127.0.0.1:PORT")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    serve.add_argument(
        "--tracing",
        choices=TRACING_MODES,
        help="OpenTelemetry traces: otlp (to $OTEL_EXPORTER_OTLP_ENDPOINT), console (stdout) "
        "or off (default: the config's tracing); needs the otel extra",
    )
    return parser


def _config(args: argparse.Namespace) -> ServerConfig:
    if args.config:
        config = load_config(args.config)
    else:
        config = ServerConfig(http_listen=DEFAULT_HTTP_LISTEN, http_listen_implicit=True)
    config = apply_environment(config)  # SLS_CORE_*: over the file, under the flags
    if args.http_listen is not None:
        off = args.http_listen.strip().lower() in ("", "off")
        config = dataclasses.replace(
            config, http_listen=None if off else args.http_listen, http_listen_implicit=False
        )
    return config.with_overrides(
        listen=args.listen,
        data_dir=args.data_dir,
        store=args.store,
        workers=args.workers,
        metrics_port=args.metrics_port,
        log_level=args.log_level.upper() if args.log_level else None,
        tracing=args.tracing,
    )


def _refuse_taken_port(address: str, key: str, host: str, port: int) -> None:
    """OSError naming ``address`` when something already listens there. Checked before the
    store is opened, so a second ``sls-core serve`` fails in one line (gRPC's core would log
    its own bind failure first); a race with another process is still caught by the bind."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # an unknown host: the server's own bind says so
    for family, kind, proto, _, sockaddr in addresses:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:
            continue  # e.g. no IPv6 on this machine: the server binds what it can
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                probe.bind(sockaddr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise OSError(
                        f"cannot listen on {address} ({key}): address already in use"
                    ) from None


def _check_ports(config: ServerConfig) -> None:
    _refuse_taken_port(config.listen, "listen", *split_host_port(config.listen))
    # The development default's HTTP port taken is only a warning (see SlsServer).
    if config.http_listen is not None and not config.http_listen_implicit:
        http = config.http_listen
        _refuse_taken_port(http, "http_listen", *split_host_port(http, "http_listen"))
    metrics = config.metrics_address
    if metrics is not None:
        key = "metrics_listen" if config.metrics_listen is not None else "metrics_port"
        host, port = metrics
        _refuse_taken_port(config.metrics_listen or f"{host}:{port}", key, host, port)


def _cannot_start(error: BaseException, code: int) -> int:
    """The one line a failed start prints (stderr; the journal under systemd)."""
    if isinstance(error, OSError) and error.strerror:  # not "[Errno 13] ..."
        reason = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        reason = str(error) or type(error).__name__
    print(f"sls-core: cannot start: {reason}", file=sys.stderr)
    return code


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


#: How often a worker checks that its supervisor is still there (seconds).
SUPERVISOR_CHECK_SECONDS = 1.0


def _stop_with_supervisor(supervisor: int, index: int) -> None:
    """A worker whose supervisor died (``kill -9``, the OOM killer) stops too, the way a
    SIGTERM stops it: nothing else would ever end it, and it would go on holding the port
    and the store with nobody to restart or stop it (a daemon thread, off the loop)."""
    while os.getppid() == supervisor:
        time.sleep(SUPERVISOR_CHECK_SECONDS)
    log.error("supervisor gone: stopping", extra={"fields": {"worker": index}})
    os.kill(os.getpid(), signal.SIGTERM)


def _worker(config: ServerConfig, index: int, supervisor: int | None = None) -> None:
    """One server process (spawned: a fresh interpreter that imports grpc itself)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the server's own handler is set
    setup_logging(config.log_level)
    from sls_core.server.app import run

    if supervisor is not None:
        threading.Thread(
            target=_stop_with_supervisor, args=(supervisor, index), daemon=True
        ).start()

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
            target=_worker,
            args=(self.config, index, os.getpid()),
            name=f"sls-core-worker-{index}",
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
    if config.metrics_address:
        # Set before any worker imports prometheus_client, so they write to shared files.
        metrics_dir = tempfile.mkdtemp(prefix="sls-core-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    supervisor = _Supervisor(config)
    signal.signal(signal.SIGTERM, supervisor.forward)
    signal.signal(signal.SIGINT, supervisor.forward)
    signal.signal(signal.SIGHUP, supervisor.reopen)
    http = None
    try:
        if config.metrics_address:
            from sls_core.server.metrics import serve_metrics

            def pids() -> dict[str, int | str]:  # per-worker process metrics, label = index
                return {str(i): p.pid for i, (p, _) in list(supervisor.workers.items()) if p.pid}

            http = serve_metrics(config.metrics_address, workers=pids)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["admin"]:
        # A client of a running server: it loads neither the store nor the engine.
        from sls_core import remote_admin

        return remote_admin.main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
        if config.tracing != "off":  # the packages, before any worker starts
            from sls_core.server.telemetry import require_tracing

            require_tracing(config.tracing)
    except ConfigError as e:
        print(f"sls-core: config error: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        _check_ports(config)
    except OSError as e:
        return _cannot_start(e, 3)
    try:
        _prepare(config, announce=True)
    except (SlsError, OSError) as e:
        # A start that cannot open the store (a missing or wrong master key, a file of a
        # newer version, a data directory it may not write) is one line that says what to
        # do, not a traceback.
        return _cannot_start(e, 2)
    if config.workers == 1:
        from sls_core.server.app import run

        try:
            run(config)
        except OSError as e:
            return _cannot_start(e, 3)
        except ConfigError as e:  # tracing's packages installed but broken
            return _cannot_start(e, 2)
        return 0
    try:
        return _serve_workers(config)
    except OSError as e:  # the supervisor's metrics port, taken since the check
        return _cannot_start(e, 3)


if __name__ == "__main__":
    raise SystemExit(main())
