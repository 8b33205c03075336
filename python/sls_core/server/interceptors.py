"""Server interceptors: who is calling and may they (authorization by role), metrics, and the
access log. The servicers never see any of this; they read the caller (for the audit trail)
from a context variable the authorization interceptor sets.

Roles come from the client certificate's subject CN under mutual TLS (``roles`` in the
config). On a plaintext development server every caller is ``admin``. Health checking and
reflection are open to every caller that got through the TLS handshake.

Each interceptor wraps a method's handler once and caches the wrapper, so a call pays a
dict lookup and a few attribute reads per interceptor, not a new closure.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from sls_core.server.metrics import Metrics
from sls_core.server.status import abort_with

__all__ = [
    "ADMIN",
    "CALLER",
    "GATEWAY",
    "AccessLogInterceptor",
    "AuthorizationInterceptor",
    "Caller",
    "MetricsInterceptor",
    "QuotaInterceptor",
    "current_caller",
    "refusal",
    "required_role",
]

access_log = logging.getLogger("sls_core.server.access")

GATEWAY, ADMIN = "gateway", "admin"
#: Whole services a gateway may call (PortalService: the Client Portal's self-service).
_GATEWAY_SERVICES = frozenset(
    {
        "sls.v1.VerificationService",
        "sls.v1.PushService",
        "sls.v1.PolicyService",
        "sls.v1.PortalService",
    }
)
#: Single methods a gateway may call in services otherwise reserved to admins.
_GATEWAY_METHODS = frozenset(
    {
        "/sls.v1.ActivationService/CreateActivation",
        "/sls.v1.ActivationService/CompleteActivation",
        "/sls.v1.ActivationService/SendSmsActivation",
        "/sls.v1.ActivationService/Recover",
    }
)
#: Standard services any caller may use (load balancers, grpcurl).
_OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


def required_role(method: str) -> str | None:
    """The least role that may call ``method`` ("/package.Service/Method"): None for open
    services, "gateway" or "admin"."""
    service = method[1:].rpartition("/")[0]
    if service in _OPEN_SERVICES:
        return None
    if service in _GATEWAY_SERVICES or method in _GATEWAY_METHODS:
        return GATEWAY
    return ADMIN


def refusal(role: str | None, method: str, needed: str | None) -> str | None:
    """Why a caller with ``role`` may not call ``method`` that needs ``needed`` (see
    :func:`required_role`), or None when it may. gRPC and HTTP refuse with these words."""
    if needed is None or role in (ADMIN, needed):
        return None
    what = "no role" if role is None else f"role {role}"
    return f"{what} may not call {method} (needs {needed})"


@dataclass(frozen=True)
class Caller:
    """Who is calling: ``identity`` is the certificate CN (or ``insecure:<peer>``)."""

    identity: str
    role: str | None
    request_id: str


CALLER: ContextVar[Caller | None] = ContextVar("sls_core_caller", default=None)
_ANONYMOUS = Caller("-", None, "-")


def current_caller() -> Caller:
    return CALLER.get() or _ANONYMOUS


class _RefusedError(Exception):
    """An interceptor's refusal: its code, text, ``ErrorInfo`` reason and retry delay."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        reason: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.reason = reason
        self.retry_after = retry_after

    async def abort(self, context: Any) -> None:
        await abort_with(
            context, self.code, self.details, self.reason, retry_after=self.retry_after
        )


def _status_of(error: BaseException | None, context: Any) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class _Wrapping(grpc.aio.ServerInterceptor):
    """Wraps each method's behaviour with :meth:`before` / :meth:`after`."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Any, Any]] = {}

    def before(self, method: str, context: Any) -> Any:
        """Runs first; returns state for :meth:`after`; raises ``_RefusedError`` to refuse."""
        return None

    def after(self, method: str, context: Any, state: Any, code: grpc.StatusCode) -> None:
        """Runs last, with the call's status code."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]  # type: ignore[no-any-return]
        wrapped = self._wrap(handler, method)
        self._cache[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any, method: str) -> grpc.RpcMethodHandler[Any, Any]:
        before, after = self.before, self.after

        async def unary_response(behavior: Any, request: Any, context: Any) -> Any:
            try:
                state = before(method, context)
            except _RefusedError as refused:
                after(method, context, None, refused.code)
                await refused.abort(context)
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as e:
                error = e
                raise
            finally:
                after(method, context, state, _status_of(error, context))

        async def stream_response(behavior: Any, request: Any, context: Any) -> Any:
            try:
                state = before(method, context)
            except _RefusedError as refused:
                after(method, context, None, refused.code)
                await refused.abort(context)
            error: BaseException | None = None
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as e:
                error = e
                raise
            finally:
                after(method, context, state, _status_of(error, context))

        def bind_unary(behavior: Any) -> Any:
            # Also a response-streaming handler written as a coroutine that calls
            # context.write (health Watch): gRPC tells the kinds apart by the function.
            async def call(request: Any, context: Any) -> Any:
                return await unary_response(behavior, request, context)

            return call

        def bind_stream(behavior: Any) -> Any:
            if not inspect.isasyncgenfunction(behavior):
                return bind_unary(behavior)

            async def call(request: Any, context: Any) -> Any:
                async for item in stream_response(behavior, request, context):
                    yield item

            return call

        des, ser = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(bind_unary(handler.unary_unary), des, ser)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(bind_stream(handler.unary_stream), des, ser)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(bind_unary(handler.stream_unary), des, ser)
        return grpc.stream_stream_rpc_method_handler(bind_stream(handler.stream_stream), des, ser)


