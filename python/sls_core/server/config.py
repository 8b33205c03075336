"""The server's configuration: a TOML file, ``SLS_CORE_*`` environment variables,
command-line overrides, and the defaults that make ``sls-core serve`` work with no file at
all (embedded SQLite in ``./data``, loopback only). Precedence: command-line flag >
environment > config file > default.

Every problem is a :class:`ConfigError` naming the key and the rule it breaks
(``tls.cert: file not found``); unknown keys are errors too, so a typo never silently falls
back to a default. Paths in a file are relative to the file's directory. Nothing here reads a
key or certificate's contents; the files are only checked to exist, and an error never echoes
a key's value (a store URL may carry a password).

Environment variables: ``SLS_CORE_`` + the key's TOML path upper-cased, dots as underscores
(``SLS_CORE_LISTEN``, ``SLS_CORE_TLS_CERT``, ``SLS_CORE_STORE_URL``,
``SLS_CORE_QUOTAS_SENDSMSACTIVATION``), parsed as TOML would type the value; see
:func:`apply_environment` for the exceptions.

Example::

    listen = "0.0.0.0:50051"
    http_listen = "0.0.0.0:8443"                      # the HTTP/JSON API; omit: none
    data_dir = "/var/lib/sls"
    workers = 2
    metrics_listen = "0.0.0.0:9464"                   # or metrics_port = 9464 (127.0.0.1)
    audit_log = "/var/log/sls/audit.jsonl"
    tracing = "otlp"                                  # traces to $OTEL_EXPORTER_OTLP_ENDPOINT

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
import difflib
import ipaddress
import logging
import os
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
    "ENVIRONMENT_VARIABLES",
    "ROLES",
    "TRACING_MODES",
    "ConfigError",
    "ServerConfig",
    "TlsConfig",
    "apply_environment",
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
#: OpenTelemetry traces (sls_core.server.telemetry): none, printed on stdout, or sent to an
#: OTLP collector named by the standard OTEL_* variables.
TRACING_MODES = ("off", "console", "otlp")
#: gRPC message sizes are C ints.
MAX_MESSAGE_LIMIT = 2**31 - 1

log = logging.getLogger("sls_core.server.config")


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
    #: ``data_dir``. Also ``SLS_CORE_STORE_URL`` (or ``SLS_CORE_STORE``) and
    #: ``sls-core serve --store``.
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
    #: Prometheus metrics over HTTP on 127.0.0.1 (0: off); ``metrics_listen`` instead for
    #: another address. Setting one of the two in a later layer replaces the other.
    metrics_port: int = 0
    #: HOST:PORT of the Prometheus endpoint (None: ``metrics_port``). Plaintext HTTP on any
    #: address without ``allow_insecure``: the metrics carry no secret, user or device, and
    #: writing a non-loopback address here is the opt-in (firewall it to the scraper).
    metrics_listen: str | None = None
    #: One JSON line per decision; default ``data_dir/audit.jsonl``; "" turns it off.
    audit_log: Path | None = None
    audit_enabled: bool = True
    #: A shipped replacement activates itself this many days after shipment (SLS-RULES:
    #: 2 to 3 weeks by region).
    auto_activation_days: int = 21
    #: Per-caller quotas, calls a minute, on the RPCs that cost money or create state
    #: (``[quotas]`` in TOML: method name = per minute, 0 = none).
    quotas: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_QUOTAS))
    #: OpenTelemetry traces, one of TRACING_MODES: "otlp" sends them to the collector of
    #: ``OTEL_EXPORTER_OTLP_ENDPOINT``, "console" prints them on stdout; needs the ``otel``
    #: extra. "off": nothing of OpenTelemetry is imported.
    tracing: str = "off"

    @property
    def audit_path(self) -> Path | None:
        if not self.audit_enabled:
            return None
        return self.audit_log if self.audit_log is not None else self.data_dir / "audit.jsonl"

    @property
    def insecure(self) -> bool:
        return self.tls is None

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of the Prometheus endpoint; None: not served."""
        if self.metrics_listen is not None:
            return split_host_port(self.metrics_listen, "metrics_listen")
        return ("127.0.0.1", self.metrics_port) if self.metrics_port else None

    def with_overrides(self, **values: Any) -> ServerConfig:
        """A copy with the given (non-None) fields replaced, validated again."""
        changed = {k: v for k, v in values.items() if v is not None}
        if "data_dir" in changed:
            changed["data_dir"] = Path(changed["data_dir"])
        if "metrics_port" in changed:  # the later layer's choice of metrics address wins
            changed.setdefault("metrics_listen", None)
        elif "metrics_listen" in changed:
            changed["metrics_port"] = 0
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
        if self.metrics_listen is not None:
            split_host_port(self.metrics_listen, "metrics_listen")
            if self.metrics_port:
                raise ConfigError("metrics_listen", "set either metrics_listen or metrics_port")
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
        if self.tracing not in TRACING_MODES:
            raise ConfigError("tracing", f"must be one of {', '.join(TRACING_MODES)}")
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
    "metrics_listen": (str,),
    "audit_log": (str,),
    "auto_activation_days": (int,),
    "tracing": (str,),
}
_TLS_KEYS = {"cert", "key", "client_ca", "require_client_auth"}


