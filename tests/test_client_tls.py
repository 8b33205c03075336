"""TLS and mutual TLS: the clients build credentials from :class:`TlsSettings` and reach a
fake server that presents a certificate of a test CA made here (and, for mTLS, asks for
the gateway's)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client_fakes import FakeSls, serve
from sls_core.client import (
    AsyncSlsClient,
    SlsClient,
    TlsSettings,
    UnavailableError,
)
from sls_core.errors import InvalidInputError, InvalidInputTypeError

SERVER_NAME = "sls.internal"  # not the address we dial: server_name_override is needed


@dataclass(frozen=True)
class Issued:
    cert: bytes
    key: bytes = field(repr=False)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(common_name: str) -> tuple[Issued, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
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
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), key


def issue(
    ca: Issued, ca_key: ec.EllipticCurvePrivateKey, common_name: str, *, server: bool
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued
    gateway: Issued
    other_ca: Issued
    stranger: Issued  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca, ca_key = make_ca("sls test CA")
    other_ca, other_key = make_ca("another CA")
    return Pki(
        ca=ca,
        server=issue(ca, ca_key, SERVER_NAME, server=True),
        gateway=issue(ca, ca_key, "gateway-1", server=False),
        other_ca=other_ca,
        stranger=issue(other_ca, other_key, "gateway-x", server=False),
    )


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[str]:
    credentials = grpc.ssl_server_credentials([(pki.server.key, pki.server.cert)])
    with serve(FakeSls(), credentials=credentials) as (_, target):
        yield target


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[str]:
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key, pki.server.cert)],
        root_certificates=pki.ca.cert,
        require_client_auth=True,
    )
    with serve(FakeSls(), credentials=credentials) as (_, target):
        yield target


def test_tls_with_the_test_ca(pki: Pki, tls_server: str) -> None:
    tls = TlsSettings(pki.ca.cert, server_name_override=SERVER_NAME)
    with SlsClient(tls_server, tls=tls, timeout=5) as client:
        assert client.session_length("pin") == datetime.timedelta(hours=1)


def test_tls_refuses_a_server_from_another_ca(pki: Pki, tls_server: str) -> None:
    tls = TlsSettings(pki.other_ca.cert, server_name_override=SERVER_NAME)
    with (
        SlsClient(tls_server, tls=tls, timeout=5, retry=None) as client,
        pytest.raises(UnavailableError),
    ):
        client.session_length("pin")


def test_tls_refuses_a_server_with_another_name(pki: Pki, tls_server: str) -> None:
    tls = TlsSettings(pki.ca.cert, server_name_override="someone.else")
    with (
        SlsClient(tls_server, tls=tls, timeout=5, retry=None) as client,
        pytest.raises(UnavailableError),
    ):
        client.session_length("pin")


def test_mutual_tls_with_the_gateway_certificate(pki: Pki, mtls_server: str) -> None:
    tls = TlsSettings(pki.ca.cert, pki.gateway.cert, pki.gateway.key, SERVER_NAME)
    with SlsClient(mtls_server, tls=tls, timeout=5, linger=0.005) as client:
        assert client.verify("alice", "tok", "00000001").device_id == 1001


def test_mutual_tls_from_pem_files(pki: Pki, mtls_server: str, tmp_path: Path) -> None:
    paths = {}
    for name, data in (("ca", pki.ca.cert), ("cert", pki.gateway.cert), ("key", pki.gateway.key)):
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(data)
    tls = TlsSettings(str(paths["ca"]), paths["cert"], paths["key"], SERVER_NAME)
    with SlsClient(mtls_server, tls=tls, timeout=5) as client:
        assert client.lockout_status("alice").consecutive_failures == 3


def test_mutual_tls_refuses_a_gateway_without_a_certificate(pki: Pki, mtls_server: str) -> None:
    tls = TlsSettings(pki.ca.cert, server_name_override=SERVER_NAME)
    with (
        SlsClient(mtls_server, tls=tls, timeout=5, linger=0, retry=None) as client,
        pytest.raises(UnavailableError),
    ):
        client.verify("alice", "tok", "00000001")


def test_mutual_tls_refuses_a_certificate_from_another_ca(pki: Pki, mtls_server: str) -> None:
    tls = TlsSettings(pki.ca.cert, pki.stranger.cert, pki.stranger.key, SERVER_NAME)
    with (
        SlsClient(mtls_server, tls=tls, timeout=5, linger=0, retry=None) as client,
        pytest.raises(UnavailableError),
    ):
        client.verify("alice", "tok", "00000001")


def test_async_client_over_mutual_tls(pki: Pki, mtls_server: str) -> None:
    tls = TlsSettings(pki.ca.cert, pki.gateway.cert, pki.gateway.key, SERVER_NAME)

    async def main() -> list[int | None]:
        async with AsyncSlsClient(mtls_server, tls=tls, timeout=5) as client:
            await client.wait_ready()
            verdicts = await asyncio.gather(
                *(client.verify(f"u{i}", "tok", f"{i:08d}") for i in range(20))
            )
            return [v.device_id for v in verdicts]

    assert asyncio.run(main()) == list(range(1000, 1020))


def test_plaintext_to_a_tls_server_fails_cleanly(tls_server: str) -> None:
    with SlsClient(tls_server, timeout=5, retry=None) as client, pytest.raises(UnavailableError):
        client.session_length("pin")


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (TlsSettings(b"not pem"), "ca_cert"),
        (TlsSettings(b"-----BEGIN CERTIFICATE-----", client_cert=b"-----BEGIN x"), "client_key"),
        (TlsSettings("/nonexistent/ca.pem"), "ca_cert"),
    ],
)
def test_bad_tls_settings_are_refused(settings: TlsSettings, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        SlsClient("sls.example:443", tls=settings)
    assert caught.value.field == field


def test_tls_settings_of_the_wrong_type_are_refused() -> None:
    with pytest.raises(InvalidInputTypeError):
        SlsClient("sls.example:443", tls=TlsSettings(ca_cert=1234))  # type: ignore[arg-type]
