"""The HTTP/JSON API beside gRPC: the same servicers, roles, quotas, audit and metrics,
served by aiohttp in the server process's own event loop (``http_listen``).

Each route is a gRPC method: the JSON body becomes its request message (checked field by
field against the message: unknown fields, wrong types and bad enum names are 400 with the
field and the rule), the servicer runs as it does for gRPC (through an HTTP stand-in for
the call context), and the answer goes back as JSON. Errors map from the gRPC status code
of :mod:`sls_core.server.status` to an HTTP status here, in one table. The routes also give
``/openapi.json`` (OpenAPI 3.1, built from the same table and message descriptors),
``/healthz`` (live) and ``/readyz`` (serving: the same health as gRPC).

JSON mapping: enums by their short name (``"OK"``, ``"LOGIN"``, ``"DSC_PLUS"``), 64-bit
integers as JSON numbers, bytes as base64, every field of an answer present but an unset
time. Times and spans follow the proto3 JSON mapping: a Timestamp is an RFC 3339 string in
UTC (``"2026-12-05T01:02:03.500Z"``; any offset is accepted on input), a Duration a number
of seconds with an ``s`` (``"2.5s"``); an unset Timestamp (not locked, never expires) is
left out of an answer.

Never logs or echoes a request body: no secret, PIN, code, response or token reaches a log
line, an error or an exception (aiohttp's own access log, which would print the query
string, is off; the access log here has the route, caller, status and duration only).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, cast

import grpc
import grpc.aio
from aiohttp import web
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from sls_core import wire
from sls_core.api.v1 import activation_pb2, push_pb2, verification_pb2
from sls_core.errors import InvalidInputError
from sls_core.server.config import ServerConfig, TlsConfig, split_host_port
from sls_core.server.interceptors import (
    ADMIN,
    CALLER,
    Caller,
    QuotaInterceptor,
    refusal,
    required_role,
)
from sls_core.server.metrics import Metrics
from sls_core.server.servicers import ActivationServicer, PushServicer, VerificationServicer
from sls_core.server.status import Context, abort_for

__all__ = [
    "HTTP_STATUS",
    "ApiError",
    "HttpApi",
    "HttpContext",
    "Route",
    "http_context",
    "json_to_message",
    "message_to_json",
    "openapi",
]

access_log = logging.getLogger("sls_core.server.access")
log = logging.getLogger("sls_core.server")

#: gRPC status code -> HTTP status (as Google's API gateways map them).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_JSON = "application/json"


#: The ``reason`` of an error raised here, not by the servicers, by its code.
_REASONS = {
    grpc.StatusCode.INVALID_ARGUMENT: "INVALID_INPUT",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "RATE_LIMITED",
}


class ApiError(grpc.aio.AbortError):
    """A call that ends with an error status; ``field`` and ``rule`` for bad input,
    ``reason`` the stable machine name (gRPC's ``ErrorInfo.reason``). A subclass of grpc's
    AbortError so the servicers' error mapping passes it through."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field: str | None = None,
        rule: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.rule = rule
        self.reason = reason or _REASONS.get(code, code.name)

    @classmethod
    def invalid(cls, field: str, rule: str) -> ApiError:
        return cls(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {rule}", field=field, rule=rule)

    @classmethod
    def from_status(cls, status: grpc.Status) -> ApiError:
        """The error of a status built by :func:`~sls_core.server.status.error_status`."""
        reason = field = rule = None
        for key, value in status.trailing_metadata or ():
            if key != "grpc-status-details-bin":
                continue
            for packed in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                bad = error_details_pb2.BadRequest()
                if packed.Unpack(info):
                    reason = info.reason
                    field = info.metadata.get("field", field)
                elif packed.Unpack(bad) and bad.field_violations:
                    field = bad.field_violations[0].field
                    rule = bad.field_violations[0].description
        if field is not None and rule is None:  # "username: no such user"
            name, _, rule = status.details.partition(": ")
            rule = rule if name == field else None
        return cls(status.code, status.details, field=field, rule=rule, reason=reason)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.code.name,
            "reason": self.reason,
            "message": self.message,
        }
        if self.field is not None:
            error["field"] = self.field
            if self.rule is not None:
                error["rule"] = self.rule
        return {"error": error}


class HttpContext:
    """What the servicers use of a gRPC call context, for an HTTP request: no deadline of
    its own (the server's default applies), and ``abort`` raises :class:`ApiError`."""

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        if code is grpc.StatusCode.INVALID_ARGUMENT and ": " in details:
            name, _, rule = details.partition(": ")
            raise ApiError(code, details, field=name, rule=rule)
        raise ApiError(code, details)

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        raise ApiError.from_status(status)


def http_context() -> Context:
    """A fresh :class:`HttpContext`, typed as what the servicers take."""
    return cast(Context, HttpContext())


# -- JSON <-> protobuf ----------------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
}
_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)


