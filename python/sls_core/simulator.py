"""The device simulator: plays the IB Key app and the DSC+ card.

``python -m sls_core.simulator`` (or ``sls-core-simulator``)::

    # IB Key app, its state in a file (keys, users): activate from the portal's QR code,
    # the manual string under it, or an SMS activation token, against a running server
    sls-core-simulator --state app.json activate --qr activation.png --pin 1234
    sls-core-simulator --state app.json activate --server 10.0.0.5:50051 --tls-ca ca.pem \\
        --code K7QM-4TZ9-HX3P-AB
    sls-core-simulator --state app.json activate --http http://127.0.0.1:8080 --code ...
    sls-core-simulator --state app.json users
    # after reinstalling the app: the IB Key PIN re-enables a user (the recovery PIN)
    sls-core-simulator --state new-app.json recover --user alice --pin 1234
    # offline mode: the 6-digit challenge on the login page -> the 8-digit response
    sls-core-simulator --state app.json respond --user alice --challenge 123456 --pin 1234
    # push notifications: list, approve or decline what is waiting for this app
    sls-core-simulator --state app.json pushes
    sls-core-simulator --state app.json approve [--decline]
    # DSC+: PIN + challenge -> 8-digit response
    sls-core-simulator dsc --secret 3132...30 --pin 4711 --challenge 123456

The app is the device and nothing more: it holds its keys, derives its OCRA secret,
computes responses and signs push decisions. Everything else is the server's: the app
talks to a running ``sls-core serve`` through its API, over gRPC (``--server HOST:PORT``,
default 127.0.0.1:50051; TLS with ``--tls-ca``, mutual TLS with ``--tls-cert`` and
``--tls-key``) or HTTP/JSON (``--http URL``). The server applies the SLS rules and audits
each simulated activation, recovery and push answer with the caller's identity, exactly
as it does a real app's. The simulator never opens the store. ``respond``, ``users`` and
``dsc`` work offline.

:class:`SimulatedApp` takes anything with the four calls of :class:`AppServer`: the
in-process :class:`sls_core.ibkey.IbKey` (tests, benchmarks), :class:`GrpcAppServer` or
:class:`HttpAppServer`.

The state file holds device secrets, like the phone's keystore would: it is written 0600
and never printed. Nothing here prints or raises with a secret, a PIN or a code, except
the response that ``respond`` and ``dsc`` are asked to show. Errors are one line on stderr:
exit status 1 for a refusal or an unreachable server (and ``approve`` when a push was not
answered as asked), 2 for bad input.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import ipaddress
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from sls_core import activation, ocra, push, wire
from sls_core.api.v1 import activation_pb2, push_pb2
from sls_core.client import (
    AlreadyExistsError,
    ClientRefusedError,
    DeadlineExceededError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ResourceExhaustedError,
    SlsClient,
    SlsRpcError,
    TlsSettings,
    UnauthenticatedError,
    UnavailableError,
)
from sls_core.errors import InvalidInputError, SlsError
from sls_core.outcome import LoginOutcome
from sls_core.values import Activated, PushChallenge, PushDecision

__all__ = [
    "DEFAULT_SERVER",
    "AppServer",
    "AppState",
    "GrpcAppServer",
    "HttpAppServer",
    "SimulatedApp",
    "dsc_response",
    "main",
]

#: Where the app looks for the server unless told: the development server's gRPC port.
DEFAULT_SERVER = "127.0.0.1:50051"
#: Seconds each call to the server may take unless ``--timeout`` says otherwise.
DEFAULT_TIMEOUT = 10.0


def dsc_response(secret: bytes, pin: str, challenge: str) -> str:
    """What a DSC+ shows: the user powers it on, types the 4-digit PIN and the challenge."""
    return ocra.compute("OCRA-1:HOTP-SHA1-8:QN06-PSHA1", secret, question=challenge, pin=pin)


class AppServer(Protocol):
    """What the app asks of the server (the part of :class:`sls_core.ibkey.IbKey` it
    calls): complete an activation, recover after a reinstall, list and answer pushes."""

    def complete_activation(
        self,
        *,
        app_public: bytes,
        push_public: bytes,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
    ) -> Activated: ...

    def recover(
        self, username: str, recovery_pin: str, *, app_public: bytes, push_public: bytes
    ) -> Activated: ...

    def pending_pushes(self, push_public: bytes) -> list[PushChallenge]: ...

    def answer_pushes(
        self, challenge_ids: Sequence[int], decisions: Sequence[int], signatures: Sequence[bytes]
    ) -> Iterable[int]: ...


@dataclass
class AppUser:
    username: str
    device_id: int
    suite: str
    secret_hex: str = field(repr=False)


@dataclass
class AppState:
    """One app installation: its push key and the users added to it."""

    push_seed_hex: str = field(repr=False, default="")
    push_public_hex: str = ""
    users: list[AppUser] = field(default_factory=list)


def _read_state(path: Path) -> AppState:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return AppState(
            push_seed_hex=raw["push_seed_hex"],
            push_public_hex=raw["push_public_hex"],
            users=[AppUser(**u) for u in raw["users"]],
        )
    except (KeyError, TypeError, ValueError):
        # Never the parser's own message: it could quote the file, which holds secrets.
        raise InvalidInputError("state", f"{path} is not an IB Key app state file") from None


class SimulatedApp:
    """The IB Key app, with its state in a JSON file (or in memory when ``path`` is None)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.state = AppState()
        if self.path is not None and self.path.exists():
            self.state = _read_state(self.path)
        if not self.state.push_seed_hex:
            seed, public = push.push_keypair()
            self.state.push_seed_hex = bytes(seed).hex()
            self.state.push_public_hex = bytes(public).hex()
            self._save()

    def __repr__(self) -> str:
        return f"SimulatedApp(users={[u.username for u in self.state.users]})"

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self.state), f, indent=2)
        os.replace(tmp, self.path)

    @property
    def push_seed(self) -> bytes:
        return bytes.fromhex(self.state.push_seed_hex)

    @property
    def push_public(self) -> bytes:
        return bytes.fromhex(self.state.push_public_hex)

    def user(self, username: str) -> AppUser:
        for u in self.state.users:
            if u.username == username:
                return u
        raise InvalidInputError("user", "not on this app: activate it first")

    def _keep(self, done: Activated, app_private: Any) -> AppUser:
        """Derives the OCRA secret the server agreed (X25519 + HKDF): it never travels."""
        secret = bytes(
            activation.derive_ocra_secret(
                app_private, done.server_public, done.session_id, done.username
            )
        )
        self.state.users = [u for u in self.state.users if u.username != done.username]
        user = AppUser(done.username, done.device.id, done.suite, secret.hex())
        self.state.users.append(user)
        self._save()
        return user

    def activate(
        self,
        server: AppServer,
        *,
        qr_png: bytes | None = None,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
    ) -> AppUser:
        """Scans the QR code (or takes the typed string), completes the activation with
        ``server`` and derives the OCRA secret locally."""
        if qr_png is not None:
            from sls_core import qr  # the QR reader (zxing-cpp, PIL): only when scanning

            payload = qr.decode_png(qr_png)
        app_private, app_public = activation.x25519_keypair()
        done = server.complete_activation(
            app_public=bytes(app_public),
            push_public=self.push_public,
            payload=payload,
            manual_code=manual_code,
            pin=pin,
        )
        return self._keep(done, app_private)

    def recover(self, server: AppServer, username: str, recovery_pin: str) -> AppUser:
        """After a reinstall (this app lost its keys): re-enables ``username`` with the
        recovery PIN; new push and X25519 keys, a new OCRA secret agreed with the server."""
        seed, public = push.push_keypair()
        self.state.push_seed_hex, self.state.push_public_hex = (
            bytes(seed).hex(),
            bytes(public).hex(),
        )
        app_private, app_public = activation.x25519_keypair()
        done = server.recover(
            username, recovery_pin, app_public=bytes(app_public), push_public=self.push_public
        )
        return self._keep(done, app_private)

    def respond(self, username: str, challenge: str, pin: str | None = None) -> str:
        """Offline mode: the 8-digit response to a 6-digit challenge."""
        user = self.user(username)
        uses_pin = ocra.parse_suite(user.suite).pin_algorithm is not None
        if uses_pin and pin is None:
            raise InvalidInputError("pin", "this app asks for its PIN (Android)")
        return ocra.compute(
            user.suite,
            bytes.fromhex(user.secret_hex),
            question=challenge,
            pin=pin if uses_pin else None,
        )

    def sign(self, message: bytes) -> bytes:
        """The app's Ed25519 signature of a push answer."""
        return bytes(push.sign_approval(self.push_seed, message))

    def answer_pushes(
        self, server: AppServer, *, approve: bool = True
    ) -> list[tuple[int, LoginOutcome]]:
        """Answers every push waiting for this app; returns (challenge id, outcome)."""
        decision = PushDecision.APPROVE if approve else PushDecision.DECLINE
        pushes = server.pending_pushes(self.push_public)
        if not pushes:
            return []
        signatures = [self.sign(p.message(decision)) for p in pushes]
        outcomes = server.answer_pushes(
            [p.challenge_id for p in pushes], [decision] * len(pushes), signatures
        )
        return [
            (p.challenge_id, LoginOutcome(int(o))) for p, o in zip(pushes, outcomes, strict=True)
        ]