def config_from_mapping(data: Mapping[str, Any], base_dir: Path | None = None) -> ServerConfig:
    """A validated config from parsed TOML; relative paths are taken from ``base_dir``."""
    return ServerConfig(**_field_values(data, base_dir)).validated()


def _field_values(data: Mapping[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """ServerConfig fields from parsed TOML (types checked, paths resolved, not validated)."""
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
            elif key == "tracing":
                value = str(value).strip().lower()
            elif key in ("http_listen", "metrics_listen") and value == "":
                continue  # "": not served, as when the key is absent
            values[key] = value
        else:
            raise ConfigError(key, "unknown key")
    return values


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


_ENV_PREFIX = "SLS_CORE_"
#: ``SLS_CORE_*`` variables that are not config keys, read elsewhere: never warned about and
#: never echoed (the key ring and the PIN are secrets).
_OTHER_VARIABLES = frozenset(
    {
        "SLS_CORE_THREADS",  # the kernel's batch thread count (sls_core._native)
        "SLS_CORE_MASTER_KEYS",  # the master key ring (sls_core.sealing)
        "SLS_CORE_PKCS11_PIN",  # the HSM token's PIN (sls_core.hsm)
    }
)
#: The store URL's older name, still read (also by ``sls-core admin``).
_STORE_ALIAS = "SLS_CORE_STORE"
_REQUIRE = "require_client_auth"


def _environment_names() -> dict[str, tuple[str, ...]]:
    """Variable name -> the key's TOML path, e.g. SLS_CORE_TLS_CERT -> ("tls", "cert")."""
    names: dict[str, tuple[str, ...]] = {
        f"{_ENV_PREFIX}{key.upper()}": (key,) for key in _TYPES if key != "threads"
    }
    # SLS_CORE_THREADS already means the kernel's batch threads in every process.
    names[f"{_ENV_PREFIX}SERVER_THREADS"] = ("threads",)
    names.update({f"{_ENV_PREFIX}TLS_{key.upper()}": ("tls", key) for key in _TLS_KEYS})
    names[f"{_ENV_PREFIX}STORE_URL"] = ("store", "url")
    names[f"{_ENV_PREFIX}ROLES"] = ("roles",)  # CNs are no variable names: a TOML inline table
    names.update({f"{_ENV_PREFIX}QUOTAS_{m.upper()}": ("quotas", m) for m in _QUOTA_METHODS})
    return names


ENVIRONMENT_VARIABLES = _environment_names()


def apply_environment(
    config: ServerConfig, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """``config`` with the ``SLS_CORE_*`` variables of ``environ`` (default ``os.environ``)
    applied over it, validated again.

    The name is ``SLS_CORE_`` + the key's TOML path upper-cased with underscores
    (``SLS_CORE_WORKERS``, ``SLS_CORE_TLS_CLIENT_CA``, ``SLS_CORE_QUOTAS_CREATEPUSH``), with
    these exceptions: ``threads`` is ``SLS_CORE_SERVER_THREADS`` (``SLS_CORE_THREADS`` is the
    kernel's), the store URL is ``SLS_CORE_STORE_URL`` or ``SLS_CORE_STORE``, and ``[roles]``
    is one ``SLS_CORE_ROLES`` holding a TOML inline table. Strings are taken as written;
    other values are parsed as TOML values (``30``, ``2.5``, ``true``) and checked with the
    same rules as the file; relative paths are taken from the working directory. An empty
    ``SLS_CORE_HTTP_LISTEN`` / ``SLS_CORE_METRICS_LISTEN`` (or ``off``) turns the listener
    off; an empty store URL is ignored. An error names the variable and the rule, never the
    value. An unknown ``SLS_CORE_*`` variable is logged as a warning (its name only) and
    ignored: the namespace is shared with variables read elsewhere (``SLS_CORE_THREADS``,
    ``SLS_CORE_MASTER_KEYS``, ``SLS_CORE_PKCS11_PIN``, a key file's ``pin_env``), so it does
    not stop a start. No config key is a secret today, but a store URL may carry a password:
    values are never logged or echoed.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    variables: dict[str, str] = {}  # key path ("tls.cert") -> the variable that set it
    cleared: dict[str, None] = {}
    store = store_url_from_environment(environ)
    if store is not None:
        data["store"] = {"url": store[1]}
        variables["store.url"] = store[0]
    for variable in sorted(environ):
        if not variable.startswith(_ENV_PREFIX) or variable in _OTHER_VARIABLES:
            continue
        if variable in (_STORE_ALIAS, f"{_ENV_PREFIX}STORE_URL"):
            continue
        path = ENVIRONMENT_VARIABLES.get(variable)
        if path is None:
            _warn_unknown(variable)
            continue
        text = environ[variable]
        key = ".".join(path)
        variables[key] = variable
        if path[0] in ("http_listen", "metrics_listen") and text.strip().lower() in ("", "off"):
            cleared[path[0]] = None
        elif path[0] == "tls":
            tls = data.setdefault("tls", _tls_table(config.tls))
            tls[path[1]] = _env_value(variable, text, bool if path[1] == _REQUIRE else str)
        elif path[0] == "quotas":
            quotas = data.setdefault("quotas", dict(config.quotas))
            quotas[path[1]] = _env_value(variable, text, int)
        elif path[0] == "roles":
            data["roles"] = _env_value(variable, text, dict)
        else:
            types = _TYPES[path[0]]
            data[path[0]] = text if types == (str,) else _env_value(variable, text, *types)
    try:
        values = _field_values(data, Path.cwd())
        values.update(cleared)
        if "audit_log" in values:
            values.setdefault("audit_enabled", True)
        if "http_listen" in values or "http_listen" in cleared:
            values["http_listen_implicit"] = False
        if "metrics_port" in values:  # one variable replaces the file's other metrics key
            values.setdefault("metrics_listen", None)
        elif "metrics_listen" in values:
            values["metrics_port"] = 0
        return dataclasses.replace(config, **values).validated()
    except ConfigError as e:
        culprit = variables.get(e.field, variables.get(e.field.partition(".")[0]))
        if culprit is None and e.field.startswith("tls.") and "tls" in data:
            culprit = f"{_ENV_PREFIX}{e.field.replace('.', '_').upper()}"  # e.g. one missing
        if culprit is None:
            raise  # a rule between keys that no variable alone breaks names the key
        raise ConfigError(culprit, e.rule) from None


def store_url_from_environment(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable, URL) from SLS_CORE_STORE_URL or its older name SLS_CORE_STORE."""
    new, old = environ.get(f"{_ENV_PREFIX}STORE_URL") or "", environ.get(_STORE_ALIAS) or ""
    if new and old and new != old:
        raise ConfigError(
            f"{_ENV_PREFIX}STORE_URL", f"differs from {_STORE_ALIAS} (the same setting): set one"
        )
    if new:
        return f"{_ENV_PREFIX}STORE_URL", new
    return (_STORE_ALIAS, old) if old else None


def _tls_table(tls: TlsConfig | None) -> dict[str, Any]:
    if tls is None:
        return {}
    table: dict[str, Any] = {"cert": str(tls.cert), "key": str(tls.key)}
    if tls.client_ca is not None:
        table["client_ca"] = str(tls.client_ca)
    table[_REQUIRE] = tls.require_client_auth
    return table


def _env_value(variable: str, text: str, *types: type) -> Any:
    """``text`` parsed as one TOML value of one of ``types`` (``dict``: an inline table)."""
    if types == (str,):
        return text
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        parsed = {}
    value = parsed.get("value")
    if (
        len(parsed) == 1
        and isinstance(value, types)
        and (bool in types or not isinstance(value, bool))
    ):
        return value
    if types == (dict,):
        rule = 'must be a TOML inline table, e.g. {"portal-gateway" = "gateway"}'
    else:
        rule = f"must be {_type_words(types)}"
    raise ConfigError(variable, rule)


def _warn_unknown(variable: str) -> None:
    near = difflib.get_close_matches(variable, ENVIRONMENT_VARIABLES, n=1, cutoff=0.8)
    hint = f" (did you mean {near[0]}?)" if near else ""
    log.warning(
        "%s is not a config variable%s; ignored",
        variable,
        hint,
        extra={"fields": {"variable": variable}},
    )