def _enum_prefix(enum: Any) -> str:
    """``OUTCOME_`` of ``OUTCOME_UNSPECIFIED``: what the JSON names leave out."""
    first = enum.values[0].name
    return first[: -len("UNSPECIFIED")] if first.endswith("UNSPECIFIED") else ""


def _enum_names(enum: Any) -> list[str]:
    prefix = _enum_prefix(enum)
    return [v.name[len(prefix) :] for v in enum.values if v.number != 0]


def _is_repeated(fd: Any) -> bool:
    return bool(fd.is_repeated)


#: The well-known types that travel as JSON strings: name -> (the rule an input breaks,
#: its JSON Schema).
_TIME_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    Timestamp.DESCRIPTOR.full_name: (
        'must be an RFC 3339 time like "2026-12-05T01:02:03.500Z"',
        {"type": "string", "format": "date-time"},
    ),
    Duration.DESCRIPTOR.full_name: (
        'must be seconds with an "s", like "2.5s"',
        {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    ),
}


def _is_time(fd: Any) -> bool:
    """A Timestamp or Duration field (a JSON string, not an object)."""
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.full_name in _TIME_TYPES


def _time_from_json(fd: Any, value: object, where: str) -> Timestamp | Duration:
    rule, schema = _TIME_TYPES[fd.message_type.full_name]
    parsed: Timestamp | Duration = fd.message_type._concrete_class()
    pattern = schema.get("pattern")  # protobuf's parser takes "2.5 s" too
    if isinstance(value, str) and (pattern is None or re.fullmatch(pattern, value)):
        try:
            parsed.FromJsonString(value)
        except ValueError:
            pass  # protobuf's message quotes the value: refused below, without it
        else:
            return parsed
    raise ApiError.invalid(where, rule)


