"""``SLS_CORE_*`` environment variables over the config file (flag > environment > file >
default, the file's types and rules, errors that name the variable and never echo a value,
unknown names warned about), the metrics bind address (``metrics_listen`` beside
``metrics_port``) and the process/runtime metrics, per worker."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from grpc_fixtures import CALL_TIMEOUT, InProcessServer, free_port, spawn_server
from sls_core.server import main
from sls_core.server.config import (
    DEFAULT_QUOTAS,
    ENVIRONMENT_VARIABLES,
    ConfigError,
    ServerConfig,
    apply_environment,
    load_config,
)

pytest_plugins = ["grpc_fixtures"]

NEVER_ECHOED = "hunter2-not-to-be-echoed"
ANY_ADDRESS = "0.0.0.0"  # noqa: S104 - only parsed, never bound


def env(**variables: str) -> dict[str, str]:
    return {f"SLS_CORE_{name}": value for name, value in variables.items()}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=CALL_TIMEOUT) as r:
        return str(r.read().decode())


def test_every_config_key_has_a_variable() -> None:
    keys = {".".join(path) for path in ENVIRONMENT_VARIABLES.values()}
    derived = {"http_listen_implicit", "audit_enabled", "tls", "quotas", "roles", "store"}
    for name in {f.name for f in dataclasses.fields(ServerConfig)} - derived:
        assert name in keys, name
    assert {"tls.cert", "tls.key", "tls.client_ca", "tls.require_client_auth"} <= keys
    assert {"store.url", "roles", "quotas.SendSmsActivation", "quotas.CreatePush"} <= keys
    assert ENVIRONMENT_VARIABLES["SLS_CORE_TLS_CERT"] == ("tls", "cert")
    assert ENVIRONMENT_VARIABLES["SLS_CORE_QUOTAS_SENDSMSACTIVATION"] == (
        "quotas",
        "SendSmsActivation",
    )
    # SLS_CORE_THREADS is the kernel's batch thread count, not the server's domain threads.
    assert ENVIRONMENT_VARIABLES["SLS_CORE_SERVER_THREADS"] == ("threads",)
    assert "SLS_CORE_THREADS" not in ENVIRONMENT_VARIABLES


def test_values_are_typed_as_in_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    config = apply_environment(
        ServerConfig(),
        env(
            LISTEN="0.0.0.0:6000",
            HTTP_LISTEN="0.0.0.0:6001",
            DATA_DIR="state",
            WORKERS="3",
            SERVER_THREADS="8",
            MAX_BATCH_ITEMS="1_000",
            DEFAULT_DEADLINE_SECONDS="2.5",
            GRACE_SECONDS="7",
            LOG_LEVEL="debug",
            AUDIT_LOG="",
            AUTO_ACTIVATION_DAYS="14",
            TLS_CERT="cert.pem",
            TLS_KEY="key.pem",
            TLS_CLIENT_CA="ca.pem",
            TLS_REQUIRE_CLIENT_AUTH="true",
            ROLES='{"portal-gateway" = "gateway", "client services" = "admin"}',
            QUOTAS_CREATEPUSH="10",
            QUOTAS_RECOVER="0",
            STORE_URL="postgresql://sls@db/sls",
        ),
    )
    assert config.listen == "0.0.0.0:6000"
    assert config.http_listen == "0.0.0.0:6001"
    assert not config.http_listen_implicit
    assert config.data_dir == tmp_path / "state"
    assert (config.workers, config.threads, config.max_batch_items) == (3, 8, 1000)
    assert config.default_deadline_seconds == 2.5
    assert config.grace_seconds == 7
    assert config.log_level == "DEBUG"
    assert config.audit_path is None
    assert config.auto_activation_days == 14
    assert config.tls is not None
    assert config.tls.cert == tmp_path / "cert.pem"
    assert config.tls.client_ca == tmp_path / "ca.pem"
    assert config.tls.require_client_auth
    assert dict(config.roles) == {"portal-gateway": "gateway", "client services": "admin"}
    assert dict(config.quotas) == {**DEFAULT_QUOTAS, "CreatePush": 10, "Recover": 0}
    assert config.store == "postgresql://sls@db/sls"
    assert apply_environment(ServerConfig(), env(ALLOW_INSECURE="true")).allow_insecure


def test_a_variable_changes_one_key_of_a_table_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("cert.pem", "key.pem", "other.pem"):
        (tmp_path / name).write_text("x")
    file = tmp_path / "sls.toml"
    file.write_text(
        'audit_log = ""\n[tls]\ncert = "cert.pem"\nkey = "key.pem"\n[quotas]\nCreatePush = 5\n'
    )
    monkeypatch.chdir(tmp_path)
    config = apply_environment(
        load_config(file),
        env(TLS_CERT="other.pem", QUOTAS_SENDSMSACTIVATION="7", AUDIT_LOG="audit.jsonl"),
    )
    assert config.tls is not None
    assert (config.tls.cert, config.tls.key) == (tmp_path / "other.pem", tmp_path / "key.pem")
    assert config.quotas["CreatePush"] == 5
    assert config.quotas["SendSmsActivation"] == 7
    assert config.audit_path == tmp_path / "audit.jsonl"


def test_a_bad_value_names_the_variable_and_the_rule_never_the_value(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    cases = [
        (env(WORKERS="two"), "SLS_CORE_WORKERS: must be an integer"),
        (env(WORKERS="0"), "SLS_CORE_WORKERS: must be 1 to 256"),
        (env(WORKERS="true"), "SLS_CORE_WORKERS: must be an integer"),
        (env(WORKERS="2\nlisten = 'x'"), "SLS_CORE_WORKERS: must be an integer"),
        (env(METRICS_PORT="99999"), "SLS_CORE_METRICS_PORT: must be 0 to 65535"),
        (env(GRACE_SECONDS="soon"), "SLS_CORE_GRACE_SECONDS: must be an integer or a number"),
        (env(DRAIN_SECONDS="inf"), "SLS_CORE_DRAIN_SECONDS: must be 0 or more seconds"),
        (env(ALLOW_INSECURE="yes"), "SLS_CORE_ALLOW_INSECURE: must be true or false"),
        (env(ALLOW_INSECURE="1"), "SLS_CORE_ALLOW_INSECURE: must be true or false"),
        (env(LISTEN="nowhere"), "SLS_CORE_LISTEN: must be HOST:PORT"),
        (env(LOG_LEVEL="LOUD"), "SLS_CORE_LOG_LEVEL: must be one of DEBUG"),
        (env(QUOTAS_CREATEPUSH="-1"), "SLS_CORE_QUOTAS_CREATEPUSH: must be 0 to 10000000"),
        (env(ROLES="gw=gateway"), "SLS_CORE_ROLES: must be a TOML inline table"),
        (env(ROLES='{"gw" = "root"}'), "SLS_CORE_ROLES: must be one of gateway, admin"),
        (env(TLS_CERT=str(tmp_path / "cert.pem")), "SLS_CORE_TLS_KEY: required"),
        (
            env(TLS_CERT=str(tmp_path / "nope.pem"), TLS_KEY=str(tmp_path / "cert.pem")),
            "SLS_CORE_TLS_CERT: file not found",
        ),
        (
            env(STORE_URL=f"mysql://sls:{NEVER_ECHOED}@db/sls"),
            "SLS_CORE_STORE_URL: must be a postgresql:// URL",
        ),
        (
            env(STORE=f"mysql://sls:{NEVER_ECHOED}@db/sls"),
            "SLS_CORE_STORE: must be a postgresql:// URL",
        ),
        (
            env(METRICS_PORT="9464", METRICS_LISTEN="127.0.0.1:9465"),
            "SLS_CORE_METRICS_LISTEN: set either metrics_listen or metrics_port",
        ),
    ]
    for variables, message in cases:
        with pytest.raises(ConfigError) as error:
            apply_environment(ServerConfig(), variables)
        assert str(error.value).startswith(message), (variables, str(error.value))
        assert NEVER_ECHOED not in str(error.value)


def test_precedence_is_flag_then_environment_then_file_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "sls.toml"
    file.write_text("workers = 2\nmetrics_port = 9464\n")
    monkeypatch.delenv("SLS_CORE_WORKERS", raising=False)

    def chosen(*flags: str, config: bool = True) -> ServerConfig:
        with_file = ["--config", str(file)] if config else []
        return main._config(main._parser().parse_args(["serve", *with_file, *flags]))

    assert chosen(config=False).workers == 1
    assert chosen().workers == 2
    monkeypatch.setenv("SLS_CORE_WORKERS", "3")
    assert chosen().workers == 3
    assert chosen(config=False).workers == 3
    assert chosen("--workers", "4").workers == 4
    # One metrics key in a later layer replaces the other of an earlier one.
    monkeypatch.setenv("SLS_CORE_METRICS_LISTEN", "0.0.0.0:9100")
    assert chosen().metrics_address == (ANY_ADDRESS, 9100)
    assert chosen("--metrics-port", "9200").metrics_address == ("127.0.0.1", 9200)
    monkeypatch.setenv("SLS_CORE_METRICS_LISTEN", "off")
    assert chosen().metrics_address is None
    monkeypatch.setenv("SLS_CORE_HTTP_LISTEN", "")
    assert chosen(config=False).http_listen is None
    assert chosen("--http-listen", "127.0.0.1:8081").http_listen == "127.0.0.1:8081"


def test_the_store_url_variable_and_its_older_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def store(**variables: str) -> str | None:
        return apply_environment(ServerConfig(), env(**variables)).store

    assert store() is None
    assert store(STORE="postgresql://a/sls") == "postgresql://a/sls"
    assert store(STORE_URL="postgresql://b/sls") == "postgresql://b/sls"
    assert store(STORE="postgresql://b/sls", STORE_URL="postgresql://b/sls") == (
        "postgresql://b/sls"
    )
    assert store(STORE="", STORE_URL="") is None  # empty: as unset, as before
    with pytest.raises(ConfigError) as both:
        store(STORE="postgresql://a/sls", STORE_URL=f"postgresql://{NEVER_ECHOED}/sls")
    assert str(both.value).startswith("SLS_CORE_STORE_URL: differs from SLS_CORE_STORE")
    assert NEVER_ECHOED not in str(both.value)


def test_an_unknown_variable_is_a_warning_naming_it_never_its_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    variables = env(
        LISTN=NEVER_ECHOED,
        THREADS="2",
        MASTER_KEYS=NEVER_ECHOED,
        PKCS11_PIN=NEVER_ECHOED,
        STORE="",
        LISTEN="127.0.0.1:6000",
    )
    with caplog.at_level(logging.WARNING, logger="sls_core.server.config"):
        config = apply_environment(ServerConfig(), variables)
    assert config.listen == "127.0.0.1:6000"
    assert config.threads == ServerConfig().threads
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "SLS_CORE_LISTN is not a config variable (did you mean SLS_CORE_LISTEN?); ignored"
    ]
    assert NEVER_ECHOED not in caplog.text


def test_metrics_listen_in_the_file(tmp_path: Path) -> None:
    file = tmp_path / "sls.toml"
    file.write_text('metrics_listen = "0.0.0.0:9464"\n')
    # Plaintext metrics need no allow_insecure: they carry no secret, user or device.
    assert load_config(file).metrics_address == (ANY_ADDRESS, 9464)
    file.write_text('metrics_listen = "[::1]:9464"\n')
    assert load_config(file).metrics_address == ("::1", 9464)
    file.write_text("metrics_port = 9464\n")
    assert load_config(file).metrics_address == ("127.0.0.1", 9464)
    assert ServerConfig().metrics_address is None
    for text, message in [
        ('metrics_listen = "9464"', "metrics_listen: must be HOST:PORT"),
        ("metrics_listen = 9464", "metrics_listen: must be a string"),
        (
            'metrics_listen = "0.0.0.0:9464"\nmetrics_port = 9464',
            "metrics_listen: set either metrics_listen or metrics_port",
        ),
    ]:
        file.write_text(text + "\n")
        with pytest.raises(ConfigError) as error:
            load_config(file)
        assert str(error.value).startswith(message), text


def test_one_process_exports_its_process_and_runtime_metrics(
    serve: Callable[..., InProcessServer],
) -> None:
    port = free_port()
    serve(metrics_listen=f"127.0.0.1:{port}")
    text = scrape(port)
    assert re.search(r'^process_resident_memory_bytes\{worker="0"\} [0-9.e+]+$', text, re.M)
    assert re.search(r'^process_cpu_seconds_total\{worker="0"\} ', text, re.M)
    assert re.search(r'^process_open_fds\{worker="0"\} ', text, re.M)
    assert "python_gc_collections_total{" in text
    assert "python_info{" in text
    assert "# TYPE sls_grpc_requests_total counter" in text


def test_workers_export_process_metrics_each_with_a_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("SLS_CORE_METRICS_LISTEN", f"127.0.0.1:{port}")
    with spawn_server(tmp_path / "data", "--workers", "2") as supervisor:
        pattern = r'^process_start_time_seconds\{worker="(\w+)"\} '
        workers: set[str] = set()
        end = time.monotonic() + CALL_TIMEOUT
        while workers != {"0", "1", "supervisor"} and time.monotonic() < end:
            workers = set(re.findall(pattern, scrape(port), re.M))
            time.sleep(0.1)
        assert workers == {"0", "1", "supervisor"}, supervisor.log()
        text = scrape(port)
        assert re.search(r'^process_resident_memory_bytes\{worker="1"\} ', text, re.M)
        assert "python_info{" in text
        assert "python_gc_" not in text  # the supervisor's own would mislead
        assert supervisor.terminate() == 0


def test_the_command_line_reports_a_bad_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLS_CORE_WORKERS", "0")
    monkeypatch.setenv("SLS_CORE_STORE_URL", f"postgresql://sls:{NEVER_ECHOED}@db/sls")
    assert main.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err == "sls-core: config error: SLS_CORE_WORKERS: must be 1 to 256\n"
