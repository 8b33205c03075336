"""The server's configuration: a TOML file, command-line overrides, and the defaults that make
``sls-core serve`` work with no file at all (embedded SQLite in ``./data``, loopback only).

Every problem is a :class:`ConfigError` naming the key and the rule it breaks
(``tls.cert: file not found``); unknown keys are errors too, so a typo never silently falls
back to a default. Paths in a file are relative to the file's directory. Nothing here reads a
key or certificate's contents; the files are only checked to exist.

Example::

    listen = "0.0.0.0:50051"
    http_listen = "0.0.0.0:8443"                      # the HTTP/JSON API; omit: none
    data_dir = "/var/lib/sls"
    workers = 2
    metrics_port = 9464
    audit_log = "/var/log/sls/audit.jsonl"

    [tls]
    cert = "server.pem"
    key = "server.key"
    client_ca = "gateways-ca.pem"
    require_client_auth = true

    [store]            # omit: SQLite in data_dir
    url = "postgresql://sls@db.internal:5432/sls"

    [roles]            # client certificate subject CN -> role
    "portal-gateway" = "gateway"
    "client-services" = "admin"
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sls_core.errors import InvalidInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DEFAULT_HTTP_LISTEN",
    "DEFAULT_LISTEN",
    "ROLES",
    "ConfigError",
    "ServerConfig",
    "TlsConfig",
    "load_config",
    "split_host_port",
]

DEFAULT_LISTEN = "127.0.0.1:50051"
#: The HTTP/JSON API of the development server (``sls-core serve`` with no config file).
DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"
#: Gateways verify, report wrong passwords, issue challenges and activations, push, read
#: policy and act for the portal's user (PortalService); admins also call AdminService
#: (client services).
ROLES = ("gateway", "admin")
#: Our choice: a gateway texts at most 60 activation codes a minute, creates 300 offers and
#: 3,000 pushes (a login storm of push users); verification itself is never rationed.
DEFAULT_QUOTAS = {"SendSmsActivation": 60, "CreateActivation": 300, "CreatePush": 3000}
_QUOTA_METHODS = frozenset(
    {
        "SendSmsActivation",
        "CreateActivation",
        "CreatePush",
        "Recover",
        "RecordPasswordFailure",
        "IssueChallenge",
        "IssueOnlineCard",
        "RequestSharing",
        "IssueTemporaryPasscode",
        "CreateUser",
        "EnrollDevice",
        "ImportDevice",
    }
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: gRPC message sizes are C ints.
MAX_MESSAGE_LIMIT = 2**31 - 1


class ConfigError(InvalidInputError):
    """A configuration value breaks a rule; ``field`` is the key (``tls.cert``)."""


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path = field(repr=False)
    #: CA that signs the gateways' client certificates (mutual TLS).
    client_ca: Path | None = None
    require_client_auth: bool = False


@dataclass(frozen=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    #: HOST:PORT of the HTTP/JSON API (``sls_core.server.http_api``), served by the same
    #: processes with the same TLS and roles; None: not served.
    http_listen: str | None = None
    #: True when ``http_listen`` is the development default nobody asked for: a port
    #: already taken is then a warning (gRPC still serves), not a failed start.
    http_listen_implicit: bool = False
    data_dir: Path = Path("data")
    #: A ``postgresql://`` URL: the store shared by several nodes; None: SQLite in
    #: ``data_dir``. Also ``SLS_CORE_STORE`` and ``sls-core serve --store``.
    store: str | None = None
    #: Server processes sharing the port (SO_REUSEPORT).
    workers: int = 1
    #: Threads per process that run the blocking domain calls (SQLite, kernel).
    threads: int = 4
    #: A verification batch of at most this many items runs on the event loop itself
    #: when no other writer is busy (no hand-over to a thread and back: a few hundred
    #: microseconds less per call); larger ones, or a busy store, go to the threads.
    #: 0: always the threads.
    inline_max_items: int = 64
    max_batch_items: int = 100_000
    max_message_bytes: int = 64 * 1024 * 1024
    #: A call that comes without a deadline gets this one (seconds; 0: none).
    default_deadline_seconds: float = 30.0
    #: The longest GetPushStatus may wait for a decision (seconds).
    max_push_wait_seconds: float = 60.0
    #: On SIGTERM: health says NOT_SERVING for this long before the port closes (so load
    #: balancers stop sending), then in-flight calls get ``grace_seconds`` to finish.
    drain_seconds: float = 0.0
    grace_seconds: float = 10.0
    tls: TlsConfig | None = None
    #: Client-certificate subject CN -> "gateway" | "admin" (mutual TLS only).
    roles: Mapping[str, str] = field(default_factory=dict)
    #: Plaintext on a non-loopback address: refused unless this is set.
    allow_insecure: bool = False
    log_level: str = "INFO"
    #: Prometheus metrics over HTTP on 127.0.0.1 (0: off).
    metrics_port: int = 0
    #: One JSON line per decision; default ``data_dir/audit.jsonl``; "" turns it off.
    audit_log: Path | None = None
    audit_enabled: bool = True
    #: A shipped replacement activates itself this many days after shipment (SLS-RULES:
    #: 2 to 3 weeks by region).
    auto_activation_days: int = 21
    #: Per-caller quotas, calls a minute, on the RPCs that cost money or create state
    #: (``[quotas]`` in TOML: method name = per minute, 0 = none).
    quotas: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_QUOTAS))

    @property
    def audit_path(self) -> Path | None:
        if not self.audit_enabled:
            return None
        return self.audit_log if self.audit_log is not None else self.data_dir / "audit.jsonl"

    @property
    def insecure(self) -> bool:
        return self.tls is None

    def with_overrides(self, **values: Any) -> ServerConfig:
        """A copy with the given (non-None) fields replaced, validated again."""
        changed = {k: v for k, v in values.items() if v is not None}
        if "data_dir" in changed:
            changed["data_dir"] = Path(changed["data_dir"])
        return dataclasses.replace(self, **changed).validated()

    def validated(self) -> ServerConfig:
        split_host_port(self.listen, "listen")
        if (
            self.http_listen is not None
            and split_host_port(self.http_listen, "http_listen") == split_host_port(self.listen)
            and not self.http_listen.endswith(":0")
        ):
            raise ConfigError("http_listen", "must differ from listen (the gRPC port)")
        _int_range("workers", self.workers, 1, 256)
        _int_range("threads", self.threads, 1, 256)
        _int_range("inline_max_items", self.inline_max_items, 0, 10_000)
        _int_range("max_batch_items", self.max_batch_items, 1, 100_000_000)
        _int_range("max_message_bytes", self.max_message_bytes, 1024, MAX_MESSAGE_LIMIT)
        for name in (
            "default_deadline_seconds",
            "max_push_wait_seconds",
            "drain_seconds",
            "grace_seconds",
        ):
            _seconds(name, getattr(self, name))
        _int_range("metrics_port", self.metrics_port, 0, 65535)
        _int_range("auto_activation_days", self.auto_activation_days, 14, 21)
        for method, per_minute in self.quotas.items():
            if method not in _QUOTA_METHODS:
                raise ConfigError(
                    f"quotas.{method}", f"must be one of {', '.join(sorted(_QUOTA_METHODS))}"
                )
            _int_range(f"quotas.{method}", per_minute, 0, 10_000_000)
        if self.store is not None and not re.match(r"postgres(ql)?://", self.store, re.I):
            raise ConfigError("store.url", "must be a postgresql:// URL (omit it for SQLite)")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        for cn, role in self.roles.items():
            if not isinstance(cn, str) or not cn:
                raise ConfigError("roles", "keys are certificate subject CNs (non-empty)")
            if role not in ROLES:
                raise ConfigError(f"roles.{cn}", f"must be one of {', '.join(ROLES)}")
        if self.tls is not None:
            for name in ("cert", "key", "client_ca"):
                path = getattr(self.tls, name)
                if path is not None and not Path(path).is_file():
                    raise ConfigError(f"tls.{name}", "file not found")
            if self.tls.require_client_auth and self.tls.client_ca is None:
                raise ConfigError("tls.client_ca", "required when require_client_auth is true")
            if self.tls.client_ca is not None and not self.tls.require_client_auth:
                # grpcio cannot ask for a certificate without requiring it: with false, no
                # gateway certificate would ever be seen (no role), whatever the CA.
                raise ConfigError(
                    "tls.require_client_auth",
                    "must be true when client_ca is set (gRPC asks for client certificates "
                    "only when it requires them); drop client_ca for server-only TLS",
                )
        else:
            for key in ("listen", "http_listen"):
                address = getattr(self, key)
                if address is None:
                    continue
                host, _ = split_host_port(address, key)
                if not _is_loopback(host) and not self.allow_insecure:
                    which = "" if key == "listen" else f" ({key})"
                    raise ConfigError(
                        "tls",
                        f"required when listening on a non-loopback address{which} "
                        "(set allow_insecure = true to serve plaintext anyway)",
                    )
        return self


def split_host_port(address: str, key: str = "listen") -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` -> (host, port); the port may be 0 (any free port)."""
    if not isinstance(address, str):
        raise ConfigError(key, "must be a string HOST:PORT")
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(key, "must be HOST:PORT, e.g. 127.0.0.1:50051 or [::1]:50051")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(key, "port must be 0 to 65535")
    return host.strip("[]"), port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _int_range(key: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(key, "must be an integer")
    if not low <= value <= high:
        raise ConfigError(key, f"must be {low} to {high}")


def _seconds(key: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(key, "must be a number of seconds")
    if not 0 <= value < 86_400:
        raise ConfigError(key, "must be 0 or more seconds, less than a day")


_TYPES: dict[str, tuple[type, ...]] = {
    "listen": (str,),
    "http_listen": (str,),
    "data_dir": (str,),
    "workers": (int,),
    "threads": (int,),
    "inline_max_items": (int,),
    "max_batch_items": (int,),
    "max_message_bytes": (int,),
    "default_deadline_seconds": (int, float),
    "max_push_wait_seconds": (int, float),
    "drain_seconds": (int, float),
    "grace_seconds": (int, float),
    "allow_insecure": (bool,),
    "log_level": (str,),
    "metrics_port": (int,),
    "audit_log": (str,),
    "auto_activation_days": (int,),
}
_TLS_KEYS = {"cert", "key", "client_ca", "require_client_auth"}


def config_from_mapping(data: Mapping[str, Any], base_dir: Path | None = None) -> ServerConfig:
    """A validated config from parsed TOML; relative paths are taken from ``base_dir``."""
    base = base_dir or Path.cwd()

    def path(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "tls":
            values["tls"] = _tls(value, path)
        elif key == "store":
            if not isinstance(value, Mapping) or set(value) != {"url"}:
                raise ConfigError("store", 'must be a table with url = "postgresql://..."')
            if not isinstance(value["url"], str):
                raise ConfigError("store.url", "must be a string")
            values["store"] = value["url"]
        elif key == "roles":
            if not isinstance(value, Mapping):
                raise ConfigError("roles", "must be a table of CN = role")
            values["roles"] = dict(value)
        elif key == "quotas":
            if not isinstance(value, Mapping):
                raise ConfigError("quotas", "must be a table of method = calls per minute")
            values["quotas"] = {**DEFAULT_QUOTAS, **value}
        elif key in _TYPES:
            types = _TYPES[key]
            if isinstance(value, bool) and bool not in types:
                raise ConfigError(key, f"must be {_type_words(types)}")
            if not isinstance(value, types):
                raise ConfigError(key, f"must be {_type_words(types)}")
            if key == "data_dir":
                value = path(str(value))
            elif key == "audit_log":
                if value == "":
                    values["audit_enabled"] = False
                    continue
                value = path(str(value))
            elif key == "log_level":
                value = str(value).upper()
            elif key == "http_listen" and value == "":
                continue  # "": not served, as when the key is absent
            values[key] = value
        else:
            raise ConfigError(key, "unknown key")
    return ServerConfig(**values).validated()


def _tls(value: object, path: Any) -> TlsConfig:
    if not isinstance(value, Mapping):
        raise ConfigError("tls", "must be a table")
    unknown = set(value) - _TLS_KEYS
    if unknown:
        raise ConfigError(f"tls.{sorted(unknown)[0]}", "unknown key")
    for name in ("cert", "key"):
        if name not in value:
            raise ConfigError(f"tls.{name}", "required")
    for name in ("cert", "key", "client_ca"):
        if name in value and not isinstance(value[name], str):
            raise ConfigError(f"tls.{name}", "must be a file path")
    require = value.get("require_client_auth", False)
    if not isinstance(require, bool):
        raise ConfigError("tls.require_client_auth", "must be true or false")
    ca = value.get("client_ca")
    return TlsConfig(
        cert=path(value["cert"]),
        key=path(value["key"]),
        client_ca=path(ca) if ca else None,
        require_client_auth=require,
    )


def _type_words(types: tuple[type, ...]) -> str:
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return " or ".join(words[t] for t in types)


def load_config(path: str | Path) -> ServerConfig:
    """Reads and validates a TOML config file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"not valid TOML: {e}") from None
    return config_from_mapping(data, path.resolve().parent)