class AuthorizationInterceptor(_Wrapping):
    """Maps the caller to a role and refuses (PERMISSION_DENIED) what the role may not call.

    With TLS, the identity is the client certificate's subject CN and the role is
    ``roles[CN]``; a caller without a certificate, or with a CN not in ``roles``, has no
    role. Without TLS every caller is ``admin`` (development on loopback)."""

    def __init__(self, roles: Mapping[str, str], *, tls: bool) -> None:
        super().__init__()
        self._roles = dict(roles)
        self._tls = tls
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-"
        self._required: dict[str, str | None] = {}

    def _caller(self, context: Any) -> Caller:
        request_id = f"{self._prefix}{next(self._ids):x}"
        if not self._tls:
            return Caller(f"insecure:{context.peer()}", ADMIN, request_id)
        names = context.auth_context().get("x509_common_name")
        if not names:
            return Caller(f"anonymous:{context.peer()}", None, request_id)
        cn = bytes(names[0]).decode("utf-8", "replace")
        return Caller(cn, self._roles.get(cn), request_id)

    def before(self, method: str, context: Any) -> Any:
        caller = self._caller(context)
        CALLER.set(caller)
        try:
            needed = self._required[method]
        except KeyError:
            needed = self._required[method] = required_role(method)
        refused = refusal(caller.role, method, needed)
        if refused is not None:
            raise _RefusedError(grpc.StatusCode.PERMISSION_DENIED, refused, "PERMISSION_DENIED")
        return None


class QuotaInterceptor(_Wrapping):
    """Per-caller quotas on the calls that cost money or create state (texts, activation
    offers, pushes): at most ``per_minute[method]`` calls a minute per caller identity, as a
    token bucket in each server process; past it RESOURCE_EXHAUSTED says the limit and
    when to retry. Runs after authorization (it needs the caller)."""

    #: Past this many buckets the oldest state is dropped (callers come and go).
    MAX_BUCKETS = 100_000

    def __init__(self, per_minute: Mapping[str, int], metrics: Metrics) -> None:
        super().__init__()
        self._rates = {name: float(n) for name, n in per_minute.items() if n > 0}
        self._metrics = metrics
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def _wrap(self, handler: Any, method: str) -> grpc.RpcMethodHandler[Any, Any]:
        # Most calls (every verification) have no quota: their handler is left as it is,
        # so they pay nothing for this interceptor beyond one dictionary lookup.
        if method.rpartition("/")[2] not in self._rates:
            return handler  # type: ignore[no-any-return]
        return super()._wrap(handler, method)

    def before(self, method: str, context: Any) -> Any:
        refused = self.charge_or_wait(current_caller().identity, method.rpartition("/")[2])
        if refused is not None:
            details, wait = refused
            raise _RefusedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, details, "RATE_LIMITED", retry_after=wait
            )
        return None

    def charge(self, identity: str, name: str) -> str | None:
        """Takes one call of method ``name`` from ``identity``'s bucket; the refusal (with
        when to retry) when the bucket is empty. The HTTP API charges the same buckets."""
        refused = self.charge_or_wait(identity, name)
        return None if refused is None else refused[0]

    def charge_or_wait(self, identity: str, name: str) -> tuple[str, float] | None:
        """As :meth:`charge`, the refusal with the seconds it tells the caller to wait."""
        rate = self._rates.get(name)
        if rate is None:
            return None
        now = time.monotonic()
        key = (identity, name)
        tokens, last = self._buckets.get(key, (rate, now))
        tokens = min(rate, tokens + (now - last) * rate / 60.0)
        if tokens < 1.0:
            self._metrics.quota_refused(name)
            wait = max(1, round((1.0 - tokens) * 60.0 / rate))
            return (
                f"quota: at most {rate:.0f} {name} calls a minute per caller; retry in {wait} s",
                float(wait),
            )
        if len(self._buckets) >= self.MAX_BUCKETS:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now)
        return None


class MetricsInterceptor(_Wrapping):
    """Requests by method and status code, latency, calls in progress."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def before(self, method: str, context: Any) -> Any:
        self._metrics.started(method)
        return time.perf_counter()

    def after(self, method: str, context: Any, state: Any, code: grpc.StatusCode) -> None:
        started = state if state is not None else time.perf_counter()
        self._metrics.finished(method, code.name, time.perf_counter() - started)


class AccessLogInterceptor(_Wrapping):
    """One JSON line per call: method, caller identity and role, status, duration."""

    def before(self, method: str, context: Any) -> Any:
        return time.perf_counter()

    def after(self, method: str, context: Any, state: Any, code: grpc.StatusCode) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        caller = current_caller()
        access_log.info(
            "call",
            extra={
                "fields": {
                    "method": method,
                    "caller": caller.identity,
                    "role": caller.role,
                    "request_id": caller.request_id,
                    "code": code.name,
                    "duration_ms": round((time.perf_counter() - state) * 1000, 3),
                }
            },
        )
