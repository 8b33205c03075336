"""Running the server: health checking and reflection for stock tools, Prometheus metrics,
graceful shutdown (NOT_SERVING, in-flight work completes), ``sls-core serve`` as a process
(SIGTERM, development keys, several processes on one store, workers sharing the port), and
the config file's validation."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from grpc_fixtures import (
    CALL_TIMEOUT,
    GrpcIbKey,
    InProcessServer,
    Stubs,
    free_port,
    health_turns,
    spawn_server,
)
from sls_core.api.v1 import activation_pb2, admin_pb2, common_pb2, push_pb2, verification_pb2
from sls_core.server.config import ConfigError, ServerConfig, load_config
from sls_core.server.main import main
from sls_core.simulator import SimulatedApp, dsc_response

pytest_plugins = ["grpc_fixtures"]

SECRET = bytes(range(1, 21))
PIN = "4711"
V = verification_pb2
SERVICES = [
    "sls.v1.VerificationService",
    "sls.v1.ActivationService",
    "sls.v1.PushService",
    "sls.v1.AdminService",
    "sls.v1.PolicyService",
    "sls.v1.PortalService",
]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def with_dsc(stubs: Stubs, name: str = "alice") -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username=name), timeout=CALL_TIMEOUT)
    stubs.admin.EnrollDevice(
        admin_pb2.EnrollDeviceRequest(
            username=name, type=common_pb2.DEVICE_TYPE_DSC_PLUS, secret=SECRET, pin=PIN
        ),
        timeout=CALL_TIMEOUT,
    )


def right_batch(stubs: Stubs, name: str, n: int) -> V.VerifyBatchRequest:
    challenges = [
        stubs.verification.IssueChallenge(V.IssueChallengeRequest(username=name)) for _ in range(n)
    ]
    return V.VerifyBatchRequest(
        usernames=[name] * n,
        tokens=[c.token for c in challenges],
        responses=[dsc_response(SECRET, PIN, c.challenge) for c in challenges],
    )


def until(condition: Callable[[], bool], timeout: float = CALL_TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=CALL_TIMEOUT) as r:
        return str(r.read().decode())


def test_health_per_service_and_reflection_lists_the_api(stubs: Stubs) -> None:
    for service in ["", *SERVICES]:
        answer = stubs.health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == SERVING, service
    with pytest.raises(grpc.RpcError) as unknown:
        stubs.health.Check(health_pb2.HealthCheckRequest(service="sls.v1.Nope"))
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    database = ProtoReflectionDescriptorDatabase(stubs.channel)
    listed = {
        *SERVICES,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
    assert set(database.get_services()) == listed
    # v1, what grpcurl asks first: the same messages under another package.
    from grpc_reflection.v1alpha import reflection_pb2

    v1 = stubs.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (answer,) = list(
        v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    )
    assert {s.name for s in answer.list_services_response.service} == listed
    (answer,) = list(
        v1(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="sls.v1.VerifyRequest"
                    )
                ]
            ),
            timeout=5,
        )
    )
    assert answer.file_descriptor_response.file_descriptor_proto
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName("sls.v1.VerificationService")
    assert [m.name for m in service.methods] == [
        "IssueChallenge",
        "Verify",
        "VerifyBatch",
        "VerifyStream",
        "RecordPasswordFailure",
    ]
    assert pool.FindMessageTypeByName("sls.v1.VerifyBatchRequest").fields_by_name["usernames"]


def test_metrics_count_requests_items_outcomes_batches_and_lockouts(
    serve: Callable[..., InProcessServer],
) -> None:
    port = free_port()
    server = serve(metrics_port=port)
    stubs = server.stubs()
    with_dsc(stubs, "lea")
    batch = right_batch(stubs, "lea", 11)
    del batch.responses[:]
    batch.responses.extend(["00000000"] * 10 + ["11111111"])
    stubs.verification.VerifyBatch(batch)
    with pytest.raises(grpc.RpcError):
        stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username="Bad"))
    stubs.verification.Verify(V.VerifyRequest(username="nobody", response="1"))
    text = scrape(port)
    expected = [
        'sls_grpc_requests_total{code="OK",method="/sls.v1.VerificationService/VerifyBatch"} 1.0',
        'sls_grpc_requests_total{code="INVALID_ARGUMENT",'
        'method="/sls.v1.AdminService/CreateUser"} 1.0',
        'sls_verify_items_total{method="VerifyBatch",outcome="WRONG"} 10.0',
        'sls_verify_items_total{method="VerifyBatch",outcome="LOCKED"} 1.0',
        'sls_verify_items_total{method="Verify",outcome="UNKNOWN_USER"} 1.0',
        "sls_locked_outcomes_total 1.0",
        'sls_verify_batch_items_bucket{le="100.0",method="VerifyBatch"} 1.0',
        'sls_verify_batch_items_count{method="VerifyBatch"} 1.0',
        'sls_grpc_request_seconds_count{method="/sls.v1.VerificationService/IssueChallenge"} 11.0',
    ]
    for line in expected:
        assert line in text, line
    assert "lea" not in text


def test_graceful_shutdown_not_serving_then_the_in_flight_batch_completes(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve(threads=1, inline_max_items=0)  # every batch waits for the thread
    stubs = server.stubs()
    with_dsc(stubs)
    request = right_batch(stubs, "alice", 20)
    watch = stubs.health.Watch(
        health_pb2.HealthCheckRequest(service="sls.v1.VerificationService"), timeout=CALL_TIMEOUT
    )
    assert next(watch).status == SERVING
    release = threading.Event()
    blocker = server.server.executor.submit(release.wait, CALL_TIMEOUT)
    in_flight = stubs.verification.VerifyBatch.future(request, timeout=CALL_TIMEOUT)
    registry = server.server.metrics.registry
    until(
        lambda: (
            registry.get_sample_value(
                "sls_grpc_requests_in_progress",
                {"method": "/sls.v1.VerificationService/VerifyBatch"},
            )
            == 1
        )
    )  # the batch is on the server, queued behind the blocker
    stopping = server.stop_async()
    assert next(watch).status == NOT_SERVING
    watch.cancel()
    release.set()
    answer = in_flight.result(CALL_TIMEOUT)
    assert list(answer.outcomes) == [common_pb2.OUTCOME_OK] * 20
    stopping.result(CALL_TIMEOUT)
    blocker.result(CALL_TIMEOUT)
    with pytest.raises(grpc.RpcError) as gone:
        stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert gone.value.code() is grpc.StatusCode.UNAVAILABLE
    audit = server.config.audit_path.read_text().splitlines()  # type: ignore[union-attr]
    assert sum(json.loads(line)["event"] == "verify" for line in audit) == 20


def test_sls_core_serve_sigterm_health_and_waiting_calls_end_then_exit_0(tmp_path: Path) -> None:
    data = tmp_path / "data"
    metrics_port = free_port()
    with spawn_server(data, "--metrics-port", str(metrics_port)) as process:
        log = process.log()
        # No config: the embedded store and generated development keys, and where they are.
        start = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        keys = next(line for line in start if line["message"] == "generated development master key")
        assert keys["master_key"] == str((data / "master-key.json").resolve())
        assert (data / "master-key.json").stat().st_mode & 0o077 == 0
        assert any("every caller is admin" in line["message"] for line in start)
        stubs = process.stubs()
        stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username="bob"))
        offer = stubs.activation.CreateActivation(
            activation_pb2.CreateActivationRequest(username="bob")
        )
        SimulatedApp(None).activate(GrpcIbKey(stubs), qr_png=offer.qr_png)
        push = stubs.push.CreatePush(push_pb2.CreatePushRequest(username="bob")).push
        waiting = stubs.push.GetPushStatus.future(
            push_pb2.GetPushStatusRequest(
                challenge_id=push.challenge_id, wait=Duration(seconds=30)
            ),
            timeout=CALL_TIMEOUT,
        )
        watch = stubs.health.Watch(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        assert next(watch).status == SERVING
        waiting_line = (
            'sls_grpc_requests_in_progress{method="/sls.v1.PushService/GetPushStatus"} 1.0'
        )
        until(lambda: waiting_line in scrape(metrics_port))
        started = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        watch.cancel()
        # The waiting gateway gets its answer now, not after 30 s.
        assert waiting.result(CALL_TIMEOUT).status == push_pb2.PUSH_STATUS_PENDING
        assert process.process.wait(CALL_TIMEOUT) == 0
        assert time.monotonic() - started < 5
        stubs.channel.close()
        lines = [json.loads(line) for line in process.log().splitlines()]
        messages = [line["message"] for line in lines]
        assert "shutting down" in messages
        assert messages[-1] == "stopped"
        waited = [line for line in lines if line.get("method", "").endswith("/GetPushStatus")]
        assert [line["code"] for line in waited] == ["OK"]


def _workers_of(supervisor: int) -> list[int]:
    """The server worker processes whose parent is ``supervisor`` (not the resource
    tracker multiprocessing also starts)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == supervisor and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (now init) has to reap it


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """``kill -9`` of the supervisor (the OOM killer, an operator's mistake) must not leave
    its workers serving on their own, holding the port and the store with nobody to stop
    them: each notices within a second or two and stops as on SIGTERM."""
    data = tmp_path / "data"
    with spawn_server(data, "--workers", "2", "--log-level", "WARNING") as server:
        supervisor = server.process.pid
        until(lambda: len(_workers_of(supervisor)) == 2)
        workers = _workers_of(supervisor)
        server.process.kill()
        server.process.wait(CALL_TIMEOUT)
        try:
            end = time.monotonic() + CALL_TIMEOUT
            while any(_running(pid) for pid in workers) and time.monotonic() < end:
                time.sleep(0.1)
            assert not any(_running(pid) for pid in workers), server.log_tail()
            assert "supervisor gone: stopping" in server.log()
            host, port = server.address.rsplit(":", 1)
            with socket.socket() as probe:  # nobody answers on the port any more
                assert probe.connect_ex((host, int(port))) != 0
        finally:
            for pid in workers:  # a failure here must not leave them running
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_the_same_answers_sent_to_two_server_processes_at_once_verify_exactly_once(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with (
        spawn_server(data, "--log-level", "WARNING") as a,
        spawn_server(data, "--log-level", "WARNING") as b,
    ):
        stubs_a, stubs_b = a.stubs(), b.stubs()
        with_dsc(stubs_a)
        # 300 items: above PRECHECK_MIN_ITEMS, so both check before the write lock.
        request = right_batch(stubs_a, "alice", 300)
        barrier = threading.Barrier(2)

        def send(stubs: Stubs) -> list[int]:
            barrier.wait(CALL_TIMEOUT)
            return list(stubs.verification.VerifyBatch(request, timeout=CALL_TIMEOUT).outcomes)

        with ThreadPoolExecutor(2) as pool:
            first, second = pool.map(send, (stubs_a, stubs_b))
        pairs = sorted(zip(first, second, strict=True))
        ok, replayed = common_pb2.OUTCOME_OK, common_pb2.OUTCOME_REPLAYED
        assert set(pairs) <= {(ok, replayed), (replayed, ok)}
        assert len(pairs) == 300
        # Single calls too, a few rounds.
        for _ in range(5):
            c = stubs_b.verification.IssueChallenge(V.IssueChallengeRequest(username="alice"))
            single = V.VerifyRequest(
                username="alice", token=c.token, response=dsc_response(SECRET, PIN, c.challenge)
            )

            def one(stubs: Stubs, single: V.VerifyRequest = single) -> int:
                barrier.wait(CALL_TIMEOUT)
                return stubs.verification.Verify(single, timeout=CALL_TIMEOUT).outcome

            with ThreadPoolExecutor(2) as pool:
                outcomes = sorted(pool.map(one, (stubs_a, stubs_b)))
            assert outcomes == [ok, replayed]
        stubs_a.channel.close()
        stubs_b.channel.close()
        assert a.terminate() == 0
        assert b.terminate() == 0


def test_workers_share_the_port_and_the_supervisor_serves_their_metrics(tmp_path: Path) -> None:
    metrics_port = free_port()
    with spawn_server(
        tmp_path / "data", "--workers", "2", "--metrics-port", str(metrics_port)
    ) as supervisor:
        for _ in range(50):
            pids = [
                json.loads(line)["pid"]
                for line in supervisor.log().splitlines()
                if '"message":"serving"' in line
            ]
            if len(set(pids)) == 2:
                break
            time.sleep(0.1)
        assert len(set(pids)) == 2, supervisor.log()
        for _ in range(16):  # new connections: the kernel spreads them over the workers
            own = [("grpc.use_local_subchannel_pool", 1)]  # a new TCP connection each time
            with grpc.insecure_channel(supervisor.address, options=own) as channel:
                Stubs.over(channel).policy.GetSessionLength(
                    admin_pb2.GetSessionLengthRequest(unlock="pin"), timeout=CALL_TIMEOUT
                )
        text = scrape(metrics_port)
        line = 'sls_grpc_requests_total{code="OK",method="/sls.v1.PolicyService/GetSessionLength"}'
        assert f"{line} 16.0" in text
        assert supervisor.terminate() == 0
        served = {
            json.loads(entry)["pid"]
            for entry in supervisor.log().splitlines()
            if '"message":"call"' in entry
        }
        assert served == set(pids)


def test_config_file_values_and_errors_name_the_key_and_the_rule(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    good = tmp_path / "good.toml"
    good.write_text(
        """
listen = "0.0.0.0:6000"
data_dir = "state"
workers = 2
max_batch_items = 5000
inline_max_items = 16
metrics_port = 9464
audit_log = ""
log_level = "warning"
[tls]
cert = "cert.pem"
key = "key.pem"
[roles]
"gw-1" = "gateway"
"""
    )
    config = load_config(good)
    assert config.listen == "0.0.0.0:6000"
    assert config.data_dir == tmp_path / "state"
    assert config.tls is not None
    assert config.tls.cert == tmp_path / "cert.pem"
    assert config.audit_path is None
    assert config.log_level == "WARNING"
    assert config.inline_max_items == 16
    assert dict(config.roles) == {"gw-1": "gateway"}
    assert ServerConfig().audit_path == Path("data") / "audit.jsonl"
    cases = [
        ('listen = "nowhere"', "listen: must be HOST:PORT"),
        ('listen = "127.0.0.1:70000"', "listen: port must be 0 to 65535"),
        ('listen = "0.0.0.0:6000"', "tls: required when listening on a non-loopback address"),
        ("workers = 0", "workers: must be 1 to 256"),
        ('workers = "2"', "workers: must be an integer"),
        ("max_batch_items = true", "max_batch_items: must be an integer"),
        ("inline_max_items = -1", "inline_max_items: must be 0 to 10000"),
        ("max_message_bytes = 10", "max_message_bytes: must be 1024 to 2147483647"),
        ("grace_seconds = -1", "grace_seconds: must be 0 or more seconds"),
        ('log_level = "LOUD"', "log_level: must be one of DEBUG"),
        ("metrics_port = 99999", "metrics_port: must be 0 to 65535"),
        ("wrokers = 2", "wrokers: unknown key"),
        ('[roles]\n"gw" = "root"', "roles.gw: must be one of gateway, admin"),
        ('[tls]\ncert = "cert.pem"', "tls.key: required"),
        ('[tls]\ncert = "nope.pem"\nkey = "key.pem"', "tls.cert: file not found"),
        (
            '[tls]\ncert = "cert.pem"\nkey = "key.pem"\nrequire_client_auth = true',
            "tls.client_ca: required when require_client_auth is true",
        ),
        ('[tls]\ncert = "cert.pem"\nkey = "key.pem"\nciphers = "all"', "tls.ciphers: unknown key"),
        ("listen = ", "config: not valid TOML"),
    ]
    for text, message in cases:
        path = tmp_path / "bad.toml"
        path.write_text(text + "\n")
        with pytest.raises(ConfigError) as error:
            load_config(path)
        assert str(error.value).startswith(message), (text, str(error.value))


def test_the_command_line_reports_config_errors_without_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--listen", "0.0.0.0:1", "--data-dir", str(tmp_path)]) == 2
    assert "config error: tls: required when listening on a non-loopback address" in (
        capsys.readouterr().err
    )
    assert main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "config error: config: file not found" in capsys.readouterr().err
    assert main(["serve", "--workers", "0", "--data-dir", str(tmp_path)]) == 2
    assert not (tmp_path / "sls.db").exists()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``main`` sets up JSON logging on the ``sls_core`` logger; put it back afterwards."""
    logger = logging.getLogger("sls_core")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]


@pytest.mark.usefixtures("restore_logging")
def test_a_port_in_use_is_an_error_not_a_second_server(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)])
    assert code == 3


def test_shutdown_ends_an_idle_verify_stream_instead_of_waiting_out_the_grace(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve(grace_seconds=30)
    stubs = server.stubs()
    with_dsc(stubs)
    requests: queue.Queue[V.VerifyBatchRequest | None] = queue.Queue()

    def outgoing() -> Iterator[V.VerifyBatchRequest]:
        while (request := requests.get(timeout=CALL_TIMEOUT)) is not None:
            yield request

    stream = stubs.verification.VerifyStream(outgoing(), timeout=CALL_TIMEOUT)
    requests.put(right_batch(stubs, "alice", 3))
    assert list(next(stream).outcomes) == [common_pb2.OUTCOME_OK] * 3
    started = time.monotonic()
    server.stop_async().result(CALL_TIMEOUT)
    assert time.monotonic() - started < 5
    assert list(stream) == []  # ended cleanly (status OK): the gateway reconnects elsewhere
    requests.put(None)


def test_a_small_batch_runs_on_the_event_loop_while_the_threads_are_busy(
    serve: Callable[..., InProcessServer],
) -> None:
    """inline_max_items: a batch that small, with no other writer, is verified on the loop
    itself (no hand-over to a thread), so it answers though every thread is busy; a
    larger one waits for a thread."""
    server = serve(threads=1, inline_max_items=8)
    stubs = server.stubs()
    with_dsc(stubs)
    small, large = right_batch(stubs, "alice", 8), right_batch(stubs, "alice", 9)
    single = right_batch(stubs, "alice", 1)
    release = threading.Event()
    blocker = server.server.executor.submit(release.wait, CALL_TIMEOUT)
    try:
        assert (
            list(stubs.verification.VerifyBatch(small, timeout=CALL_TIMEOUT).outcomes)
            == [common_pb2.OUTCOME_OK] * 8
        )
        verdict = stubs.verification.Verify(
            V.VerifyRequest(username="alice", token=single.tokens[0], response=single.responses[0]),
            timeout=CALL_TIMEOUT,
        )
        assert verdict.outcome == common_pb2.OUTCOME_OK
        waiting = stubs.verification.VerifyBatch.future(large, timeout=CALL_TIMEOUT)
        time.sleep(0.2)
        assert not waiting.done()  # 9 items: queued behind the busy thread
    finally:
        release.set()
        blocker.result(CALL_TIMEOUT)
    assert list(waiting.result(CALL_TIMEOUT).outcomes) == [common_pb2.OUTCOME_OK] * 9


def test_a_small_batch_never_blocks_the_event_loop_on_another_writer(
    serve: Callable[..., InProcessServer],
) -> None:
    """While another process holds the store's writer gate, a small batch gives up its
    place on the loop (nothing done) and waits on a thread: health checks still answer."""
    import fcntl
    import os

    server = serve(threads=1)
    stubs = server.stubs()
    with_dsc(stubs)
    request = right_batch(stubs, "alice", 3)
    gate = os.open(server.sls.store.writer_gate, os.O_RDWR)  # type: ignore[attr-defined]
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)
        waiting = stubs.verification.VerifyBatch.future(request, timeout=CALL_TIMEOUT)
        for _ in range(5):
            check = stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert check.status == SERVING
        assert not waiting.done()
        fcntl.flock(gate, fcntl.LOCK_UN)
        assert list(waiting.result(CALL_TIMEOUT).outcomes) == [common_pb2.OUTCOME_OK] * 3
    finally:
        os.close(gate)
    audit = server.config.audit_path.read_text().splitlines()  # type: ignore[union-attr]
    assert sum(json.loads(line)["event"] == "verify" for line in audit) == 3  # once each


def test_sighup_reopens_the_audit_file_after_log_rotation(tmp_path: Path) -> None:
    """logrotate moves audit.jsonl away and sends SIGHUP to the supervisor: every worker
    opens the file afresh, so the next decisions land in the new file and none is lost."""
    data = tmp_path / "data"
    with spawn_server(data, "--workers", "2") as supervisor:
        stubs = supervisor.stubs()
        with_dsc(stubs)
        first = right_batch(stubs, "alice", 3)
        assert (
            list(stubs.verification.VerifyBatch(first, timeout=CALL_TIMEOUT).outcomes)
            == [common_pb2.OUTCOME_OK] * 3
        )
        audit = data / "audit.jsonl"
        rotated = data / "audit.jsonl.1"
        audit.rename(rotated)
        supervisor.process.send_signal(signal.SIGHUP)
        until(lambda: audit.exists())
        until(lambda: supervisor.log().count("audit log reopened") == 2)
        second = right_batch(stubs, "alice", 2)
        assert (
            list(stubs.verification.VerifyBatch(second, timeout=CALL_TIMEOUT).outcomes)
            == [common_pb2.OUTCOME_OK] * 2
        )
        old = [json.loads(line) for line in rotated.read_text().splitlines()]
        new = [json.loads(line) for line in audit.read_text().splitlines()]
        assert sum(e["event"] == "verify" for e in old) == 3
        assert sum(e["event"] == "verify" for e in new) == 2
        assert audit.stat().st_mode & 0o777 == 0o600
        stubs.channel.close()
        assert supervisor.terminate() == 0


def test_sighup_while_the_workers_start_kills_none_of_them(tmp_path: Path) -> None:
    """logrotate may send SIGHUP at any time, also while a worker is still starting (an
    unhandled SIGHUP would end it, and a worker that dies at once stops the server)."""
    with spawn_server(tmp_path / "data", "--workers", "2", wait=False) as supervisor:
        until(lambda: "supervising" in supervisor.log())
        deadline = time.monotonic() + 20
        while supervisor.log().count('"message":"serving"') < 2:
            assert time.monotonic() < deadline, supervisor.log()
            supervisor.process.send_signal(signal.SIGHUP)
            time.sleep(0.02)
        supervisor.process.send_signal(signal.SIGHUP)
        stubs = supervisor.stubs()
        answer = stubs.policy.GetSessionLength(
            admin_pb2.GetSessionLengthRequest(unlock="pin"), timeout=CALL_TIMEOUT
        )
        assert answer.session_length.ToNanoseconds() > 0
        stubs.channel.close()
        assert supervisor.terminate() == 0
        assert "worker exited" not in supervisor.log()


def test_the_auto_activation_delay_is_configured_in_days_within_2_to_3_weeks() -> None:
    from sls_core.server.config import config_from_mapping

    assert config_from_mapping({"auto_activation_days": 14}).auto_activation_days == 14
    for bad in (13, 22, "21"):
        with pytest.raises(ConfigError, match="auto_activation_days"):
            config_from_mapping({"auto_activation_days": bad})


def test_optional_client_certificates_are_refused_rather_than_silently_ignored(
    tmp_path: Path,
) -> None:
    """Issue 11, finding 10: with require_client_auth = false grpcio never asks for a client
    certificate, so gateways with valid certificates got no role while the log said mutual
    TLS. The configuration is refused, saying why and what to do."""
    from sls_core.server.config import config_from_mapping

    for name in ("server.pem", "server.key", "ca.pem"):
        (tmp_path / name).write_text("-")
    tls = {"cert": "server.pem", "key": "server.key", "client_ca": "ca.pem"}
    with pytest.raises(ConfigError, match=r"tls\.require_client_auth: must be true when client_ca"):
        config_from_mapping({"tls": {**tls, "require_client_auth": False}}, tmp_path)
    config = config_from_mapping({"tls": {**tls, "require_client_auth": True}}, tmp_path)
    assert config.tls is not None
    assert config.tls.require_client_auth


def _alice_and_her_right_answer(server: InProcessServer) -> tuple[Any, str]:
    """A DSC+ user "alice" on ``server``'s store, a challenge of hers and its right answer."""
    from sls_core import ocra
    from sls_core.devices import DeviceType

    server.sls.create_user("alice")
    server.sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=bytes(range(20)), pin="4711")
    c = server.sls.issue_challenge("alice")
    right = ocra.compute(
        "OCRA-1:HOTP-SHA1-8:QN06-PSHA1", bytes(range(20)), question=c.challenge, pin="4711"
    )
    return c, right


def test_a_failing_audit_sink_fails_the_verdict_with_nothing_applied_and_health_follows(
    serve: Callable[..., InProcessServer],
) -> None:
    """Issue 11, finding 5: with the audit file unwritable (/dev/full: every write fails
    with ENOSPC) a verdict is refused UNAVAILABLE and nothing is committed: the right
    answer still verifies later, a wrong one was not counted; health turns NOT_SERVING."""
    server = serve(audit_log=Path("/dev/full"))
    sls = server.sls
    c, right = _alice_and_her_right_answer(server)
    stubs = server.stubs()
    for response in (f"{(int(right) + 1) % 10**8:08d}", right):
        request = verification_pb2.VerifyRequest(username="alice", token=c.token, response=response)
        with pytest.raises(grpc.RpcError) as refused:
            stubs.verification.Verify(request, timeout=CALL_TIMEOUT)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "audit trail" in (refused.value.details() or "")
    assert sls.lockout_status("alice").consecutive_failures == 0
    assert health_turns(stubs, NOT_SERVING)
    assert sls.verify("alice", c.token, right).ok  # nothing was applied: still unused


def test_a_server_whose_store_was_migrated_past_it_is_not_serving_until_it_matches(
    serve: Callable[..., InProcessServer],
) -> None:
    """An upgrade done under a running server (an admin command of a newer version opened
    the SQLite file and migrated it): calls answer UNAVAILABLE naming both schema
    versions, health turns NOT_SERVING within the store probe's second, nothing is
    applied; once the file is at the server's version again it serves."""
    import sqlite3

    from sls_core import wire
    from sls_core.outcome import LoginOutcome
    from sls_core.store import SCHEMA_VERSION

    server = serve()
    c, right = _alice_and_her_right_answer(server)
    stubs = server.stubs()
    database = server.data_dir / "sls.db"

    def set_version(version: int) -> None:
        with contextlib.closing(sqlite3.connect(database)) as conn:
            conn.execute(f"PRAGMA user_version = {version}")

    set_version(SCHEMA_VERSION + 1)
    try:
        request = verification_pb2.VerifyRequest(username="alice", token=c.token, response=right)
        with pytest.raises(grpc.RpcError) as refused:
            stubs.verification.Verify(request, timeout=CALL_TIMEOUT)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert f"schema version {SCHEMA_VERSION + 1} is newer" in (refused.value.details() or "")
        assert health_turns(stubs, NOT_SERVING)
    finally:
        set_version(SCHEMA_VERSION)
    assert health_turns(stubs, SERVING)
    answer = stubs.verification.Verify(request, timeout=CALL_TIMEOUT)
    assert answer.outcome == wire.to_outcome(LoginOutcome.OK)  # nothing was applied


def test_a_caller_over_its_quota_is_resource_exhausted_with_when_to_retry(
    serve: Callable[..., InProcessServer],
) -> None:
    """Issue 11, abuse limits: calls that create state or cost money are rationed per
    caller (here 3 activation offers a minute); verification itself never is."""
    server = serve(quotas={"CreateActivation": 3})
    for name in ("alice", "bob", "carl", "dora"):
        server.sls.create_user(name)
    stubs = server.stubs()
    for name in ("alice", "bob", "carl"):
        stubs.activation.CreateActivation(
            activation_pb2.CreateActivationRequest(username=name), timeout=CALL_TIMEOUT
        )
    with pytest.raises(grpc.RpcError) as refused:
        stubs.activation.CreateActivation(
            activation_pb2.CreateActivationRequest(username="dora"), timeout=CALL_TIMEOUT
        )
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    details = refused.value.details() or ""
    assert details.startswith("quota: at most 3 CreateActivation calls a minute per caller")
    assert "retry in" in details
    refusals = server.server.metrics.quota_refusals.labels("CreateActivation")._value.get()
    assert refusals == 1


def test_a_user_over_the_text_limit_is_resource_exhausted_over_grpc(stubs: Stubs) -> None:
    stubs.admin.CreateUser(admin_pb2.CreateUserRequest(username="erin"), timeout=CALL_TIMEOUT)
    stubs.admin.EnrollDevice(
        admin_pb2.EnrollDeviceRequest(
            username="erin", type=common_pb2.DEVICE_TYPE_SMS, phone="+41791234567"
        ),
        timeout=CALL_TIMEOUT,
    )
    request = verification_pb2.IssueChallengeRequest(username="erin")
    for _ in range(5):
        stubs.verification.IssueChallenge(request, timeout=CALL_TIMEOUT)
    with pytest.raises(grpc.RpcError) as refused:
        stubs.verification.IssueChallenge(request, timeout=CALL_TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (refused.value.details() or "").startswith("sms: at most 5 per user")


def test_quotas_are_configured_per_method_and_checked() -> None:
    from sls_core.server.config import DEFAULT_QUOTAS, config_from_mapping

    config = config_from_mapping({"quotas": {"CreatePush": 10}})
    assert config.quotas == {**DEFAULT_QUOTAS, "CreatePush": 10}
    with pytest.raises(ConfigError, match=r"quotas\.Verify: must be one of"):
        config_from_mapping({"quotas": {"Verify": 10}})


def test_a_push_answer_the_trail_cannot_hold_is_not_applied(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve(audit_log=Path("/dev/full"))
    server.sls.create_user("bob")
    app = SimulatedApp()
    app.activate(server.sls.ibkey, payload=server.sls.ibkey.create_activation("bob").payload)
    push = server.sls.ibkey.create_push("bob")
    signature = app.sign(push.message(1))
    request = push_pb2.AnswerPushRequest(
        challenge_id=push.challenge_id, decision=1, signature=signature
    )
    with pytest.raises(grpc.RpcError) as refused:
        server.stubs().push.AnswerPush(request, timeout=CALL_TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert server.sls.ibkey.push_status(push.challenge_id) == "pending"  # nothing applied


def test_activations_and_password_failures_the_trail_cannot_hold_are_not_applied(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve(audit_log=Path("/dev/full"))
    server.sls.create_user("bob")
    offer = server.sls.ibkey.create_activation("bob")
    stubs = server.stubs()
    request = activation_pb2.CompleteActivationRequest(
        payload=offer.payload, app_public=b"A" * 32, push_public=b"P" * 32
    )
    with pytest.raises(grpc.RpcError) as refused:
        stubs.activation.CompleteActivation(request, timeout=CALL_TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert server.sls.devices("bob") == []  # nothing enrolled
    failure = verification_pb2.RecordPasswordFailureRequest(username="bob")
    with pytest.raises(grpc.RpcError) as refused:
        stubs.verification.RecordPasswordFailure(failure, timeout=CALL_TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert server.sls.lockout_status("bob").consecutive_failures == 0  # nothing counted


def test_sls_core_says_its_version() -> None:
    import subprocess
    import sys
    from importlib import metadata

    done = subprocess.run(
        [sys.executable, "-m", "sls_core.server", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == f"sls-core {metadata.version('sls_core')}"
