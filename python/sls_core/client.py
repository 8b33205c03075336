"""Clients of the sls_core gRPC service (``proto/sls/v1``) for login gateways, the Client
Portal and client services: :class:`SlsClient` (blocking, thread-safe) and
:class:`AsyncSlsClient` (asyncio).

The user's own settings in the portal go through PortalService, which the gateway role may
call: ``request_sharing``, ``cancel_sharing``, ``list_own_devices`` and the ``portal_*``
methods. The unprefixed ``issue_online_card``, ``choose_device`` and ``set_opt_out`` are
client services' (AdminService, admin role): the same action, audited as theirs.

Both take Python values and return the shared value types of :mod:`sls_core.values`
(:class:`~sls_core.values.Challenge`, :class:`~sls_core.values.Verdict`,
:class:`~sls_core.values.BatchResult`, :class:`~sls_core.values.Device`, ...), converted
by :mod:`sls_core.wire` as the server converts them, and raise
:class:`~sls_core.errors.SlsError` subclasses, never a raw ``grpc.RpcError``:

==========================  =========================================================
gRPC status                 exception
==========================  =========================================================
INVALID_ARGUMENT            :class:`~sls_core.errors.InvalidInputError` (``field: rule``)
OUT_OF_RANGE                :class:`~sls_core.errors.InvalidInputError`
FAILED_PRECONDITION         :class:`ClientRefusedError` (``reason``)
PERMISSION_DENIED           :class:`PermissionDeniedError`
UNAUTHENTICATED             :class:`UnauthenticatedError` (a :class:`PermissionDeniedError`)
NOT_FOUND                   :class:`NotFoundError` (``username: no such user``)
ALREADY_EXISTS              :class:`AlreadyExistsError` (``username: already taken``)
RESOURCE_EXHAUSTED          :class:`ResourceExhaustedError`
DEADLINE_EXCEEDED           :class:`DeadlineExceededError` (also a ``TimeoutError``)
UNAVAILABLE                 :class:`UnavailableError` (also a ``ConnectionError``)
anything else               :class:`SlsRpcError`
==========================  =========================================================

Every :class:`SlsRpcError` carries what the server's ``google.rpc.Status`` details say:
``error_reason``, the stable machine-readable ``ErrorInfo.reason`` ("USER_NOT_FOUND",
"USERNAME_TAKEN", "QUOTA_EXCEEDED", "STORE_UNAVAILABLE", ...), and ``retry_after``, the
seconds its ``RetryInfo`` asks a caller to wait before trying again (None: no retry helps).

Retries. Only read-only calls are retried, on UNAVAILABLE, by gRPC's own retry machinery
(the ``grpc.service_config`` channel option: exponential backoff with jitter, at most
``RetryPolicy.max_attempts`` attempts, all inside the call's deadline):
:data:`RETRIED_METHODS`. Everything else changes state on the server and is never retried
automatically: a retried ``Verify`` or ``VerifyBatch`` whose first attempt did reach the
server would be answered ``REPLAYED`` (the challenge is used up) or count a wrong answer
twice toward the lockout; a retried ``IssueChallenge`` mints a second challenge and, for
SMS devices, sends a second text message; pushes, activations and the admin calls are not
idempotent either. The caller decides what to do with an :class:`UnavailableError` there.

Micro-batching. With ``linger > 0`` (the default), single :meth:`SlsClient.verify` calls
made concurrently (threads, or asyncio tasks for :class:`AsyncSlsClient`) are coalesced into
``VerifyBatch`` calls, and each caller gets its own outcome. While fewer than
``max_in_flight`` batches are on their way, an attempt leaves at once, together with
whatever else is waiting: an idle client adds no delay. Once ``max_in_flight`` batches are
in flight, attempts wait and coalesce until one of them returns or ``max_batch`` attempts
wait: under load the batches grow by themselves, and a busy server gets fewer, larger
calls (it pays its per-call cost once per batch, not once per login) instead of more. An
attempt whose deadline passes while it waits fails with DEADLINE_EXCEEDED and is never
sent. ``max_in_flight=0`` instead holds every batch open ``linger`` seconds from its first
attempt. A batch that fails fails only its own callers; ``close()`` sends what is still
waiting and waits for batches in flight. ``linger=0`` sends a plain ``Verify`` per call.

Several servers. ``target`` may be a list of ``"host:port"`` strings, or a
``"dns:///name:port"`` whose name resolves to several addresses (as may an ``ipv4:`` or
``ipv6:`` target URI): the channel then balances calls ``round_robin`` over the servers
that are healthy by gRPC client-side health checking (gRFC A17: it watches each server's
grpc.health.v1 service :data:`HEALTH_SERVICE_NAME`). A server that answers NOT_SERVING
(draining for a shutdown, or unable to write its audit trail) gets no new calls until it
serves again; one that is down is skipped and reconnected with backoff. A plain
``"host:port"`` string keeps one connection to one address, as before. Host names in a
list are resolved once, when the client is made (one gRPC channel dials one target URI).
With TLS, every server's certificate is checked against
``TlsSettings.server_name_override``, or else the one host all the list's items name.

A gateway that imports this module loads the wire types only (the generated messages,
:mod:`sls_core.values`, :mod:`sls_core.wire`): never the Rust extension, the store, the
login engine, PIL or reportlab.

This module never puts a response, code, PIN, passcode, key or secret in an exception
message, a ``repr`` or a log: messages name the field and the rule only.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ipaddress
import json
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from sls_core import wire
from sls_core.api.v1 import (
    activation_pb2,
    activation_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    portal_pb2,
    portal_pb2_grpc,
    push_pb2,
    push_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from sls_core.errors import InvalidInputError, InvalidInputTypeError, SlsError
from sls_core.values import (
    Access,
    Activated,
    BatchResult,
    Challenge,
    Device,
    DeviceType,
    Identity,
    LockoutStatus,
    LoginOutcome,
    Purpose,
    PushChallenge,
    PushDecision,
    PushStatus,
    SharingRequest,
    Verdict,
    WithdrawalLimits,
)
from sls_core.wire import ActivationOffer, EnrollOptions, OnlineCard, SecurityLevel

if TYPE_CHECKING:
    from sls_core.api.v1.activation_pb2_grpc import ActivationServiceAsyncStub
    from sls_core.api.v1.admin_pb2_grpc import AdminServiceAsyncStub, PolicyServiceAsyncStub
    from sls_core.api.v1.portal_pb2_grpc import PortalServiceAsyncStub
    from sls_core.api.v1.push_pb2_grpc import PushServiceAsyncStub
    from sls_core.api.v1.verification_pb2_grpc import VerificationServiceAsyncStub

__all__ = [
    "DEFAULT_LINGER",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_MESSAGE_LENGTH",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "HEALTH_SERVICE_NAME",
    "RETRIED_METHODS",
    "ActivationOffer",
    "AlreadyExistsError",
    "AsyncSlsClient",
    "ClientClosedError",
    "ClientRefusedError",
    "DeadlineExceededError",
    "NotFoundError",
    "OnlineCard",
    "PermissionDeniedError",
    "ProtocolError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SecurityLevel",
    "SlsClient",
    "SlsRpcError",
    "TlsSettings",
    "UnauthenticatedError",
    "UnavailableError",
]

#: Seconds a call may take unless the call says otherwise.
DEFAULT_TIMEOUT = 5.0
#: Micro-batching on (> 0); with ``max_in_flight=0``, how long a batch is held open.
DEFAULT_LINGER = 0.002
#: Coalesced VerifyBatch calls on their way before verify() calls start waiting to
#: coalesce. One gave the lowest latency in the load test (benches/loadtest.py): with
#: more, a busy server process queues several small calls instead of one larger one.
DEFAULT_MAX_IN_FLIGHT = 1
#: Attempts per coalesced VerifyBatch call.
DEFAULT_MAX_BATCH = 10_000
#: Bytes per message, both ways (gRPC's own default is 4 MiB received).
DEFAULT_MAX_MESSAGE_LENGTH = 64 * 1024 * 1024

#: Read-only methods: retried on UNAVAILABLE. Nothing else is (see the module docstring).
RETRIED_METHODS: frozenset[str] = frozenset(
    {
        "sls.v1.PushService/GetPushStatus",
        "sls.v1.PushService/ListPendingPushes",
        "sls.v1.AdminService/ListDevices",
        "sls.v1.PortalService/ListOwnDevices",
        "sls.v1.PolicyService/GetSecurityLevel",
        "sls.v1.PolicyService/GetWithdrawalLimits",
        "sls.v1.PolicyService/GetSessionLength",
        "sls.v1.PolicyService/GetLockoutStatus",
    }
)


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


# --- settings -----------------------------------------------------------------------------

#: PEM data as ``bytes``, or the path of a PEM file as ``str`` / ``os.PathLike``.
PemSource = bytes | str | os.PathLike[str]


def _pem(field_name: str, source: PemSource | None) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, str | os.PathLike):
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise InvalidInputError(field_name, f"cannot read the file ({err.strerror})") from None
    else:
        raise InvalidInputTypeError(field_name, "must be PEM bytes or a file path")
    if b"-----BEGIN " not in data:
        raise InvalidInputError(field_name, "must be PEM")
    return data


@dataclass(frozen=True)
class TlsSettings:
    """TLS for the channel: ``ca_cert`` checks the server (``None``: the system roots);
    ``client_cert`` and ``client_key`` (both or neither) are the gateway's identity for
    mutual TLS. Each is PEM ``bytes`` or a file path. ``server_name_override`` is the name
    the server certificate must carry when it differs from the target's host (tests,
    connecting by IP address)."""

    ca_cert: PemSource | None = None
    client_cert: PemSource | None = None
    client_key: PemSource | None = field(default=None, repr=False)
    server_name_override: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.client_cert is None) != (self.client_key is None):
            raise InvalidInputError(
                "client_key", "give both client_cert and client_key, or neither"
            )
        return grpc.ssl_channel_credentials(
            root_certificates=_pem("ca_cert", self.ca_cert),
            private_key=_pem("client_key", self.client_key),
            certificate_chain=_pem("client_cert", self.client_cert),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retry policy for :data:`RETRIED_METHODS` on UNAVAILABLE: the n-th retry waits a
    random time in ``[0, min(initial_backoff * backoff_multiplier**(n-1), max_backoff)]``
    seconds (gRFC A6). gRPC caps ``max_attempts`` at 5."""

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_attempts, int) and 2 <= self.max_attempts <= 5):
            raise InvalidInputError("max_attempts", "must be an int from 2 to 5")
        for name in ("initial_backoff", "max_backoff", "backoff_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise InvalidInputError(name, "must be a positive number")

    def method_config(self) -> list[dict[str, Any]]:
        """The service config's ``methodConfig``: this policy for the read-only methods only."""
        names = []
        for path in sorted(RETRIED_METHODS):
            service, method = path.split("/")
            names.append({"service": service, "method": method})
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff:.6f}s",
            "maxBackoff": f"{self.max_backoff:.6f}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        return [{"name": names, "retryPolicy": policy}]

    def service_config(self) -> str:
        """The ``grpc.service_config`` JSON of this policy alone."""
        return json.dumps({"methodConfig": self.method_config()})


