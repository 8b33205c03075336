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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from sls_core import _native, qr
from sls_core.clock import MINUTE
from sls_core.devices import Device, DeviceState, DeviceType
from sls_core.errors import InvalidInputError, InvalidInputTypeError, SlsError
from sls_core.outcome import LoginOutcome
from sls_core.store import ActivationRow, DeviceRow, PushRow

if TYPE_CHECKING:
    from sls_core.login import SecureLogin

__all__ = [
    "ACTIVATION_TTL",
    "PUSH_TTL",
    "Activated",
    "ActivationError",
    "ActivationOffer",
    "IbKey",
    "PushChallenge",
    "validate_ibkey_pin",
]

#: How long an activation QR code / manual string / SMS token stays usable.
ACTIVATION_TTL = 10 * MINUTE
#: How long a push notification can be approved.
PUSH_TTL = 2 * MINUTE
#: Android puts the PIN in the computation; iOS unlocks with the phone's own element.
SUITE_WITH_PIN = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
SUITE_WITHOUT_PIN = "OCRA-1:HOTP-SHA1-8:QN06"
APPROVE, DECLINE = 1, 2
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


class ActivationError(SlsError, ValueError):
    """Activation refused; ``reason`` is what the app shows."""

    USED_OR_EXPIRED = "already used or expired"
    WRONG_RECOVERY_PIN = "wrong recovery PIN"
    LOCKED = "locked after too many failed attempts"
    NO_RECOVERY = "no IB Key with a recovery PIN"
    ALREADY_ENROLLED = "already enrolled"
    UNKNOWN = "no such activation"
    INVALID = "not a valid activation code"

    def __init__(self, reason: str) -> None:
        super().__init__(f"activation refused: {reason}")
        self.reason = reason


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


@dataclass(frozen=True)
class Activated:
    """What the app needs to derive the same OCRA secret: the server's X25519 public key
    and the session id (the app already has them when it scanned the QR code)."""

    device: Device
    username: str
    server_public: bytes
    session_id: bytes = field(repr=False)
    suite: str


@dataclass(frozen=True)
class PushChallenge:
    challenge_id: int
    user_id: int
    device_id: int
    expires_at: int

    def message(self, decision: int) -> bytes:
        """The bytes the app signs to approve (1) or decline (2) this push."""
        return bytes(
            _native.approval_message(
                self.challenge_id, self.user_id, self.device_id, self.expires_at, decision
            )
        )