def _scalar_from_json(fd: Any, value: object, where: str) -> Any:
    kind = fd.type
    if kind == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise ApiError.invalid(where, "must be a string")
        return value
    if kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise ApiError.invalid(where, "must be true or false")
        return value
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ApiError.invalid(where, f"must be an integer from {low} to {high}")
        return value
    if kind in _FLOATS:
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise ApiError.invalid(where, "must be a finite number")
        return float(value)
    if kind == FieldDescriptor.TYPE_ENUM:
        names = _enum_names(fd.enum_type)
        if not isinstance(value, str) or value not in names:
            raise ApiError.invalid(where, f"must be one of {', '.join(names)}")
        return fd.enum_type.values_by_name[_enum_prefix(fd.enum_type) + value].number
    if kind == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str):
            raise ApiError.invalid(where, "must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError.invalid(where, "must be a base64 string") from None
    raise ApiError.invalid(where, "is not supported over HTTP")  # pragma: no cover


def json_to_message(data: object, message_type: type[Message], prefix: str = "") -> Message:
    """The request message of a JSON object: every field checked against the message
    (unknown fields, wrong types, bad enum names and two members of a oneof are refused
    with :class:`ApiError` naming the field)."""
    if not isinstance(data, dict):
        raise ApiError.invalid(prefix.rstrip(".") or "body", "must be a JSON object")
    message = message_type()
    descriptor: Any = message.DESCRIPTOR
    for name, value in data.items():
        where = f"{prefix}{name}"
        fd = descriptor.fields_by_name.get(name) if isinstance(name, str) else None
        if fd is None:
            raise ApiError.invalid(where, "unknown field")
        if fd.containing_oneof is not None:
            chosen = message.WhichOneof(fd.containing_oneof.name)
            if chosen is not None:
                raise ApiError.invalid(where, f"give only one of {chosen} and {name}")
        if _is_time(fd) and _is_repeated(fd):
            if not isinstance(value, list):
                raise ApiError.invalid(where, "must be a list")
            getattr(message, name).extend(
                _time_from_json(fd, v, f"{where}[{i}]") for i, v in enumerate(value)
            )
        elif _is_time(fd):
            getattr(message, name).CopyFrom(_time_from_json(fd, value, where))
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            sub = fd.message_type._concrete_class
            if _is_repeated(fd):
                if not isinstance(value, list):
                    raise ApiError.invalid(where, "must be a list")
                getattr(message, name).extend(
                    json_to_message(v, sub, f"{where}[{i}].") for i, v in enumerate(value)
                )
            else:
                getattr(message, name).CopyFrom(json_to_message(value, sub, f"{where}."))
        elif _is_repeated(fd):
            if not isinstance(value, list):
                raise ApiError.invalid(where, "must be a list")
            getattr(message, name).extend(
                _scalar_from_json(fd, v, f"{where}[{i}]") for i, v in enumerate(value)
            )
        else:
            setattr(message, name, _scalar_from_json(fd, value, where))
    return message


def _scalar_to_json(fd: Any, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        enum = fd.enum_type
        member = enum.values_by_number.get(value)
        return member.name[len(_enum_prefix(enum)) :] if member is not None else value
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def message_to_json(message: Message) -> dict[str, Any]:
    """Every field of ``message`` (defaults included; an unset oneof member and an unset
    Timestamp or Duration left out)."""
    out: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        if fd.containing_oneof is not None and not message.HasField(fd.name):
            continue
        value = getattr(message, fd.name)
        if _is_time(fd) and _is_repeated(fd):
            out[fd.name] = [v.ToJsonString() for v in value]
        elif _is_time(fd):
            if message.HasField(fd.name):
                out[fd.name] = value.ToJsonString()
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if _is_repeated(fd):
                out[fd.name] = [message_to_json(v) for v in value]
            else:
                out[fd.name] = message_to_json(value)
        elif _is_repeated(fd):
            out[fd.name] = [_scalar_to_json(fd, v) for v in value]
        else:
            out[fd.name] = _scalar_to_json(fd, value)
    return out


def _scalar_schema(fd: Any, *, answer: bool = False) -> dict[str, Any]:
    kind = fd.type
    if kind == FieldDescriptor.TYPE_STRING:
        return {"type": "string"}
    if kind == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return {"type": "integer", "minimum": low, "maximum": high}
    if kind in _FLOATS:
        return {"type": "number"}
    if kind == FieldDescriptor.TYPE_ENUM:
        names = _enum_names(fd.enum_type)
        # An answer may carry the zero value ("no strongest device"); a request may not.
        return {"type": "string", "enum": [*names, "UNSPECIFIED"] if answer else names}
    if kind == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    if _is_time(fd):
        return dict(_TIME_TYPES[fd.message_type.full_name][1])
    return {"$ref": _schema_ref(fd.message_type)}


def _schema_ref(descriptor: Any) -> str:
    return f"#/components/schemas/{descriptor.name}"


def message_schema(descriptor: Any, schemas: dict[str, Any], *, answer: bool) -> dict[str, Any]:
    """The JSON Schema of a message (``answer``: every field is present), its nested
    messages added to ``schemas``."""
    properties: dict[str, Any] = {}
    for fd in descriptor.fields:
        if (
            fd.type == FieldDescriptor.TYPE_MESSAGE
            and not _is_time(fd)
            and fd.message_type.name not in schemas
        ):
            schemas[fd.message_type.name] = {}
            schemas[fd.message_type.name] = message_schema(fd.message_type, schemas, answer=answer)
        item = _scalar_schema(fd, answer=answer)
        properties[fd.name] = {"type": "array", "items": item} if _is_repeated(fd) else item
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if answer:  # an unset time is left out
        schema["required"] = [
            fd.name
            for fd in descriptor.fields
            if fd.containing_oneof is None and (_is_repeated(fd) or not _is_time(fd))
        ]
    return schema


# -- routes ---------------------------------------------------------------------------------

#: A route's handler: the parsed JSON body (or the query and path parameters of a GET) in,
#: the JSON answer out.
Handler = Callable[[dict[str, Any], Context], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    """One HTTP route: ``rpc`` is the gRPC method whose role and quota it shares (None: open
    to every caller that passed the TLS handshake)."""

    method: str
    path: str
    rpc: str | None
    summary: str
    handler: Handler
    #: OpenAPI: the request body schema (None: no body), the 200 answer's schema, the
    #: query/path parameters (name -> schema).
    request_schema: dict[str, Any] | None = None
    response_schema: dict[str, Any] = field(default_factory=dict)
    parameters: Mapping[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    #: Query parameters the route refuses to go without (path parameters always are).
    required_parameters: frozenset[str] = frozenset()
    #: Form-encoded bodies are accepted too (privacyIDEA's endpoints).
    form: bool = False
    #: The body of an error answer (privacyIDEA's own shape); None: ``ApiError.body``.
    error_body: Callable[[ApiError], dict[str, Any]] | None = None

    def error(self, error: ApiError) -> dict[str, Any]:
        return error.body() if self.error_body is None else self.error_body(error)

    @property
    def label(self) -> str:
        """The route template, the metrics label and the access log's method."""
        return f"{self.method} {self.path}"


Servicer = Callable[[Any, Any], Awaitable[Message]]


def rpc_route(
    method: str,
    path: str,
    rpc: str,
    summary: str,
    servicer_method: Servicer,
    request_type: type[Message],
    response_type: type[Message],
    *,
    schemas: dict[str, Any],
    parameters: Mapping[str, tuple[str, dict[str, Any]]] | None = None,
) -> Route:
    """A route that is one gRPC method: JSON body -> request message -> servicer ->
    JSON; a GET takes its fields from the path and query instead."""

    async def handle(data: dict[str, Any], context: Context) -> Any:
        request = json_to_message(data, request_type)
        return message_to_json(await servicer_method(request, context))

    request_schema = None
    if method != "GET":
        name = request_type.DESCRIPTOR.name
        schemas[name] = message_schema(request_type.DESCRIPTOR, schemas, answer=False)
        request_schema = {"$ref": f"#/components/schemas/{name}"}
    answer = response_type.DESCRIPTOR.name
    schemas[answer] = message_schema(response_type.DESCRIPTOR, schemas, answer=True)
    return Route(
        method,
        path,
        rpc,
        summary,
        handle,
        request_schema=request_schema,
        response_schema={"$ref": f"#/components/schemas/{answer}"},
        parameters=parameters or {},
    )


def _batch_route(verification: VerificationServicer, schemas: dict[str, Any]) -> Route:
    """``POST /v1/verify:batch``: ``{"items": [{username, token, response}], "access"?,
    "task"?}`` -> ``{"items": [{outcome, message, device_id}]}`` in order, through
    VerifyBatch (the same limits)."""
    item_fields = ("username", "token", "response")

    async def handle(data: dict[str, Any], context: Context) -> Any:
        if not isinstance(data, dict):
            raise ApiError.invalid("body", "must be a JSON object")
        unknown = sorted(set(data) - {"items", "access", "task"})
        if unknown:
            raise ApiError.invalid(unknown[0], "unknown field")
        items = data.get("items")
        if not isinstance(items, list):
            raise ApiError.invalid("items", "must be a list")
        columns: dict[str, list[Any]] = {"usernames": [], "tokens": [], "responses": []}
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ApiError.invalid(f"items[{i}]", "must be a JSON object")
            for key in item:
                if key not in item_fields:
                    raise ApiError.invalid(f"items[{i}].{key}", "unknown field")
            for key, column in zip(item_fields, columns.values(), strict=True):
                value = item.get(key, "")
                if not isinstance(value, str):
                    raise ApiError.invalid(f"items[{i}].{key}", "must be a string")
                column.append(value)
        rest = {k: v for k, v in data.items() if k != "items"}
        request = json_to_message(rest, verification_pb2.VerifyBatchRequest)
        assert isinstance(request, verification_pb2.VerifyBatchRequest)
        request.usernames.extend(columns["usernames"])
        request.tokens.extend(columns["tokens"])
        request.responses.extend(columns["responses"])
        answer = await verification.VerifyBatch(request, context)
        names = verification_pb2.VerifyBatchResponse.DESCRIPTOR.fields_by_name
        outcome_field = names["outcomes"]
        out = []
        for outcome, device_id in zip(answer.outcomes, answer.device_ids, strict=True):
            out.append(
                {
                    "outcome": _scalar_to_json(outcome_field, outcome),
                    "message": _outcome_message(outcome),
                    "device_id": device_id,
                }
            )
        return {"items": out}

    verdict = {"$ref": "#/components/schemas/VerifyResponse"}
    schemas["VerifyResponse"] = message_schema(
        verification_pb2.VerifyResponse.DESCRIPTOR, schemas, answer=True
    )
    access = _scalar_schema(verification_pb2.VerifyBatchRequest.DESCRIPTOR.fields_by_name["access"])
    request_schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {k: {"type": "string"} for k in item_fields},
                    "required": ["username", "token", "response"],
                    "additionalProperties": False,
                },
            },
            "access": access,
            "task": {"type": "string"},
        },
        "required": ["items"],
        "additionalProperties": False,
    }
    return Route(
        "POST",
        "/v1/verify:batch",
        "/sls.v1.VerificationService/VerifyBatch",
        "Verify many answers at once (one outcome per item, in order)",
        handle,
        request_schema=request_schema,
        response_schema={
            "type": "object",
            "properties": {"items": {"type": "array", "items": verdict}},
            "required": ["items"],
        },
    )