#: The retry policy clients use unless told otherwise.
DEFAULT_RETRY = RetryPolicy()


def _is_loopback(target: str) -> bool:
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        target = target.removeprefix(scheme)
    if target.startswith("["):
        host = target[1 : target.find("]")]
    else:
        host = target.rsplit(":", 1)[0] if target.count(":") == 1 else target
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: The health service a balanced channel watches on every server (gRFC A17): ``""`` is
#: the whole server, which sls_core sets NOT_SERVING while it drains or cannot audit.
HEALTH_SERVICE_NAME = ""

#: Target schemes gRPC resolves to several addresses: such a target is balanced.
_BALANCED_SCHEMES = ("dns:", "ipv4:", "ipv6:")
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_TARGET_RULE = "must be 'host:port' (an IPv6 address in brackets, '[::1]:50051'; no scheme)"

_IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class _HostPort:
    """One item of a list of targets: a host name or an IP address, and a port."""

    host: str
    port: int
    ip: _IpAddress | None


def _host_port(item: object, index: int) -> _HostPort:
    if not isinstance(item, str):
        raise InvalidInputTypeError("target", f"item {index}: must be a 'host:port' str")
    bracketed = re.fullmatch(r"\[([^\]]+)\]:([0-9]{1,5})", item)
    if bracketed is not None:
        host, port_text = bracketed.groups()
    else:
        host, _, port_text = item.rpartition(":")
        if ":" in host or "/" in host or not port_text.isdigit() or not port_text.isascii():
            raise InvalidInputError("target", f"item {index}: {_TARGET_RULE}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise InvalidInputError("target", f"item {index}: the port must be from 1 to 65535")
    try:
        ip: _IpAddress | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if (ip is None or ip.version == 4) and bracketed is not None:
        raise InvalidInputError("target", f"item {index}: only an IPv6 address goes in brackets")
    if ip is None and (len(host) > 253 or not _HOST_NAME.fullmatch(host)):
        raise InvalidInputError(
            "target", f"item {index}: the host must be a DNS name or an IP address"
        )
    return _HostPort(host, port, ip)


def _addresses(item: _HostPort, index: int) -> list[_IpAddress]:
    """The IP addresses of one item: itself, or what its name resolves to now."""
    if item.ip is not None:
        return [item.ip]
    try:
        found = socket.getaddrinfo(item.host, item.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise InvalidInputError("target", f"item {index}: the host name does not resolve") from None
    ips: list[_IpAddress] = []
    for family, *_, sockaddr in found:
        if family in (socket.AF_INET, socket.AF_INET6):
            ip = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
            if ip not in ips:
                ips.append(ip)
    if not ips:
        raise InvalidInputError("target", f"item {index}: the host name has no IP address")
    return ips


def _balanced_target(items: list[_HostPort]) -> str:
    """One gRPC target URI for several servers: ``ipv4:a:p,b:q`` or ``ipv6:[a]:p,[b]:q``.

    One channel cannot be given several host names (grpc-python has no resolver for a
    list, nor custom resolvers), so names are resolved here, once, when the client is made:
    what a gateway configured with ``["sls1.internal:50051", "sls2.internal:50051"]``
    expects. Servers whose addresses change belong behind one DNS name instead
    (``"dns:///sls.internal:50051"``), which gRPC itself re-resolves. One URI lists one
    address family: IPv4 when every item has an IPv4 address, else IPv6."""
    found = [_addresses(item, index) for index, item in enumerate(items)]
    version = next(
        (v for v in (4, 6) if all(any(ip.version == v for ip in ips) for ips in found)), None
    )
    if version is None:
        raise InvalidInputError(
            "target", "the addresses must all be IPv4 or all be IPv6 (one gRPC target each)"
        )
    addresses: list[tuple[_IpAddress, int]] = []
    for item, ips in zip(items, found, strict=True):
        for ip in ips:
            if ip.version == version and (ip, item.port) not in addresses:
                addresses.append((ip, item.port))
    if version == 4:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in addresses)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in addresses)


def _tls_name(items: list[_HostPort], tls: TlsSettings) -> str:
    """The name every server certificate must carry. A list becomes an ``ipv4:``/``ipv6:``
    target, whose authority names no host: the certificates are checked against
    ``server_name_override``, or else the one host all the items name."""
    if tls.server_name_override:
        return tls.server_name_override
    hosts = {item.host for item in items}
    if len(hosts) != 1:
        raise InvalidInputError(
            "server_name_override",
            "required with TLS when the targets name different hosts: the name every"
            " server certificate carries",
        )
    return hosts.pop()


def _service_config(retry: RetryPolicy | None, balanced: bool) -> str | None:
    """The ``grpc.service_config`` JSON: round_robin over the servers that are healthy by
    their grpc.health.v1 service (a server answering NOT_SERVING gets no calls until it
    serves again), and the retry policy of the read-only methods."""
    config: dict[str, Any] = {}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE_NAME}
    if retry is not None:
        config["methodConfig"] = retry.method_config()
    return json.dumps(config) if config else None


@dataclass(frozen=True)
class _ChannelSettings:
    #: The gRPC target URI the channel dials.
    target: str
    #: What the caller gave (a repr shows it).
    given: str | tuple[str, ...]
    tls: TlsSettings | None
    timeout: float
    linger: float
    max_batch: int
    max_in_flight: int
    options: tuple[tuple[str, Any], ...]

    @classmethod
    def build(
        cls,
        target: str | Sequence[str],
        *,
        tls: TlsSettings | None,
        timeout: float,
        linger: float,
        max_batch: int,
        max_in_flight: int,
        max_send_message_length: int,
        max_receive_message_length: int,
        retry: RetryPolicy | None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> _ChannelSettings:
        items: list[_HostPort] | None = None
        single: str | None = None
        if isinstance(target, list | tuple):
            if not target:
                raise InvalidInputError("target", "must name at least one 'host:port'")
            items = [_host_port(item, index) for index, item in enumerate(target)]
            hosts = [item.host if item.ip is None else str(item.ip) for item in items]
        elif isinstance(target, str):
            if not target:
                raise InvalidInputError("target", "must be a non-empty 'host:port' string")
            single = target
            hosts = [target]
        else:
            raise InvalidInputTypeError("target", "must be a 'host:port' string or a list of them")
        if tls is None and not all(_is_loopback(host) for host in hosts):
            raise InvalidInputError("tls", "TLS settings are required for a non-loopback target")
        if tls is not None and not isinstance(tls, TlsSettings):
            raise InvalidInputTypeError("tls", "must be a TlsSettings or None")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidInputTypeError("retry", "must be a RetryPolicy or None")
        for name, number in (("timeout", timeout), ("linger", linger)):
            if not isinstance(number, int | float) or not 0 <= number < float("inf"):
                raise InvalidInputError(name, "must be a finite number of seconds >= 0")
        if timeout <= 0:
            raise InvalidInputError("timeout", "must be > 0")
        for name, count in (
            ("max_batch", max_batch),
            ("max_send_message_length", max_send_message_length),
            ("max_receive_message_length", max_receive_message_length),
        ):
            if not isinstance(count, int) or not 1 <= count <= 2**31 - 1:
                raise InvalidInputError(name, "must be an int from 1 to 2**31 - 1")
        if not isinstance(max_in_flight, int) or not 0 <= max_in_flight <= 1024:
            raise InvalidInputError("max_in_flight", "must be an int from 0 to 1024")
        # Checked last: a list of host names is resolved here.
        given: str | tuple[str, ...]
        if single is not None:
            channel_target = given = single
            balanced = single.startswith(_BALANCED_SCHEMES)
            tls_name = tls.server_name_override if tls is not None else None
        else:
            assert items is not None
            tls_name = _tls_name(items, tls) if tls is not None else None
            channel_target = _balanced_target(items)
            given = tuple(item for item in target if isinstance(item, str))
            balanced = True
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_send_message_length),
            ("grpc.max_receive_message_length", max_receive_message_length),
            # Only our own service config: a DNS TXT record must not turn retries on for Verify.
            ("grpc.service_config_disable_resolution", 1),
            # retry=None: no retries of any kind, not even gRPC's transparent ones.
            ("grpc.enable_retries", 1 if retry is not None else 0),
        ]
        service_config = _service_config(retry, balanced)
        if service_config is not None:
            options.append(("grpc.service_config", service_config))
        if tls_name:
            options.append(("grpc.ssl_target_name_override", tls_name))
        for option in channel_options:
            if (
                not isinstance(option, tuple)
                or len(option) != 2
                or not isinstance(option[0], str)
                or not isinstance(option[1], int | str | bytes)
            ):
                raise InvalidInputTypeError(
                    "channel_options", "must be (name, int | str | bytes) pairs"
                )
            options.append(option)
        return cls(
            channel_target,
            given,
            tls,
            float(timeout),
            float(linger),
            max_batch,
            max_in_flight,
            tuple(options),
        )