# -- the server, over gRPC ------------------------------------------------------------------


class GrpcAppServer:
    """The app's calls over gRPC, through :class:`sls_core.client.SlsClient` (its TLS
    settings, its errors). ``target`` is ``"host:port"``; plaintext only to loopback."""

    def __init__(
        self, target: str, *, tls: TlsSettings | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.where = target
        # linger=0: the app makes one call at a time, nothing to coalesce.
        self._client = SlsClient(target, tls=tls, timeout=timeout, linger=0)

    def __repr__(self) -> str:
        return f"GrpcAppServer({self.where!r})"

    def close(self) -> None:
        self._client.close()

    def complete_activation(
        self,
        *,
        app_public: bytes,
        push_public: bytes,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
    ) -> Activated:
        return self._client.complete_activation(
            app_public=app_public,
            push_public=push_public,
            payload=payload,
            manual_code=manual_code,
            pin=pin,
        )

    def recover(
        self, username: str, recovery_pin: str, *, app_public: bytes, push_public: bytes
    ) -> Activated:
        return self._client.recover(
            username, recovery_pin, app_public=app_public, push_public=push_public
        )

    def pending_pushes(self, push_public: bytes) -> list[PushChallenge]:
        return self._client.list_pending_pushes(push_public)

    def answer_pushes(
        self, challenge_ids: Sequence[int], decisions: Sequence[int], signatures: Sequence[bytes]
    ) -> list[LoginOutcome]:
        """One AnswerPush per push (the API has no batch for the app): a failure part way
        leaves the pushes before it answered."""
        return [
            self._client.answer_push(c, d, s)
            for c, d, s in zip(challenge_ids, decisions, signatures, strict=True)
        ]


# -- the server, over HTTP/JSON -------------------------------------------------------------

#: The HTTP API's error ``code`` (a gRPC status name) -> the exception the gRPC client
#: raises for it, so both transports fail the same way.
_HTTP_ERRORS: dict[str, type[SlsRpcError]] = {
    "FAILED_PRECONDITION": ClientRefusedError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "UNAUTHENTICATED": UnauthenticatedError,
    "NOT_FOUND": NotFoundError,
    "ALREADY_EXISTS": AlreadyExistsError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "UNAVAILABLE": UnavailableError,
}
_WELL_KNOWN_JSON = ("google.protobuf.Timestamp", "google.protobuf.Duration")
_INTEGERS = (
    FieldDescriptor.CPPTYPE_INT32,
    FieldDescriptor.CPPTYPE_INT64,
    FieldDescriptor.CPPTYPE_UINT32,
    FieldDescriptor.CPPTYPE_UINT64,
)


def _enum_value(fd: Any, value: object, where: str) -> int:
    """The HTTP API names enum values without their prefix ("OK" for OUTCOME_OK)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        enum = fd.enum_type
        first = enum.values[0].name
        prefix = first[: -len("UNSPECIFIED")] if first.endswith("UNSPECIFIED") else ""
        member = enum.values_by_name.get(prefix + value) or enum.values_by_name.get(value)
        if member is not None:
            return int(member.number)
    raise ProtocolError(f"{where}: not a known {fd.enum_type.name} value")


def _scalar_from_json(fd: Any, value: object, where: str) -> Any:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return _enum_value(fd, value, where)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str):
            raise ProtocolError(f"{where}: must be base64")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"{where}: must be base64") from None
    if fd.cpp_type in _INTEGERS and isinstance(value, str):
        return int(value)  # proto3 JSON may quote 64-bit integers
    return value


def _fill(message: Message, data: object, where: str) -> None:
    """``message`` from the HTTP API's JSON: enums by short name, bytes as base64, a
    timestamp or duration as an RFC 3339 string or as its fields. Fields this build does
    not know (a newer server) are skipped."""
    name = message.DESCRIPTOR.full_name
    if name in _WELL_KNOWN_JSON and isinstance(data, str):
        try:
            message.FromJsonString(data)  # type: ignore[attr-defined]
        except ValueError:
            raise ProtocolError(f"{where}: not a valid {name}") from None
        return
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: must be a JSON object")
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        fd = fields.get(key)
        if fd is None or value is None:
            continue
        at = f"{where}.{key}" if where else key
        try:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                if fd.is_repeated:
                    target = getattr(message, key)
                    for i, item in enumerate(value):
                        _fill(target.add(), item, f"{at}[{i}]")
                else:
                    _fill(getattr(message, key), value, at)
            elif fd.is_repeated:
                getattr(message, key).extend(
                    _scalar_from_json(fd, v, f"{at}[{i}]") for i, v in enumerate(value)
                )
            else:
                setattr(message, key, _scalar_from_json(fd, value, at))
        except (TypeError, ValueError):
            raise ProtocolError(f"{at}: not the type the API says") from None


def _message_from_json(message_type: type[Message], data: object) -> Any:
    message = message_type()
    _fill(message, data, "")
    return message


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpAppServer:
    """The app's calls over the server's HTTP/JSON API (``/v1/activations:complete``,
    ``/v1/activations:recover``, ``/v1/pushes:pending``, ``/v1/pushes:answer``), with the
    standard library's urllib. ``base_url`` is ``http://host:port`` (loopback only) or
    ``https://...``; ``ca``, ``cert`` and ``key`` are PEM file paths."""

    def __init__(
        self,
        base_url: str,
        *,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidInputError("base_url", "must be a URL like http://127.0.0.1:8080")
        if parsed.query or parsed.fragment or parsed.username or parsed.password:
            raise InvalidInputError("base_url", "must be the server's base URL only")
        if parsed.scheme == "http" and not _is_loopback_host(parsed.hostname):
            raise InvalidInputError(
                "base_url", "plaintext only to a loopback address: use https://"
            )
        if (cert is None) != (key is None):
            raise InvalidInputError(
                "key", "give both the client certificate and its key, or neither"
            )
        self.where = base_url.rstrip("/")
        self._timeout = timeout
        self._context: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            try:
                context = ssl.create_default_context(cafile=None if ca is None else str(ca))
                if cert is not None and key is not None:
                    context.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as e:
                raise InvalidInputError("ca", f"cannot load the PEM files ({e})") from None
            self._context = context
        elif ca is not None or cert is not None:
            raise InvalidInputError("base_url", "TLS files need an https:// URL")

    def __repr__(self) -> str:
        return f"HttpAppServer({self.where!r})"

    def close(self) -> None:
        """Nothing to close: urllib opens one connection per call."""

    def _post(self, path: str, rpc: str, body: Mapping[str, object]) -> Any:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            self.where + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - the scheme is checked above
                request, timeout=self._timeout, context=self._context
            ) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as e:
            raise self._error(rpc, e.code, e.read()) from None
        except (urllib.error.URLError, OSError) as e:
            why = getattr(e, "reason", None) or e
            if isinstance(why, TimeoutError):
                raise DeadlineExceededError(
                    rpc, grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer from {self.where} in time"
                ) from None
            reason = getattr(why, "strerror", None) or str(why)
            raise UnavailableError(
                rpc, grpc.StatusCode.UNAVAILABLE, f"cannot connect to {self.where} ({reason})"
            ) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ProtocolError(f"{rpc}: the answer is not JSON") from None

    def _error(self, rpc: str, status: int, raw: bytes) -> SlsError:
        """The exception of an HTTP error answer: the same one the gRPC client raises."""
        try:
            error = json.loads(raw)["error"]
            code, message = str(error["code"]), str(error.get("message", ""))
        except (ValueError, KeyError, TypeError):
            return SlsRpcError(rpc, grpc.StatusCode.UNKNOWN, f"HTTP {status} from {self.where}")
        if code in ("INVALID_ARGUMENT", "OUT_OF_RANGE"):
            if error.get("field") and error.get("rule"):
                return InvalidInputError(str(error["field"]), str(error["rule"]))
            return InvalidInputError("request", message or code.lower())
        status_code = getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)
        reason = error.get("reason")
        return _HTTP_ERRORS.get(code, SlsRpcError)(
            rpc, status_code, message, str(reason) if reason else None
        )

    def _activated(self, rpc: str, answer: object) -> Activated:
        message = _message_from_json(activation_pb2.CompleteActivationResponse, answer)
        try:
            return wire.from_activated(message)
        except InvalidInputError as e:
            raise ProtocolError(f"{rpc}: {e}") from None

    def complete_activation(
        self,
        *,
        app_public: bytes,
        push_public: bytes,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
    ) -> Activated:
        if (payload is None) == (manual_code is None):
            raise InvalidInputError("payload", "give exactly one of payload and manual_code")
        body: dict[str, object] = {
            "app_public": _b64(app_public),
            "push_public": _b64(push_public),
            "pin": pin or "",
        }
        if payload is not None:
            body["payload"] = payload
        else:
            body["manual_code"] = manual_code
        answer = self._post("/v1/activations:complete", "CompleteActivation", body)
        return self._activated("CompleteActivation", answer)

    def recover(
        self, username: str, recovery_pin: str, *, app_public: bytes, push_public: bytes
    ) -> Activated:
        body = {
            "username": username,
            "recovery_pin": recovery_pin,
            "app_public": _b64(app_public),
            "push_public": _b64(push_public),
        }
        return self._activated("Recover", self._post("/v1/activations:recover", "Recover", body))

    def pending_pushes(self, push_public: bytes) -> list[PushChallenge]:
        answer = self._post(
            "/v1/pushes:pending", "ListPendingPushes", {"push_public": _b64(push_public)}
        )
        message = _message_from_json(push_pb2.ListPendingPushesResponse, answer)
        try:
            return [wire.from_push(p) for p in message.pushes]
        except InvalidInputError as e:
            raise ProtocolError(f"ListPendingPushes: {e}") from None

    def answer_pushes(
        self, challenge_ids: Sequence[int], decisions: Sequence[int], signatures: Sequence[bytes]
    ) -> list[LoginOutcome]:
        """One request per push, as over gRPC."""
        outcomes = []
        for challenge_id, decision, signature in zip(
            challenge_ids, decisions, signatures, strict=True
        ):
            body = {
                "challenge_id": challenge_id,
                "decision": PushDecision(decision).name,
                "signature": _b64(signature),
            }
            answer = self._post("/v1/pushes:answer", "AnswerPush", body)
            message = _message_from_json(push_pb2.AnswerPushResponse, answer)
            try:
                outcomes.append(wire.from_outcome(message.outcome))
            except InvalidInputError as e:
                raise ProtocolError(f"AnswerPush: {e}") from None
        return outcomes


