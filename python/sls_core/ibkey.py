"""IB Key: activation by QR code, manual string or SMS token, and push approvals.

Activation (SLS-RULES "IB Key activation by QR code"):

1. The portal asks :meth:`IbKey.create_activation` for an offer: a signed payload (Ed25519,
   key id inside, kernel ``ActivationSigner``) holding the activation session id, the
   username, issue and expiry times and the server's ephemeral X25519 public key; the QR
   code of that payload; and the manual string shown under it (short, unambiguous
   alphabet, a check character).
2. The app scans the code (or the user types the string, or an SMS token) and calls
   :meth:`IbKey.complete_activation` with its own X25519 public key and its Ed25519 push
   key. Both sides derive the OCRA secret with X25519 + HKDF: the secret never travels.
3. The server enrolls the IB Key for the user. Any attempt uses the offer up: a second
   attempt, or one after expiry, is "already used or expired"; a username already on that
   app is "already enrolled".

Push approval: :meth:`IbKey.create_push` makes a challenge for the user's IB Key (the
M2FS choice, never "all must answer"); the app signs approve/decline with its Ed25519 key;
:meth:`IbKey.answer_push` / :meth:`IbKey.answer_pushes` verify once, before expiry, and
refuse an answer for another challenge or user. When the push does not arrive, the same
login falls back to challenge/response (:meth:`SecureLogin.issue_challenge`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sls_core import activation, qr
from sls_core.challenge import TokenStatus
from sls_core.clock import MINUTE
from sls_core.devices import Device, DeviceState, DeviceType
from sls_core.errors import InvalidInputError, InvalidInputTypeError, NoSuchItemError
from sls_core.login.context import LoginContext
from sls_core.login.directory import DeviceEntry
from sls_core.login.pipeline import OfferPlan, PushPlan, PushRedemptionPlan, RecoveryPlan
from sls_core.outcome import LoginOutcome
from sls_core.rules import quotas
from sls_core.store import ActivationRow, DeviceRow, PushRow, StoreTx
from sls_core.values import (
    APPROVE,
    DECLINE,
    Activated,
    ActivationError,
    Purpose,
    PushChallenge,
    PushDecision,
    PushStatus,
)

__all__ = [
    "ACTIVATION_TTL",
    "APPROVE",
    "DECLINE",
    "PUSH_TTL",
    "Activated",
    "ActivationError",
    "ActivationOffer",
    "IbKey",
    "PushChallenge",
    "PushDecision",
    "PushStatus",
    "validate_ibkey_pin",
]


#: How long an activation QR code / manual string / SMS token stays usable.
ACTIVATION_TTL = 10 * MINUTE
#: How long a push notification can be approved.
PUSH_TTL = 2 * MINUTE
#: Android puts the PIN in the computation; iOS unlocks with the phone's own element.
SUITE_WITH_PIN = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
SUITE_WITHOUT_PIN = "OCRA-1:HOTP-SHA1-8:QN06"
_PIN = re.compile(r"[\x21-\x7e]{4,6}")


def validate_ibkey_pin(pin: object) -> str:
    """IB Key PIN (also the recovery PIN): 4 to 6 letters, digits or special characters."""
    if not isinstance(pin, str):
        raise InvalidInputTypeError("pin", "must be a str")
    if not _PIN.fullmatch(pin):
        raise InvalidInputError(
            "pin", "an IB Key PIN is 4 to 6 letters, digits or special characters"
        )
    return pin


@dataclass(frozen=True)
class ActivationOffer:
    """What the portal shows: the QR code of ``payload`` and ``manual_code`` under it."""

    payload: str
    manual_code: str
    expires_at: float
    username: str

    def qr_png(self) -> bytes:
        return qr.render_png(self.payload, self.manual_code)

    def qr_svg(self) -> str:
        return qr.render_svg(self.payload, self.manual_code)


class IbKey:
    """IB Key activation and push approvals over the domain's shared context and store.

    Every answer (a push approval or decline, a recovery PIN, an activation offer taken
    up) is decided by the pipeline of :mod:`sls_core.login.pipeline`, like every other way
    in: a locked user, a closed account or a device no longer active is refused there."""

    def __init__(self, context: LoginContext) -> None:
        self._ctx = context
        with context.write() as tx:
            seed = tx.store.server_secret("activation_key.1", lambda: secrets.token_bytes(32))
            lookup = tx.store.server_secret(
                "activation_lookup_key", lambda: secrets.token_bytes(32)
            )
        self._lookup_key = lookup
        self._signer = activation.ActivationSigner({1: seed}, active=1)
        self._verifier = activation.ActivationVerifier(self._signer.public_keys())

    def __repr__(self) -> str:
        return f"IbKey(store={self._ctx.store!r})"

    # -- activation ----------------------------------------------------------------------
    def create_activation(self, username: str, *, channel: str = "qr") -> ActivationOffer:
        """A fresh activation offer for ``username`` (valid :data:`ACTIVATION_TTL`); none
        for a closed account or a locked user."""
        ctx = self._ctx
        now = ctx.clock.now()
        session_id = secrets.token_bytes(16)
        server_private, server_public = activation.x25519_keypair()
        manual_code = activation.manual_code(session_id)
        prefix = bytes(activation.parse_manual_code(manual_code))
        expires_at = int(now + ACTIVATION_TTL)
        with ctx.write() as tx:
            user = ctx.user(username)
            ctx.refuse_issue(tx.store, user, "activation")
            ctx.meter(tx.store, quotas.Metered.ACTIVATION_OFFER, user.id)
            if channel == "sms":
                ctx.meter(tx.store, quotas.Metered.SMS, user.id)
            tx.store.insert_activation(
                ActivationRow(
                    # Only keyed hashes: a copy of the database cannot rebuild the QR
                    # code or the manual string of a pending offer.
                    session_id=self._lookup(b"session", session_id),
                    manual_prefix=self._lookup(b"manual", prefix),
                    user_id=user.id,
                    channel=channel,
                    issued_at=now,
                    expires_at=expires_at,
                    server_private=bytes(server_private),
                    server_public=bytes(server_public),
                )
            )
        payload = self._signer.sign(
            session_id=session_id,
            username=user.username,
            issued_at=int(now),
            expires_at=expires_at,
            server_public=bytes(server_public),
            flags=0,
        )
        return ActivationOffer(payload, manual_code, float(expires_at), user.username)

    def send_sms_activation(self, username: str) -> float:
        """Sends an activation token by SMS to the user's phone (their SMS device); the
        user types it into the app. Returns when it expires."""
        ctx = self._ctx
        with ctx.write():
            user = ctx.user(username)
            now = ctx.clock.now()
            phones = [
                e.row.phone
                for e in ctx.devices_of(user.id)
                if e.type is DeviceType.SMS
                and ctx.effective_state(e, now) is DeviceState.ACTIVE
                and e.row.phone
            ]
        if not phones:
            raise InvalidInputError("username", "the user has no active SMS device")
        if ctx.sms_sender is None:
            raise InvalidInputError("sms_sender", "no SMS sender is configured")
        offer = self.create_activation(username, channel="sms")
        ctx.sms_sender.send(phones[0], f"Your IB Key activation code is {offer.manual_code}.")
        return offer.expires_at

    def complete_activation(
        self,
        *,
        app_public: bytes,
        push_public: bytes,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
        before_commit: Callable[[str, int], None] | None = None,
        before_refusal_commit: Callable[[ActivationError], None] | None = None,
    ) -> Activated:
        """Enrolls the IB Key of the app that scanned ``payload`` (or typed ``manual_code``).
        ``before_commit(username, device_id)`` runs before an enrollment commits (a server
        audits there: if it raises, nothing is enrolled); ``before_refusal_commit(refusal)``
        before a refusal commits (the offer used up, a counted failure): if it raises,
        nothing is used up.

        ``pin`` (Android) puts the IB Key PIN in the OCRA computation; the server keeps its
        hash only. Raises :class:`ActivationError` ("already used or expired", "already
        enrolled", "locked", ...); any attempt uses the offer up, even a refused one.
        Activating IB Key ends the user's SMS device and temporary credentials."""
        if (payload is None) == (manual_code is None):
            raise InvalidInputError("payload", "give exactly one of payload and manual_code")
        _check_keys(app_public, push_public)
        if pin is not None:
            validate_ibkey_pin(pin)
        ctx = self._ctx
        now = ctx.clock.now()
        if payload is not None:
            status, fields = self._verifier.verify(payload, int(now))
            if status == activation.PayloadStatus.EXPIRED:  # same answer as a used code
                raise ActivationError(ActivationError.USED_OR_EXPIRED)
            if status != activation.PayloadStatus.VALID or fields is None:
                raise ActivationError(ActivationError.INVALID)
            where = {"session_id": self._lookup(b"session", bytes(fields["session_id"]))}
        else:
            assert manual_code is not None
            try:
                prefix = bytes(activation.parse_manual_code(manual_code))
            except InvalidInputError:
                raise ActivationError(ActivationError.INVALID) from None
            where = {"manual_prefix": self._lookup(b"manual", prefix)}
        refusal: ActivationError | None = None
        enrolled: list[int] = []
        enrolled_name: list[str] = []
        with ctx.write() as tx:
            offer = tx.store.take_activation(now=now, **where)
            if offer is None:
                refusal = ActivationError(ActivationError.UNKNOWN)
            elif offer.used_at is not None or now >= offer.expires_at:
                refusal = ActivationError(ActivationError.USED_OR_EXPIRED)
            else:
                user = ctx.directory.user_by_id[offer.user_id]
                if any(
                    e.type is DeviceType.IB_KEY
                    and e.row.push_public == push_public
                    and e.row.state == DeviceState.ACTIVE.value
                    for e in ctx.devices_of(user.id)
                ):
                    refusal = ActivationError(ActivationError.ALREADY_ENROLLED)
                else:
                    suite = SUITE_WITH_PIN if pin is not None else SUITE_WITHOUT_PIN

                    def enroll(store: StoreTx) -> None:
                        secret = bytes(
                            activation.derive_ocra_secret(
                                offer.server_private, app_public, offer.session_id, user.username
                            )
                        )
                        device_id = store.insert_device(
                            DeviceRow(
                                id=0,
                                type=DeviceType.IB_KEY.value,
                                state=DeviceState.ACTIVE.value,
                                serial=f"IB-{offer.session_id[:5].hex().upper()}",
                                suite=suite,
                                issued_at=now,
                                shipped_at=None,
                                activated_at=now,
                                expires_at=None,
                                replaces=None,
                                secret=secret,
                                pin_hash=hashlib.sha1(pin.encode()).digest() if pin else None,  # noqa: S324 - OCRA PSHA1
                                push_public=push_public,
                                recovery_hash=ctx.recovery_hash(user.id, pin) if pin else None,
                            ),
                            [user.id],
                        )
                        # A permanent device is active: temporary credentials and SMS end.
                        ctx.end_temporary(store, user.id)
                        ctx.end_sms(store, user.id)
                        enrolled.append(device_id)
                        enrolled_name.append(user.username)  # read here, under the lock

                    plan = OfferPlan(ctx, user.id, None, enroll, now)
                    plan.decide(tx.store)
                    refusal = _activation_refusal(LoginOutcome(int(plan.out[0])))
                    if refusal is None and before_commit is not None:
                        before_commit(user.username, enrolled[0])
            if refusal is not None and before_refusal_commit is not None:
                before_refusal_commit(refusal)
        if refusal is not None:
            raise refusal
        assert offer is not None
        name = enrolled_name[0]
        return Activated(
            self._device(name, enrolled[0]), name, offer.server_public, offer.session_id, suite
        )

    def _lookup(self, what: bytes, value: bytes) -> bytes:
        """The stored form of an offer's session id or manual prefix: HMAC-SHA256 under a
        sealed server key, 16 bytes. The offer's "session id" in the key agreement is this
        value too (the app derives with what the server returns)."""
        return hmac.new(self._lookup_key, what + b":" + value, hashlib.sha256).digest()[:16]

    def _device(self, username: str, device_id: int) -> Device:
        ctx = self._ctx
        with ctx.write():
            return ctx.public(ctx.device_of(ctx.user(username), device_id), ctx.clock.now())

    def recover(
        self,
        username: str,
        recovery_pin: str,
        *,
        app_public: bytes,
        push_public: bytes,
        before_commit: Callable[[LoginOutcome, int | None], None] | None = None,
    ) -> Activated:
        """Re-enables a reinstalled app with the IB Key PIN (the recovery PIN): new keys for
        the user's IB Key, agreed by X25519 + HKDF as in an activation. A wrong PIN is a
        failed attempt of the lockout run; a locked user or closed account is refused."""
        validate_ibkey_pin(recovery_pin)
        _check_keys(app_public, push_public)
        ctx = self._ctx
        server_private, server_public = activation.x25519_keypair()
        session_id = secrets.token_bytes(16)
        with ctx.write() as tx:
            user = ctx.user(username)

            def rekey(store: StoreTx, entry: DeviceEntry) -> None:
                secret = bytes(
                    activation.derive_ocra_secret(
                        bytes(server_private), app_public, session_id, user.username
                    )
                )
                store.update_device(entry.row.id, secret=secret, push_public=push_public)

            plan = RecoveryPlan(ctx, user.id, user.username, recovery_pin, rekey, ctx.clock.now())
            plan.decide(tx.store)
            if before_commit is not None:  # the outcome (a wrong PIN counts) is audited first
                before_commit(LoginOutcome(int(plan.out[0])), int(plan.device_ids[0]) or None)
        outcome = LoginOutcome(int(plan.out[0]))
        if outcome is not LoginOutcome.OK:
            if outcome is LoginOutcome.WRONG:
                raise ActivationError(ActivationError.WRONG_RECOVERY_PIN)
            if outcome is LoginOutcome.NO_SUCH_DEVICE:
                raise ActivationError(ActivationError.NO_RECOVERY)
            raise _activation_refusal(outcome) or ActivationError(ActivationError.INVALID)
        device = self._device(user.username, int(plan.device_ids[0]))
        return Activated(
            device, user.username, bytes(server_public), session_id, device.suite or ""
        )

    # -- push ----------------------------------------------------------------------------
    def create_push(
        self, username: str, *, device_id: int | None = None, for_token: str | None = None
    ) -> PushChallenge:
        """A push challenge for the user's IB Key: the gateway's ``device_id``, else the
        user's chosen device, else their only IB Key. None for a closed account or a
        locked user (the answer would be refused anyway).

        ``for_token``: the login challenge token of the same login (its device is the
        push's): the push then takes the token's challenge id, so the approval and the
        offline answer of that login use up one replay key (whichever comes first wins),
        and :meth:`redeem_push` can find the push from the token alone."""
        ctx = self._ctx
        now = ctx.clock.now()
        with ctx.write() as tx:
            user = ctx.user(username)
            ctx.refuse_issue(tx.store, user, "push")
            login: _LoginToken | None = None
            if for_token is not None:
                login = self._login_token(for_token, now)
                if login is None or login.user_id != user.id:
                    raise InvalidInputError("token", "not a valid login challenge of this user")
                if device_id is not None and device_id != login.device_id:
                    raise InvalidInputError("device_id", "must be the device of the token")
                device_id = login.device_id
                if tx.store.push(login.challenge_id) is not None:
                    raise InvalidInputError("token", "this login already has a push")
            if device_id is None:
                device_id = ctx.choose(
                    user,
                    lambda e: (
                        e.type is DeviceType.IB_KEY
                        and e.row.push_public is not None
                        and ctx.effective_state(e, now) is DeviceState.ACTIVE
                    ),
                    "active IB Key",
                ).row.id
            entry = ctx.device_of(user, device_id)
            if entry.type is not DeviceType.IB_KEY or entry.row.push_public is None:
                raise InvalidInputError("device_id", "push approval needs an activated IB Key")
            if ctx.effective_state(entry, now) is not DeviceState.ACTIVE:
                raise InvalidInputError("device_id", "the device is not active")
            if login is not None:
                challenge_id = login.challenge_id
            else:
                challenge_id = ctx.next_challenge_id(tx.store)
            expires_at = int(now + PUSH_TTL) + 1
            tx.store.insert_push(
                PushRow(challenge_id, user.id, entry.row.id, now, float(expires_at))
            )
        return PushChallenge(challenge_id, user.id, entry.row.id, expires_at)

    def _login_token(self, token: object, now: float) -> _LoginToken | None:
        """A valid, unexpired login challenge token's ids, or None."""
        if not isinstance(token, str):
            return None
        opened = self._ctx.tokens.open_batch([token], int(now), threads=1)
        if int(opened["status"][0]) != TokenStatus.VALID:
            return None
        if int(opened["purpose"][0]) != int(Purpose.LOGIN):
            return None
        return _LoginToken(
            int(opened["challenge_id"][0]), int(opened["user_id"][0]), int(opened["device_id"][0])
        )

    def pending_pushes(self, push_public: bytes) -> list[PushChallenge]:
        """The undecided, unexpired pushes for the app holding ``push_public`` (what the
        notification would deliver)."""
        ctx = self._ctx
        now = ctx.clock.now()
        with ctx.write() as tx:
            # Only what could still be approved: a device no longer active gets nothing.
            devices = [
                e.row.id
                for e in ctx.directory.devices.with_push_public(push_public)
                if ctx.effective_state(e, now) is DeviceState.ACTIVE
            ]
            rows = tx.store.pending_pushes(devices, now)
        return [
            PushChallenge(r.challenge_id, r.user_id, r.device_id, int(r.expires_at)) for r in rows
        ]

    def answer_push(
        self,
        challenge_id: int,
        decision: int,
        signature: bytes,
        *,
        before_commit: Callable[[LoginOutcome], None] | None = None,
    ) -> LoginOutcome:
        """The app's answer: OK (approved), DECLINED, WRONG (signature does not verify for
        this challenge, user and device: a failed attempt), REPLAYED (already answered),
        EXPIRED, LOCKED, ACCOUNT_CLOSED, DEVICE_NOT_ACTIVE."""
        if _push_id(challenge_id) is None:
            raise InvalidInputError("challenge_id", "must be a push id (an integer below 2^63)")
        hook = (
            None
            if before_commit is None
            else (lambda out: before_commit(LoginOutcome(int(out[0]))))
        )
        outcomes = self.answer_pushes([challenge_id], [decision], [signature], before_commit=hook)
        return LoginOutcome(int(outcomes[0]))

    def answer_pushes(
        self,
        challenge_ids: Sequence[int],
        decisions: Sequence[int],
        signatures: Sequence[bytes],
        *,
        before_commit: Callable[[npt.NDArray[np.uint8]], None] | None = None,
    ) -> npt.NDArray[np.uint8]:
        """Many app answers at once: signatures verified in one kernel batch (Ed25519
        batch verification), decided by the pipeline in one transaction.
        ``before_commit`` sees the outcomes before the commit (a server audits there: if
        it raises, nothing is applied)."""
        n = len(challenge_ids)
        if len(decisions) != n or len(signatures) != n:
            raise InvalidInputError("signatures", "one decision and signature per challenge")
        ids = [_push_id(c) for c in challenge_ids]
        ctx = self._ctx
        with ctx.write() as tx:
            found = tx.store.pushes([i for i in ids if i is not None])
            rows = [found.get(i) if i is not None else None for i in ids]
            plan = PushPlan(ctx, rows, decisions, signatures, ctx.clock.now())
            plan.decide(tx.store)
            if before_commit is not None:
                before_commit(plan.out)
        return plan.out

    def redeem_push(
        self,
        username: str,
        token: str,
        *,
        before_commit: Callable[[LoginOutcome, int | None], None] | None = None,
    ) -> LoginOutcome | None:
        """A login redeems the push made for it with :meth:`create_push` ``for_token``
        (see :class:`PushRedemptionPlan`): OK once per approval, for the user and device
        of the login's challenge ``token``; DECLINED, REPLAYED, EXPIRED, CHALLENGE_INVALID
        (no push for this login, another user's token), LOCKED, ACCOUNT_CLOSED,
        DEVICE_NOT_ACTIVE; None while the push is still unanswered (nothing is used up).
        ``before_commit(outcome, device_id)`` runs before the commit (the audit line)."""
        if not isinstance(token, str):
            raise InvalidInputTypeError("token", "must be a str")
        ctx = self._ctx
        with ctx.write() as tx:
            now = ctx.clock.now()
            login = self._login_token(token, now)
            row = tx.store.push(login.challenge_id) if login is not None else None
            user = ctx.directory.user_by_name.get(username) if isinstance(username, str) else None
            if (
                row is not None
                and user is not None
                and row.user_id == user.id
                and row.decision is None
                and now < row.expires_at
            ):
                return None
            plan = PushRedemptionPlan(ctx, username, token, row, now)
            plan.decide(tx.store)
            outcome = LoginOutcome(int(plan.out[0]))
            if before_commit is not None:
                before_commit(outcome, int(plan.device_ids[0]) or None)
        return outcome

    def login_push_status(self, token: str) -> str:
        """The status of the push made for the login of challenge ``token`` ("pending",
        "approved", "declined", "expired"); "expired" too for a token that is no longer
        valid; InvalidInputError when that login has no push."""
        login = self._login_token(token, self._ctx.clock.now())
        if login is None:
            return str(PushStatus.EXPIRED)
        try:
            return self.push_status(login.challenge_id)
        except InvalidInputError:
            raise InvalidInputError("transaction_id", "this login has no push") from None

    def push_status(self, challenge_id: int) -> str:
        """For the gateway: "pending", "approved", "declined" or "expired"."""
        ctx = self._ctx
        key = _push_id(challenge_id)
        if key is None:  # beyond the store's ids: bad input, as AnswerPush says
            raise InvalidInputError("challenge_id", "no such push")
        with ctx.write() as tx:
            row = tx.store.push(key)
        if row is None:
            raise NoSuchItemError("challenge_id", "no such push", "PUSH_NOT_FOUND")
        if row.decision is not None:
            return str(PushStatus(row.decision))
        if ctx.clock.now() >= row.expires_at:
            return str(PushStatus.EXPIRED)
        return str(PushStatus.PENDING)

    def wait_push(self, challenge_id: int, *, timeout: float, poll: float = 0.05) -> str:
        """Waits (real time) until the push is decided or expired, or ``timeout`` passes;
        then falls back: the gateway issues a challenge/response instead."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.push_status(challenge_id)
            if status != PushStatus.PENDING or time.monotonic() >= deadline:
                return status
            time.sleep(poll)


def _check_keys(app_public: object, push_public: object) -> None:
    for name, key in (("app_public", app_public), ("push_public", push_public)):
        if not isinstance(key, bytes) or len(key) != 32:
            raise InvalidInputError(name, "must be 32 bytes")


@dataclass(frozen=True)
class _LoginToken:
    """The ids a valid login challenge token carries."""

    challenge_id: int
    user_id: int
    device_id: int


def _push_id(value: object) -> int | None:
    """A push id as the store keys it (a 63-bit integer), or None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


def _activation_refusal(outcome: LoginOutcome) -> ActivationError | None:
    """What the app is told when the pipeline refused an activation or recovery."""
    if outcome is LoginOutcome.OK:
        return None
    if outcome is LoginOutcome.LOCKED:
        return ActivationError(ActivationError.LOCKED)
    if outcome is LoginOutcome.ACCOUNT_CLOSED:
        return ActivationError(ActivationError.ACCOUNT_CLOSED)
    return ActivationError(ActivationError.INVALID)
