"""Clients of the sls_core gRPC service (``proto/sls/v1``) for login gateways, the Client
Portal and client services: :class:`SlsClient` (blocking, thread-safe) and
:class:`AsyncSlsClient` (asyncio).

The user's own settings in the portal go through PortalService, which the gateway role may
call: ``request_sharing``, ``cancel_sharing``, ``list_own_devices`` and the ``portal_*``
methods. The unprefixed ``issue_online_card``, ``choose_device`` and ``set_opt_out`` are
client services' (AdminService, admin role): the same action, audited as theirs.

Both take Python values and return the shared value types of :mod:`sls_core.values`
(:class:`~sls_core.values.Challenge`, :class:`~sls_core.values.Verdict`,
:class:`~sls_core.values.BatchResult`, :class:`~sls_core.values.Device`, ...), converted
by :mod:`sls_core.wire` as the server converts them, and raise
:class:`~sls_core.errors.SlsError` subclasses, never a raw ``grpc.RpcError``.

Times. The wire carries ``google.protobuf.Timestamp`` and ``Duration``. The shared value
types keep the domain's Unix seconds (``Challenge.expires_at``, ``Device.expires_at``,
``LockoutStatus.locked_until``: ``None`` when unset; a push's ``expires_at`` is the whole
second its approval signs); what only the client returns reads as a timezone-aware UTC
``datetime`` (:class:`ActivationOffer`, :meth:`SlsClient.send_sms_activation`,
:class:`ServerStatus`) or a ``timedelta`` (:meth:`SlsClient.session_length`,
``ServerStatus.uptime``). A span the client takes (``wait_push(wait=...)``) is a
``timedelta`` or seconds.

Errors:

==========================  =========================================================
gRPC status                 exception
==========================  =========================================================
INVALID_ARGUMENT            :class:`~sls_core.errors.InvalidInputError` (``field: rule``)
OUT_OF_RANGE                :class:`~sls_core.errors.InvalidInputError`
FAILED_PRECONDITION         :class:`ClientRefusedError` (``reason``)
PERMISSION_DENIED           :class:`PermissionDeniedError`
UNAUTHENTICATED             :class:`UnauthenticatedError` (a :class:`PermissionDeniedError`)
NOT_FOUND                   :class:`NotFoundError` (``username: no such user``)
ALREADY_EXISTS              :class:`AlreadyExistsError` (``username: already taken``)
RESOURCE_EXHAUSTED          :class:`ResourceExhaustedError`
DEADLINE_EXCEEDED           :class:`DeadlineExceededError` (also a ``TimeoutError``)
UNAVAILABLE                 :class:`UnavailableError` (also a ``ConnectionError``)
anything else               :class:`SlsRpcError`
==========================  =========================================================

Every :class:`SlsRpcError` carries what the server's ``google.rpc.Status`` details say:
``error_reason``, the stable machine-readable ``ErrorInfo.reason`` ("USER_NOT_FOUND",
"USERNAME_TAKEN", "QUOTA_EXCEEDED", "STORE_UNAVAILABLE", ...), and ``retry_after``, the
seconds its ``RetryInfo`` asks a caller to wait before trying again (None: no retry helps).

Retries. Only read-only calls are retried, on UNAVAILABLE, by gRPC's own retry machinery
(the ``grpc.service_config`` channel option: exponential backoff with jitter, at most
``RetryPolicy.max_attempts`` attempts, all inside the call's deadline):
:data:`RETRIED_METHODS`. Everything else changes state on the server and is never retried
automatically: a retried ``Verify`` or ``VerifyBatch`` whose first attempt did reach the
server would be answered ``REPLAYED`` (the challenge is used up) or count a wrong answer
twice toward the lockout; a retried ``IssueChallenge`` mints a second challenge and, for
SMS devices, sends a second text message; pushes, activations and the admin calls are not
idempotent either. The caller decides what to do with an :class:`UnavailableError` there.

Micro-batching. With ``linger > 0`` (the default), single :meth:`SlsClient.verify` calls
made concurrently (threads, or asyncio tasks for :class:`AsyncSlsClient`) are coalesced into
``VerifyBatch`` calls, and each caller gets its own outcome. While fewer than
``max_in_flight`` batches are on their way, an attempt leaves at once, together with
whatever else is waiting: an idle client adds no delay. Once ``max_in_flight`` batches are
in flight, attempts wait and coalesce until one of them returns or ``max_batch`` attempts
wait: under load the batches grow by themselves, and a busy server gets fewer, larger
calls (it pays its per-call cost once per batch, not once per login) instead of more. An
attempt whose deadline passes while it waits fails with DEADLINE_EXCEEDED and is never
sent. ``max_in_flight=0`` instead holds every batch open ``linger`` seconds from its first
attempt. A batch that fails fails only its own callers; ``close()`` sends what is still
waiting and waits for batches in flight. ``linger=0`` sends a plain ``Verify`` per call.

Several servers. ``target`` may be a list of ``"host:port"`` strings, or a
``"dns:///name:port"`` whose name resolves to several addresses (as may an ``ipv4:`` or
``ipv6:`` target URI): the channel then balances calls ``round_robin`` over the servers
that are healthy by gRPC client-side health checking (gRFC A17: it watches each server's
grpc.health.v1 service :data:`HEALTH_SERVICE_NAME`). A server that answers NOT_SERVING
(draining for a shutdown, or unable to write its audit trail) gets no new calls until it
serves again; one that is down is skipped and reconnected with backoff. A plain
``"host:port"`` string keeps one connection to one address, as before. Host names in a
list are resolved once, when the client is made (one gRPC channel dials one target URI).
With TLS, every server's certificate is checked against
``TlsSettings.server_name_override``, or else the one host all the list's items name.

A gateway that imports this module loads the wire types only (the generated messages,
:mod:`sls_core.values`, :mod:`sls_core.wire`): never the Rust extension, the store, the
login engine, PIL or reportlab.

This package never puts a response, code, PIN, passcode, key or secret in an exception
message, a ``repr`` or a log: messages name the field and the rule only.

Where things live: :mod:`~sls_core.client.errors` (the exceptions, status mapping),
:mod:`~sls_core.client.settings` (defaults, TLS, retries, targets),
:mod:`~sls_core.client.calls` (each unary call's checks, request and answer),
:mod:`~sls_core.client.blocking` (:class:`SlsClient`) and :mod:`~sls_core.client.aio`
(:class:`AsyncSlsClient`). Import the names from ``sls_core.client``.
"""