# --- checks of what the caller passes --------------------------------------------------------

_T = TypeVar("_T")
#: A verify() attempt's checked fields: username, token ("" for none), response, access.
_VerifyFields = tuple[str, str, str, "common_pb2.Access.ValueType"]

_message = wire.build_message


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInputTypeError(name, "must be a str")
    return value


def _optional_text(name: str, value: str | None) -> str:
    """``None`` (not given) travels as ``""``."""
    return wire.to_text(None if value is None else _text(name, value))


def _optional_id(name: str, value: int | None) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidInputError(name, "must be a positive int or None")
    return value


def _parse(method: str, parse: Callable[[Any], _T], response: Any) -> _T:
    """The answer as Python values; one the converter cannot read is the server's fault
    (a :class:`ProtocolError`), not the caller's bad input."""
    try:
        return parse(response)
    except InvalidInputError as err:
        raise ProtocolError(f"{method}: {err}") from None


def _none(_response: Message) -> None:
    return None


# --- calls, shared by both clients --------------------------------------------------------


@dataclass(frozen=True)
class _Call(Generic[_T]):
    """One unary call: which stub and method, the request, how to read the answer."""

    service: str
    method: str
    request: Message
    parse: Callable[[Any], _T]
    extra_timeout: float = 0.0


def _issue_challenge_call(
    username: str, device_id: int | None, purpose: Purpose | None, task: str | None
) -> _Call[Challenge]:
    request = _message(
        verification_pb2.IssueChallengeRequest,
        username=_text("username", username),
        device_id=_optional_id("device_id", device_id),
        purpose=wire.to_purpose(purpose),
        task=_optional_text("task", task),
    )
    return _Call("verification", "IssueChallenge", request, wire.from_challenge)


def _verify_fields(username: str, token: str | None, response: str, access: str) -> _VerifyFields:
    """Checked before an attempt joins a batch, so a bad one never fails its neighbours."""
    return (
        _text("username", username),
        "" if token is None else _text("token", token),
        _text("response", response),
        wire.to_access(access),
    )


def _batchable(purpose: Purpose | None, task: str) -> bool:
    """A batch carries no purpose: only the answers a batch stands for (logins, or
    step-ups for its task) may join one; the others go as a plain Verify."""
    return purpose is None or Purpose(purpose) is wire.purpose_of_batch(wire.from_text(task))


def _verify_call(fields: _VerifyFields, purpose: Purpose | None, task: str) -> _Call[Verdict]:
    username, token, response, access = fields
    request = verification_pb2.VerifyRequest(
        username=username, token=token, response=response, access=access, task=task
    )
    if purpose is not None:
        request.purpose = wire.to_purpose(purpose)
    return _Call("verification", "Verify", request, wire.from_verdict)


def _column(name: str, values: Sequence[str | None], count: int | None) -> list[str]:
    if isinstance(values, str | bytes):
        raise InvalidInputTypeError(name, "must be a sequence of str, not a single value")
    column: list[Any] = list(values)
    if None in column:  # a temporary passcode comes without a token
        column = ["" if v is None else v for v in column]
    if count is not None and len(column) != count:
        raise InvalidInputError(name, "must have one entry per username")
    # One pass in C over the types (a str subclass passes, as protobuf takes it).
    if not set(map(type, column)) <= {str} and not all(isinstance(v, str) for v in column):
        raise InvalidInputTypeError(name, "every entry must be a str")
    return column


def _verify_batch_call(
    usernames: Sequence[str],
    tokens: Sequence[str | None],
    responses: Sequence[str],
    access: str,
    task: str | None,
) -> _Call[BatchResult]:
    names = _column("usernames", usernames, None)
    request = verification_pb2.VerifyBatchRequest(
        usernames=names,
        tokens=_column("tokens", tokens, len(names)),
        responses=_column("responses", responses, len(names)),
        access=wire.to_access(access),
        task=_optional_text("task", task),
    )
    parse = partial(wire.from_batch_result, count=len(names))
    return _Call("verification", "VerifyBatch", request, parse)


def _record_password_failure_call(username: str) -> _Call[LockoutStatus]:
    request = _message(verification_pb2.RecordPasswordFailureRequest, username=username)
    return _Call("verification", "RecordPasswordFailure", request, wire.from_lockout_status)


def _create_activation_call(username: str) -> _Call[ActivationOffer]:
    request = _message(activation_pb2.CreateActivationRequest, username=username)
    return _Call("activation", "CreateActivation", request, wire.from_activation_offer)


def _complete_activation_call(
    app_public: bytes,
    push_public: bytes,
    payload: str | None,
    manual_code: str | None,
    pin: str | None,
) -> _Call[Activated]:
    if (payload is None) == (manual_code is None):
        raise InvalidInputError("payload", "give exactly one of payload and manual_code")
    code = (
        {"payload": _text("payload", payload)}
        if payload is not None
        else {"manual_code": _text("manual_code", manual_code)}
    )
    request = _message(
        activation_pb2.CompleteActivationRequest,
        app_public=app_public,
        push_public=push_public,
        pin=_optional_text("pin", pin),
        **code,
    )
    return _Call("activation", "CompleteActivation", request, wire.from_activated)


def _recover_call(
    username: str, recovery_pin: str, app_public: bytes, push_public: bytes
) -> _Call[Activated]:
    request = _message(
        activation_pb2.RecoverRequest,
        username=username,
        recovery_pin=_text("recovery_pin", recovery_pin),
        app_public=app_public,
        push_public=push_public,
    )
    return _Call("activation", "Recover", request, wire.from_activated)


def _send_sms_activation_call(username: str) -> _Call[float]:
    request = _message(activation_pb2.SendSmsActivationRequest, username=username)
    return _Call("activation", "SendSmsActivation", request, lambda r: float(r.expires_at))


def _create_push_call(username: str, device_id: int | None) -> _Call[PushChallenge]:
    request = _message(
        push_pb2.CreatePushRequest,
        username=username,
        device_id=_optional_id("device_id", device_id),
    )
    return _Call("push", "CreatePush", request, lambda r: wire.from_push(r.push))


def _list_pending_pushes_call(push_public: bytes) -> _Call[list[PushChallenge]]:
    request = _message(push_pb2.ListPendingPushesRequest, push_public=push_public)
    return _Call(
        "push", "ListPendingPushes", request, lambda r: [wire.from_push(p) for p in r.pushes]
    )


def _answer_push_call(
    challenge_id: int, decision: PushDecision | int, signature: bytes
) -> _Call[LoginOutcome]:
    request = _message(
        push_pb2.AnswerPushRequest,
        challenge_id=challenge_id,
        decision=wire.to_decision(decision),
        signature=signature,
    )
    return _Call("push", "AnswerPush", request, lambda r: wire.from_outcome(r.outcome))


def _push_status_call(challenge_id: int, wait_seconds: float) -> _Call[PushStatus]:
    if not isinstance(wait_seconds, int | float) or not 0 <= wait_seconds < float("inf"):
        raise InvalidInputError("timeout", "must be a finite number of seconds >= 0")
    request = _message(
        push_pb2.GetPushStatusRequest, challenge_id=challenge_id, wait_seconds=wait_seconds
    )
    return _Call(
        "push",
        "GetPushStatus",
        request,
        lambda r: wire.from_push_status(r.status),
        extra_timeout=wait_seconds,
    )


def _create_user_call(username: str, identity: Identity | None) -> _Call[int]:
    if identity is not None and not isinstance(identity, Identity):
        raise InvalidInputTypeError("identity", "must be a values.Identity or None")
    request = _message(
        admin_pb2.CreateUserRequest,
        username=username,
        identity=wire.to_identity(identity or Identity()),
    )
    return _Call("admin", "CreateUser", request, lambda r: int(r.user_id))


def _enrollment_call(
    method: str,
    message_type: type[wire.EnrollmentMessage],
    username: str,
    device_type: DeviceType,
    options: EnrollOptions,
) -> _Call[Device]:
    """EnrollDevice (a new device) or ImportDevice (an existing one, legacy types too)."""
    if not isinstance(device_type, DeviceType):
        raise InvalidInputTypeError("device_type", "must be a DeviceType")
    _optional_id("replaces", options["replaces"])
    request = wire.to_enrollment(message_type, username, device_type, options)
    return _Call("admin", method, request, lambda r: wire.from_device(r.device))


def _devices(response: Any) -> list[Device]:
    return [wire.from_device(d) for d in response.devices]


def _list_devices_call(username: str) -> _Call[list[Device]]:
    request = _message(admin_pb2.ListDevicesRequest, username=username)
    return _Call("admin", "ListDevices", request, _devices)


def _list_own_devices_call(username: str) -> _Call[list[Device]]:
    request = _message(portal_pb2.ListOwnDevicesRequest, username=username)
    return _Call("portal", "ListOwnDevices", request, _devices)


def _device_call(
    method: str, cls: Callable[..., Message], *, service: str = "admin", **fields: Any
) -> _Call[None]:
    """A call that answers nothing; AdminService's unless ``service`` says otherwise."""
    return _Call(service, method, _message(cls, **fields), _none)


def _sharing(response: Any) -> SharingRequest:
    return wire.from_sharing_request(response.sharing)


