"""Optional OpenTelemetry traces of the server (``tracing = "otlp" | "console" | "off"``).

When tracing is on, every gRPC call and every HTTP request gets a server span (method or
route, status code, peer), continuing the caller's trace when it sends a W3C
``traceparent`` (gRPC metadata or HTTP header). Inside it, the work a servicer hands to
the domain (:class:`~sls_core.server.domain.Domain` ``run`` / ``run_batch``) gets a child
span ``sls.domain <function>``, and each store write transaction one ``sls.store.write``,
on whichever thread runs them. Single Verify calls are coalesced into domain batches
(:mod:`sls_core.server.coalescing`): a call's transaction is its child when its batch runs
on the event loop for it; a batch on a worker thread serves several traces and gets none.
Health checks and reflection (gRPC), ``/healthz`` and ``/readyz`` (HTTP) are not traced: a
load balancer asks every second.

The standard variables configure the rest: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``,
the default, or ``grpc``), ``OTEL_SERVICE_NAME`` (default ``sls-core``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``
(default: follow the caller's decision, else sample everything) and ``OTEL_BSP_*``.

Never puts a request or answer body in a span: no secret, PIN, code, response, passcode or
token; the HTTP query string is cut from every attribute (a client may put anything in it).
The spans made here describe an error by its status code or exception type; the gRPC
instrumentation adds an ``exception`` event with the exception's text and traceback, text
that by the rules of sls_core never holds a secret (the log gets the same).

With tracing off nothing here is called and nothing of OpenTelemetry is imported: no
interceptor, no middleware, no wrapper is installed. This module itself imports neither
grpc, aiohttp nor OpenTelemetry at load time: ``sls-core serve`` checks the packages with
:func:`require_tracing` in a supervisor that must not load them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sls_core.server.config import ConfigError, ServerConfig

if TYPE_CHECKING:
    import grpc
    import grpc.aio
    from aiohttp import web
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from sls_core.server.domain import Domain
    from sls_core.store.base import Store

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "OTEL_EXTRA",
    "Tracing",
    "TracingUnavailableError",
    "require_tracing",
    "start_tracing",
]

#: What a start with tracing on but without the packages tells the operator to run.
OTEL_EXTRA = "pip install 'sls_core[otel]'"
#: ``service.name`` unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names another.
DEFAULT_SERVICE_NAME = "sls-core"
#: gRPC services never traced: probes and tools, not traffic.
_UNTRACED_SERVICES = ("grpc.health.", "grpc.reflection.")
#: HTTP probes never traced (OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS, when set, replaces it).
_UNTRACED_URLS = "/healthz,/readyz"
#: Status codes that make a server span an error (OpenTelemetry semantic conventions for
#: gRPC servers: a refused call is the client's error, not the server's).
_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
#: Attributes that may carry the request's query string, and what replaces it.
_URL_ATTRIBUTES = ("http.target", "http.url", "url.full")
_REDACTED = "REDACTED"
_PROTOCOLS = ("http/protobuf", "grpc")
#: Set on the wrapper of domain work already in a span (run_batch calls run).
_TRACED = "_sls_traced"


class TracingUnavailableError(ConfigError):
    """Tracing is configured but the packages of the ``otel`` extra are not installed."""


def _missing_packages(mode: str) -> TracingUnavailableError:
    return TracingUnavailableError(
        "tracing",
        f'"{mode}" needs the OpenTelemetry packages, which are not installed: {OTEL_EXTRA}',
    )


def _otlp_protocol() -> str:
    """The OTLP protocol of the standard variables (the traces' own first)."""
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = os.environ.get(variable, "").strip().lower()
        if not value:
            continue
        if value not in _PROTOCOLS:
            raise ConfigError(variable, f"must be one of {', '.join(_PROTOCOLS)}")
        return value
    return _PROTOCOLS[0]


def _needed_modules(mode: str) -> list[str]:
    modules = [
        "opentelemetry.sdk",
        "opentelemetry.instrumentation.grpc",
        "opentelemetry.instrumentation.aiohttp_server",
    ]
    if mode == "otlp":
        suffix = "grpc" if _otlp_protocol() == "grpc" else "http"
        modules.append(f"opentelemetry.exporter.otlp.proto.{suffix}")
    return modules


def require_tracing(mode: str) -> None:
    """:class:`TracingUnavailableError` (one line naming the extra) unless the packages
    ``mode`` needs are installed; a ConfigError for a bad OTLP protocol. Loads none of
    them (nor grpc): the supervisor of several workers calls it before it starts any."""
    if mode == "off":
        return
    for name in _needed_modules(mode):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package that is missing or broken
            found = False
        if not found:
            raise _missing_packages(mode)


def start_tracing(config: ServerConfig) -> Tracing | None:
    """The tracing of one server process, or None when ``config.tracing`` is "off" (then
    nothing is imported). Call it before the HTTP/JSON API builds its application: the
    aiohttp instrumentation traces the applications made after it, once per process (a
    second traced server in the same process sends its HTTP spans to the first one's
    exporter; ``sls-core serve`` runs one per process)."""
    if config.tracing == "off":
        return None
    require_tracing(config.tracing)
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError:  # installed but broken (a shadowing module, a partial install)
        raise _missing_packages(config.tracing) from None

    from sls_core import __version__

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    if "service.version" not in resource.attributes:
        resource = resource.merge(Resource({"service.version": str(__version__)}))
    # The sampler: TracerProvider reads OTEL_TRACES_SAMPLER itself (default: parent-based).
    provider = TracerProvider(resource=resource)
    processor: SpanProcessor
    if config.tracing == "console":
        # One JSON object per line on stdout (the logs are on stderr), as each span ends.
        console = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
        processor = SimpleSpanProcessor(console)
    else:
        processor = BatchSpanProcessor(_otlp_exporter())
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("sls_core.server", str(__version__))
    _log_as_the_server()
    os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", _UNTRACED_URLS)
    http = AioHttpServerInstrumentor()
    if not http.is_instrumented_by_opentelemetry:  # once per process
        http.instrument(tracer_provider=provider)
    return Tracing(config.tracing, provider, tracer, trace.get_current_span)


def _log_as_the_server() -> None:
    """The SDK's own warnings (a collector that does not answer) as the server's JSON
    lines on stderr, not as bare text among them."""
    server, sdk = logging.getLogger("sls_core"), logging.getLogger("opentelemetry")
    for handler in server.handlers:
        if handler not in sdk.handlers:
            sdk.addHandler(handler)
    if server.handlers:
        sdk.propagate = False


def _otlp_exporter() -> Any:
    """The OTLP exporter of the configured protocol; it reads its endpoint, headers,
    timeout and certificates from the OTEL_EXPORTER_OTLP_* variables."""
    try:
        if _otlp_protocol() == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
    except ImportError:
        raise _missing_packages("otlp") from None
    return OTLPSpanExporter()


@dataclass
class Tracing:
    """What tracing installs in one server process (see :func:`start_tracing`)."""

    mode: str
    provider: TracerProvider
    tracer: Tracer
    #: The span of the calling context (``opentelemetry.trace.get_current_span``).
    current_span: Callable[[], Any]

    def grpc_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The outermost server interceptors: the instrumentation's (one span per call,
        the caller's trace continued), then the one that puts the final status on it."""
        import grpc.aio
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        untraced = filters.any_of(*(filters.service_prefix(s) for s in _UNTRACED_SERVICES))
        grpc.aio.ServerInterceptor.register(GrpcStatusInterceptor)
        spans = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider, filter_=filters.negate(untraced)
        )
        status = GrpcStatusInterceptor(untraced, self.current_span)
        return [spans, status]

    def trace_http(self, app: web.Application) -> None:
        """The peer and a query-free target on each HTTP server span. ``app`` was made
        after :func:`start_tracing`, so its first middleware opens the span; this one
        runs inside it."""
        from aiohttp import web

        current_span = self.current_span

        @web.middleware
        async def peer_without_query(
            request: web.Request, handler: Callable[[web.Request], Any]
        ) -> web.StreamResponse:
            span = current_span()
            if span.is_recording():
                _annotate_http_span(span, request)
            return await handler(request)  # type: ignore[no-any-return]

        app.middlewares.insert(1, peer_without_query)

    def trace_domain(self, domain: Domain) -> None:
        """Domain work (``run`` / ``run_batch``) in a child span of the call's span."""
        from sls_core.store import WriterBusyError

        run, run_batch = domain.run, domain.run_batch
        tracer = self.tracer

        def in_span(fn: Callable[..., Any]) -> Callable[..., Any]:
            if getattr(fn, _TRACED, False):
                return fn
            from opentelemetry import context as otel_context
            from opentelemetry.trace import Status, StatusCode

            parent = otel_context.get_current()  # the call's: fn may run on another thread
            name = f"sls.domain {_work_name(fn)}"

            def traced(*args: Any, **kwargs: Any) -> Any:
                with tracer.start_as_current_span(
                    name, context=parent, record_exception=False, set_status_on_exception=False
                ) as span:
                    try:
                        return fn(*args, **kwargs)
                    except WriterBusyError:
                        # Not a failure: nothing was done, it runs again on a worker thread.
                        span.set_attribute("sls.store.busy", True)
                        raise
                    except BaseException as e:
                        span.set_status(Status(StatusCode.ERROR, type(e).__name__))
                        raise

            setattr(traced, _TRACED, True)
            return traced

        async def traced_run(context: Any, fn: Callable[..., Any], *args: Any) -> Any:
            return await run(context, in_span(fn), *args)

        async def traced_run_batch(
            context: Any, items: int, fn: Callable[..., Any], *args: Any
        ) -> Any:
            return await run_batch(context, items, in_span(fn), *args)

        # On this instance only: the servicers' one way into the domain, unchanged when off.
        domain.run = traced_run  # type: ignore[method-assign]
        domain.run_batch = traced_run_batch  # type: ignore[method-assign]

    def trace_store(self, store: Store) -> None:
        """Each write transaction of ``store`` made inside a traced call in its own span
        (every write of every backend goes through ``store.write``)."""
        from opentelemetry.trace import Status, StatusCode

        from sls_core.store import WriterBusyError

        write = store.write
        tracer, current_span = self.tracer, self.current_span
        attributes = {"db.system.name": _DB_SYSTEMS.get(type(store).__name__, "other_sql")}

        @contextlib.contextmanager
        def traced_write(*, wait: bool = True) -> Iterator[Any]:
            # Only inside a live call span: background work (key follower, probes) and a
            # coalesced batch that serves several traces at once get none.
            if not current_span().is_recording():
                with write(wait=wait) as tx:
                    yield tx
                return
            span = tracer.start_span("sls.store.write", attributes=attributes)
            try:
                with write(wait=wait) as tx:
                    yield tx
            except WriterBusyError:
                span.set_attribute("sls.store.busy", True)
                raise
            except BaseException as e:
                span.set_status(Status(StatusCode.ERROR, type(e).__name__))
                raise
            finally:
                span.end()

        store.write = traced_write  # type: ignore[method-assign]

    def shutdown(self) -> None:
        """Exports what is still buffered (blocking: call it off the event loop)."""
        self.provider.shutdown()


