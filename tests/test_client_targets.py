"""A client with several targets: calls spread ``round_robin`` over real in-process
servers (each with its own data dir), a server that reports NOT_SERVING or shuts down gets
no calls and none fail, one that serves again gets calls again; TLS checks every server's
certificate; bad lists are refused naming ``target`` and the rule.

Which server answered is read from each server's own metrics (requests by method and
code). Every wait is bounded: a loop of calls until a condition holds, or a failure after
``SETTLE`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from grpc_fixtures import InProcessServer, Pki, free_port
from sls_core.client import (
    HEALTH_SERVICE_NAME,
    AsyncSlsClient,
    SlsClient,
    TlsSettings,
)
from sls_core.errors import InvalidInputError, InvalidInputTypeError
from sls_core.server.config import TlsConfig

pytest_plugins = ["grpc_fixtures"]

#: The read-only call the tests count on each server.
METHOD = "/sls.v1.PolicyService/GetSessionLength"
#: Seconds a change of health or a restart may take to reach the client.
SETTLE = 10.0
#: Calls per measured window; with round_robin over n servers each gets ~window / n.
WINDOW = 30
#: Reconnect quickly to a server that comes back (gRPC's default backoff starts at 1 s).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
]


def answered(server: InProcessServer) -> int:
    value = server.server.metrics.registry.get_sample_value(
        "sls_grpc_requests_total", {"method": METHOD, "code": "OK"}
    )
    return int(value or 0)


def spread(client: SlsClient, servers: Sequence[InProcessServer], calls: int) -> list[int]:
    """How many of ``calls`` (made one after another) each server answered."""
    before = [answered(s) for s in servers]
    for _ in range(calls):
        assert client.session_length("pin") > timedelta(0)
    return [answered(s) - b for s, b in zip(servers, before, strict=True)]


def call_until(
    client: SlsClient, servers: Sequence[InProcessServer], done: Callable[[list[int]], bool]
) -> None:
    """Calls in windows of 3 until a window's spread satisfies ``done``; fails after SETTLE."""
    end = time.monotonic() + SETTLE
    while not done(spread(client, servers, 3)):
        assert time.monotonic() < end, "the client did not follow the servers in time"
        time.sleep(0.01)