def _request_sharing_call(
    owner: str,
    device_id: int,
    with_username: str,
    token: str,
    response: str,
    needs_approval: bool,
) -> _Call[SharingRequest]:
    request = _message(
        portal_pb2.RequestSharingRequest,
        owner=owner,
        device_id=device_id,
        with_username=with_username,
        token=_text("token", token),
        response=_text("response", response),
        needs_approval=needs_approval,
    )
    return _Call("portal", "RequestSharing", request, _sharing)


def _cancel_sharing_call(request_id: int, username: str) -> _Call[SharingRequest]:
    request = _message(portal_pb2.CancelSharingRequest, request_id=request_id, username=username)
    return _Call("portal", "CancelSharing", request, _sharing)


def _approve_sharing_call(request_id: int) -> _Call[SharingRequest]:
    request = _message(admin_pb2.ApproveSharingRequest, request_id=request_id)
    return _Call("admin", "ApproveSharing", request, _sharing)


def _issue_temporary_passcode_call(username: str) -> _Call[str]:
    request = _message(admin_pb2.IssueTemporaryPasscodeRequest, username=username)
    return _Call("admin", "IssueTemporaryPasscode", request, lambda r: str(r.passcode))


def _issue_online_card_call(service: str, username: str) -> _Call[OnlineCard]:
    """AdminService's or PortalService's (the same messages)."""
    request = _message(admin_pb2.IssueOnlineCardRequest, username=username)
    return _Call(service, "IssueOnlineCard", request, wire.from_online_card)


def _unlock_call(username: str) -> _Call[LockoutStatus]:
    request = _message(admin_pb2.UnlockRequest, username=username)
    return _Call("admin", "Unlock", request, wire.from_lockout_status)


def _security_level_call(username: str) -> _Call[SecurityLevel]:
    request = _message(admin_pb2.GetSecurityLevelRequest, username=username)
    return _Call("policy", "GetSecurityLevel", request, wire.from_security_level)


def _withdrawal_limits_call(username: str) -> _Call[WithdrawalLimits]:
    request = _message(admin_pb2.GetWithdrawalLimitsRequest, username=username)
    return _Call("policy", "GetWithdrawalLimits", request, wire.from_withdrawal_limits)


def _session_length_call(unlock: str) -> _Call[float]:
    request = _message(admin_pb2.GetSessionLengthRequest, unlock=unlock)
    return _Call("policy", "GetSessionLength", request, lambda r: float(r.seconds))


def _lockout_status_call(username: str) -> _Call[LockoutStatus]:
    request = _message(admin_pb2.GetLockoutStatusRequest, username=username)
    return _Call("policy", "GetLockoutStatus", request, wire.from_lockout_status)


#: What a VerifyBatch request carries once for all its attempts: the access and the task.
_BatchKind = tuple["common_pb2.Access.ValueType", str]


def _batch_request(
    attempts: Sequence[_Attempt[Any]], kind: _BatchKind
) -> verification_pb2.VerifyBatchRequest:
    access, task = kind
    return verification_pb2.VerifyBatchRequest(
        usernames=[a.username for a in attempts],
        tokens=[a.token for a in attempts],
        responses=[a.response for a in attempts],
        access=access,
        task=task,
    )


def _by_kind(attempts: list[_Attempt[_T]]) -> dict[_BatchKind, list[_Attempt[_T]]]:
    """One VerifyBatch per access and task (the request carries one of each); input order
    kept in each."""
    groups: dict[_BatchKind, list[_Attempt[_T]]] = {}
    for attempt in attempts:
        groups.setdefault((attempt.access, attempt.task), []).append(attempt)
    return groups


@dataclass(eq=False)
class _Attempt(Generic[_T]):
    """One verify() waiting for its batch. ``future`` is a concurrent or asyncio future."""

    username: str
    token: str
    response: str = field(repr=False)
    access: common_pb2.Access.ValueType
    task: str
    deadline: float
    future: _T
    enqueued: float = 0.0


def _unexpired(group: list[_Attempt[Any]]) -> list[_Attempt[Any]]:
    """The attempts whose caller still waits; the others get DEADLINE_EXCEEDED here and
    are never sent (a caller that gave up must not have its challenge used up)."""
    now = time.monotonic()
    live = [a for a in group if a.deadline > now]
    if len(live) < len(group):
        for attempt in group:
            if attempt.deadline <= now and not attempt.future.done():
                attempt.future.set_exception(_timeout_error())
    return live


def _verdicts(response: verification_pb2.VerifyBatchResponse, count: int) -> list[Verdict]:
    """A coalesced batch's answer, one verdict per attempt in order."""
    result = _parse("VerifyBatch", partial(wire.from_batch_result, count=count), response)
    ids = result.device_ids.tolist()
    return [
        Verdict(LoginOutcome(o), ids[i] or None) for i, o in enumerate(result.outcomes.tolist())
    ]


def _batch_failure(err: BaseException | None) -> SlsError:
    """A fresh exception per caller (each raises it in its own thread or task)."""
    if err is None:
        return _timeout_error()
    if isinstance(err, grpc.RpcError):
        return _rpc_error(err, "VerifyBatch")
    if isinstance(err, ProtocolError):
        return ProtocolError(str(err))
    if isinstance(err, SlsRpcError):
        return type(err)(err.method, err.code, err.details)
    if isinstance(err, grpc.FutureCancelledError | asyncio.CancelledError):
        return ClientClosedError()
    return SlsError(f"VerifyBatch failed: {type(err).__name__}")


# --- the blocking client ------------------------------------------------------------------


_SyncAttempt = _Attempt["concurrent.futures.Future[Verdict]"]