def _outcome_message(value: int) -> str:
    try:
        return wire.from_outcome(value).message
    except InvalidInputError:
        return ""


def api_routes(
    verification: VerificationServicer,
    activation: ActivationServicer,
    push: PushServicer,
    schemas: dict[str, Any],
) -> list[Route]:
    """The ``/v1`` routes: what a login gateway (and the IB Key app behind the mobile
    gateway) needs of the gRPC services."""
    v, a, p = "/sls.v1.VerificationService/", "/sls.v1.ActivationService/", "/sls.v1.PushService/"
    challenge_id = {
        "challenge_id": ("path", {"type": "integer", "minimum": 0}),
        "wait": (
            "query",
            _scalar_schema(push_pb2.GetPushStatusRequest.DESCRIPTOR.fields_by_name["wait"]),
        ),
    }
    return [
        rpc_route(
            "POST",
            "/v1/challenges",
            v + "IssueChallenge",
            "Issue a challenge for the user's chosen device",
            verification.IssueChallenge,
            verification_pb2.IssueChallengeRequest,
            verification_pb2.IssueChallengeResponse,
            schemas=schemas,
        ),
        rpc_route(
            "POST",
            "/v1/verify",
            v + "Verify",
            "Verify one answer (challenge response, code card, SMS code, passcode)",
            verification.Verify,
            verification_pb2.VerifyRequest,
            verification_pb2.VerifyResponse,
            schemas=schemas,
        ),
        _batch_route(verification, schemas),
        rpc_route(
            "POST",
            "/v1/password-failures",
            v + "RecordPasswordFailure",
            "Record a wrong username/password (counts toward the lockout)",
            verification.RecordPasswordFailure,
            verification_pb2.RecordPasswordFailureRequest,
            verification_pb2.RecordPasswordFailureResponse,
            schemas=schemas,
        ),
        rpc_route(
            "POST",
            "/v1/pushes",
            p + "CreatePush",
            "Send a push to the user's IB Key",
            push.CreatePush,
            push_pb2.CreatePushRequest,
            push_pb2.CreatePushResponse,
            schemas=schemas,
        ),
        rpc_route(
            "GET",
            "/v1/pushes/{challenge_id}",
            p + "GetPushStatus",
            'A push\'s status, waiting up to `wait` (e.g. "2.5s") for the answer',
            push.GetPushStatus,
            push_pb2.GetPushStatusRequest,
            push_pb2.GetPushStatusResponse,
            schemas=schemas,
            parameters=challenge_id,
        ),
        rpc_route(
            "POST",
            "/v1/activations",
            a + "CreateActivation",
            "An IB Key activation offer (QR code and manual string)",
            activation.CreateActivation,
            activation_pb2.CreateActivationRequest,
            activation_pb2.CreateActivationResponse,
            schemas=schemas,
        ),
        rpc_route(
            "POST",
            "/v1/activations:complete",
            a + "CompleteActivation",
            "The app completes an activation (payload or manual_code)",
            activation.CompleteActivation,
            activation_pb2.CompleteActivationRequest,
            activation_pb2.CompleteActivationResponse,
            schemas=schemas,
        ),
        # The app's side (the IB Key app through the mobile gateway, the device simulator):
        # the key-bearing bodies go in POSTs, never in a URL.
        rpc_route(
            "POST",
            "/v1/activations:recover",
            a + "Recover",
            "A reinstalled app re-enables its user with the IB Key PIN (new keys)",
            activation.Recover,
            activation_pb2.RecoverRequest,
            activation_pb2.CompleteActivationResponse,
            schemas=schemas,
        ),
        rpc_route(
            "POST",
            "/v1/pushes:pending",
            p + "ListPendingPushes",
            "The app: the pushes waiting for its push key",
            push.ListPendingPushes,
            push_pb2.ListPendingPushesRequest,
            push_pb2.ListPendingPushesResponse,
            schemas=schemas,
        ),
        rpc_route(
            "POST",
            "/v1/pushes:answer",
            p + "AnswerPush",
            "The app: approve or decline a push, signed with its push key",
            push.AnswerPush,
            push_pb2.AnswerPushRequest,
            push_pb2.AnswerPushResponse,
            schemas=schemas,
        ),
    ]


