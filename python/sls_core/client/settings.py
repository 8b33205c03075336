"""How a client connects: defaults, TLS, the retry policy of the read-only methods, and
the target (one server or several, balanced with client-side health checking)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from sls_core.errors import InvalidInputError, InvalidInputTypeError

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
        "sls.v1.AdminService/GetServerStatus",
        "sls.v1.PortalService/ListOwnDevices",
        "sls.v1.PolicyService/GetSecurityLevel",
        "sls.v1.PolicyService/GetWithdrawalLimits",
        "sls.v1.PolicyService/GetSessionLength",
        "sls.v1.PolicyService/GetLockoutStatus",
    }
)


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
