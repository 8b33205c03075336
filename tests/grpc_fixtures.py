"""pytest plugin for the gRPC server tests (``pytest_plugins = ["grpc_fixtures"]``).

* :class:`InProcessServer` runs :class:`sls_core.server.app.SlsServer` on its own event loop
  in a background thread, on 127.0.0.1 and a free port, with a manual clock by default, so
  tests move time instead of sleeping; the test talks to it through real gRPC.
* :func:`spawn_server` starts ``python -m sls_core.server serve`` as a subprocess (for
  signals, several processes on one store, workers).
* :func:`make_pki` makes a test CA with server and client certificates (``cryptography``).
* :class:`GrpcIbKey` lets :class:`sls_core.simulator.SimulatedApp` talk to the server over
  gRPC instead of the store.

Every wait is bounded: servers must answer health checks within ``START_TIMEOUT``.

Test modules import helpers from here as well as naming it in ``pytest_plugins``; pytest
cannot rewrite the asserts of a module imported first, so it is told not to try
(PYTEST_DONT_REWRITE) and the asserts here carry their own messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sls_core import wire
from sls_core.api.v1 import (
    activation_pb2,
    activation_pb2_grpc,
    admin_pb2_grpc,
    portal_pb2_grpc,
    push_pb2,
    push_pb2_grpc,
    verification_pb2_grpc,
)
from sls_core.clock import ManualClock
from sls_core.login import SecureLogin
from sls_core.server.app import SlsServer
from sls_core.server.config import ServerConfig
from sls_core.values import Activated, PushChallenge

START_TIMEOUT = 20.0
CALL_TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stubs:
    """One stub per service over one channel."""

    channel: grpc.Channel
    verification: verification_pb2_grpc.VerificationServiceStub
    activation: activation_pb2_grpc.ActivationServiceStub
    push: push_pb2_grpc.PushServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    policy: admin_pb2_grpc.PolicyServiceStub
    health: health_pb2_grpc.HealthStub

    @functools.cached_property
    def portal(self) -> portal_pb2_grpc.PortalServiceStub:
        """The Client Portal's self-service, over the same channel."""
        return portal_pb2_grpc.PortalServiceStub(self.channel)

    @classmethod
    def over(cls, channel: grpc.Channel) -> Stubs:
        return cls(
            channel,
            verification_pb2_grpc.VerificationServiceStub(channel),
            activation_pb2_grpc.ActivationServiceStub(channel),
            push_pb2_grpc.PushServiceStub(channel),
            admin_pb2_grpc.AdminServiceStub(channel),
            admin_pb2_grpc.PolicyServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
        )


class InProcessServer:
    """An SlsServer on a background thread's event loop (stop() or the fixture ends it)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        clock: ManualClock | None = None,
        **config: Any,
    ) -> None:
        self.data_dir = data_dir
        self.clock = clock if clock is not None else ManualClock()
        config.setdefault("listen", f"127.0.0.1:{free_port()}")
        self.config = ServerConfig(data_dir=data_dir, **config).validated()
        self.sls = SecureLogin.open(data_dir, clock=self.clock, store=self.config.store)
        self.server = SlsServer(self.config, sls=self.sls)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="sls-test-server", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._channels: list[grpc.Channel] = []
        self._stopping: Future[Any] | None = None

    def _run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            try:
                await self.server.start()
            except BaseException as e:
                self._error = e
                raise
            finally:
                self._ready.set()
            await self.server.wait()

        with contextlib.suppress(BaseException):
            asyncio.run(serve())

    def start(self) -> InProcessServer:
        self._thread.start()
        assert self._ready.wait(START_TIMEOUT), "server did not start"
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stubs(self, channel: grpc.Channel | None = None) -> Stubs:
        if channel is None:
            channel = grpc.insecure_channel(self.address)
            self._channels.append(channel)
        return Stubs.over(channel)

    def run(self, coroutine: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """Runs a coroutine on the server's loop and waits for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop_async(self) -> Future[Any]:
        """Starts the graceful shutdown (what SIGTERM does) without waiting for it."""
        assert self.loop is not None, "server not started"
        if self._stopping is None:
            self._stopping = asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop)
        return self._stopping

    def stop(self) -> None:
        if self.loop is not None and (self._stopping is not None or self._thread.is_alive()):
            with contextlib.suppress(Exception):
                self.stop_async().result(CALL_TIMEOUT + self.config.grace_seconds)
        self._thread.join(CALL_TIMEOUT)
        for channel in self._channels:
            channel.close()
        self.sls.store.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., InProcessServer]]:
    """A factory: ``serve(**config)`` starts an in-process server (stopped at teardown)."""
    started: list[InProcessServer] = []

    def start(data_dir: Path | None = None, **config: Any) -> InProcessServer:
        directory = data_dir or tmp_path / f"data{len(started)}"
        server = InProcessServer(directory, **config).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def server(serve: Callable[..., InProcessServer]) -> InProcessServer:
    """A plaintext development server (every caller is admin) with a manual clock."""
    return serve()


@pytest.fixture
def stubs(server: InProcessServer) -> Stubs:
    return server.stubs()