# -- OpenAPI --------------------------------------------------------------------------------

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "reason": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
                "rule": {"type": "string"},
            },
            "required": ["code", "reason", "message"],
        }
    },
    "required": ["error"],
}


def _operation_id(route: Route, named_rpcs: set[str]) -> str:
    """What a generated client names the call: the gRPC method's name for its first route
    (``VerifyBatch`` -> ``verify_batch``), else the HTTP method and the path's words
    (privacyIDEA's ``POST /validate/check``, on Verify's role -> ``post_validate_check``)."""
    if route.rpc is not None and route.rpc not in named_rpcs:
        named_rpcs.add(route.rpc)
        name = route.rpc.rpartition("/")[2]
        return "".join(
            f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name)
        )
    words = "".join(c if c.isalnum() else " " for c in route.path.lower()).split()
    return "_".join([route.method.lower(), *words])


def openapi(routes: Sequence[Route], schemas: Mapping[str, Any], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    paths: dict[str, Any] = {}
    named_rpcs: set[str] = set()
    for route in routes:
        # privacyIDEA's routes answer errors in their own envelope (Route.error_body).
        error = (
            route.response_schema
            if route.error_body is not None
            else {"$ref": "#/components/schemas/Error"}
        )
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": _operation_id(route, named_rpcs),
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {_JSON: {"schema": route.response_schema}},
                },
                "4XX": {
                    "description": "refused: bad input (the field and the rule), role, quota",
                    "content": {_JSON: {"schema": error}},
                },
                "5XX": {
                    "description": "unavailable (retry here or on another node) or internal",
                    "content": {_JSON: {"schema": error}},
                },
            },
        }
        if route.rpc is not None:
            operation["description"] = f"gRPC {route.rpc}; role: {required_role(route.rpc)}"
        if route.parameters:
            operation["parameters"] = [
                {
                    "name": name,
                    "in": where,
                    "required": where == "path" or name in route.required_parameters,
                    "schema": schema,
                }
                for name, (where, schema) in route.parameters.items()
            ]
        if route.request_schema is not None:
            content = {_JSON: {"schema": route.request_schema}}
            if route.form:
                content["application/x-www-form-urlencoded"] = {"schema": route.request_schema}
            operation["requestBody"] = {"required": True, "content": content}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "sls_core HTTP/JSON API", "version": version},
        "paths": paths,
        "components": {"schemas": {**schemas, "Error": _ERROR_SCHEMA}},
    }