class _ThreadBatcher:
    """Coalesces verify() calls from many threads into VerifyBatch calls.

    One daemon thread waits for attempts and starts each call without waiting for it: at
    once while fewer than ``max_in_flight`` calls are in flight, else when one returns,
    the oldest attempt has waited ``linger`` or ``max_batch`` attempts wait. gRPC's
    completion callback hands each caller its outcome. Order within a batch is arrival
    order under the lock, and an attempt is taken off the queue exactly once.
    """

    def __init__(
        self,
        rpc: Any,
        *,
        linger: float,
        max_batch: int,
        max_in_flight: int,
    ) -> None:
        self._rpc = rpc  # VerifyBatch, or a _SyncBatchStream: both have .future()
        self._linger = linger
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._cond = threading.Condition()
        self._pending: list[_SyncAttempt] = []
        self._in_flight = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(
        self,
        username: str,
        token: str,
        response: str,
        access: common_pb2.Access.ValueType,
        task: str,
        *,
        deadline: float,
    ) -> concurrent.futures.Future[Verdict]:
        future: concurrent.futures.Future[Verdict] = concurrent.futures.Future()
        attempt = _SyncAttempt(username, token, response, access, task, deadline, future)
        with self._cond:
            if self._closed:
                raise ClientClosedError()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sls-client-batcher", daemon=True
                )
                self._thread.start()
            attempt.enqueued = time.monotonic()
            self._pending.append(attempt)
            waiting = len(self._pending)
            if waiting == 1 or waiting >= self._max_batch:
                self._cond.notify()
        return future

    def close(self) -> None:
        """Sends what is waiting, then waits for every batch in flight."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight == 0)
        if isinstance(self._rpc, _SyncBatchStream):
            self._rpc.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed and drained
                flush_at = self._pending[0].enqueued + self._linger
                while len(self._pending) < self._max_batch and not self._closed:
                    if self._max_in_flight:  # adaptive: leave when a slot is free
                        if self._in_flight < self._max_in_flight:
                            break
                        self._cond.wait()  # a returning batch notifies
                        continue
                    remaining = flush_at - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                groups = _by_kind(batch)
                self._in_flight += len(groups)
            for kind, group in groups.items():
                self._send(kind, group)

    def _send(self, kind: _BatchKind, group: list[_SyncAttempt]) -> None:
        group = _unexpired(group)
        if not group:
            self._done()
            return
        # The batch may run until its latest caller gives up; each caller waits its own time.
        timeout = max(a.deadline for a in group) - time.monotonic()
        try:
            call = self._rpc.future(_batch_request(group, kind), timeout=timeout)
        except Exception as err:  # the channel is closed or broken: fail these callers
            self._fail(group, err)
        else:
            call.add_done_callback(partial(self._complete, group))

    def _complete(
        self,
        group: list[_SyncAttempt],
        call: grpc.Future[verification_pb2.VerifyBatchResponse],
    ) -> None:
        try:
            verdicts = _verdicts(call.result(), len(group))
        except Exception as err:  # every caller must get an answer
            self._fail(group, err)
            return
        for attempt, verdict in zip(group, verdicts, strict=True):
            if not attempt.future.done():
                attempt.future.set_result(verdict)
        self._done()

    def _fail(self, group: list[_SyncAttempt], err: BaseException | None) -> None:
        """``err=None``: the deadline passed before the batch could leave."""
        for attempt in group:
            if not attempt.future.done():
                attempt.future.set_exception(_batch_failure(err))
        self._done()

    def _done(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()


_STREAM_END = object()


@dataclass(eq=False)
class _OpenStream:
    requests: queue.SimpleQueue[Any]
    #: (answer, deadline) of each batch written and not yet answered, in order.
    owed: collections.deque[tuple[concurrent.futures.Future[Any], float]]
    responses: Any = None
    ended: bool = False


class _SyncBatchStream:
    """The blocking client's micro-batches as the messages of one long-lived
    ``VerifyStream`` call (see :class:`_BatchStream`): requests go through a queue that
    gRPC drains, a reader thread hands the answers, in order, to the batches, and a
    watchdog thread ends the stream when its oldest batch passes its deadline (the
    batches behind it wait on its answer)."""

    def __init__(
        self,
        rpc: grpc.StreamStreamMultiCallable[
            verification_pb2.VerifyBatchRequest, verification_pb2.VerifyBatchResponse
        ],
    ) -> None:
        self._rpc = rpc
        self._cond = threading.Condition()
        self._open: _OpenStream | None = None
        self._threads: list[threading.Thread] = []

    def future(
        self, request: verification_pb2.VerifyBatchRequest, *, timeout: float
    ) -> concurrent.futures.Future[verification_pb2.VerifyBatchResponse]:
        answer: concurrent.futures.Future[verification_pb2.VerifyBatchResponse]
        answer = concurrent.futures.Future()
        with self._cond:
            stream = self._open
            if stream is None:
                stream = _OpenStream(queue.SimpleQueue(), collections.deque())
                stream.responses = self._rpc(iter(stream.requests.get, _STREAM_END))
                self._threads = [t for t in self._threads if t.is_alive()]
                for target, name in ((self._read, "reader"), (self._watch, "watchdog")):
                    thread = threading.Thread(
                        target=target, args=(stream,), name=f"sls-client-stream-{name}"
                    )
                    thread.daemon = True
                    thread.start()
                    self._threads.append(thread)
                self._open = stream  # only once it is served
            stream.owed.append((answer, time.monotonic() + timeout))
            stream.requests.put(request)
            self._cond.notify_all()
        return answer

    def _read(self, stream: _OpenStream) -> None:
        error: Exception = UnavailableError(
            "VerifyStream", grpc.StatusCode.UNAVAILABLE, "the server ended the stream"
        )
        try:
            for response in stream.responses:
                with self._cond:
                    if not stream.owed:
                        raise ProtocolError("VerifyStream: an answer nobody asked for")
                    answer, _ = stream.owed.popleft()
                if not answer.done():
                    answer.set_result(response)
        except Exception as err:  # the stream failed: every batch on it fails
            error = err
        self._end(stream, error)

    def _watch(self, stream: _OpenStream) -> None:
        with self._cond:
            while not stream.ended:
                if not stream.owed:
                    self._cond.wait()
                    continue
                # Only the oldest batch's lateness holds up the others (answers come in
                # order); a later batch that is late has callers who stopped waiting,
                # and its answer is dropped when it comes.
                late = stream.owed[0][1] - time.monotonic()
                if late > 0:
                    self._cond.wait(late)
                    continue
                break
            else:
                return
        self._end(stream, _timeout_error())

    def _end(self, stream: _OpenStream, error: Exception) -> None:
        with self._cond:
            if stream.ended:
                return
            stream.ended = True
            if self._open is stream:
                self._open = None
            owed = list(stream.owed)
            stream.owed.clear()
            self._cond.notify_all()
        stream.requests.put(_STREAM_END)
        if owed:
            with contextlib.suppress(Exception):
                stream.responses.cancel()
        for answer, _ in owed:
            if not answer.done():
                answer.set_exception(error)

    def close(self) -> None:
        with self._cond:
            stream, self._open = self._open, None
            threads = list(self._threads)
        if stream is not None:
            stream.requests.put(_STREAM_END)  # the server ends the stream in turn
        for thread in threads:
            if thread.name.endswith("reader"):
                thread.join(5.0)
        if stream is not None:
            self._end(stream, ClientClosedError())


def _timeout_error() -> DeadlineExceededError:
    return DeadlineExceededError(
        "VerifyBatch", grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before an answer"
    )


class SlsClient:
    """Blocking client, safe to share between threads.

    ``target`` is ``"host:port"`` (one connection), a list of them or a
    ``"dns:///name:port"`` (balanced over several servers: see the module docstring);
    ``tls`` the :class:`TlsSettings` (``None`` = plaintext, refused unless every target is
    a loopback address); ``timeout`` the deadline of each call
    in seconds unless the call gives its own; ``linger``, ``max_batch`` and
    ``max_in_flight`` drive micro-batching of :meth:`verify` (``linger=0``: off; see the
    module docstring); ``retry`` the policy of the read-only calls (``None``: no
    retries); ``channel_options`` extra gRPC channel arguments (keepalive,
    ``grpc.use_local_subchannel_pool`` for a connection of its own), added after the
    client's own. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        tls: TlsSettings | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        linger: float = DEFAULT_LINGER,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_send_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        max_receive_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        channel_options: Sequence[tuple[str, Any]] = (),
        stream: bool = False,
    ) -> None:
        self._settings = _ChannelSettings.build(
            target,
            tls=tls,
            timeout=timeout,
            linger=linger,
            max_batch=max_batch,
            max_in_flight=max_in_flight,
            max_send_message_length=max_send_message_length,
            max_receive_message_length=max_receive_message_length,
            retry=retry,
            channel_options=channel_options,
        )
        options = list(self._settings.options)
        if tls is None:
            self._channel = grpc.insecure_channel(self._settings.target, options=options)
        else:
            self._channel = grpc.secure_channel(
                self._settings.target, tls.credentials(), options=options
            )
        verification = verification_pb2_grpc.VerificationServiceStub(self._channel)
        self._stubs: dict[str, Any] = {
            "verification": verification,
            "activation": activation_pb2_grpc.ActivationServiceStub(self._channel),
            "push": push_pb2_grpc.PushServiceStub(self._channel),
            "admin": admin_pb2_grpc.AdminServiceStub(self._channel),
            "policy": admin_pb2_grpc.PolicyServiceStub(self._channel),
            "portal": portal_pb2_grpc.PortalServiceStub(self._channel),
        }
        self._batcher = (
            _ThreadBatcher(
                _SyncBatchStream(verification.VerifyStream) if stream else verification.VerifyBatch,
                linger=self._settings.linger,
                max_batch=self._settings.max_batch,
                max_in_flight=self._settings.max_in_flight,
            )
            if self._settings.linger > 0
            else None
        )
        self._closed = False

    def __repr__(self) -> str:
        mode = "insecure" if self._settings.tls is None else "tls"
        return f"SlsClient({self._settings.given!r}, {mode}, linger={self._settings.linger})"

    def __enter__(self) -> SlsClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Sends the verify() attempts still waiting, waits for their answers, then closes
        the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._batcher is not None:
            self._batcher.close()
        self._channel.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Blocks until the channel is connected (:class:`DeadlineExceededError` if not in
        ``timeout`` seconds, default the client's)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self._timeout(timeout))
        except grpc.FutureTimeoutError:
            raise DeadlineExceededError(
                "connect", grpc.StatusCode.DEADLINE_EXCEEDED, "channel not ready in time"
            ) from None

    def _timeout(self, timeout: float | None) -> float:
        return self._settings.timeout if timeout is None else timeout

    def _run(self, call: _Call[_T], timeout: float | None) -> _T:
        if self._closed:
            raise ClientClosedError()
        rpc = getattr(self._stubs[call.service], call.method)
        try:
            response = rpc(call.request, timeout=self._timeout(timeout) + call.extra_timeout)
        except grpc.RpcError as err:
            raise _rpc_error(err, call.method) from err
        return _parse(call.method, call.parse, response)

    # verification

    def issue_challenge(
        self,
        username: str,
        *,
        device_id: int | None = None,
        purpose: Purpose | None = None,
        task: str | None = None,
        timeout: float | None = None,
    ) -> Challenge:
        """A challenge for ``username``'s device (M2FS: ``device_id``, else their choice).
        ``purpose`` defaults to a login, or to a step-up when a ``task`` (the Client
        Portal task the answer will be valid for) is given. Not retried: each call mints a
        new challenge (and texts SMS devices)."""
        return self._run(_issue_challenge_call(username, device_id, purpose, task), timeout)

    def verify(
        self,
        username: str,
        token: str | None,
        response: str,
        *,
        access: str = Access.TRADING,
        purpose: Purpose | None = None,
        task: str | None = None,
        timeout: float | None = None,
    ) -> Verdict:
        """One attempt: what the user typed for the challenge ``token`` (``None`` for a
        temporary passcode). Coalesced with concurrent calls when ``linger > 0``; never
        retried (a replay would be refused, and a wrong answer counted twice).
        ``task`` answers a step-up challenge for that task. ``purpose=Purpose.ACTIVATION``
        (or REACTIVATION) answers an activation challenge (the device becomes active);
        those go as a plain Verify, since a batch carries no purpose."""
        fields = _verify_fields(username, token, response, access)
        wire.to_purpose(purpose)  # a bad one is refused before anything is sent
        task_text = _optional_text("task", task)
        if self._batcher is None or not _batchable(purpose, task_text):
            return self._run(_verify_call(fields, purpose, task_text), timeout)
        if self._closed:
            raise ClientClosedError()
        wait = self._timeout(timeout)
        future = self._batcher.submit(*fields, task_text, deadline=time.monotonic() + wait)
        try:
            return future.result(timeout=wait)
        except DeadlineExceededError:
            raise
        except concurrent.futures.TimeoutError:
            raise _timeout_error() from None

    def verify_batch(
        self,
        usernames: Sequence[str],
        tokens: Sequence[str | None],
        responses: Sequence[str],
        *,
        access: str = Access.TRADING,
        task: str | None = None,
        timeout: float | None = None,
    ) -> BatchResult:
        """Many attempts in one call: per-item ``LoginOutcome`` values (``uint8``) and device
        ids in input order; logins, or step-up answers all for one ``task``. Never
        retried."""
        call = _verify_batch_call(usernames, tokens, responses, access, task)
        return self._run(call, timeout)

    def record_password_failure(
        self, username: str, *, timeout: float | None = None
    ) -> LockoutStatus:
        """Reports a wrong username/password combination: a failed attempt toward the
        lockout. Returns the lockout status after it. Never retried (it would count
        twice)."""
        return self._run(_record_password_failure_call(username), timeout)

    # activation

    def create_activation(self, username: str, *, timeout: float | None = None) -> ActivationOffer:
        return self._run(_create_activation_call(username), timeout)

    def complete_activation(
        self,
        *,
        app_public: bytes,
        push_public: bytes,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
        timeout: float | None = None,
    ) -> Activated:
        """:class:`ClientRefusedError` with ``reason`` "already used or expired" or "already
        enrolled" when refused."""
        call = _complete_activation_call(app_public, push_public, payload, manual_code, pin)
        return self._run(call, timeout)

    def send_sms_activation(self, username: str, *, timeout: float | None = None) -> float:
        """Texts an activation code to the user's phone; returns its expiry (Unix seconds)."""
        return self._run(_send_sms_activation_call(username), timeout)

    def recover(
        self,
        username: str,
        recovery_pin: str,
        *,
        app_public: bytes,
        push_public: bytes,
        timeout: float | None = None,
    ) -> Activated:
        """A reinstalled app re-enables ``username``'s IB Key with the recovery PIN (a wrong
        one is a failed attempt). :class:`ClientRefusedError` with the reason if refused."""
        call = _recover_call(username, recovery_pin, app_public, push_public)
        return self._run(call, timeout)

    # push

    def create_push(
        self, username: str, *, device_id: int | None = None, timeout: float | None = None
    ) -> PushChallenge:
        return self._run(_create_push_call(username, device_id), timeout)

    def list_pending_pushes(
        self, push_public: bytes, *, timeout: float | None = None
    ) -> list[PushChallenge]:
        return self._run(_list_pending_pushes_call(push_public), timeout)

    def answer_push(
        self,
        challenge_id: int,
        decision: PushDecision | int,
        signature: bytes,
        *,
        timeout: float | None = None,
    ) -> LoginOutcome:
        """From the app: ``APPROVE`` or ``DECLINE`` signed with its push key."""
        return self._run(_answer_push_call(challenge_id, decision, signature), timeout)

    def push_status(self, challenge_id: int, *, timeout: float | None = None) -> PushStatus:
        """ "pending", "approved", "declined" or "expired", now."""
        return self._run(_push_status_call(challenge_id, 0.0), timeout)

    def wait_push(
        self, challenge_id: int, *, wait: float, timeout: float | None = None
    ) -> PushStatus:
        """The status once decided or expired, or after ``wait`` seconds ("pending": fall
        back to challenge/response). The call's deadline is ``wait + timeout``."""
        return self._run(_push_status_call(challenge_id, wait), timeout)

    # client services

    def create_user(
        self, username: str, identity: Identity | None = None, *, timeout: float | None = None
    ) -> int:
        return self._run(_create_user_call(username, identity), timeout)

    def enroll_device(
        self,
        username: str,
        device_type: DeviceType,
        *,
        secret: bytes | None = None,
        pin: str | None = None,
        suite: str | None = None,
        serial: str | None = None,
        phone: str | None = None,
        shipped: bool = False,
        replaces: int | None = None,
        replaces_lost: bool = False,
        timeout: float | None = None,
    ) -> Device:
        """A new device. ``replaces``: the device this one replaces; ``replaces_lost``: that
        one was lost or stolen and leaves service at once. Legacy types are refused (no
        longer issued): :meth:`import_device` takes existing ones."""
        options = EnrollOptions(
            secret=secret,
            pin=pin,
            suite=suite,
            serial=serial,
            phone=phone,
            shipped=shipped,
            replaces=replaces,
            replaces_lost=replaces_lost,
        )
        call = _enrollment_call(
            "EnrollDevice", admin_pb2.EnrollDeviceRequest, username, device_type, options
        )
        return self._run(call, timeout)

    def import_device(
        self,
        username: str,
        device_type: DeviceType,
        *,
        secret: bytes | None = None,
        pin: str | None = None,
        suite: str | None = None,
        serial: str | None = None,
        phone: str | None = None,
        shipped: bool = False,
        replaces: int | None = None,
        replaces_lost: bool = False,
        timeout: float | None = None,
    ) -> Device:
        """An existing holder's device from the old system: the checks of
        :meth:`enroll_device`, but legacy types (Platinum, Gold, Alpine, code cards) are
        accepted. Never retried."""
        options = EnrollOptions(
            secret=secret,
            pin=pin,
            suite=suite,
            serial=serial,
            phone=phone,
            shipped=shipped,
            replaces=replaces,
            replaces_lost=replaces_lost,
        )
        call = _enrollment_call(
            "ImportDevice", admin_pb2.ImportDeviceRequest, username, device_type, options
        )
        return self._run(call, timeout)

    def list_devices(self, username: str, *, timeout: float | None = None) -> list[Device]:
        return self._run(_list_devices_call(username), timeout)

    def choose_device(self, username: str, device_id: int, *, timeout: float | None = None) -> None:
        call = _device_call(
            "ChooseDevice", admin_pb2.ChooseDeviceRequest, username=username, device_id=device_id
        )
        self._run(call, timeout)

    def share_device(
        self, owner: str, device_id: int, with_username: str, *, timeout: float | None = None
    ) -> None:
        """:class:`ClientRefusedError` with ``reason`` "less secure device", "different
        identification information" or "a temporary device is assigned" when refused."""
        call = _device_call(
            "ShareDevice",
            admin_pb2.ShareDeviceRequest,
            owner=owner,
            device_id=device_id,
            with_username=with_username,
        )
        self._run(call, timeout)

    def approve_sharing(self, request_id: int, *, timeout: float | None = None) -> SharingRequest:
        """Compliance approves a pending sharing request (:meth:`request_sharing` with
        ``needs_approval``): :class:`ClientRefusedError` "no such pending sharing request"
        otherwise."""
        return self._run(_approve_sharing_call(request_id), timeout)

    def revoke_device(self, username: str, device_id: int, *, timeout: float | None = None) -> None:
        call = _device_call(
            "RevokeDevice", admin_pb2.RevokeDeviceRequest, username=username, device_id=device_id
        )
        self._run(call, timeout)

    def reactivate_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "ReactivateDevice",
            admin_pb2.ReactivateDeviceRequest,
            username=username,
            device_id=device_id,
        )
        self._run(call, timeout)

    def issue_temporary_passcode(self, username: str, *, timeout: float | None = None) -> str:
        """The passcode, to show once; never log it."""
        return self._run(_issue_temporary_passcode_call(username), timeout)

    def issue_online_card(self, username: str, *, timeout: float | None = None) -> OnlineCard:
        """Client services' (admin role); the portal calls :meth:`portal_issue_online_card`."""
        return self._run(_issue_online_card_call("admin", username), timeout)

    def set_opt_out(self, username: str, opted_out: bool, *, timeout: float | None = None) -> None:
        call = _device_call(
            "SetOptOut", admin_pb2.SetOptOutRequest, username=username, opted_out=opted_out
        )
        self._run(call, timeout)

    def unlock(self, username: str, *, timeout: float | None = None) -> LockoutStatus:
        """Client services, after verifying the user's identity: ends the lock and the run
        of failures (audited with this client's identity). Returns the status after it."""
        return self._run(_unlock_call(username), timeout)

    # the Client Portal (gateway role): the user's own settings

    def portal_issue_online_card(
        self, username: str, *, timeout: float | None = None
    ) -> OnlineCard:
        """An Online Security Code Card and its PNG/PDF, while the user's temporary
        passcode is in its portal window (:class:`~sls_core.errors.InvalidInputError` on
        ``username`` otherwise)."""
        return self._run(_issue_online_card_call("portal", username), timeout)

    def request_sharing(
        self,
        owner: str,
        device_id: int,
        with_username: str,
        *,
        token: str,
        response: str,
        needs_approval: bool = False,
        timeout: float | None = None,
    ) -> SharingRequest:
        """``with_username`` asks to answer with ``owner``'s device ``device_id``; ``token``
        and ``response`` are the owner's answer to ``issue_challenge(owner,
        device_id=device_id, purpose=Purpose.SHARING)``. :class:`ClientRefusedError` with
        the ``reason`` when refused. Never retried (the answer is used up)."""
        call = _request_sharing_call(
            owner, device_id, with_username, token, response, needs_approval
        )
        return self._run(call, timeout)

    def cancel_sharing(
        self, request_id: int, *, username: str, timeout: float | None = None
    ) -> SharingRequest:
        """Cancels a pending or active request (``username``: its owner or requester): the
        requester's set-aside devices are active again."""
        return self._run(_cancel_sharing_call(request_id, username), timeout)

    def portal_set_opt_out(
        self, username: str, opted_out: bool, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "SetOptOut",
            admin_pb2.SetOptOutRequest,
            service="portal",
            username=username,
            opted_out=opted_out,
        )
        self._run(call, timeout)

    def portal_choose_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        """M2FS: the device that answers the user's logins when the gateway names none."""
        call = _device_call(
            "ChooseDevice",
            admin_pb2.ChooseDeviceRequest,
            service="portal",
            username=username,
            device_id=device_id,
        )
        self._run(call, timeout)

    def list_own_devices(self, username: str, *, timeout: float | None = None) -> list[Device]:
        """The user's devices, every state (retried: read-only)."""
        return self._run(_list_own_devices_call(username), timeout)

    # policy

    def security_level(self, username: str, *, timeout: float | None = None) -> SecurityLevel:
        return self._run(_security_level_call(username), timeout)

    def withdrawal_limits(self, username: str, *, timeout: float | None = None) -> WithdrawalLimits:
        return self._run(_withdrawal_limits_call(username), timeout)

    def session_length(self, unlock: str, *, timeout: float | None = None) -> float:
        """Seconds of a trading session after ``unlock`` ("pin", "passcode", "fingerprint",
        "face")."""
        return self._run(_session_length_call(unlock), timeout)

    def lockout_status(self, username: str, *, timeout: float | None = None) -> LockoutStatus:
        return self._run(_lockout_status_call(username), timeout)


