"""The client's exceptions and how a failed gRPC call becomes one (its status code, and
the ``google.rpc.Status`` details: ``ErrorInfo.reason`` and ``RetryInfo``). No message
here quotes a response, code, PIN, passcode, key or secret."""

from __future__ import annotations

import re

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from sls_core.errors import InvalidInputError, SlsError

# --- errors -------------------------------------------------------------------------------


class SlsRpcError(SlsError):
    """A call failed with a gRPC status. ``method`` is the RPC ("Verify"), ``code`` the
    ``grpc.StatusCode`` and ``details`` the server's text (never a secret or a code).
    From the status details: ``error_reason`` is the server's stable machine-readable
    ``ErrorInfo.reason`` ("USER_NOT_FOUND", "QUOTA_EXCEEDED", ...; None when the server
    sent none) and ``retry_after`` the seconds its ``RetryInfo`` asks to wait (None: no
    retry advised)."""

    def __init__(
        self,
        method: str,
        code: grpc.StatusCode,
        details: str,
        error_reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{method}: {code.name}" + (f": {details}" if details else ""))
        self.method = method
        self.code = code
        self.details = details
        self.error_reason = error_reason
        self.retry_after = retry_after

    def __reduce__(
        self,
    ) -> tuple[type[SlsRpcError], tuple[str, grpc.StatusCode, str, str | None, float | None]]:
        return (
            type(self),
            (self.method, self.code, self.details, self.error_reason, self.retry_after),
        )


class ClientRefusedError(SlsRpcError):
    """FAILED_PRECONDITION: the server refused the request for a domain reason, e.g.
    "already used or expired" (activation) or "less secure device" (sharing): ``reason``
    is that text (``error_reason`` its stable name, "ACTIVATION_USED_OR_EXPIRED")."""

    def __init__(
        self,
        method: str,
        code: grpc.StatusCode,
        details: str,
        error_reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(method, code, details, error_reason, retry_after)
        self.reason = details


class PermissionDeniedError(SlsRpcError):
    """PERMISSION_DENIED: this identity may not make this call (a gateway administering)."""


class UnauthenticatedError(PermissionDeniedError):
    """UNAUTHENTICATED: the server does not know who is calling."""


class NotFoundError(SlsRpcError, LookupError):
    """NOT_FOUND: no such user, device or push (``details`` "username: no such user")."""


class AlreadyExistsError(SlsRpcError):
    """ALREADY_EXISTS: what the call would create exists ("username: already taken")."""


class ResourceExhaustedError(SlsRpcError):
    """RESOURCE_EXHAUSTED: too many items in a batch, a message too large, or a rate limit."""


class DeadlineExceededError(SlsRpcError, TimeoutError):
    """DEADLINE_EXCEEDED: no answer in time. The server may still have acted on the call
    (a verify may have used its challenge up)."""


class UnavailableError(SlsRpcError, ConnectionError):
    """UNAVAILABLE: the server cannot be reached or is shutting down."""


class ProtocolError(SlsError):
    """The server's answer does not follow the API (wrong item count, unknown enum)."""


class ClientClosedError(SlsError, RuntimeError):
    """The client was closed."""

    def __init__(self, message: str = "the client is closed") -> None:
        super().__init__(message)


_STATUS_ERRORS: dict[grpc.StatusCode, type[SlsRpcError]] = {
    grpc.StatusCode.FAILED_PRECONDITION: ClientRefusedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]]*")


#: The trailer that carries a ``google.rpc.Status`` (as grpcio-status reads it).
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _status_details(err: grpc.RpcError) -> tuple[str | None, float | None]:
    """The ``ErrorInfo.reason`` and ``RetryInfo`` delay (seconds) a failed call carries."""
    metadata_of = getattr(err, "trailing_metadata", None)
    try:
        metadata = metadata_of() if callable(metadata_of) else None
    except Exception:  # a call object without trailers
        metadata = None
    reason: str | None = None
    retry_after: float | None = None
    for key, value in metadata or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            continue
        for packed in status.details:
            info = error_details_pb2.ErrorInfo()
            retry = error_details_pb2.RetryInfo()
            if packed.Unpack(info):
                reason = info.reason or None
            elif packed.Unpack(retry):
                retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    return reason, retry_after


def _rpc_error(err: grpc.RpcError, method: str) -> SlsError:
    """The sls_core exception for a failed call (one place, for both clients)."""
    code_of = getattr(err, "code", None)
    code = code_of() if callable(code_of) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_of = getattr(err, "details", None)
    details = (details_of() if callable(details_of) else None) or ""
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        name, sep, rule = details.partition(": ")
        if sep and rule and _FIELD.fullmatch(name):
            return InvalidInputError(name, rule)
        return InvalidInputError("request", details or code.name.lower())
    reason, retry_after = _status_details(err)
    return _STATUS_ERRORS.get(code, SlsRpcError)(method, code, details, reason, retry_after)


def _timeout_error() -> DeadlineExceededError:
    return DeadlineExceededError(
        "VerifyBatch", grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before an answer"
    )
