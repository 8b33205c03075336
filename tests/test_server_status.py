"""AdminService.GetServerStatus for operators (admin role only: a gateway is refused), and
times over gRPC as Timestamps: to the sub-second, unset meaning "not set", read by the
client as the domain's Unix seconds or as UTC datetimes."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from grpc_fixtures import CALL_TIMEOUT, InProcessServer, Pki
from sls_core import __version__
from sls_core.api.v1 import admin_pb2, verification_pb2
from sls_core.client import PermissionDeniedError, SlsClient, TlsSettings
from sls_core.clock import DAY
from sls_core.devices import DeviceType
from sls_core.server.config import TlsConfig
from sls_core.simulator import dsc_response
from sls_core.values import LockoutStatus

pytest_plugins = ["grpc_fixtures"]

SECRET = bytes(range(1, 21))
PIN = "4711"
ROLES = {"gateway1": "gateway", "ops": "admin"}


@pytest.fixture
def mtls(serve: Callable[..., InProcessServer], pki: Pki) -> InProcessServer:
    tls = TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca, require_client_auth=True
    )
    server = serve(tls=tls, roles=ROLES)
    for name in ("alice", "bob"):
        server.sls.create_user(name)
        server.sls.enroll_device(name, DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    return server


def client_as(server: InProcessServer, pki: Pki, name: str) -> SlsClient:
    cert, key = pki.clients[name]
    tls = TlsSettings(ca_cert=pki.ca, client_cert=cert, client_key=key)
    return SlsClient(server.address, tls=tls, linger=0)


def test_an_admin_reads_the_servers_version_store_keys_counts_and_health(
    mtls: InProcessServer, pki: Pki
) -> None:
    store = mtls.sls.store
    with client_as(mtls, pki, "ops") as client:
        before = datetime.now(UTC)
        first = client.server_status()
        # A login uses a challenge up: the count the operator sees moves with it.
        c = client.issue_challenge("alice")
        assert client.verify("alice", c.token, dsc_response(SECRET, PIN, c.challenge or "")).ok
        time.sleep(0.01)
        second = client.server_status()
    counts = store.row_counts()  # type: ignore[attr-defined]
    assert (first.version, first.store_backend) == (__version__, "sqlite")
    assert first.schema_version == store.schema_version  # type: ignore[attr-defined]
    assert first.active_key_id == store.active_key_id  # type: ignore[attr-defined]
    assert first.key_ids_in_use == store.key_ids_in_use()  # type: ignore[attr-defined]
    assert set(first.key_ids_in_use) == {first.active_key_id}
    assert (first.users, first.devices) == (2, 2) == (counts["users"], counts["devices"])
    assert second.consumed_challenges == first.consumed_challenges + 1 == counts["consumed"]
    assert first.serving
    assert second.serving
    # Started before the first call, in UTC; uptime grows between calls.
    assert first.started_at.tzinfo is UTC
    assert first.started_at == second.started_at <= before
    assert timedelta(0) < first.uptime < second.uptime


def test_a_gateway_may_not_read_the_server_status(mtls: InProcessServer, pki: Pki) -> None:
    with client_as(mtls, pki, "gateway1") as client, pytest.raises(PermissionDeniedError):
        client.server_status()
    channel = grpc.secure_channel(mtls.address, pki.credentials("gateway1"))
    stubs = mtls.stubs(channel)
    with pytest.raises(grpc.RpcError) as denied:
        stubs.admin.GetServerStatus(admin_pb2.GetServerStatusRequest(), timeout=CALL_TIMEOUT)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.details() == (
        "role gateway may not call /sls.v1.AdminService/GetServerStatus (needs admin)"
    )


def test_the_status_says_not_serving_when_health_does(mtls: InProcessServer, pki: Pki) -> None:
    mtls.server._store_healthy = False
    mtls.run(mtls.server._publish_health())
    with client_as(mtls, pki, "ops") as client:
        assert client.server_status().serving is False
        mtls.server._store_healthy = True
        mtls.run(mtls.server._publish_health())
        assert client.server_status().serving is True


def test_a_lock_travels_to_the_sub_second_and_unlocked_is_unset(
    mtls: InProcessServer, pki: Pki
) -> None:
    now = mtls.clock.advance(0.25)
    report = verification_pb2.RecordPasswordFailureRequest(username="bob")
    stubs = mtls.stubs(grpc.secure_channel(mtls.address, pki.credentials("gateway1")))
    first = stubs.verification.RecordPasswordFailure(report, timeout=CALL_TIMEOUT)
    assert not first.HasField("locked_until")  # not locked
    with client_as(mtls, pki, "gateway1") as gateway:
        for _ in range(9):
            status = gateway.record_password_failure("bob")
        assert status == LockoutStatus(10, now + DAY)  # the Unix seconds, exactly
        message = stubs.policy.GetLockoutStatus(
            admin_pb2.GetLockoutStatusRequest(username="bob"), timeout=CALL_TIMEOUT
        )
        assert (message.locked_until.seconds, message.locked_until.nanos) == (
            int(now + DAY),
            250_000_000,
        )
        assert message.locked_until.ToDatetime(tzinfo=UTC) == datetime.fromtimestamp(now + DAY, UTC)
        assert gateway.session_length("face") == timedelta(hours=30)
    with client_as(mtls, pki, "ops") as admin:
        assert admin.unlock("bob") == LockoutStatus(0, None)