# --- the asyncio client -------------------------------------------------------------------


_AsyncAttempt = _Attempt["asyncio.Future[Verdict]"]


class _BatchStream:
    """Micro-batches as the messages of one long-lived ``VerifyStream`` call: no new
    call per batch, answered in order. Any error, or the oldest batch on the stream
    passing its callers' deadline, ends the stream and fails every batch on it (the next
    batch opens a new one); a later batch that passes its deadline fails alone. The
    server's end of the stream (shutdown) fails them as UNAVAILABLE. Runs on the event
    loop only."""

    def __init__(
        self,
        rpc: grpc.aio.StreamStreamMultiCallable[
            verification_pb2.VerifyBatchRequest, verification_pb2.VerifyBatchResponse
        ],
    ) -> None:
        self._rpc = rpc
        self._call: Any = None
        #: The answers each open call still owes, in the order its requests were written.
        self._owed: dict[Any, collections.deque[asyncio.Future[Any]]] = {}
        self._write_lock = asyncio.Lock()
        self._readers: set[asyncio.Task[None]] = set()

    async def __call__(
        self, request: verification_pb2.VerifyBatchRequest, *, timeout: float
    ) -> verification_pb2.VerifyBatchResponse:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[verification_pb2.VerifyBatchResponse] = loop.create_future()
        # A stream has no per-message deadline: the batch's own is kept here, for the
        # write (a server that stops reading) as for the answer.
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline), self._write_lock:
                # One write at a time, in the order of the answers.
                if self._call is None:
                    call = self._rpc()
                    self._owed[call] = collections.deque()
                    self._call = call
                    reader = loop.create_task(self._read(call))
                    self._readers.add(reader)
                    reader.add_done_callback(self._readers.discard)
                call = self._call
                self._owed[call].append(answer)
                try:
                    await call.write(request)
                except BaseException as err:  # half written, maybe: the stream is done
                    answer.cancel()
                    self._end(call, err)
                    raise
        except TimeoutError:
            raise _timeout_error() from None
        try:
            return await asyncio.wait_for(asyncio.shield(answer), deadline - loop.time())
        except asyncio.TimeoutError:
            owed = self._owed.get(call)
            oldest = bool(owed) and owed[0] is answer  # type: ignore[index]
            answer.cancel()  # the reader skips its answer when it comes
            if oldest:  # answers come in order: the batches behind it wait on it too
                self._end(call, _timeout_error())
            raise _timeout_error() from None

    async def _read(self, call: Any) -> None:
        owed = self._owed[call]
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise UnavailableError(
                        "VerifyStream", grpc.StatusCode.UNAVAILABLE, "the server ended the stream"
                    )
                if not owed:
                    raise ProtocolError("VerifyStream: an answer nobody asked for")
                answer = owed.popleft()
                if not answer.done():
                    answer.set_result(response)
        except BaseException as err:
            self._end(call, err)

    def _end(self, call: Any, err: BaseException) -> None:
        """Ends ``call`` (if not already) and fails the answers it still owes."""
        if self._call is call:
            self._call = None
        owed = self._owed.pop(call, None)
        if owed is None:
            return
        call.cancel()
        error = err if isinstance(err, Exception) else ClientClosedError()
        while owed:
            answer = owed.popleft()
            if not answer.done():
                answer.set_exception(error)

    async def close(self) -> None:
        call = self._call
        if call is not None:
            with contextlib.suppress(Exception):
                await call.done_writing()
        if self._readers:
            await asyncio.gather(*self._readers, return_exceptions=True)


