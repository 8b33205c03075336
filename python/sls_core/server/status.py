"""The one place where errors become gRPC status codes (:func:`rpc`, :func:`abort_for`):

* :class:`~sls_core.errors.NoSuchItemError` -> NOT_FOUND ``"username: no such user"``;
* :class:`~sls_core.errors.AlreadyExistsError` -> ALREADY_EXISTS ``"username: already taken"``;
* :class:`~sls_core.errors.InvalidInputError` -> INVALID_ARGUMENT ``"field: rule"``;
* :class:`~sls_core.values.ActivationError`, :class:`~sls_core.values.SharingError` ->
  FAILED_PRECONDITION with the reason ("already used or expired", "less secure device");
* :class:`RefusedError` -> its own code (RESOURCE_EXHAUSTED for an oversized batch);
* :class:`~sls_core.rules.quotas.QuotaExceededError` -> RESOURCE_EXHAUSTED naming the
  limit and how long to wait;
* :class:`~sls_core.store.base.StoreUnavailableError` -> UNAVAILABLE;
* :class:`DeadlinePassedError` -> DEADLINE_EXCEEDED (nothing was done);
* anything else -> INTERNAL "internal error" (the traceback goes to the log, never to the
  caller).

Every error also carries ``google.rpc.Status`` details (:func:`error_status`, in the
``grpc-status-details-bin`` trailer): an ``ErrorInfo`` with a stable ``reason``
("USER_NOT_FOUND", "QUOTA_EXCEEDED", ...) in domain :data:`ERROR_DOMAIN`, a ``BadRequest``
field violation for bad input, and a ``RetryInfo`` where a retry helps (a quota's wait, a
store or audit trail that cannot be reached). The details text stays as described above.

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
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sls_core.errors import AlreadyExistsError, InvalidInputError, NoSuchItemError
from sls_core.rules.quotas import QuotaExceededError
from sls_core.store.base import StoreUnavailableError
from sls_core.values import ActivationError, SharingError

__all__ = [
    "ERROR_DOMAIN",
    "Context",
    "DeadlinePassedError",
    "MalformedRequest",
    "MalformedRequestGuard",
    "RefusedError",
    "abort_for",
    "abort_with",
    "check_request",
    "error_status",
    "rpc",
]

log = logging.getLogger("sls_core.server")

Context = grpc.aio.ServicerContext[Any, Any]
F = TypeVar("F", bound=Callable[..., Any])


#: The ``ErrorInfo.domain`` of every error this service raises.
ERROR_DOMAIN = "sls.v1"
#: How long a caller should wait before retrying when the store or the audit trail cannot
#: be reached (seconds): long enough not to hammer a recovering database.
UNAVAILABLE_RETRY = 1.0


class RefusedError(Exception):
    """A refusal with its own status code (RESOURCE_EXHAUSTED for an oversized batch),
    its ``ErrorInfo`` reason and, when a retry helps, the seconds to wait first."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.reason = reason or code.name
        self.retry_after = retry_after


class DeadlinePassedError(Exception):
    """The call's deadline passed before its work started; nothing was done."""


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def error_status(
    code: grpc.StatusCode,
    details: str,
    reason: str,
    *,
    field: str | None = None,
    rule: str | None = None,
    retry_after: float | None = None,
) -> grpc.Status:
    """The status of a failed call with its ``google.rpc.Status`` details: ``ErrorInfo``
    (``reason``, :data:`ERROR_DOMAIN`, and the ``field`` when there is one), ``BadRequest``
    with one field violation when ``rule`` is given, ``RetryInfo`` when ``retry_after``."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    if field is not None:
        info.metadata["field"] = field
    packed = [_pack(info)]
    if rule is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=field or "request", description=rule
        )
        packed.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, round(retry_after * 1e9)))
        packed.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code.value[0], message=details, details=packed)
    return rpc_status.to_status(status)


async def abort_with(
    context: Any,
    code: grpc.StatusCode,
    details: str,
    reason: str,
    *,
    field: str | None = None,
    rule: str | None = None,
    retry_after: float | None = None,
) -> None:
    """Ends the call with ``code``, ``details`` and the details of :func:`error_status`."""
    status = error_status(code, details, reason, field=field, rule=rule, retry_after=retry_after)
    await context.abort_with_status(status)


def _refusal_reasons(error: type, prefix: str) -> dict[str, str]:
    """A refusal's text -> its stable reason: the class constant's name under ``prefix``
    (ActivationError.USED_OR_EXPIRED -> "ACTIVATION_USED_OR_EXPIRED")."""
    return {
        text: f"{prefix}_{name}"
        for name, text in vars(error).items()
        if name.isupper() and isinstance(text, str)
    }


_ACTIVATION_REASONS = _refusal_reasons(ActivationError, "ACTIVATION")
_SHARING_REASONS = _refusal_reasons(SharingError, "SHARING")


async def abort_for(error: BaseException, context: Context, method: str) -> None:
    """Ends the call with the status code of ``error`` (never returns)."""
    if isinstance(error, NoSuchItemError):
        details = f"{error.field}: {error.rule}"
        await abort_with(
            context, grpc.StatusCode.NOT_FOUND, details, error.reason, field=error.field
        )
    if isinstance(error, AlreadyExistsError):
        details = f"{error.field}: {error.rule}"
        await abort_with(
            context, grpc.StatusCode.ALREADY_EXISTS, details, error.reason, field=error.field
        )
    if isinstance(error, InvalidInputError):
        await abort_with(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{error.field}: {error.rule}",
            "INVALID_INPUT",
            field=error.field,
            rule=error.rule,
        )
    if isinstance(error, ActivationError):
        reason = _ACTIVATION_REASONS.get(error.reason, "ACTIVATION_REFUSED")
        await abort_with(context, grpc.StatusCode.FAILED_PRECONDITION, error.reason, reason)
    if isinstance(error, SharingError):
        reason = _SHARING_REASONS.get(error.reason, "SHARING_REFUSED")
        await abort_with(context, grpc.StatusCode.FAILED_PRECONDITION, error.reason, reason)
    if isinstance(error, RefusedError):
        await abort_with(
            context, error.code, error.details, error.reason, retry_after=error.retry_after
        )
    if isinstance(error, QuotaExceededError):
        await abort_with(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            str(error),
            "QUOTA_EXCEEDED",
            retry_after=max(1, round(error.retry_after)),  # as the text says
        )
    if isinstance(error, StoreUnavailableError):
        # Never a verdict while the database cannot be reached: the gateway retries here
        # or on another node (health turns NOT_SERVING meanwhile).
        await abort_with(
            context,
            grpc.StatusCode.UNAVAILABLE,
            str(error),
            "STORE_UNAVAILABLE",
            retry_after=UNAVAILABLE_RETRY,
        )
    if isinstance(error, DeadlinePassedError):
        await abort_with(
            context,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "the deadline passed before the work started",
            "DEADLINE_PASSED",
        )
    log.error(
        "internal error",
        exc_info=(type(error), error, error.__traceback__),
        extra={"fields": {"method": method}},
    )
    await abort_with(context, grpc.StatusCode.INTERNAL, "internal error", "INTERNAL")


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