# -- subprocess servers -------------------------------------------------------------------


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """A failure inside says what the server logged last (CI keeps no tmp)."""
        try:
            yield
        except (AssertionError, grpc.RpcError) as failed:
            tail = self.log_tail()
            raise AssertionError(f"{failed!r}; the server's log ends:\n{tail}") from failed

    def stubs(self) -> Stubs:
        return Stubs.over(grpc.insecure_channel(self.address))

    def terminate(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise


def health_turns(stubs: Stubs, status: int) -> bool:
    """Whether the server's overall health says ``status`` within CALL_TIMEOUT."""
    end = time.monotonic() + CALL_TIMEOUT
    while time.monotonic() < end:
        answer = stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        if answer.status == status:
            return True
        time.sleep(0.01)
    return False


def wait_serving(address: str, timeout: float = START_TIMEOUT, process: Any = None) -> None:
    """Until the server at ``address`` answers its health check with SERVING."""
    end = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if process is not None and process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}")
            if time.monotonic() > end:
                raise AssertionError(f"no server at {address} after {timeout} s")
            time.sleep(0.1)


@contextlib.contextmanager
def spawn_server(
    data_dir: Path, *args: str, port: int | None = None, wait: bool = True
) -> Iterator[ServerProcess]:
    """``python -m sls_core.server serve --listen 127.0.0.1:PORT --data-dir DIR ARGS``."""
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    log_path = data_dir.parent / f"server-{port}.log"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SLS_CORE_THREADS="1")
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own server
            [
                sys.executable,
                "-m",
                "sls_core.server",
                "serve",
                "--listen",
                address,
                "--data-dir",
                str(data_dir),
                # No HTTP/JSON API unless a test asks (never the development 8080).
                "--http-listen",
                "off",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    handle = ServerProcess(process, address, log_path)
    try:
        if wait:
            try:
                wait_serving(address, process=process)
            except AssertionError as failed:
                # The server's own last words say why it did not start (CI keeps no tmp).
                raise AssertionError(f"{failed}; its log ends:\n{handle.log_tail()}") from None
        yield handle
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


# -- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    #: client CN -> (certificate path, key path)
    clients: dict[str, tuple[Path, Path]]

    def credentials(self, client: str | None = None) -> grpc.ChannelCredentials:
        if client is None:
            return grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        cert, key = self.clients[client]
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=key.read_bytes(),
            certificate_chain=cert.read_bytes(),
        )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(directory: Path, clients: tuple[str, ...] = ("gateway1", "ops")) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and one client certificate per
    CN; plus ``rogue``, a client certificate from another CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_cert = _cert("sls test CA", ca_key, None, ca=True)
    issuer = (ca_cert.subject, ca_key)
    server_key = _key()
    server_cert = _cert("sls-core", server_key, issuer, server=True)
    paths: dict[str, tuple[Path, Path]] = {}
    for cn in clients:
        key = _key()
        paths[cn] = (
            _pem(_cert(cn, key, issuer), directory / f"{cn}.pem"),
            _write_key(key, directory / f"{cn}.key"),
        )
    rogue_ca_key = _key()
    rogue_ca = _cert("rogue CA", rogue_ca_key, None, ca=True)
    rogue_key = _key()
    paths["rogue"] = (
        _pem(_cert("ops", rogue_key, (rogue_ca.subject, rogue_ca_key)), directory / "rogue.pem"),
        _write_key(rogue_key, directory / "rogue.key"),
    )
    return Pki(
        ca=_pem(ca_cert, directory / "ca.pem"),
        server_cert=_pem(server_cert, directory / "server.pem"),
        server_key=_write_key(server_key, directory / "server.key"),
        clients=paths,
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- the IB Key app over gRPC -------------------------------------------------------------


class GrpcIbKey:
    """The part of :class:`sls_core.ibkey.IbKey` that :class:`SimulatedApp` calls, over gRPC:
    the app completes activations and answers pushes through the server."""

    def __init__(self, stubs: Stubs) -> None:
        self.stubs = stubs

    def complete_activation(
        self,
        *,
        app_public: bytes,
        push_public: bytes,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
    ) -> Activated:
        request = activation_pb2.CompleteActivationRequest(
            app_public=app_public, push_public=push_public, pin=pin or ""
        )
        if payload is not None:
            request.payload = payload
        if manual_code is not None:
            request.manual_code = manual_code
        done = self.stubs.activation.CompleteActivation(request, timeout=CALL_TIMEOUT)
        return wire.from_activated(done)

    def recover(
        self, username: str, recovery_pin: str, *, app_public: bytes, push_public: bytes
    ) -> Activated:
        request = activation_pb2.RecoverRequest(
            username=username,
            recovery_pin=recovery_pin,
            app_public=app_public,
            push_public=push_public,
        )
        return wire.from_activated(self.stubs.activation.Recover(request, timeout=CALL_TIMEOUT))

    def pending_pushes(self, push_public: bytes) -> list[PushChallenge]:
        found = self.stubs.push.ListPendingPushes(
            push_pb2.ListPendingPushesRequest(push_public=push_public), timeout=CALL_TIMEOUT
        )
        return [wire.from_push(p) for p in found.pushes]

    def answer_pushes(
        self, challenge_ids: list[int], decisions: list[int], signatures: list[bytes]
    ) -> npt.NDArray[np.uint8]:
        outcomes = [
            wire.from_outcome(
                self.stubs.push.AnswerPush(
                    push_pb2.AnswerPushRequest(
                        challenge_id=c,
                        decision=d,  # type: ignore[arg-type]
                        signature=s,
                    ),
                    timeout=CALL_TIMEOUT,
                ).outcome
            )
            for c, d, s in zip(challenge_ids, decisions, signatures, strict=True)
        ]
        return np.asarray(outcomes, dtype=np.uint8)