class IbKey:
    """IB Key activation and push approvals over a :class:`SecureLogin` and its store."""

    def __init__(self, sls: SecureLogin) -> None:
        self._sls = sls
        with sls._write() as tx:
            seed = tx.store.server_secret("activation_key.1", lambda: secrets.token_bytes(32))
        self._signer = _native.ActivationSigner({1: seed}, active=1)
        self._verifier = _native.ActivationVerifier(self._signer.public_keys())

    def __repr__(self) -> str:
        return f"IbKey({self._sls!r})"

    # -- activation ----------------------------------------------------------------------
    def create_activation(self, username: str, *, channel: str = "qr") -> ActivationOffer:
        """A fresh activation offer for ``username`` (valid :data:`ACTIVATION_TTL`)."""
        sls = self._sls
        now = sls.clock.now()
        session_id = secrets.token_bytes(16)
        server_private, server_public = _native.x25519_keypair()
        manual_code = _native.manual_code(session_id)
        prefix = bytes(_native.parse_manual_code(manual_code))
        expires_at = int(now + ACTIVATION_TTL)
        with sls._write() as tx:
            user = sls._user(username)
            tx.store.insert_activation(
                ActivationRow(
                    session_id=session_id,
                    manual_prefix=prefix,
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
        sls = self._sls
        phones = [d.phone for d in sls.active_devices(username) if d.type is DeviceType.SMS]
        if not phones or phones[0] is None:
            raise InvalidInputError("username", "the user has no active SMS device")
        if sls.sms_sender is None:
            raise InvalidInputError("sms_sender", "no SMS sender is configured")
        offer = self.create_activation(username, channel="sms")
        sls.sms_sender.send(phones[0], f"Your IB Key activation code is {offer.manual_code}.")
        return offer.expires_at

    def complete_activation(
        self,
        *,
        app_public: bytes,
        push_public: bytes,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
    ) -> Activated:
        """Enrolls the IB Key of the app that scanned ``payload`` (or typed ``manual_code``).

        ``pin`` (Android) puts the IB Key PIN in the OCRA computation; the server keeps its
        hash only. Raises :class:`ActivationError` ("already used or expired", "already
        enrolled", ...); any attempt uses the offer up, even a refused one."""
        if (payload is None) == (manual_code is None):
            raise InvalidInputError("payload", "give exactly one of payload and manual_code")
        for name, key in (("app_public", app_public), ("push_public", push_public)):
            if not isinstance(key, bytes) or len(key) != 32:
                raise InvalidInputError(name, "must be 32 bytes")
        if pin is not None:
            validate_ibkey_pin(pin)
        sls = self._sls
        now = sls.clock.now()
        if payload is not None:
            status, fields = self._verifier.verify(payload, int(now))
            if status == 5:  # expired: same answer as a used code
                raise ActivationError(ActivationError.USED_OR_EXPIRED)
            if status != 0 or fields is None:
                raise ActivationError(ActivationError.INVALID)
            where = {"session_id": bytes(fields["session_id"])}
        else:
            assert manual_code is not None
            try:
                prefix = bytes(_native.parse_manual_code(manual_code))
            except InvalidInputError:
                raise ActivationError(ActivationError.INVALID) from None
            where = {"manual_prefix": prefix}
        refusal: ActivationError | None = None
        enrolled: tuple[int, str, bytes, bytes, str] | None = None
        with sls._write() as tx:
            offer = tx.store.take_activation(now=now, **where)
            if offer is None:
                refusal = ActivationError(ActivationError.UNKNOWN)
            elif offer.used_at is not None or now >= offer.expires_at:
                refusal = ActivationError(ActivationError.USED_OR_EXPIRED)
            else:
                user = sls._directory.user_by_id[offer.user_id]
                if any(
                    sls._directory.devices[d].type is DeviceType.IB_KEY
                    and sls._directory.devices[d].row.push_public == push_public
                    and sls._directory.devices[d].row.state == DeviceState.ACTIVE.value
                    for d in sls._directory.devices_of.get(user.id, ())
                ):
                    refusal = ActivationError(ActivationError.ALREADY_ENROLLED)
                else:
                    secret = bytes(
                        _native.derive_ocra_secret(
                            offer.server_private, app_public, offer.session_id, user.username
                        )
                    )
                    suite = SUITE_WITH_PIN if pin is not None else SUITE_WITHOUT_PIN
                    device_id = tx.store.insert_device(
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
                            recovery_hash=self._recovery_hash(user.id, pin) if pin else None,
                        ),
                        [user.id],
                    )
                    # A permanent device is active: temporary credentials end.
                    for temporary in sls._directory.live_temporary(user.id):
                        tx.store.update_device(temporary, state=DeviceState.REVOKED.value)
                    enrolled = (
                        device_id,
                        user.username,
                        offer.server_public,
                        offer.session_id,
                        suite,
                    )
        if refusal is not None:
            raise refusal
        assert enrolled is not None
        device_id, name, server_public, session_id, suite = enrolled
        return Activated(sls.device(name, device_id), name, server_public, session_id, suite)

    def _recovery_hash(self, user_id: int, pin: str) -> bytes:
        # Keyed with the server pepper and bound to the user: a stolen database alone
        # does not let anyone test the 4-6 character PINs offline.
        message = b"recovery:%d:" % user_id + pin.encode()
        return hmac.new(self._sls._pepper, message, hashlib.sha256).digest()

    def recover(
        self, username: str, recovery_pin: str, *, app_public: bytes, push_public: bytes
    ) -> Activated:
        """Re-enables a reinstalled app with the IB Key PIN (the recovery PIN): new keys for
        the user's IB Key, agreed by X25519 + HKDF as in an activation. A wrong PIN is a
        failed attempt for lockout (10 within 24 hours lock the user)."""
        from sls_core.login import LOCKOUT_FAILURES, locked_until

        validate_ibkey_pin(recovery_pin)
        for name, key in (("app_public", app_public), ("push_public", push_public)):
            if not isinstance(key, bytes) or len(key) != 32:
                raise InvalidInputError(name, "must be 32 bytes")
        sls = self._sls
        server_private, server_public = _native.x25519_keypair()
        session_id = secrets.token_bytes(16)
        refusal: ActivationError | None = None
        enrolled: tuple[int, str] | None = None
        with sls._write() as tx:
            now = sls.clock.now()
            user = sls._user(username)
            failures = tx.store.failures([user.id]).get(user.id, [])
            until = locked_until(failures)
            candidates = [
                sls._directory.devices[d]
                for d in sorted(sls._directory.devices_of.get(user.id, ()))
                if sls._directory.devices[d].type is DeviceType.IB_KEY
                and sls._directory.devices[d].row.recovery_hash is not None
                and sls._effective_state(sls._directory.devices[d], now) is DeviceState.ACTIVE
            ]
            expected = self._recovery_hash(user.id, recovery_pin)
            match = [
                e for e in candidates if hmac.compare_digest(e.row.recovery_hash or b"", expected)
            ]
            if until is not None and now < until:
                refusal = ActivationError(ActivationError.LOCKED)
            elif not candidates:
                refusal = ActivationError(ActivationError.NO_RECOVERY)
            elif not match:
                refusal = ActivationError(ActivationError.WRONG_RECOVERY_PIN)
                tx.store.put_failures({user.id: [*failures, now][-LOCKOUT_FAILURES:]})
            else:
                entry = match[0]
                secret = bytes(
                    _native.derive_ocra_secret(
                        bytes(server_private), app_public, session_id, user.username
                    )
                )
                tx.store.update_device(entry.row.id, secret=secret, push_public=push_public)
                if failures:
                    tx.store.clear_failures([user.id])
                enrolled = (entry.row.id, user.username)
        if refusal is not None:
            raise refusal
        assert enrolled is not None
        device_id, name = enrolled
        device = sls.device(name, device_id)
        return Activated(device, name, bytes(server_public), session_id, device.suite or "")

    # -- push ----------------------------------------------------------------------------
    def create_push(self, username: str, *, device_id: int | None = None) -> PushChallenge:
        """A push challenge for the user's IB Key: the gateway's ``device_id``, else the
        user's chosen device, else their only IB Key."""
        sls = self._sls
        now = sls.clock.now()
        with sls._write() as tx:
            user = sls._user(username)
            if device_id is None:
                device_id = sls._choose(
                    user,
                    lambda e: (
                        e.type is DeviceType.IB_KEY
                        and e.row.push_public is not None
                        and sls._effective_state(e, now) is DeviceState.ACTIVE
                    ),
                    "active IB Key",
                ).row.id
            entry = sls._device_of(user, device_id)
            if entry.type is not DeviceType.IB_KEY or entry.row.push_public is None:
                raise InvalidInputError("device_id", "push approval needs an activated IB Key")
            if sls._effective_state(entry, now) is not DeviceState.ACTIVE:
                raise InvalidInputError("device_id", "the device is not active")
            challenge_id = sls._next_challenge_id(tx.store)
            expires_at = int(now + PUSH_TTL) + 1
            tx.store.insert_push(
                PushRow(challenge_id, user.id, entry.row.id, now, float(expires_at))
            )
        return PushChallenge(challenge_id, user.id, entry.row.id, expires_at)

    def pending_pushes(self, push_public: bytes) -> list[PushChallenge]:
        """The undecided, unexpired pushes for the app holding ``push_public`` (what the
        notification would deliver)."""
        sls = self._sls
        now = sls.clock.now()
        with sls._write() as tx:
            devices = [
                e.row.id
                for e in sls._directory.devices.values()
                if e.row.push_public == push_public
            ]
            rows = tx.store.pending_pushes(devices, now)
        return [
            PushChallenge(r.challenge_id, r.user_id, r.device_id, int(r.expires_at)) for r in rows
        ]

    def answer_push(self, challenge_id: int, decision: int, signature: bytes) -> LoginOutcome:
        """The app's answer: OK (approved), DECLINED, WRONG (signature does not verify for
        this challenge, user and device), REPLAYED (already answered), EXPIRED."""
        outcomes = self.answer_pushes([challenge_id], [decision], [signature])
        return LoginOutcome(int(outcomes[0]))

    def answer_pushes(
        self,
        challenge_ids: Sequence[int],
        decisions: Sequence[int],
        signatures: Sequence[bytes],
    ) -> npt.NDArray[np.uint8]:
        """Many app answers at once: signatures verified in one kernel batch (Ed25519
        batch verification), decisions recorded once each in one transaction."""
        n = len(challenge_ids)
        if len(decisions) != n or len(signatures) != n:
            raise InvalidInputError("signatures", "one decision and signature per challenge")
        sls = self._sls
        out = np.full(n, 255, dtype=np.uint8)
        with sls._write() as tx:
            now = sls.clock.now()
            found = tx.store.pushes([int(c) for c in challenge_ids])
            rows = [found.get(int(c)) for c in challenge_ids]
            publics: list[bytes] = []
            messages: list[bytes] = []
            sigs: list[bytes] = []
            pending: list[int] = []
            for i, row in enumerate(rows):
                if row is None:
                    out[i] = LoginOutcome.CHALLENGE_INVALID
                    continue
                if decisions[i] not in (APPROVE, DECLINE):
                    out[i] = LoginOutcome.MALFORMED
                    continue
                entry = sls._directory.devices.get(row.device_id)
                if entry is None or entry.row.push_public is None:
                    out[i] = LoginOutcome.NO_SUCH_DEVICE
                    continue
                publics.append(entry.row.push_public)
                messages.append(
                    bytes(
                        _native.approval_message(
                            row.challenge_id,
                            row.user_id,
                            row.device_id,
                            int(row.expires_at),
                            decisions[i],
                        )
                    )
                )
                sigs.append(signatures[i] if isinstance(signatures[i], bytes) else b"")
                pending.append(i)
            verdicts = (
                _native.verify_approvals_batch(publics, messages, sigs, threads=sls.threads)
                if pending
                else np.zeros(0, np.uint8)
            )
            for i, verdict in zip(pending, verdicts.tolist(), strict=True):
                row = rows[i]
                assert row is not None
                if verdict != 0:
                    out[i] = LoginOutcome.MALFORMED if verdict == 2 else LoginOutcome.WRONG
                elif row.decision is not None:
                    out[i] = LoginOutcome.REPLAYED
                elif now >= row.expires_at:
                    out[i] = LoginOutcome.EXPIRED
                elif not tx.store.decide_push(
                    row.challenge_id, "approved" if decisions[i] == APPROVE else "declined", now
                ):
                    out[i] = LoginOutcome.REPLAYED
                else:
                    out[i] = LoginOutcome.OK if decisions[i] == APPROVE else LoginOutcome.DECLINED
        return out

    def push_status(self, challenge_id: int) -> str:
        """For the gateway: "pending", "approved", "declined" or "expired"."""
        sls = self._sls
        with sls._write() as tx:
            row = tx.store.push(challenge_id)
        if row is None:
            raise InvalidInputError("challenge_id", "no such push")
        if row.decision is not None:
            return str(row.decision)
        return "expired" if sls.clock.now() >= row.expires_at else "pending"

    def wait_push(self, challenge_id: int, *, timeout: float, poll: float = 0.05) -> str:
        """Waits (real time) until the push is decided or expired, or ``timeout`` passes;
        then falls back: the gateway issues a challenge/response instead."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.push_status(challenge_id)
            if status != "pending" or time.monotonic() >= deadline:
                return status
            time.sleep(poll)