# -- the command line -----------------------------------------------------------------------


def _when(value: object) -> str:
    """A push's expiry for people: UTC, to the second (whatever the client's time type)."""
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    elif isinstance(value, int | float):
        moment = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    else:
        return str(value)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


#: The field an error names (the client's, this module's) -> the option that sets it.
_OPTION_OF = {
    "target": "--server",
    "tls": "--tls-ca",
    "ca_cert": "--tls-ca",
    "client_cert": "--tls-cert",
    "client_key": "--tls-key",
    "server_name_override": "--server-name",
    "base_url": "--http",
    "ca": "--tls-ca",
    "cert": "--tls-cert",
    "key": "--tls-key",
    "timeout": "--timeout",
}


def _connect(args: argparse.Namespace) -> GrpcAppServer | HttpAppServer:
    """The server the options name; a bad option is an error naming that option."""
    try:
        return _open(args)
    except InvalidInputError as e:
        raise InvalidInputError(_OPTION_OF.get(e.field, e.field), e.rule) from None


def _open(args: argparse.Namespace) -> GrpcAppServer | HttpAppServer:
    if args.timeout is not None and not 0 < args.timeout < float("inf"):
        raise InvalidInputError("timeout", "must be a number of seconds > 0")
    timeout = args.timeout or DEFAULT_TIMEOUT
    if args.http is not None:
        if args.server_name is not None:
            raise InvalidInputError("server_name_override", "applies to gRPC (--server) only")
        return HttpAppServer(
            args.http, ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, timeout=timeout
        )
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key or args.server_name:
        tls = TlsSettings(
            ca_cert=args.tls_ca,
            client_cert=args.tls_cert,
            client_key=args.tls_key,
            server_name_override=args.server_name,
        )
        tls.credentials()  # unreadable files and half a key pair fail here, by name
    return GrpcAppServer(args.server or DEFAULT_SERVER, tls=tls, timeout=timeout)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sls-core-simulator",
        description="IB Key app and DSC+ simulator: the device side, against a running server",
    )
    parser.add_argument("--state", default="ibkey-app.json", help="the app's state file")
    connection = argparse.ArgumentParser(add_help=False)
    where = connection.add_argument_group("server (default: gRPC at " + DEFAULT_SERVER + ")")
    transport = where.add_mutually_exclusive_group()
    transport.add_argument("--server", metavar="HOST:PORT", help="the server's gRPC address")
    transport.add_argument(
        "--http", metavar="URL", help="the HTTP/JSON API instead, e.g. http://127.0.0.1:8080"
    )
    where.add_argument("--tls-ca", metavar="PEM", help="CA of the server certificate")
    where.add_argument("--tls-cert", metavar="PEM", help="this app's client certificate (mTLS)")
    where.add_argument("--tls-key", metavar="PEM", help="this app's client key (mTLS)")
    where.add_argument("--server-name", help="name the server certificate carries (gRPC)")
    where.add_argument(
        "--timeout", type=float, help=f"seconds per call (default {DEFAULT_TIMEOUT:g})"
    )
    # Gone: the simulator no longer writes into the store (see main()).
    where.add_argument("--data-dir", help=argparse.SUPPRESS)

    commands = parser.add_subparsers(dest="command", required=True)
    a = commands.add_parser(
        "activate", parents=[connection], help="activate from a QR code, manual string or SMS token"
    )
    source = a.add_mutually_exclusive_group(required=True)
    source.add_argument("--qr", help="PNG of the QR code")
    source.add_argument("--payload", help="the QR code's text")
    source.add_argument("--code", help="the manual string (or SMS token)")
    a.add_argument("--pin", help="IB Key PIN (Android: in the computation)")
    rc = commands.add_parser(
        "recover", parents=[connection], help="after a reinstall: re-enable a user by recovery PIN"
    )
    rc.add_argument("--user", required=True)
    rc.add_argument("--pin", required=True)
    commands.add_parser("users", help="users on this app (offline)")
    r = commands.add_parser("respond", help="offline mode: challenge -> response")
    r.add_argument("--user", required=True)
    r.add_argument("--challenge", required=True)
    r.add_argument("--pin")
    commands.add_parser("pushes", parents=[connection], help="list pushes waiting for this app")
    ap = commands.add_parser(
        "approve", parents=[connection], help="approve (or --decline) every waiting push"
    )
    ap.add_argument("--decline", action="store_true")
    d = commands.add_parser("dsc", help="DSC+: PIN + challenge -> response (offline)")
    d.add_argument("--secret", required=True, help="the card's secret, hex")
    d.add_argument("--pin", required=True)
    d.add_argument("--challenge", required=True)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "dsc":
        try:
            secret = bytes.fromhex(args.secret)
        except ValueError:
            raise InvalidInputError("secret", "must be hex") from None
        print(dsc_response(secret, args.pin, args.challenge))
        return 0
    app = SimulatedApp(args.state)
    if args.command == "users":
        for u in app.state.users:
            print(f"{u.username}\tdevice {u.device_id}\t{u.suite}")
        return 0
    if args.command == "respond":
        print(app.respond(args.user, args.challenge, args.pin))
        return 0
    png = Path(args.qr).read_bytes() if getattr(args, "qr", None) else None
    server = _connect(args)
    try:
        if args.command == "activate":
            user = app.activate(
                server, qr_png=png, payload=args.payload, manual_code=args.code, pin=args.pin
            )
            print(f"activated {user.username} (device {user.device_id})")
        elif args.command == "recover":
            user = app.recover(server, args.user, args.pin)
            print(f"recovered {user.username} (device {user.device_id})")
        elif args.command == "pushes":
            waiting = server.pending_pushes(app.push_public)
            for p in waiting:
                print(
                    f"push {p.challenge_id}\tuser {p.user_id}\tdevice {p.device_id}"
                    f"\texpires {_when(p.expires_at)}"
                )
            if not waiting:
                print("no push is waiting for this app")
        elif args.command == "approve":
            wanted = LoginOutcome.DECLINED if args.decline else LoginOutcome.OK
            answered = app.answer_pushes(server, approve=not args.decline)
            for challenge_id, outcome in answered:
                print(f"push {challenge_id}: {outcome.name} ({outcome.message})")
            if not answered:
                print("no push is waiting for this app")
            if any(outcome is not wanted for _, outcome in answered):
                return 1
    finally:
        server.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "data_dir", None) is not None:
        print(
            "error: --data-dir: the simulator no longer writes into the store; start"
            " `sls-core serve --data-dir DIR` and give --server HOST:PORT (or --http URL)",
            file=sys.stderr,
        )
        return 2
    try:
        return _run(args)
    except UnavailableError as e:
        where = args.http or args.server or DEFAULT_SERVER
        print(f"error: cannot reach the server at {where}: {_one_line(e)}", file=sys.stderr)
        return 1
    except SlsRpcError as e:  # refused by the server: NOT_FOUND, FAILED_PRECONDITION, ...
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except ProtocolError as e:
        print(f"error: the server's answer: {_one_line(e)}", file=sys.stderr)
        return 1
    except (SlsError, ValueError) as e:  # bad input, named by field and rule
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the state file or the QR code PNG
        print(f"error: {e.filename or 'file'}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