class _TaskBatcher:
    """Coalesces verify() calls from many tasks of one event loop into VerifyBatch calls.
    While fewer than ``max_in_flight`` calls are in flight, what waits leaves on the loop's
    next turn (so the tasks woken together still travel together); otherwise the first
    waiting attempt arms a ``linger`` timer, and the batch leaves when a call returns, the
    timer fires or ``max_batch`` attempts wait. Runs on the loop only, so needs no lock."""

    def __init__(
        self,
        rpc: Callable[..., Awaitable[verification_pb2.VerifyBatchResponse]],
        *,
        linger: float,
        max_batch: int,
        max_in_flight: int,
    ) -> None:
        self._rpc = rpc
        self._linger = linger
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._pending: list[_AsyncAttempt] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def submit(
        self,
        username: str,
        token: str,
        response: str,
        access: common_pb2.Access.ValueType,
        task: str,
        *,
        deadline: float,
    ) -> asyncio.Future[Verdict]:
        if self._closed:
            raise ClientClosedError()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()
        attempt = _AsyncAttempt(username, token, response, access, task, deadline, future)
        self._pending.append(attempt)
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._timer is None:
            if self._in_flight < self._max_in_flight:
                self._timer = loop.call_soon(self._flush)
            elif not self._max_in_flight:
                self._timer = loop.call_later(self._linger, self._flush)
            # else every slot is taken: the first batch to return sends what waits
        return future

    async def close(self) -> None:
        """Sends what is waiting, then waits for every batch in flight."""
        self._closed = True
        self._flush()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if isinstance(self._rpc, _BatchStream):
            await self._rpc.close()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            for kind, group in _by_kind(batch).items():
                sending = asyncio.get_running_loop().create_task(self._send(kind, group))
                self._in_flight += 1
                self._tasks.add(sending)
                sending.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        # Attempts that waited for a free slot leave now rather than at their linger.
        if self._pending and self._in_flight < self._max_in_flight:
            self._flush()

    async def _send(self, kind: _BatchKind, group: list[_AsyncAttempt]) -> None:
        group = _unexpired(group)
        if not group:
            return
        # The batch may run until its latest caller gives up; each caller waits its own time.
        timeout = max(a.deadline for a in group) - time.monotonic()
        try:
            response = await self._rpc(_batch_request(group, kind), timeout=timeout)
            verdicts = _verdicts(response, len(group))
        except asyncio.CancelledError as err:
            self._fail(group, err)
            raise
        except Exception as err:  # every caller must get an answer
            self._fail(group, err)
            return
        for attempt, verdict in zip(group, verdicts, strict=True):
            if not attempt.future.done():
                attempt.future.set_result(verdict)

    @staticmethod
    def _fail(group: list[_AsyncAttempt], err: BaseException | None) -> None:
        for attempt in group:
            if not attempt.future.done():
                attempt.future.set_exception(_batch_failure(err))