def set_health(server: InProcessServer, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    server.run(server.server.health.set(HEALTH_SERVICE_NAME, status))


def assert_round_robin(counts: list[int], calls: int) -> None:
    """Every server got its share, give or take a few (round_robin rotates strictly once
    every server is ready; the slack covers one connecting late)."""
    share = calls / len(counts)
    assert sum(counts) == calls, counts
    assert all(abs(count - share) <= share / 3 for count in counts), counts


@pytest.fixture
def three(serve: Callable[..., InProcessServer]) -> list[InProcessServer]:
    return [serve() for _ in range(3)]


@pytest.fixture
def balanced(three: list[InProcessServer]) -> Iterator[SlsClient]:
    """retry=None: a call sent to a server that cannot serve would fail, not be retried
    elsewhere, so the tests see that the balancer alone keeps calls away."""
    targets = [s.address for s in three]
    with SlsClient(targets, linger=0, retry=None, channel_options=FAST_RECONNECT) as client:
        client.wait_ready()
        call_until(client, three, lambda _: all(answered(s) for s in three))
        yield client


# --- balancing ---------------------------------------------------------------------------


def test_calls_of_one_client_spread_round_robin_over_every_server(
    three: list[InProcessServer], balanced: SlsClient
) -> None:
    assert_round_robin(spread(balanced, three, WINDOW), WINDOW)


def test_a_server_that_reports_not_serving_gets_no_calls_until_it_serves_again(
    three: list[InProcessServer], balanced: SlsClient
) -> None:
    sick = three[1]
    set_health(sick, serving=False)
    call_until(balanced, three, lambda counts: counts[1] == 0)
    counts = spread(balanced, three, WINDOW)
    assert counts[1] == 0, counts
    assert_round_robin([counts[0], counts[2]], WINDOW)

    set_health(sick, serving=True)
    call_until(balanced, three, lambda counts: counts[1] > 0)
    assert_round_robin(spread(balanced, three, WINDOW), WINDOW)


def test_a_server_shutting_down_is_left_and_a_restarted_one_joins_again(
    serve: Callable[..., InProcessServer], tmp_path: Path
) -> None:
    """The graceful shutdown reports NOT_SERVING first (``drain_seconds``): the client
    leaves the server before its port closes, and no call fails without retries."""
    port = free_port()
    leaving = serve(tmp_path / "leaving", listen=f"127.0.0.1:{port}", drain_seconds=0.5)
    servers = [serve(), leaving, serve()]
    targets = [s.address for s in servers]
    with SlsClient(targets, linger=0, retry=None, channel_options=FAST_RECONNECT) as client:
        call_until(client, servers, lambda _: all(answered(s) for s in servers))
        stopping = leaving.stop_async()
        call_until(client, servers, lambda counts: counts[1] == 0)
        while not stopping.done():  # calls during the drain and the shutdown: none fail
            assert spread(client, servers, 3)[1] == 0
        stopping.result(0)
        remaining = [servers[0], servers[2]]
        assert_round_robin(spread(client, remaining, WINDOW), WINDOW)

        back = serve(tmp_path / "back", listen=f"127.0.0.1:{port}")
        servers[1] = back
        call_until(client, servers, lambda counts: counts[1] > 0)
        assert_round_robin(spread(client, servers, WINDOW), WINDOW)


def test_host_names_in_the_list_are_resolved_and_balanced(
    three: list[InProcessServer],
) -> None:
    targets = [f"localhost:{s.port}" for s in three]
    with SlsClient(targets, linger=0) as client:
        call_until(client, three, lambda _: all(answered(s) for s in three))
        assert_round_robin(spread(client, three, WINDOW), WINDOW)
        assert repr(client).startswith(f"SlsClient({tuple(targets)!r}, insecure")


def test_a_dns_target_is_balanced_and_health_checked(three: list[InProcessServer]) -> None:
    """One name, one port: it cannot name several test servers, but the channel it makes
    is the balanced one (round_robin with health checks) and reaches the server."""
    server = three[0]
    with SlsClient(f"dns:///localhost:{server.port}", linger=0) as client:
        before = answered(server)
        assert client.session_length("pin") > timedelta(0)
        assert answered(server) == before + 1
        config = json.loads(dict(client._settings.options)["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}
    assert config["methodConfig"]  # the retry policy is kept


def test_a_plain_host_port_keeps_one_connection_without_balancing() -> None:
    with SlsClient("localhost:50051") as client:
        options = dict(client._settings.options)
        assert client._settings.target == "localhost:50051"
    assert "loadBalancingConfig" not in json.loads(options["grpc.service_config"])
    with SlsClient(["127.0.0.1:50051", "127.0.0.1:50052"], retry=None) as client:
        options = dict(client._settings.options)
        assert client._settings.target == "ipv4:127.0.0.1:50051,127.0.0.1:50052"
    assert json.loads(options["grpc.service_config"]) == {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": ""},
    }
    with SlsClient(["[::1]:50051", "[::1]:50052"]) as client:
        assert client._settings.target == "ipv6:[::1]:50051,[::1]:50052"


def test_the_async_client_balances_too(three: list[InProcessServer]) -> None:
    async def main() -> None:
        targets = [s.address for s in three]
        async with AsyncSlsClient(targets, linger=0) as client:
            await client.wait_ready()
            end = time.monotonic() + SETTLE
            while not all(answered(s) for s in three):
                assert time.monotonic() < end, "not every server was reached"
                await client.session_length("pin")
            before = [answered(s) for s in three]
            for _ in range(WINDOW):
                await client.session_length("pin")
            counts = [answered(s) - b for s, b in zip(three, before, strict=True)]
            assert_round_robin(counts, WINDOW)

    asyncio.run(main())


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture
def two_mtls(serve: Callable[..., InProcessServer], pki: Pki) -> list[InProcessServer]:
    tls = TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca, require_client_auth=True
    )
    return [serve(tls=tls, roles={"gateway1": "gateway"}) for _ in range(2)]


def gateway_tls(pki: Pki, server_name_override: str | None = None) -> TlsSettings:
    cert, key = pki.clients["gateway1"]
    return TlsSettings(pki.ca, cert, key, server_name_override)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_checks_every_server_against_the_host_the_targets_share(
    two_mtls: list[InProcessServer], pki: Pki, host: str
) -> None:
    targets = [f"{host}:{s.port}" for s in two_mtls]
    with SlsClient(targets, tls=gateway_tls(pki), linger=0) as client:
        call_until(client, two_mtls, lambda _: all(answered(s) for s in two_mtls))
        assert_round_robin(spread(client, two_mtls, 10), 10)


def test_tls_with_different_hosts_needs_the_server_name(
    two_mtls: list[InProcessServer], pki: Pki
) -> None:
    targets = [f"127.0.0.1:{two_mtls[0].port}", f"localhost:{two_mtls[1].port}"]
    with pytest.raises(InvalidInputError) as caught:
        SlsClient(targets, tls=gateway_tls(pki))
    assert caught.value.field == "server_name_override"
    with SlsClient(targets, tls=gateway_tls(pki, "localhost"), linger=0) as client:
        call_until(client, two_mtls, lambda _: all(answered(s) for s in two_mtls))


def test_plaintext_is_refused_unless_every_target_is_loopback() -> None:
    for targets in (["127.0.0.1:1", "10.1.2.3:1"], ["localhost:1", "sls.internal:1"]):
        with pytest.raises(InvalidInputError) as caught:
            SlsClient(targets)
        assert caught.value.field == "tls"
    SlsClient(["127.0.0.1:1", "localhost:2"]).close()
    SlsClient(["[::1]:1", "[::1]:2"]).close()


def test_names_are_resolved_once_and_tls_checks_the_name_they_share(
    monkeypatch: pytest.MonkeyPatch, pki: Pki
) -> None:
    """One gRPC target lists one address family: IPv4 when every item has one, else IPv6.
    Every server's certificate is checked against the one name the items share."""
    answers = {
        "sls.internal": ["10.0.0.1", "10.0.0.2", "fd00::1"],
        "sls6.internal": ["fd00::2"],
    }
    looked_up: list[str] = []

    def getaddrinfo(host: str, port: int, *_args: object, **_kw: object) -> list[Any]:
        looked_up.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (ip, port),
            )
            for ip in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with SlsClient(["sls.internal:50051", "sls.internal:50052"], tls=TlsSettings(pki.ca)) as client:
        options = dict(client._settings.options)
        assert client._settings.target == (
            "ipv4:10.0.0.1:50051,10.0.0.2:50051,10.0.0.1:50052,10.0.0.2:50052"
        )
    assert options["grpc.ssl_target_name_override"] == "sls.internal"
    named = TlsSettings(pki.ca, server_name_override="sls")
    for targets, expected in (
        (["sls.internal:1", "10.0.0.1:1", "10.0.0.3:1"], "ipv4:10.0.0.1:1,10.0.0.2:1,10.0.0.3:1"),
        (["sls.internal:1", "sls6.internal:1"], "ipv6:[fd00::1]:1,[fd00::2]:1"),
    ):
        with SlsClient(targets, tls=named) as client:
            assert client._settings.target == expected
            assert dict(client._settings.options)["grpc.ssl_target_name_override"] == "sls"
    for bad, rule in (
        (["sls6.internal:1", "10.0.0.9:1"], "all be IPv4 or all be IPv6"),
        (["sls.internal:1", "gone.internal:1"], "item 1: the host name does not resolve"),
    ):
        with pytest.raises(InvalidInputError) as caught:
            SlsClient(bad, tls=named)
        assert caught.value.field == "target"
        assert rule in caught.value.rule
    looked_up.clear()
    with pytest.raises(InvalidInputError):
        SlsClient(["sls.internal:1"])  # plaintext off loopback: refused before any lookup
    assert looked_up == []


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        ([], "at least one"),
        ((), "at least one"),
        (["127.0.0.1"], "'host:port'"),
        (["127.0.0.1:"], "'host:port'"),
        (["127.0.0.1:port"], "'host:port'"),
        (["127.0.0.1:1", ":50051"], "item 1: the host"),
        (["127.0.0.1:0"], "port must be from 1 to 65535"),
        (["127.0.0.1:65536"], "port must be from 1 to 65535"),
        (["::1:50051"], "'host:port'"),
        (["[127.0.0.1]:50051"], "only an IPv6 address"),
        (["dns:///localhost:50051"], "'host:port'"),
        (["localhost:1/x"], "'host:port'"),
        (["local host:1"], "the host"),
        (["bad_.-name:1"], "the host"),
        (["127.0.0.1:1", "[::1]:2"], "all be IPv4 or all be IPv6"),
    ],
)
def test_a_bad_list_of_targets_is_refused_naming_target_and_the_rule(
    target: list[str], rule: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        SlsClient(target)
    assert caught.value.field == "target"
    assert rule in caught.value.rule


@pytest.mark.parametrize("target", [["127.0.0.1:1", 5001], [b"127.0.0.1:1"], 5001, None, ""])
def test_a_target_of_the_wrong_type_is_refused(target: object) -> None:
    with pytest.raises(InvalidInputError) as caught:
        SlsClient(target)  # type: ignore[arg-type]
    assert caught.value.field == "target"
    if target != "":
        assert isinstance(caught.value, InvalidInputTypeError)


def test_the_async_client_checks_its_targets_too() -> None:
    async def main() -> None:
        with pytest.raises(InvalidInputError) as caught:
            AsyncSlsClient([])
        assert caught.value.field == "target"

    asyncio.run(main())