from __future__ import annotations

from sls_core.client.aio import AsyncSlsClient
from sls_core.client.blocking import SlsClient
from sls_core.client.errors import (
    AlreadyExistsError,
    ClientClosedError,
    ClientRefusedError,
    DeadlineExceededError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ResourceExhaustedError,
    SlsRpcError,
    UnauthenticatedError,
    UnavailableError,
)
from sls_core.client.settings import (
    DEFAULT_LINGER,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_MESSAGE_LENGTH,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    HEALTH_SERVICE_NAME,
    RETRIED_METHODS,
    RetryPolicy,
    TlsSettings,
)
from sls_core.wire import ActivationOffer, OnlineCard, SecurityLevel, ServerStatus

__all__ = [
    "DEFAULT_LINGER",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_MESSAGE_LENGTH",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "HEALTH_SERVICE_NAME",
    "RETRIED_METHODS",
    "ActivationOffer",
    "AlreadyExistsError",
    "AsyncSlsClient",
    "ClientClosedError",
    "ClientRefusedError",
    "DeadlineExceededError",
    "NotFoundError",
    "OnlineCard",
    "PermissionDeniedError",
    "ProtocolError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SecurityLevel",
    "ServerStatus",
    "SlsClient",
    "SlsRpcError",
    "TlsSettings",
    "UnauthenticatedError",
    "UnavailableError",
]
