"""The grpc.aio server: the six sls.v1 services, health checking (grpc.health.v1), server
reflection, TLS / mutual TLS, interceptors (access log, metrics, authorization), the audit
trail, and a graceful shutdown; beside it, in the same event loop, the HTTP/JSON API on the
same servicers (``http_listen``, :mod:`sls_core.server.http_api`).

Shutdown (SIGTERM, SIGINT, or :meth:`SlsServer.stop`): health goes NOT_SERVING for every
service, ``drain_seconds`` pass so load balancers notice, the port stops accepting calls,
in-flight calls get ``grace_seconds`` to finish (a batch commits all of its items or none,
so a cancelled one leaves nothing half-applied), then the worker threads, the audit file
and the store close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import (  # type: ignore[import-untyped]
    reflection,
    reflection_pb2,
    reflection_pb2_grpc,
)

from sls_core import __version__
from sls_core.api.v1 import (
    activation_pb2,
    activation_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    portal_pb2,
    portal_pb2_grpc,
    push_pb2,
    push_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from sls_core.clock import DAY
from sls_core.login import SecureLogin
from sls_core.server.audit import AuditTrail
from sls_core.server.config import ServerConfig
from sls_core.server.domain import Domain
from sls_core.server.http_api import HttpApi, api_routes
from sls_core.server.interceptors import (
    AccessLogInterceptor,
    AuthorizationInterceptor,
    MetricsInterceptor,
    QuotaInterceptor,
)
from sls_core.server.metrics import Metrics, PhaseTimes, serve_metrics
from sls_core.server.privacyidea import PrivacyIdeaApi
from sls_core.server.servicers import (
    ActivationServicer,
    AdminServicer,
    PolicyServicer,
    PortalServicer,
    PushServicer,
    VerificationServicer,
)
from sls_core.server.status import MalformedRequestGuard
from sls_core.server.telemetry import Tracing, start_tracing
from sls_core.store.base import StoreUnavailableError
from sls_core.store.sqlite import SqliteStore

__all__ = ["SERVICE_NAMES", "SlsServer", "run"]

#: How often a server on a shared store (PostgreSQL) checks that it can reach it; health
#: turns NOT_SERVING within this long of an outage and SERVING again after it.
STORE_PROBE_SECONDS = 1.0
#: How often a server checks whether the master key file changed (a live rotation).
KEY_FOLLOW_SECONDS = 1.0
#: How often a failed audit trail is tried again (seconds).
_AUDIT_PROBE_EVERY = 2.0
#: How often the embedded store's write-ahead log is checkpointed off the serving path
#: (0: never, SQLite's own in the COMMIT only). Often enough that the log stays short of
#: SQLite's threshold (1000 pages; 5,000 logins/s write about 2,000 a second), at which a
#: COMMIT checkpoints itself; not much more often, since the first commit after each
#: checkpoint starts the log over and syncs its header.
WAL_CHECKPOINT_SECONDS = 0.25
#: With the checkpointer running, a commit starts the log over itself only past this many
#: pages (40 MiB; see ``SqliteStore.checkpoint_past``).
WAL_RESTART_PAGES = 10_000

log = logging.getLogger("sls_core.server")

SERVICE_NAMES = (
    verification_pb2.DESCRIPTOR.services_by_name["VerificationService"].full_name,
    activation_pb2.DESCRIPTOR.services_by_name["ActivationService"].full_name,
    push_pb2.DESCRIPTOR.services_by_name["PushService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
    portal_pb2.DESCRIPTOR.services_by_name["PortalService"].full_name,
)


#: Server reflection v1; grpcio-reflection serves only v1alpha, whose messages are the same.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(server: grpc.aio.Server) -> None:
    """Server reflection, both versions: grpcurl and current tools ask for v1 first, older
    ones for v1alpha. The two differ only in their package, so the v1alpha servicer
    answers both."""
    names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": info}),)
    )


class WalCheckpointer:
    """Checkpoints the embedded store's write-ahead log from a thread of its own.

    SQLite otherwise checkpoints inside the COMMIT that takes the log past 1000 pages: that
    commit copies the pages into the database file and syncs both files (milliseconds on
    a real disk), and a small batch commits on the event loop, so every call of the process
    waited behind it. Checkpointed here every ``WAL_CHECKPOINT_SECONDS``, no commit copies
    the pages. A PASSIVE checkpoint takes no write lock and waits for no reader or writer;
    it only copies pages already committed, so what a commit acknowledged is as durable as
    before. Several processes on one file may each run one: a second checkpointer skips its
    turn. The log starts over when a writer finds every page copied: that commit syncs only
    the new log's header (one sync, under a millisecond here). A commit that reaches the
    autocheckpoint bound first does the checkpoint itself and syncs the log, the database
    and the header (about 3 ms here; with SQLite's bound of 1000 pages, once a second at
    5,000 logins/s, as the checkpointer rarely finds the log idle long enough to copy all of
    it): the server raises the bound to ``WAL_RESTART_PAGES``
    (``SqliteStore.checkpoint_past``), so this thread's checkpoints get there first and the
    log stays under 40 MiB."""

    def __init__(self, database: Path, interval: float = WAL_CHECKPOINT_SECONDS) -> None:
        self.database = database
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sls-wal-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        import sqlite3

        conn = sqlite3.connect(self.database, isolation_level=None, check_same_thread=True)
        try:
            while not self._stop.wait(self.interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as e:  # a busy or failing turn: the commits still work
                    log.debug("WAL checkpoint skipped", extra={"fields": {"error": str(e)}})
        finally:
            conn.close()


class SlsServer:
    """One server process. ``sls`` may be given (tests pass one with a manual clock);
    otherwise the embedded store in ``config.data_dir`` is opened by :meth:`start`."""

    def __init__(self, config: ServerConfig, *, sls: SecureLogin | None = None) -> None:
        self.config = config
        self.sls = sls
        self._owns_sls = sls is None
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(config.threads, thread_name_prefix="sls-domain")
        self.audit: AuditTrail | None = None
        self._audit_probe: asyncio.Future[None] | None = None
        self._key_follower: asyncio.Future[None] | None = None
        self._store_watcher: asyncio.Future[None] | None = None
        self._store_healthy = True
        self.port: int | None = None
        self.health: Any = None
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._metrics_http: Any = None
        #: The HTTP/JSON API, when ``http_listen`` is served.
        self.http: HttpApi | None = None
        #: What /readyz reports: the gRPC health of every service (see _publish_health).
        self.serving = False
        #: OpenTelemetry traces (``tracing``); None when off: nothing of it is installed.
        self.tracing: Tracing | None = None
        #: Debug timing of verification (SLS_CORE_DEBUG_PHASES); None when off.
        self.phases = PhaseTimes.from_environment()
        #: The embedded store's log checkpoints, off the serving path (SQLite only).
        self.checkpointer: WalCheckpointer | None = None

    def __repr__(self) -> str:
        return f"SlsServer(listen={self.config.listen!r}, port={self.port!r})"

    async def start(self) -> int:
        """Opens the store, binds the port and starts serving; returns the bound port."""
        config = self.config
        loop = asyncio.get_running_loop()
        self.tracing = start_tracing(config)  # before the HTTP app is made (it traces it)
        if self.sls is None:
            self.sls = await loop.run_in_executor(
                self.executor,
                functools.partial(
                    SecureLogin.open,
                    config.data_dir,
                    store=config.store,
                    auto_activation_delay=config.auto_activation_days * DAY,
                ),
            )
        # Before the port opens: the first login must not pay for loading the directory.
        await loop.run_in_executor(self.executor, self.sls.warm)
        database = getattr(self.sls.store, "path", None)
        if isinstance(self.sls.store, SqliteStore) and database and WAL_CHECKPOINT_SECONDS:
            self.checkpointer = WalCheckpointer(database)
            self.checkpointer.start()
            self.sls.store.checkpoint_past(WAL_RESTART_PAGES)
        self.audit = AuditTrail(config.audit_path)
        self.audit.phases = self.phases
        self.audit.on_health = lambda healthy: loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(self._follow_audit(healthy))
        )
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        domain = Domain(
            sls=self.sls,
            executor=self.executor,
            audit=self.audit,
            metrics=self.metrics,
            max_batch_items=config.max_batch_items,
            # On PostgreSQL a write is network round trips: never on the event loop (a
            # database that stops answering would stall every call of the process).
            inline_max_items=0 if config.store else config.inline_max_items,
            default_deadline=config.default_deadline_seconds,
            max_push_wait=config.max_push_wait_seconds,
            stopping=self._stopping,
            phases=self.phases,
        )
        if self.phases is not None:
            self.phases.watch(loop)
        if self.tracing is not None:
            self.tracing.trace_domain(domain)
            self.tracing.trace_store(self.sls.store)
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Several worker processes share the port; a single one must own it (gRPC
            # sets SO_REUSEPORT by default, which would let a second server bind silently).
            ("grpc.so_reuseport", 1 if config.workers > 1 else 0),
        ]
        quotas = QuotaInterceptor(config.quotas, self.metrics)
        server = grpc.aio.server(
            interceptors=[
                *(self.tracing.grpc_interceptors() if self.tracing is not None else ()),
                AccessLogInterceptor(),
                MetricsInterceptor(self.metrics),
                AuthorizationInterceptor(config.roles, tls=config.tls is not None),
                quotas,
            ],
            options=options,
        )
        # The generated registrars take a server; the guard acts as one for them.
        checked = cast(grpc.aio.Server, MalformedRequestGuard(server))
        verification = VerificationServicer(domain)
        activation = ActivationServicer(domain)
        push = PushServicer(domain)
        verification_pb2_grpc.add_VerificationServiceServicer_to_server(verification, checked)
        activation_pb2_grpc.add_ActivationServiceServicer_to_server(activation, checked)
        push_pb2_grpc.add_PushServiceServicer_to_server(push, checked)
        admin = AdminServicer(domain, serving=lambda: self.serving)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, checked)
        admin_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyServicer(domain), checked)
        portal_pb2_grpc.add_PortalServiceServicer_to_server(PortalServicer(domain), checked)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        _enable_reflection(server)
        api = None
        if config.http_listen is not None:  # built first: a bad route never leaves gRPC up
            api = self._http_api(domain, verification, activation, push, quotas)
            if self.tracing is not None:
                self.tracing.trace_http(api.app)
        try:
            self.port = self._bind(server)
        except OSError:
            await self._close_resources()
            raise
        await server.start()
        self._server = server
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving = True
        if api is not None:
            await self._start_http(api)
        if config.metrics_address and config.workers == 1:
            self._metrics_http = serve_metrics(config.metrics_address, self.metrics.registry)
        self._key_follower = asyncio.ensure_future(self._follow_keys())
        self._store_watcher = asyncio.ensure_future(self._watch_store())
        fields = {
            "listen": config.listen,
            "port": self.port,
            "tls": config.tls is not None,
            # What is true: client certificates are asked for (and verified) only then.
            "mutual_tls": bool(config.tls and config.tls.require_client_auth),
            "threads": config.threads,
            "audit_log": str(config.audit_path) if config.audit_path else None,
            "http_listen": config.http_listen if self.http is not None else None,
            "http_port": self.http.port if self.http is not None else None,
        }
        log.info("serving", extra={"fields": fields})
        if config.tls is None:
            log.warning(
                "plaintext gRPC without TLS: every caller is admin (development only)",
                extra={"fields": {"listen": config.listen}},
            )
        if config.audit_path is None:
            log.warning('the audit trail is off (audit_log = "")')
        return self.port

    def _http_api(
        self,
        domain: Domain,
        verification: VerificationServicer,
        activation: ActivationServicer,
        push: PushServicer,
        quotas: QuotaInterceptor,
    ) -> HttpApi:
        """The HTTP/JSON API (:mod:`sls_core.server.http_api`) on the same servicers."""
        config = self.config
        schemas: dict[str, Any] = {}
        routes = [
            *api_routes(verification, activation, push, schemas),
            *PrivacyIdeaApi(domain, verification, quotas).routes(schemas),
        ]
        return HttpApi(
            config,
            routes=routes,
            schemas=schemas,
            quotas=quotas,
            metrics=self.metrics,
            ready=lambda: self.serving,
            version=__version__,
        )

    async def _start_http(self, api: HttpApi) -> None:
        """Binds the HTTP/JSON API. The development default's port already taken is a
        warning (gRPC still serves); an address asked for that cannot be bound fails the
        start."""
        config = self.config
        try:
            await api.start()
        except OSError as e:
            if not config.http_listen_implicit:
                await self._abandon_start()
                raise
            log.warning(
                "HTTP/JSON API not served: its port is taken",
                extra={"fields": {"http_listen": config.http_listen, "error": str(e)}},
            )
            return
        except BaseException:
            await self._abandon_start()
            raise
        self.http = api

    async def _abandon_start(self) -> None:
        """A start that fails after the gRPC port opened: close it and everything else."""
        if self._server is not None:
            await self._server.stop(None)
        await self._close_resources()

    def _bind(self, server: grpc.aio.Server) -> int:
        config = self.config
        try:
            if config.tls is None:
                port = server.add_insecure_port(config.listen)
            else:
                tls = config.tls
                credentials = grpc.ssl_server_credentials(
                    [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())],
                    root_certificates=(
                        Path(tls.client_ca).read_bytes() if tls.client_ca is not None else None
                    ),
                    require_client_auth=tls.require_client_auth,
                )
                port = server.add_secure_port(config.listen, credentials)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {config.listen}: {e}") from None
        if port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        return port

    async def _follow_keys(self) -> None:
        """Moves to a rotated master key within a second even when no call arrives, so
        that ``rotate-master-key --retire`` is not kept waiting by an idle process."""
        loop = asyncio.get_running_loop()
        store = self.sls.store if self.sls is not None else None
        follow = getattr(store, "follow_keys", None)
        if follow is None:
            return
        assert self._stopping is not None
        reported: str | None = None
        while not self._stopping.is_set():
            await asyncio.sleep(KEY_FOLLOW_SECONDS)
            try:
                if await loop.run_in_executor(self.executor, follow):
                    log.info("following the rotated master key file")
                reported = None
            except Exception as e:
                # A key file the process cannot read (a wrong PIN after a switch to an HSM):
                # writes report it to their callers; say it once here, not every second.
                if str(e) != reported:
                    reported = str(e)
                    log.error(
                        "cannot follow the master key file",
                        extra={"fields": {"error": reported}},
                    )

    async def _publish_health(self) -> None:
        """SERVING while both the audit trail and the store work, else NOT_SERVING (the
        load balancer sends gateways to another node meanwhile)."""
        if self.stopping:
            return
        audit_ok = self.audit is None or self.audit.healthy
        self.serving = audit_ok and self._store_healthy
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _watch_store(self) -> None:
        """A store can go away under a running server (a PostgreSQL restart or failover,
        a store another process migrated to a newer schema): a ping every second turns
        health NOT_SERVING within a second of it, and SERVING again once the store
        answers; calls meanwhile are UNAVAILABLE."""
        store = self.sls.store if self.sls is not None else None
        ping = getattr(store, "ping", None)
        if ping is None:
            return
        loop = asyncio.get_running_loop()
        while not self.stopping:
            await asyncio.sleep(STORE_PROBE_SECONDS)
            error: str | None = None
            try:
                await loop.run_in_executor(None, ping)
            except StoreUnavailableError as e:
                error = str(e)
            healthy = error is None
            if healthy != self._store_healthy:
                self._store_healthy = healthy
                if healthy:
                    log.info("store reachable again")
                else:
                    log.error("store unreachable", extra={"fields": {"error": error}})
                await self._publish_health()

    async def _follow_audit(self, healthy: bool) -> None:
        """Health follows the audit sink: NOT_SERVING while it cannot be written (the load
        balancer sends gateways elsewhere), SERVING again once a write succeeds."""
        if self.stopping:
            return
        log.log(
            logging.INFO if healthy else logging.ERROR,
            "audit trail writable again" if healthy else "audit trail cannot be written",
            extra={"fields": {"path": str(self.config.audit_path)}},
        )
        await self._publish_health()
        if not healthy and self._audit_probe is None:
            self._audit_probe = asyncio.ensure_future(self._probe_audit())

    async def _probe_audit(self) -> None:
        """While the trail cannot be written no traffic comes (NOT_SERVING), so nothing
        would notice it is writable again: a probe record every 2 s does."""
        loop = asyncio.get_running_loop()
        try:
            while self.audit is not None and not self.audit.healthy and not self.stopping:
                await asyncio.sleep(_AUDIT_PROBE_EVERY)
                with contextlib.suppress(OSError):  # still failing: try again later
                    await loop.run_in_executor(
                        self.executor,
                        functools.partial(
                            self.audit.record, "audit.probe", "server", "-", outcome="OK"
                        ),
                    )
        finally:
            self._audit_probe = None

    @property
    def stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown (idempotent): NOT_SERVING, drain, stop accepting, let
        in-flight calls finish within ``grace`` seconds, close everything."""
        if self._stopping is None or self._stopped is None:
            return
        if self._stopping.is_set():
            await self._stopped.wait()
            return
        self._stopping.set()
        for task in (self._key_follower, self._store_watcher):
            if task is not None:
                task.cancel()
        config = self.config
        grace = config.grace_seconds if grace is None else grace
        log.info("shutting down", extra={"fields": {"grace_seconds": grace}})
        self.serving = False
        await self.health.enter_graceful_shutdown()
        if config.drain_seconds:
            await asyncio.sleep(config.drain_seconds)
        stopping = [self._server.stop(grace)] if self._server is not None else []
        if self.http is not None:
            stopping.append(self.http.stop())
        await asyncio.gather(*stopping)
        await self._close_resources()
        log.info("stopped")
        self._stopped.set()

    async def _close_resources(self) -> None:
        loop = asyncio.get_running_loop()
        if self.phases is not None:
            self.phases.unwatch()
        if self.checkpointer is not None:
            await loop.run_in_executor(None, self.checkpointer.stop)
            self.checkpointer = None
        await loop.run_in_executor(None, self.executor.shutdown, True)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        if self.audit is not None:
            self.audit.close()
        if self._owns_sls and self.sls is not None:
            self.sls.store.close()
        if self.tracing is not None:  # the spans still buffered go out
            await loop.run_in_executor(None, self.tracing.shutdown)

    def reopen_logs(self) -> None:
        """SIGHUP: the audit file is opened afresh (log rotation)."""
        if self.audit is not None:
            self.audit.reopen()
            log.info("audit log reopened", extra={"fields": {"path": str(self.audit.path)}})

    async def wait(self) -> None:
        """Until :meth:`stop` has finished."""
        if self._stopped is not None:
            await self._stopped.wait()


async def _serve(config: ServerConfig) -> None:
    server = SlsServer(config)
    loop = asyncio.get_running_loop()
    # Before the start: a SIGHUP (logrotate) that arrives while the server starts must not
    # be lost between opening the audit file and saying "serving" (reopen_logs does
    # nothing until the file is open, and the start opens the path as it is then).
    loop.add_signal_handler(signal.SIGHUP, server.reopen_logs)
    await server.start()
    # What the start loaded (the directory: half a million objects at 100k users) lives as
    # long as the process. A full collection walked all of it, 0.1-0.35 s with every call
    # of the process waiting, once in a while during a login storm; frozen, the collector
    # walks only what the calls allocate (gc.freeze exists for this).
    gc.collect()
    gc.freeze()
    if server.phases is not None:  # debug timing: the load test asks after each run
        loop.add_signal_handler(signal.SIGUSR1, server.phases.dump)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop()))
    await server.wait()


def run(config: ServerConfig) -> None:
    """Serves until SIGTERM or SIGINT (one process); SIGHUP reopens the audit file."""
    # Until the loop's handler is in place, a SIGHUP (logrotate) must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    asyncio.run(_serve(config))
