"""The one place where errors become gRPC status codes (:func:`rpc`, :func:`abort_for`):

* :class:`~sls_core.errors.InvalidInputError` -> INVALID_ARGUMENT ``"field: rule"``;
* :class:`~sls_core.values.ActivationError`, :class:`~sls_core.values.SharingError` ->
  FAILED_PRECONDITION with the reason ("already used or expired", "less secure device");
* :class:`RefusedError` -> its own code (RESOURCE_EXHAUSTED for an oversized batch);
* :class:`~sls_core.rules.quotas.QuotaExceededError` -> RESOURCE_EXHAUSTED naming the
  limit and how long to wait;
* :class:`DeadlinePassedError` -> DEADLINE_EXCEEDED (nothing was done);
* anything else -> INTERNAL "internal error" (the traceback goes to the log, never to the
  caller).

A wrong answer is never an error: it is an outcome. No status detail or log line written
here carries a secret, response, code, PIN, passcode or token: the domain's errors name
the field and the rule only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

import grpc
import grpc.aio

from sls_core.errors import InvalidInputError
from sls_core.rules.quotas import QuotaExceededError
from sls_core.store.base import StoreUnavailableError
from sls_core.values import ActivationError, SharingError

__all__ = [
    "Context",
    "DeadlinePassedError",
    "MalformedRequest",
    "MalformedRequestGuard",
    "RefusedError",
    "abort_for",
    "check_request",
    "rpc",
]

log = logging.getLogger("sls_core.server")

Context = grpc.aio.ServicerContext[Any, Any]
F = TypeVar("F", bound=Callable[..., Any])


class RefusedError(Exception):
    """A refusal with its own status code (RESOURCE_EXHAUSTED for an oversized batch)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class DeadlinePassedError(Exception):
    """The call's deadline passed before its work started; nothing was done."""


async def abort_for(error: BaseException, context: Context, method: str) -> None:
    """Ends the call with the status code of ``error`` (never returns)."""
    if isinstance(error, InvalidInputError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{error.field}: {error.rule}")
    if isinstance(error, ActivationError | SharingError):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, error.reason)
    if isinstance(error, RefusedError):
        await context.abort(error.code, error.details)
    if isinstance(error, QuotaExceededError):
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    if isinstance(error, StoreUnavailableError):
        # Never a verdict while the database cannot be reached: the gateway retries here
        # or on another node (health turns NOT_SERVING meanwhile).
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
    if isinstance(error, DeadlinePassedError):
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the work started"
        )
    log.error(
        "internal error",
        exc_info=(type(error), error, error.__traceback__),
        extra={"fields": {"method": method}},
    )
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class MalformedRequest:
    """What a request that is not its message decodes to (garbage, truncated, invalid
    UTF-8 in a string field): the handler answers INVALID_ARGUMENT naming it, and the call
    is logged like any other, instead of grpcio's bare UNKNOWN."""

    def __init__(self, message: str) -> None:
        self.message = message


def check_request(request: object) -> None:
    """Raises the INVALID_ARGUMENT error of a request that did not decode."""
    if isinstance(request, MalformedRequest):
        raise InvalidInputError("request", f"not a valid {request.message} message")


def _tolerant(deserialize: Callable[[bytes], Any], message: str) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # DecodeError and whatever a broken message raises
            return MalformedRequest(message)

    return decode


class MalformedRequestGuard:
    """Stands in for the server when the generated ``add_*Servicer_to_server`` registers a
    service: every method's request deserializer is wrapped so that bytes which are not
    the request message reach the handler as a :class:`MalformedRequest`."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the same methods arrive next, wrapped, in the call below."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        wrapped = {}
        for name, handler in handlers.items():
            message = getattr(handler.request_deserializer, "__self__", None)
            label = message.DESCRIPTOR.full_name if message is not None else f"{service}.{name}"
            wrapped[name] = handler._replace(
                request_deserializer=_tolerant(handler.request_deserializer, label)
            )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        self._server.add_registered_method_handlers(service, wrapped)


def rpc(method: F) -> F:
    """Maps a unary handler's exceptions to status codes (see :func:`abort_for`)."""

    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: Context) -> Any:
        try:
            check_request(request)
            return await method(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as e:  # mapped to a status code in one place
            await abort_for(e, context, method.__name__)

    return cast(F, handler)