_DB_SYSTEMS = {"SqliteStore": "sqlite", "PostgresStore": "postgresql"}


def _work_name(fn: Callable[..., Any]) -> str:
    """``SecureLogin.issue_challenge``, ``VerificationServicer._batch``: what the domain
    runs, by its code name (never by its arguments)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return str(name).replace("<locals>.", "")


def _annotate_http_span(span: Any, request: web.Request) -> None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if request.remote:
        span.set_attribute("net.peer.ip", request.remote)
    if isinstance(peer, tuple) and len(peer) >= 2:
        span.set_attribute("net.peer.port", int(peer[1]))
    attributes = getattr(span, "attributes", None) or {}
    if not request.query_string:
        return
    # The instrumentation keeps the query (it redacts only a few cloud signature keys).
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str):
            span.set_attribute(key, value.partition("?")[0])
    if "url.query" in attributes:
        span.set_attribute("url.query", _REDACTED)


class GrpcStatusInterceptor:
    """Puts a call's final status code on its server span (``rpc.grpc.status_code``; an
    error status for the codes that are the server's fault). The instrumentation sees
    ``context.abort`` but not ``abort_with_status``, which every error here goes through
    (:mod:`sls_core.server.status`): without this a refused call would say OK.

    A ``grpc.aio.ServerInterceptor`` (registered as one when tracing starts: this module
    loads without grpc)."""

    def __init__(self, untraced: Callable[[Any], bool], current_span: Callable[[], Any]) -> None:
        self._untraced = untraced
        self._current_span = current_span
        self._cache: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or self._untraced(handler_call_details):
            return handler
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler)
        self._cache[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any) -> Any:
        import grpc

        kinds = (
            (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
            (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
            (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
            (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
        )
        for behavior, make in kinds:
            if behavior is not None:
                return make(
                    self._recorded(behavior),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _recorded(self, behavior: Any) -> Any:
        record = self._record
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: Any) -> Any:
                error: BaseException | None = None
                try:
                    async for item in behavior(request, context):
                        yield item
                except BaseException as e:
                    error = e
                    raise
                finally:
                    record(context, error)

            return stream

        async def call(request: Any, context: Any) -> Any:
            error: BaseException | None = None
            try:
                answer = behavior(request, context)
                return await answer if inspect.isawaitable(answer) else answer
            except BaseException as e:
                error = e
                raise
            finally:
                record(context, error)

        return call

    def _record(self, context: Any, error: BaseException | None) -> None:
        span = self._current_span()
        if not span.is_recording():
            return
        import grpc
        from opentelemetry.trace import Status, StatusCode

        code = context.code()
        if not isinstance(code, grpc.StatusCode):
            if error is None:
                code = grpc.StatusCode.OK
            elif type(error).__name__ == "CancelledError":
                code = grpc.StatusCode.CANCELLED
            else:
                code = grpc.StatusCode.UNKNOWN
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code.name in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.name))
