"""privacyIDEA-compatible validation over HTTP, so that gateways and plugins written for
privacyIDEA's ``/validate/check`` (Keycloak, SAML IdPs, RADIUS, PAM, credential providers)
log users in through sls_core.

* ``POST /validate/triggerchallenge`` and ``/validate/check`` with an empty ``pass``: a
  challenge for the user's chosen device (OCRA challenge, code card indices, an SMS sent,
  or an IB Key push with the offline challenge beside it): ``CHALLENGE`` with
  ``detail.transaction_id`` and ``detail.multi_challenge``.
* ``/validate/check`` with ``pass`` and ``transaction_id``: the answer (ACCEPT or REJECT);
  with an empty ``pass`` after a push: the login redeems the approval (one approval, one
  login, once).
* ``/validate/check`` with ``pass`` and no ``transaction_id``: a temporary passcode.
* ``GET /validate/polltransaction?transaction_id=``: whether the push was approved.

The ``transaction_id`` is the sealed challenge token itself: stateless, valid on every
node, bound to its user, device and expiry, and useless to anyone who does not also hold
the answer. ``realm`` is accepted and ignored (sls_core has one user base).

Every verdict goes through the same servicers, audit and metrics as gRPC. Never logs or
echoes ``pass``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import grpc

from sls_core import __version__, wire
from sls_core.api.v1 import verification_pb2
from sls_core.devices import DeviceType
from sls_core.errors import AlreadyExistsError, InvalidInputError, NoSuchItemError
from sls_core.server.domain import Domain
from sls_core.server.http_api import ApiError, Handler, Route
from sls_core.server.interceptors import QuotaInterceptor, current_caller
from sls_core.server.servicers import VerificationServicer, audit_or_unavailable
from sls_core.server.status import Context
from sls_core.values import LoginOutcome

__all__ = ["PrivacyIdeaApi"]

_VERIFY = "/sls.v1.VerificationService/Verify"
#: privacyIDEA's error codes: a missing or bad parameter, a refused caller (policy).
_PARAMETER_ERROR, _POLICY_ERROR, _INTERNAL = 905, 303, 500
_FIELDS = {
    "check": ("user", "realm", "pass", "transaction_id"),
    "triggerchallenge": ("user", "realm"),
    "polltransaction": ("transaction_id",),
}


def _envelope(result: dict[str, Any], detail: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": 1,
        "jsonrpc": "2.0",
        "result": result,
        "detail": detail,
        "time": time.time(),
        "version": f"sls_core {__version__} (privacyIDEA-compatible)",
    }


def _serial(device_id: int) -> str:
    return f"SLS{device_id:08d}"


def _challenge_entries(
    answer: verification_pb2.IssueChallengeResponse, push: bool
) -> list[dict[str, Any]]:
    """``multi_challenge``: what the user is shown, one entry per way to answer."""
    device_type = wire.from_device_type(answer.device_type, field_name="device_type")
    common = {"transaction_id": answer.token, "serial": _serial(answer.device_id), "image": None}
    entries: list[dict[str, Any]] = []
    if push:
        entries.append(
            {
                **common,
                "type": "push",
                "client_mode": "poll",
                "message": "Approve the login in IB Key on your phone",
                "attributes": None,
            }
        )
    if answer.card_indices:
        first, second = answer.card_indices
        entries.append(
            {
                **common,
                "type": "indexedsecret",
                "client_mode": "interactive",
                "message": f"Enter the codes of index {first} and {second} from your card",
                "attributes": {"card_indices": [first, second]},
            }
        )
    elif answer.challenge:
        where = "IB Key" if device_type is DeviceType.IB_KEY else "your security device"
        entries.append(
            {
                **common,
                "type": "ocra",
                "client_mode": "interactive",
                "message": f"Enter challenge {answer.challenge} in {where}, then type the response",
                "attributes": {"challenge": answer.challenge},
            }
        )
    else:
        entries.append(
            {
                **common,
                "type": "sms",
                "client_mode": "interactive",
                "message": "Enter the code we sent you by text message",
                "attributes": None,
            }
        )
    return entries


class PrivacyIdeaApi:
    """The ``/validate/*`` routes on the servicers and domain the gRPC server uses."""

    def __init__(
        self, domain: Domain, verification: VerificationServicer, quotas: QuotaInterceptor
    ) -> None:
        self.d = domain
        self.verification = verification
        self.quotas = quotas

    def routes(self, schemas: dict[str, Any]) -> list[Route]:
        def form(fields: Sequence[str], required: Sequence[str]) -> dict[str, Any]:
            return {
                "type": "object",
                "properties": {f: {"type": "string"} for f in fields},
                "required": list(required),
                "additionalProperties": False,
            }

        schemas["PrivacyIdeaResponse"] = {
            "type": "object",
            "properties": {
                "result": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "boolean"},
                        "value": {"type": ["boolean", "integer"]},
                        "authentication": {
                            "type": "string",
                            "enum": ["ACCEPT", "REJECT", "CHALLENGE"],
                        },
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "integer"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                    "required": ["status"],
                },
                "detail": {"type": ["object", "null"]},
                "id": {"type": "integer"},
                "jsonrpc": {"type": "string"},
                "time": {"type": "number"},
                "version": {"type": "string"},
            },
            "required": ["result", "detail"],
        }
        answer = {"$ref": "#/components/schemas/PrivacyIdeaResponse"}
        return [
            Route(
                "POST",
                "/validate/check",
                _VERIFY,
                "privacyIDEA: authenticate (answer a challenge, redeem a push, passcode)",
                _parameter_errors(self._check),
                form(_FIELDS["check"], ["user"]),
                answer,
                form=True,
                error_body=error_body,
            ),
            Route(
                "POST",
                "/validate/triggerchallenge",
                _VERIFY,
                "privacyIDEA: start challenge-response for the user's chosen device",
                _parameter_errors(self._trigger),
                form(_FIELDS["triggerchallenge"], ["user"]),
                answer,
                form=True,
                error_body=error_body,
            ),
            Route(
                "GET",
                "/validate/polltransaction",
                _VERIFY,
                "privacyIDEA: has the push of this transaction been approved?",
                _parameter_errors(self._poll),
                None,
                answer,
                parameters={"transaction_id": ("query", {"type": "string"})},
                required_parameters=frozenset({"transaction_id"}),
                error_body=error_body,
            ),
        ]

    # -- handlers -------------------------------------------------------------------------
    async def _check(self, data: dict[str, Any], context: Context) -> Any:
        params = _params(data, "check")
        user = _required(params, "user")
        password = params.get("pass", "")
        transaction_id = params.get("transaction_id", "")
        if not password and not transaction_id:
            return await self._challenge(user, context, triggered=False)
        if not password:
            return await self._redeem(user, transaction_id, context)
        request = verification_pb2.VerifyRequest(
            username=user, token=transaction_id, response=password
        )
        verdict = await self.verification.Verify(request, context)
        outcome = wire.from_outcome(verdict.outcome)
        return _verdict(outcome, verdict.device_id)

    async def _trigger(self, data: dict[str, Any], context: Context) -> Any:
        params = _params(data, "triggerchallenge")
        return await self._challenge(_required(params, "user"), context, triggered=True)

    async def _poll(self, data: dict[str, Any], context: Context) -> Any:
        params = _params(data, "polltransaction")
        token = _required(params, "transaction_id")
        status = await self.d.run(context, self.d.sls.ibkey.login_push_status, token)
        approved = status == "approved"
        return _envelope({"status": True, "value": approved}, {"push_status": status})

    # -- steps ------------------------------------------------------------------------------
    async def _challenge(self, user: str, context: Context, *, triggered: bool) -> Any:
        refused = self.quotas.charge(current_caller().identity, "IssueChallenge")
        if refused is not None:  # the quota IssueChallenge has over gRPC, if one is set
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        request = verification_pb2.IssueChallengeRequest(username=user)
        answer = await self.verification.IssueChallenge(request, context)
        push = False
        if wire.from_device_type(answer.device_type, field_name="device_type") is (
            DeviceType.IB_KEY
        ):
            push = await self._push_for(user, answer, context)
        entries = _challenge_entries(answer, push)
        messages = [e["message"] for e in entries]
        detail = {
            "transaction_id": answer.token,
            "transaction_ids": [answer.token],
            "message": ", ".join(messages),
            "messages": messages,
            "multi_challenge": entries,
            "serial": entries[0]["serial"],
            "type": entries[0]["type"],
            "client_mode": entries[0]["client_mode"],
            "preferred_client_mode": entries[0]["client_mode"],
            "attributes": None,
        }
        # privacyIDEA counts the tokens triggered: one device, however many ways to answer.
        value: int | bool = 1 if triggered else False
        return _envelope({"status": True, "value": value, "authentication": "CHALLENGE"}, detail)

    async def _push_for(
        self, user: str, answer: verification_pb2.IssueChallengeResponse, context: Context
    ) -> bool:
        """A push for this login beside its offline challenge, when the IB Key takes
        pushes (the same per-caller quota as CreatePush); False when it cannot."""
        caller = current_caller()
        refused = self.quotas.charge(caller.identity, "CreatePush")
        if refused is not None:
            return False  # the offline challenge still lets the user in
        try:
            await self.d.run(
                context,
                functools.partial(self.d.sls.ibkey.create_push, user, for_token=answer.token),
            )
        except InvalidInputError:
            return False  # an app without a push key: challenge/response only
        return True

    async def _redeem(self, user: str, token: str, context: Context) -> Any:
        caller = current_caller()

        def audit(outcome: LoginOutcome, device_id: int | None) -> None:
            with audit_or_unavailable():  # before the commit: no unaudited login
                self.d.audit.record(
                    "push_redeem",
                    caller.identity,
                    caller.request_id,
                    username=user,
                    device_id=device_id,
                    outcome=outcome.name,
                )

        def redeem() -> LoginOutcome | None:
            outcome = self.d.sls.ibkey.redeem_push(user, token, before_commit=audit)
            if outcome is not None:
                self.d.metrics.outcome("RedeemPush", outcome)
            return outcome

        outcome = await self.d.run(context, redeem)
        if outcome is None:
            detail = {"message": "the push has not been answered yet", "transaction_id": token}
            return _envelope({"status": True, "value": False, "authentication": "REJECT"}, detail)
        return _verdict(outcome, None)


def _parameter_errors(handler: Handler) -> Handler:
    """privacyIDEA answers a user or item that does not exist (or exists already) as a
    parameter error (HTTP 400, ERR905), as it did before NOT_FOUND / ALREADY_EXISTS: the
    gRPC codes stay inside sls_core's own API."""

    @functools.wraps(handler)
    async def handle(data: dict[str, Any], context: Context) -> Any:
        try:
            return await handler(data, context)
        except (NoSuchItemError, AlreadyExistsError) as e:
            raise ApiError.invalid(e.field, e.rule) from None
        except ApiError as e:
            if e.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS):
                raise
            name, _, rule = e.message.partition(": ")
            raise ApiError.invalid(e.field or name, e.rule or rule) from None

    return handle


def _params(data: dict[str, Any], endpoint: str) -> dict[str, str]:
    allowed = _FIELDS[endpoint]
    out: dict[str, str] = {}
    for key, value in data.items():
        if key not in allowed:
            raise ApiError.invalid(key, "unknown parameter")
        if not isinstance(value, str):
            raise ApiError.invalid(key, "must be a string")
        out[key] = value
    return out


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise ApiError.invalid(name, "missing parameter")
    return value


def _verdict(outcome: LoginOutcome, device_id: int | None) -> dict[str, Any]:
    accepted = outcome is LoginOutcome.OK
    detail: dict[str, Any] = {
        "message": "matching 1 tokens" if accepted else outcome.message,
        "sls_outcome": outcome.name,
    }
    if device_id:
        detail["serial"] = _serial(device_id)
    result = {
        "status": True,
        "value": accepted,
        "authentication": "ACCEPT" if accepted else "REJECT",
    }
    return _envelope(result, detail)


def error_body(error: ApiError) -> dict[str, Any]:
    """privacyIDEA's error shape: ``result.status`` false and ``result.error``."""
    if error.code is grpc.StatusCode.INVALID_ARGUMENT:
        code = _PARAMETER_ERROR
    elif error.code is grpc.StatusCode.PERMISSION_DENIED:
        code = _POLICY_ERROR
    else:
        code = _INTERNAL
    return _envelope(
        {"status": False, "error": {"code": code, "message": f"ERR{code}: {error.message}"}},
        None,
    )