class AsyncSlsClient:
    """The asyncio client: the same calls as :class:`SlsClient`, as coroutines. Create it
    inside the event loop that uses it (a gRPC asyncio channel belongs to one loop); use
    ``async with`` or ``await close()``."""

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        tls: TlsSettings | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        linger: float = DEFAULT_LINGER,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_send_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        max_receive_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        channel_options: Sequence[tuple[str, Any]] = (),
        stream: bool = False,
    ) -> None:
        self._settings = _ChannelSettings.build(
            target,
            tls=tls,
            timeout=timeout,
            linger=linger,
            max_batch=max_batch,
            max_in_flight=max_in_flight,
            max_send_message_length=max_send_message_length,
            max_receive_message_length=max_receive_message_length,
            retry=retry,
            channel_options=channel_options,
        )
        options = list(self._settings.options)
        if tls is None:
            self._channel = grpc.aio.insecure_channel(self._settings.target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(
                self._settings.target, tls.credentials(), options=options
            )
        verification: VerificationServiceAsyncStub = verification_pb2_grpc.VerificationServiceStub(
            self._channel
        )
        activation: ActivationServiceAsyncStub = activation_pb2_grpc.ActivationServiceStub(
            self._channel
        )
        push: PushServiceAsyncStub = push_pb2_grpc.PushServiceStub(self._channel)
        admin: AdminServiceAsyncStub = admin_pb2_grpc.AdminServiceStub(self._channel)
        policy: PolicyServiceAsyncStub = admin_pb2_grpc.PolicyServiceStub(self._channel)
        portal: PortalServiceAsyncStub = portal_pb2_grpc.PortalServiceStub(self._channel)
        self._stubs: dict[str, Any] = {
            "verification": verification,
            "activation": activation,
            "push": push,
            "admin": admin,
            "policy": policy,
            "portal": portal,
        }
        self._batcher = (
            _TaskBatcher(
                _BatchStream(verification.VerifyStream) if stream else verification.VerifyBatch,
                linger=self._settings.linger,
                max_batch=self._settings.max_batch,
                max_in_flight=self._settings.max_in_flight,
            )
            if self._settings.linger > 0
            else None
        )
        self._closed = False

    def __repr__(self) -> str:
        mode = "insecure" if self._settings.tls is None else "tls"
        return f"AsyncSlsClient({self._settings.given!r}, {mode}, linger={self._settings.linger})"

    async def __aenter__(self) -> AsyncSlsClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Sends the verify() attempts still waiting, waits for their answers, then closes
        the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._batcher is not None:
            await self._batcher.close()
        await self._channel.close()

    async def wait_ready(self, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self._timeout(timeout))
        except asyncio.TimeoutError:
            raise DeadlineExceededError(
                "connect", grpc.StatusCode.DEADLINE_EXCEEDED, "channel not ready in time"
            ) from None

    def _timeout(self, timeout: float | None) -> float:
        return self._settings.timeout if timeout is None else timeout

    async def _run(self, call: _Call[_T], timeout: float | None) -> _T:
        if self._closed:
            raise ClientClosedError()
        rpc = getattr(self._stubs[call.service], call.method)
        try:
            response = await rpc(call.request, timeout=self._timeout(timeout) + call.extra_timeout)
        except grpc.RpcError as err:
            raise _rpc_error(err, call.method) from err
        return _parse(call.method, call.parse, response)

    # verification

    async def issue_challenge(
        self,
        username: str,
        *,
        device_id: int | None = None,
        purpose: Purpose | None = None,
        task: str | None = None,
        timeout: float | None = None,
    ) -> Challenge:
        call = _issue_challenge_call(username, device_id, purpose, task)
        return await self._run(call, timeout)

    async def verify(
        self,
        username: str,
        token: str | None,
        response: str,
        *,
        access: str = Access.TRADING,
        purpose: Purpose | None = None,
        task: str | None = None,
        timeout: float | None = None,
    ) -> Verdict:
        """As :meth:`SlsClient.verify`; concurrent tasks are coalesced."""
        fields = _verify_fields(username, token, response, access)
        wire.to_purpose(purpose)  # a bad one is refused before anything is sent
        task_text = _optional_text("task", task)
        if self._batcher is None or not _batchable(purpose, task_text):
            return await self._run(_verify_call(fields, purpose, task_text), timeout)
        if self._closed:
            raise ClientClosedError()
        wait = self._timeout(timeout)
        future = self._batcher.submit(*fields, task_text, deadline=time.monotonic() + wait)
        try:
            return await asyncio.wait_for(future, wait)
        except DeadlineExceededError:
            raise
        except asyncio.TimeoutError:
            raise _timeout_error() from None

    async def verify_batch(
        self,
        usernames: Sequence[str],
        tokens: Sequence[str | None],
        responses: Sequence[str],
        *,
        access: str = Access.TRADING,
        task: str | None = None,
        timeout: float | None = None,
    ) -> BatchResult:
        call = _verify_batch_call(usernames, tokens, responses, access, task)
        return await self._run(call, timeout)

    async def record_password_failure(
        self, username: str, *, timeout: float | None = None
    ) -> LockoutStatus:
        return await self._run(_record_password_failure_call(username), timeout)

    # activation

    async def create_activation(
        self, username: str, *, timeout: float | None = None
    ) -> ActivationOffer:
        return await self._run(_create_activation_call(username), timeout)

    async def complete_activation(
        self,
        *,
        app_public: bytes,
        push_public: bytes,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
        timeout: float | None = None,
    ) -> Activated:
        call = _complete_activation_call(app_public, push_public, payload, manual_code, pin)
        return await self._run(call, timeout)

    async def send_sms_activation(self, username: str, *, timeout: float | None = None) -> float:
        return await self._run(_send_sms_activation_call(username), timeout)

    async def recover(
        self,
        username: str,
        recovery_pin: str,
        *,
        app_public: bytes,
        push_public: bytes,
        timeout: float | None = None,
    ) -> Activated:
        call = _recover_call(username, recovery_pin, app_public, push_public)
        return await self._run(call, timeout)

    # push

    async def create_push(
        self, username: str, *, device_id: int | None = None, timeout: float | None = None
    ) -> PushChallenge:
        return await self._run(_create_push_call(username, device_id), timeout)

    async def list_pending_pushes(
        self, push_public: bytes, *, timeout: float | None = None
    ) -> list[PushChallenge]:
        return await self._run(_list_pending_pushes_call(push_public), timeout)

    async def answer_push(
        self,
        challenge_id: int,
        decision: PushDecision | int,
        signature: bytes,
        *,
        timeout: float | None = None,
    ) -> LoginOutcome:
        return await self._run(_answer_push_call(challenge_id, decision, signature), timeout)

    async def push_status(self, challenge_id: int, *, timeout: float | None = None) -> PushStatus:
        return await self._run(_push_status_call(challenge_id, 0.0), timeout)

    async def wait_push(
        self, challenge_id: int, *, wait: float, timeout: float | None = None
    ) -> PushStatus:
        return await self._run(_push_status_call(challenge_id, wait), timeout)

    # client services

    async def create_user(
        self, username: str, identity: Identity | None = None, *, timeout: float | None = None
    ) -> int:
        return await self._run(_create_user_call(username, identity), timeout)

    async def enroll_device(
        self,
        username: str,
        device_type: DeviceType,
        *,
        secret: bytes | None = None,
        pin: str | None = None,
        suite: str | None = None,
        serial: str | None = None,
        phone: str | None = None,
        shipped: bool = False,
        replaces: int | None = None,
        replaces_lost: bool = False,
        timeout: float | None = None,
    ) -> Device:
        """A new device. ``replaces``: the device this one replaces; ``replaces_lost``: that
        one was lost or stolen and leaves service at once. Legacy types are refused (no
        longer issued): :meth:`import_device` takes existing ones."""
        options = EnrollOptions(
            secret=secret,
            pin=pin,
            suite=suite,
            serial=serial,
            phone=phone,
            shipped=shipped,
            replaces=replaces,
            replaces_lost=replaces_lost,
        )
        call = _enrollment_call(
            "EnrollDevice", admin_pb2.EnrollDeviceRequest, username, device_type, options
        )
        return await self._run(call, timeout)

    async def import_device(
        self,
        username: str,
        device_type: DeviceType,
        *,
        secret: bytes | None = None,
        pin: str | None = None,
        suite: str | None = None,
        serial: str | None = None,
        phone: str | None = None,
        shipped: bool = False,
        replaces: int | None = None,
        replaces_lost: bool = False,
        timeout: float | None = None,
    ) -> Device:
        """An existing holder's device from the old system: the checks of
        :meth:`enroll_device`, but legacy types (Platinum, Gold, Alpine, code cards) are
        accepted. Never retried."""
        options = EnrollOptions(
            secret=secret,
            pin=pin,
            suite=suite,
            serial=serial,
            phone=phone,
            shipped=shipped,
            replaces=replaces,
            replaces_lost=replaces_lost,
        )
        call = _enrollment_call(
            "ImportDevice", admin_pb2.ImportDeviceRequest, username, device_type, options
        )
        return await self._run(call, timeout)

    async def list_devices(self, username: str, *, timeout: float | None = None) -> list[Device]:
        return await self._run(_list_devices_call(username), timeout)

    async def choose_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "ChooseDevice", admin_pb2.ChooseDeviceRequest, username=username, device_id=device_id
        )
        await self._run(call, timeout)

    async def share_device(
        self, owner: str, device_id: int, with_username: str, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "ShareDevice",
            admin_pb2.ShareDeviceRequest,
            owner=owner,
            device_id=device_id,
            with_username=with_username,
        )
        await self._run(call, timeout)

    async def approve_sharing(
        self, request_id: int, *, timeout: float | None = None
    ) -> SharingRequest:
        return await self._run(_approve_sharing_call(request_id), timeout)

    async def revoke_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "RevokeDevice", admin_pb2.RevokeDeviceRequest, username=username, device_id=device_id
        )
        await self._run(call, timeout)

    async def reactivate_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "ReactivateDevice",
            admin_pb2.ReactivateDeviceRequest,
            username=username,
            device_id=device_id,
        )
        await self._run(call, timeout)

    async def issue_temporary_passcode(self, username: str, *, timeout: float | None = None) -> str:
        return await self._run(_issue_temporary_passcode_call(username), timeout)

    async def issue_online_card(self, username: str, *, timeout: float | None = None) -> OnlineCard:
        return await self._run(_issue_online_card_call("admin", username), timeout)

    async def set_opt_out(
        self, username: str, opted_out: bool, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "SetOptOut", admin_pb2.SetOptOutRequest, username=username, opted_out=opted_out
        )
        await self._run(call, timeout)

    async def unlock(self, username: str, *, timeout: float | None = None) -> LockoutStatus:
        return await self._run(_unlock_call(username), timeout)

    # the Client Portal (gateway role): the user's own settings

    async def portal_issue_online_card(
        self, username: str, *, timeout: float | None = None
    ) -> OnlineCard:
        return await self._run(_issue_online_card_call("portal", username), timeout)

    async def request_sharing(
        self,
        owner: str,
        device_id: int,
        with_username: str,
        *,
        token: str,
        response: str,
        needs_approval: bool = False,
        timeout: float | None = None,
    ) -> SharingRequest:
        call = _request_sharing_call(
            owner, device_id, with_username, token, response, needs_approval
        )
        return await self._run(call, timeout)

    async def cancel_sharing(
        self, request_id: int, *, username: str, timeout: float | None = None
    ) -> SharingRequest:
        return await self._run(_cancel_sharing_call(request_id, username), timeout)

    async def portal_set_opt_out(
        self, username: str, opted_out: bool, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "SetOptOut",
            admin_pb2.SetOptOutRequest,
            service="portal",
            username=username,
            opted_out=opted_out,
        )
        await self._run(call, timeout)

    async def portal_choose_device(
        self, username: str, device_id: int, *, timeout: float | None = None
    ) -> None:
        call = _device_call(
            "ChooseDevice",
            admin_pb2.ChooseDeviceRequest,
            service="portal",
            username=username,
            device_id=device_id,
        )
        await self._run(call, timeout)

    async def list_own_devices(
        self, username: str, *, timeout: float | None = None
    ) -> list[Device]:
        return await self._run(_list_own_devices_call(username), timeout)

    # policy

    async def security_level(self, username: str, *, timeout: float | None = None) -> SecurityLevel:
        return await self._run(_security_level_call(username), timeout)

    async def withdrawal_limits(
        self, username: str, *, timeout: float | None = None
    ) -> WithdrawalLimits:
        return await self._run(_withdrawal_limits_call(username), timeout)

    async def session_length(self, unlock: str, *, timeout: float | None = None) -> float:
        return await self._run(_session_length_call(unlock), timeout)

    async def lockout_status(self, username: str, *, timeout: float | None = None) -> LockoutStatus:
        return await self._run(_lockout_status_call(username), timeout)