# -- the server -----------------------------------------------------------------------------


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The gRPC port's TLS for HTTP: the same certificate, and client certificates from
    ``client_ca`` asked for (required with ``require_client_auth``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(Path(tls.cert), Path(tls.key))
    if tls.client_ca is not None:
        context.load_verify_locations(cafile=str(tls.client_ca))
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_auth else ssl.CERT_OPTIONAL
    return context


class HttpApi:
    """The aiohttp application and its listener (:meth:`start`, :meth:`stop`)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        routes: Sequence[Route],
        schemas: Mapping[str, Any],
        quotas: QuotaInterceptor,
        metrics: Metrics,
        ready: Callable[[], bool],
        version: str,
    ) -> None:
        self.config = config
        self._quotas = quotas
        self._metrics = metrics
        self._ready = ready
        self._prefix = f"{os.getpid():x}-h"
        self._ids = 0
        health = {
            "type": "object",
            "properties": {"status": {"type": "string"}},
            "required": ["status"],
        }
        self.routes: list[Route] = [
            *routes,
            Route("GET", "/healthz", None, "Live: the process answers", self._live, None, health),
            Route("GET", "/readyz", None, "Serving (503 when not)", self._readiness, None, health),
            Route(
                "GET",
                "/openapi.json",
                None,
                "This document",
                self._openapi,
                None,
                {"type": "object"},
            ),
        ]
        self.document = openapi(self.routes, schemas, version)
        self.app = web.Application(client_max_size=config.max_message_bytes)
        for route in self.routes:
            self.app.router.add_route(route.method, route.path, self._endpoint(route))
        self.app.middlewares.append(_json_http_errors)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def _live(self, data: dict[str, Any], context: Context) -> Any:
        return {"status": "live"}

    async def _readiness(self, data: dict[str, Any], context: Context) -> Any:
        if not self._ready():
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "not serving")
        return {"status": "serving"}

    async def _openapi(self, data: dict[str, Any], context: Context) -> Any:
        return self.document

    async def start(self) -> int:
        """Binds ``http_listen`` (the gRPC TLS settings) and serves; the bound port."""
        config = self.config
        assert config.http_listen is not None
        host, port = split_host_port(config.http_listen, "http_listen")
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=config.grace_seconds,
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            host,
            port,
            ssl_context=ssl_context(config.tls) if config.tls is not None else None,
            # Several worker processes share the port, as they do the gRPC one.
            reuse_port=config.workers > 1,
        )
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise OSError(f"cannot listen on {config.http_listen}: {e.strerror or e}") from None
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def stop(self) -> None:
        """Stops accepting; in-flight requests get ``grace_seconds``."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _caller(self, request: web.Request) -> Caller:
        self._ids += 1
        request_id = f"{self._prefix}{self._ids:x}"
        peer = request.remote or "-"
        if self.config.tls is None:
            return Caller(f"insecure:{peer}", ADMIN, request_id)
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        cn = _common_name(cert)
        if cn is None:
            return Caller(f"anonymous:{peer}", None, request_id)
        return Caller(cn, self.config.roles.get(cn), request_id)

    def _endpoint(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        needed = required_role(route.rpc) if route.rpc is not None else None
        quota_name = route.rpc.rpartition("/")[2] if route.rpc is not None else None
        metrics, quotas = self._metrics, self._quotas

        async def endpoint(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            metrics.http_started(route.label)
            caller = self._caller(request)
            CALLER.set(caller)
            status = 500
            try:
                try:
                    refused = refusal(caller.role, route.rpc or "", needed)
                    if refused is not None:
                        raise ApiError(grpc.StatusCode.PERMISSION_DENIED, refused)
                    if quota_name is not None:
                        refused = quotas.charge(caller.identity, quota_name)
                        if refused is not None:
                            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
                    data = await _request_data(route, request)
                    answer = await route.handler(data, http_context())
                    status = 200
                    return _json_response(answer, 200)
                except ApiError as e:
                    status = e.http_status
                    return _json_response(route.error(e), status)
            except web.HTTPException as e:
                status = e.status
                return _json_response(_http_error_body(e), status)
            except Exception as e:  # the traceback goes to the log, never to the caller
                error = ApiError(grpc.StatusCode.INTERNAL, "internal error")
                try:
                    await abort_for(e, http_context(), route.label)
                except ApiError as mapped:
                    error = mapped
                status = error.http_status
                return _json_response(route.error(error), status)
            finally:
                seconds = time.perf_counter() - started
                metrics.http_finished(route.label, status, seconds)
                _log_access(route, caller, status, seconds)

        return endpoint


def _common_name(cert: object) -> str | None:
    if not isinstance(cert, dict):
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def _request_data(route: Route, request: web.Request) -> dict[str, Any]:
    """The parsed body (JSON, or a form where the route takes one); for a GET, the query
    and path parameters with their types."""
    if route.method == "GET":
        data: dict[str, Any] = {}
        for name, (where, schema) in route.parameters.items():
            source = request.match_info if where == "path" else request.query
            raw = source.get(name)
            if raw is None:
                continue
            data[name] = _typed_parameter(name, raw, schema)
        unknown = sorted(set(request.query) - set(route.parameters))
        if unknown:
            raise ApiError.invalid(unknown[0], "unknown parameter")
        return data
    if route.form and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await request.post()
        out: dict[str, Any] = {}
        for key in form:
            values = form.getall(key)
            if len(values) != 1 or not isinstance(values[0], str):
                raise ApiError.invalid(key, "must be given once, as text")
            out[key] = values[0]
        return out
    raw_body = await request.read()
    if not raw_body:
        raise ApiError.invalid("body", "must be a JSON object (the body is empty)")
    try:
        parsed = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError.invalid("body", "must be valid JSON") from None
    if not isinstance(parsed, dict):
        raise ApiError.invalid("body", "must be a JSON object")
    return parsed


def _typed_parameter(name: str, raw: str, schema: Mapping[str, Any]) -> Any:
    kind = schema.get("type")
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise ApiError.invalid(
            name, f"must be a{'n' if kind == 'integer' else ''} {kind}"
        ) from None
    return raw


def _json_response(body: Any, status: int) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type=_JSON,
    )


#: aiohttp's own refusals: (the stable reason, as in ErrorInfo, and the words for people).
_HTTP_REFUSALS = {
    404: ("NO_SUCH_ROUTE", "no such route"),
    405: ("METHOD_NOT_ALLOWED", "method not allowed on this route"),
    413: ("BODY_TOO_LARGE", "the body is too large"),
}


def _http_error_body(error: web.HTTPException) -> dict[str, Any]:
    """The ``Error`` model of the OpenAPI document for a refusal aiohttp made itself (no
    route, wrong method, a body over the limit): ``code``, ``reason`` and ``message``."""
    code = error.reason.upper().replace(" ", "_")
    reason, message = _HTTP_REFUSALS.get(error.status, (code, error.reason))
    return {"error": {"code": code, "reason": reason, "message": message}}


@web.middleware
async def _json_http_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, wrong method) as JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _json_response(_http_error_body(e), e.status)


def _log_access(route: Route, caller: Caller, status: int, seconds: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    access_log.info(
        "call",
        extra={
            "fields": {
                "method": route.label,
                "caller": caller.identity,
                "role": caller.role,
                "request_id": caller.request_id,
                "http_status": status,
                "duration_ms": round(seconds * 1000, 3),
            }
        },
    )
