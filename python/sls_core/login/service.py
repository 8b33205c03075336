"""The SLS service API: :class:`SecureLogin` answers a login gateway's question "is this
second factor right for this user, now?" and carries out client services' and the
portal's requests, over a durable store.

Every attempt is decided by :mod:`sls_core.login.pipeline` (one decision point for every
way in); every rule and its numbers come from :mod:`sls_core.rules`. This module turns
requests into pipeline items and store writes. It never logs a secret, PIN or code.
"""

from __future__ import annotations

import datetime
import functools
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sls_core import card, hotp, ocra
from sls_core.cardprint import PrintableCard
from sls_core.clock import Clock, SystemClock
from sls_core.devices import Device, DeviceState, DeviceType
from sls_core.errors import InvalidInputError, InvalidInputTypeError
from sls_core.login.context import LoginContext
from sls_core.login.directory import DeviceEntry
from sls_core.login.issuing import (
    OCRA_SUITES,
    challenge_value,
    check_login_suite,
    check_purpose,
    check_task,
    hash_pin,
    new_challenge,
    new_serial,
)
from sls_core.login.pipeline import SMS_CODE_DIGITS, PasswordFailurePlan, ResponsePlan
from sls_core.login.sharing import DeviceSharing
from sls_core.outcome import LoginOutcome
from sls_core.rules import access as rules_access
from sls_core.rules import lifecycle, limits, lockout, quotas
from sls_core.rules.usernames import validate_new_username
from sls_core.sealing import ENV_VAR, MasterKeyRing
from sls_core.sms import OutboxSender, SmsSender, check_phone
from sls_core.store import DeviceRow, SqliteStore, Store, UserRow, WriterBusyError
from sls_core.store.postgres import PostgresStore, is_postgres_url
from sls_core.values import (
    Access,
    BatchResult,
    Challenge,
    Identity,
    LockoutStatus,
    Purpose,
    User,
    Verdict,
    WithdrawalLimits,
)

if TYPE_CHECKING:
    from sls_core.ibkey import IbKey

__all__ = [
    "DEFAULT_CHALLENGE_TTL",
    "OCRA_SUITES",
    "PRECHECK_MAX_AGE",
    "PRECHECK_MIN_ITEMS",
    "PURGE_INTERVAL",
    "PURGE_MARGIN",
    "SecureLogin",
]

DEFAULT_CHALLENGE_TTL = 5 * 60.0
#: How often each process deletes consumed challenges that have expired.
PURGE_INTERVAL = 60.0
#: A batch this large checks its tokens and answers before it takes the store's write
#: lock (see ``verify_batch``); a smaller one does all of it inside.
PRECHECK_MIN_ITEMS = 256
#: A pre-check older than this (seconds) when the write lock is finally taken is done
#: again: verdicts are judged at most this far from the time they commit at.
PRECHECK_MAX_AGE = 1.0
#: Consumed-challenge records are kept this long (seconds) past their expiry before the
#: purge deletes them: far more than any batch takes, so a verdict judged a little
#: earlier than it commits (a pre-check, a long batch) can never miss the record of a
#: use another process made and find the token fresh.
PURGE_MARGIN = 600.0
#: At most this many expired rows of consumed challenges (up to 64 a row) go in one purge
#: (inside a login transaction); when it deletes that many, the next comes a second later.
PURGE_BATCH = 20_000
#: What ``access`` may be (built once: a small batch checks it on every call).
_ACCESS_VALUES = tuple(Access)


class SecureLogin(DeviceSharing):
    """The domain layer over a store. Thread-safe; each process keeps its own directory.

    Every action that changes state takes an optional ``before_commit`` hook, run inside
    its transaction after the last write and before the commit (a server writes its audit
    line there): if the hook raises, nothing of the action is applied."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        sms_sender: SmsSender | None = None,
        challenge_ttl: float = DEFAULT_CHALLENGE_TTL,
        threads: int | None = None,
        auto_activation_delay: float = lifecycle.AUTO_ACTIVATION_DELAY,
    ) -> None:
        self.context = LoginContext(
            store,
            clock=clock or SystemClock(),
            sms_sender=sms_sender,
            challenge_ttl=challenge_ttl,
            threads=threads,
            auto_activation_delay=auto_activation_delay,
        )

    # The shared pieces, read-only, for callers that hold a SecureLogin.
    @property
    def store(self) -> Store:
        return self.context.store

    @property
    def clock(self) -> Clock:
        return self.context.clock

    @property
    def sms_sender(self) -> SmsSender | None:
        return self.context.sms_sender

    @property
    def challenge_ttl(self) -> float:
        return self.context.challenge_ttl

    @property
    def threads(self) -> int | None:
        return self.context.threads

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        clock: Clock | None = None,
        key_file: str | Path | None = None,
        sms_outbox: str | Path | None = None,
        store: str | None = None,
        **options: Any,
    ) -> SecureLogin:
        """The embedded default: ``data_dir/sls.db`` (SQLite), master key from
        ``SLS_CORE_MASTER_KEYS`` or ``key_file`` (default ``data_dir/master-key.json``,
        generated on first use with mode 0600), SMS to ``data_dir/sms-outbox.jsonl``.

        ``store`` a ``postgresql://`` URL: the shared PostgreSQL store instead of SQLite
        (every node of a cluster needs the same master key ring: the same key file,
        ``SLS_CORE_MASTER_KEYS`` or the same HSM)."""
        data_dir = Path(data_dir)
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # owner only, as its files
        key_path = Path(key_file) if key_file is not None else data_dir / "master-key.json"
        database = data_dir / "sls.db"
        if store is not None and not is_postgres_url(store):
            raise InvalidInputError("store", "must be a postgresql:// URL (or none: SQLite)")
        try:
            keyring = MasterKeyRing.load(key_file=key_path)
        except FileNotFoundError:
            if store is not None:
                sealed = PostgresStore.holds_sealed_data(store)
                where = "the PostgreSQL store"
            else:
                sealed = database.exists() and database.stat().st_size > 0
                where = str(database)
            if sealed:
                # A new key cannot open what the lost one sealed, and one generated under
                # the same id would make every later start fail: refuse, say what to do.
                raise InvalidInputError(
                    "key_file",
                    f"the master key is missing: {where} holds secrets sealed with it, and "
                    f"{key_path} does not exist nor is SLS_CORE_MASTER_KEYS set; restore the "
                    "key file from its backup (or set SLS_CORE_MASTER_KEYS), then start again",
                ) from None
            keyring = MasterKeyRing.generate_file(key_path)
        # Keys from the file are followed when the file changes (a live rotation).
        followed = key_path if ENV_VAR not in os.environ else None
        backend: Store
        if store is not None:
            backend = PostgresStore(store, keyring=keyring, key_file=followed)
        else:
            backend = SqliteStore(database, keyring=keyring, key_file=followed)
        outbox = Path(sms_outbox) if sms_outbox is not None else data_dir / "sms-outbox.jsonl"
        return cls(backend, clock=clock, sms_sender=OutboxSender(outbox), **options)

    def __repr__(self) -> str:
        return f"SecureLogin(store={self.store!r})"

    def warm(self) -> None:
        """Loads this process's directory of users and devices now, from a read snapshot
        that holds no write lock, rather than inside the first login's transaction (where
        a million devices would take tens of seconds with every other writer waiting). A
        server calls it before it reports SERVING; later transactions catch up from the
        change feed."""
        self.context.catch_up()

    @functools.cached_property
    def ibkey(self) -> IbKey:
        """IB Key activation and push approvals (:mod:`sls_core.ibkey`)."""
        from sls_core.ibkey import IbKey

        return IbKey(self.context)

    # -- users ---------------------------------------------------------------------------
    def create_user(
        self,
        username: str,
        identity: Identity | None = None,
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> User:
        name = validate_new_username(username)
        with self.context.write() as tx:
            tx.store.insert_user(name, (identity or Identity()).as_dict(), self.clock.now())
            if before_commit is not None:
                before_commit()
        return self.user(name)

    def user(self, username: str) -> User:
        with self.context.write():
            u = self.context.user(username)
        return User(u.id, u.username, u.opted_out, u.closed, u.preferred_device)

    def set_opted_out(
        self,
        username: str,
        opted_out: bool,
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        with self.context.write() as tx:
            tx.store.update_user(self.context.user(username).id, opted_out=int(opted_out))
            if before_commit is not None:
                before_commit()

    def close_account(self, username: str) -> None:
        with self.context.write() as tx:
            tx.store.update_user(self.context.user(username).id, closed=1)

    def second_factor_required(self, username: str, access: str = Access.TRADING) -> bool:
        """Opted-out users trade without a second factor; a closed account logs into the
        portal with username and password only, and has no trading access at all (asking
        for it raises: a closed account never reads as "free to trade")."""
        user = self.user(username)
        return rules_access.second_factor_required(
            closed=user.closed, opted_out=user.opted_out, access=access
        )

    # -- lockout -------------------------------------------------------------------------
    def lockout_status(self, username: str) -> LockoutStatus:
        with self.context.write() as tx:
            user = self.context.user(username)
            failures = tx.store.failures([user.id]).get(user.id, [])
        return self._status(failures, self.clock.now())

    def record_password_failure(
        self,
        username: str,
        *,
        before_commit: Callable[[LoginOutcome, LockoutStatus], None] | None = None,
    ) -> LockoutStatus:
        """A gateway reports a wrong username/password for ``username``: a failure of the
        same run as wrong second factors (SLS-RULES "Lockout"). An unknown username is an
        error (nothing to count); while the user is locked nothing more is counted.
        ``before_commit(outcome, status)`` runs before the commit (WRONG: counted; LOCKED:
        refused, not counted); if it raises, nothing is applied."""
        hook = None
        if before_commit is not None:
            hook = lambda decided: before_commit(*decided[0])  # noqa: E731 - one item
        return self.record_password_failures([username], before_commit=hook)[0]

    def record_password_failures(
        self,
        usernames: Sequence[str],
        *,
        before_commit: Callable[[list[tuple[LoginOutcome, LockoutStatus]]], None] | None = None,
    ) -> list[LockoutStatus]:
        """Many reported password failures in one transaction (input order)."""
        with self.context.write() as tx:
            for name in usernames:
                self.context.user(name)  # unknown: an error naming the field, nothing applied
            plan = PasswordFailurePlan(self.context, usernames, self.clock.now())
            plan.resolve()
            plan.evaluate()
            plan.settle(tx.store)
            ids = [int(u) for u in plan.user_ids.tolist()]
            on_record = tx.store.failures(ids)
            statuses = [self._status(on_record.get(u, []), plan.now) for u in ids]
            if before_commit is not None:
                outcomes = [LoginOutcome(int(o)) for o in plan.out.tolist()]
                before_commit(list(zip(outcomes, statuses, strict=True)))
        return statuses

    def unlock(
        self, username: str, *, by: str, before_commit: Callable[[], None] | None = None
    ) -> LockoutStatus:
        """Client services unlock a user after verifying identity by phone: the run of
        failures ends. ``by`` names who did it (the caller audits it with that name)."""
        if not isinstance(by, str) or not by.strip():
            raise InvalidInputError("by", "name who unlocks the user")
        with self.context.write() as tx:
            user = self.context.user(username)
            tx.store.clear_failures([user.id])
            if before_commit is not None:
                before_commit()
        return LockoutStatus(0, None)

    @staticmethod
    def _status(failures: Sequence[float], now: float) -> LockoutStatus:
        until = lockout.locked_until(failures)
        return LockoutStatus(len(failures), until if until is not None and now < until else None)

    # -- devices -------------------------------------------------------------------------
    def enroll_device(
        self,
        username: str,
        device_type: DeviceType,
        *,
        secret: bytes | None = None,
        pin: str | None = None,
        suite: str | None = None,
        serial: str | None = None,
        phone: str | None = None,
        shipped: bool = False,
        replaces: int | None = None,
        replaces_lost: bool = False,
        imported: bool = False,
        before_commit: Callable[[int], None] | None = None,
    ) -> Device:
        """Registers a device. Physical devices may be ``shipped`` (PENDING until activated
        by answering a challenge, or automatically 21 days after shipment); others are
        active at once. The PIN is kept only as the hash the suite needs.

        Legacy devices are no longer issued: only ``imported=True`` registers one (an
        existing holder's device arriving from the old system). A replacement for a lost
        or stolen device (``replaces_lost``) suspends the lost one at once. A closed or
        locked account gets no new device; an active IB Key ends the user's SMS device.
        ``before_commit(device_id)`` is told the new device's id."""
        if not isinstance(device_type, DeviceType):
            raise InvalidInputTypeError("device_type", "must be a DeviceType")
        if not imported:
            limits.check_issuable(device_type)
        if replaces_lost and replaces is None:
            raise InvalidInputError("replaces_lost", "name the lost device in replaces")
        if device_type in (DeviceType.TEMPORARY_PASSCODE, DeviceType.ONLINE_CARD):
            raise InvalidInputError(
                "device_type", "issue temporary credentials with their own methods"
            )
        now = self.clock.now()
        pin_hash = None
        if device_type.method == "ocra":
            suite = suite or OCRA_SUITES[device_type]
            info = check_login_suite(suite)
            if secret is None:
                secret = secrets.token_bytes(20)
            if info.pin_algorithm is not None:
                pin_hash = hash_pin(device_type, pin, info.pin_algorithm)
            elif pin is not None:
                raise InvalidInputError("pin", "not used by this device's suite")
        elif device_type.method == "card":
            secret = secret if secret is not None else secrets.token_bytes(20)
            card.card_codes(secret, 1)  # validates the secret
        elif device_type is DeviceType.SMS:
            check_phone(phone)
        if secret is not None and len(secret) < 16:
            raise InvalidInputError("secret", "must be at least 16 bytes")
        if shipped and not device_type.is_physical:
            raise InvalidInputError("shipped", "only physical devices are shipped")
        with self.context.write() as tx:
            user = self.context.user(username)
            self.context.refuse_issue(tx.store, user, "device")
            if replaces is not None:
                self.context.device_of(user, replaces)
                if replaces_lost:
                    tx.store.update_device(replaces, state=DeviceState.SUSPENDED.value)
            row = DeviceRow(
                id=0,
                type=device_type.value,
                state=(DeviceState.PENDING if shipped else DeviceState.ACTIVE).value,
                serial=serial or new_serial(device_type),
                suite=suite,
                issued_at=now,
                shipped_at=now if shipped else None,
                activated_at=None if shipped else now,
                expires_at=None,
                replaces=replaces,
                phone=phone,
                secret=secret,
                pin_hash=pin_hash,
            )
            device_id = tx.store.insert_device(row, [user.id])
            if not shipped and lifecycle.ends_temporary(device_type):
                self.context.end_temporary(tx.store, user.id)
            if device_type is DeviceType.IB_KEY:
                self.context.end_sms(tx.store, user.id)
            if before_commit is not None:
                before_commit(device_id)
        return self.device(username, device_id)

    def import_device(self, username: str, device_type: DeviceType, **options: Any) -> Device:
        """The import path for existing (legacy) devices: same checks as
        :meth:`enroll_device` (and its ``before_commit``), but a legacy type is accepted."""
        return self.enroll_device(username, device_type, imported=True, **options)

    def enroll_bulk(
        self,
        usernames: Sequence[str],
        device_type: DeviceType,
        secrets_: Sequence[bytes],
        *,
        pins: Sequence[str] | None = None,
    ) -> None:
        """Creates many users, each with one active OCRA device, in one transaction (for
        migrations and benchmarks). Same rules as :meth:`enroll_device`."""
        if device_type.method != "ocra":
            raise InvalidInputError("device_type", "bulk enrollment is for OCRA devices")
        if len(secrets_) != len(usernames) or (pins is not None and len(pins) != len(usernames)):
            raise InvalidInputError("secrets", "one secret (and PIN) per username")
        suite = OCRA_SUITES[device_type]
        algorithm = ocra.parse_suite(suite).pin_algorithm
        if (algorithm is None) != (pins is None):
            raise InvalidInputError("pins", f"{'required' if algorithm else 'not used'} here")
        now = self.clock.now()
        rows = []
        for i, name in enumerate(usernames):
            validate_new_username(name)
            if len(secrets_[i]) < 16:
                raise InvalidInputError("secrets", f"row {i}: must be at least 16 bytes")
            pin_hash = (
                hash_pin(device_type, pins[i], algorithm)
                if pins is not None and algorithm
                else None
            )
            rows.append(
                DeviceRow(
                    id=0,
                    type=device_type.value,
                    state=DeviceState.ACTIVE.value,
                    serial=new_serial(device_type),
                    suite=suite,
                    issued_at=now,
                    shipped_at=None,
                    activated_at=now,
                    expires_at=None,
                    replaces=None,
                    secret=bytes(secrets_[i]),
                    pin_hash=pin_hash,
                )
            )
        with self.context.write() as tx:
            tx.store.bulk_enroll([(name, Identity().as_dict()) for name in usernames], rows, now)

    def device(self, username: str, device_id: int) -> Device:
        with self.context.write():
            return self.context.public(
                self.context.device_of(self.context.user(username), device_id), self.clock.now()
            )

    def devices(self, username: str) -> list[Device]:
        with self.context.write():
            user = self.context.user(username)
            now = self.clock.now()
            ids = sorted(self.context.directory.devices_of.get(user.id, ()))
            return [self.context.public(self.context.directory.devices[i], now) for i in ids]

    def active_devices(self, username: str) -> list[Device]:
        return [d for d in self.devices(username) if d.state is DeviceState.ACTIVE]

    def choose_device(
        self, username: str, device_id: int, *, before_commit: Callable[[], None] | None = None
    ) -> None:
        """M2FS: the device that answers this user's logins when the gateway names none."""
        with self.context.write() as tx:
            user = self.context.user(username)
            entry = self.context.device_of(user, device_id)
            if self.context.effective_state(entry, self.clock.now()) is not DeviceState.ACTIVE:
                raise InvalidInputError("device_id", "the device is not active")
            tx.store.update_user(user.id, preferred_device=device_id)
            if before_commit is not None:
                before_commit()

    def revoke_device(
        self, username: str, device_id: int, *, before_commit: Callable[[], None] | None = None
    ) -> None:
        with self.context.write() as tx:
            entry = self.context.device_of(self.context.user(username), device_id)
            tx.store.update_device(entry.row.id, state=DeviceState.REVOKED.value)
            if before_commit is not None:
                before_commit()

    def reactivate_device(
        self, username: str, device_id: int, *, before_commit: Callable[[], None] | None = None
    ) -> None:
        """Client services re-enable a permanent device; this ends the user's temporary
        passcode and online card (SLS-RULES)."""
        with self.context.write() as tx:
            user = self.context.user(username)
            entry = self.context.device_of(user, device_id)
            if entry.type.is_temporary:
                raise InvalidInputError("device_id", "only permanent devices are reactivated")
            now = self.clock.now()
            tx.store.update_device(entry.row.id, state=DeviceState.ACTIVE.value, activated_at=now)
            self.context.end_temporary(tx.store, user.id)
            if before_commit is not None:
                before_commit()

    # -- policy --------------------------------------------------------------------------
    def withdrawal_limits(self, username: str) -> WithdrawalLimits:
        """Limits set by the strongest active device (SLS-RULES table); temporary
        passcodes and online cards count as no device; opted-out users get "none"."""
        user = self.user(username)
        active = [d.type for d in self.active_devices(username)]
        return limits.withdrawal_limits(active, opted_out=user.opted_out)

    @staticmethod
    def trading_session_length(unlock: str) -> float:
        """Seconds a trading session lasts after IB Key authentication (SLS-RULES)."""
        return limits.trading_session_length(unlock)

    # -- temporary credentials ------------------------------------------------------------
    def issue_temporary_passcode(
        self,
        username: str,
        *,
        device_id: int | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> str:
        """A new passcode (upper case, 12 characters, 59 bits), stored only as a keyed
        hash. Full access for 2 days, then portal access limited to getting an Online
        Security Code Card for 10 more. Returns it once; it is never shown again.

        From then the user's permanent device (``device_id``, else every active one) is
        SUSPENDED until reactivated. None for a closed account."""
        passcode = "".join(
            secrets.choice(lifecycle.PASSCODE_ALPHABET) for _ in range(lifecycle.PASSCODE_LENGTH)
        )
        now = self.clock.now()
        with self.context.write() as tx:
            user = self.context.user(username)
            rules_access.issue_refusal(closed=user.closed, locked=False, what="passcode")
            if device_id is not None:
                unavailable = [self.context.device_of(user, device_id)]
            else:
                unavailable = [
                    e
                    for e in self.context.devices_of(user.id)
                    if not e.type.is_temporary
                    and self.context.effective_state(e, now) is DeviceState.ACTIVE
                ]
            for entry in unavailable:
                if entry.type.is_temporary:
                    raise InvalidInputError("device_id", "a temporary device is not suspended")
                tx.store.update_device(entry.row.id, state=DeviceState.SUSPENDED.value)
            self.context.end_temporary(tx.store, user.id)
            tx.store.insert_device(
                DeviceRow(
                    id=0,
                    type=DeviceType.TEMPORARY_PASSCODE.value,
                    state=DeviceState.ACTIVE.value,
                    serial=new_serial(DeviceType.TEMPORARY_PASSCODE),
                    suite=None,
                    issued_at=now,
                    shipped_at=None,
                    activated_at=now,
                    expires_at=now + lifecycle.PASSCODE_PORTAL_ACCESS,
                    replaces=None,
                    secret=self.context.passcode_hash(passcode),
                ),
                [user.id],
            )
            if before_commit is not None:
                before_commit()
        return passcode

    def issue_online_card(
        self, username: str, *, before_commit: Callable[[int], None] | None = None
    ) -> tuple[Device, PrintableCard]:
        """A new Online Security Code Card (PENDING until activated with two of its codes),
        valid 21 days from issue; returns the device and the printable card. Issued only
        while the user's temporary passcode is in its portal window (SLS-RULES).
        ``before_commit(device_id)`` is told the card's device id."""
        now = self.clock.now()
        secret = secrets.token_bytes(20)
        with self.context.write() as tx:
            user = self.context.user(username)
            self.context.refuse_issue(tx.store, user, "online card")
            passcodes = [
                e
                for e in self.context.devices_of(user.id)
                if e.type is DeviceType.TEMPORARY_PASSCODE
                and e.row.state == DeviceState.ACTIVE.value
                and lifecycle.online_card_window_open(e.row.issued_at, now)
            ]
            if not passcodes:
                raise InvalidInputError(
                    "username", "an online card is issued only within a temporary passcode's window"
                )
            for device_id in self.context.directory.devices_of.get(user.id, ()):
                entry = self.context.directory.devices[device_id]
                if entry.type is DeviceType.ONLINE_CARD and entry.row.state in (
                    "active",
                    "pending",
                ):
                    tx.store.update_device(device_id, state=DeviceState.REVOKED.value)
            serial = new_serial(DeviceType.ONLINE_CARD)
            device_id = tx.store.insert_device(
                DeviceRow(
                    id=0,
                    type=DeviceType.ONLINE_CARD.value,
                    state=DeviceState.PENDING.value,
                    serial=serial,
                    suite=None,
                    issued_at=now,
                    shipped_at=None,
                    activated_at=None,
                    expires_at=now + lifecycle.ONLINE_CARD_VALIDITY,
                    replaces=None,
                    secret=secret,
                ),
                [user.id],
            )
            if before_commit is not None:
                before_commit(device_id)
        expires = datetime.datetime.fromtimestamp(
            now + lifecycle.ONLINE_CARD_VALIDITY, datetime.timezone.utc
        )
        printable = PrintableCard(
            serial=serial,
            username=username,
            expires_on=expires.date(),
            codes=tuple(card.card_codes(secret, lifecycle.CARD_INDICES)),
        )
        return self.device(username, device_id), printable

    # -- challenges ----------------------------------------------------------------------
    def issue_challenge(
        self,
        username: str,
        *,
        device_id: int | None = None,
        purpose: int = Purpose.LOGIN,
        task: str | None = None,
    ) -> Challenge:
        """A challenge for the user's chosen device (M2FS: the gateway's ``device_id``, else
        the user's preferred device, else their only one in the state the purpose needs).
        SMS devices get the code by text message now.

        ``purpose``: LOGIN; ACTIVATION (a pending device); REACTIVATION (the user's
        suspended device, answered through :meth:`activate`); STEP_UP with the ``task``
        it is for (its answer is valid once, for that task only)."""
        purpose = check_purpose(purpose)
        task = check_task(purpose, task)
        now = self.clock.now()
        with self.context.write() as tx:
            user = self.context.user(username)
            if purpose is not Purpose.LOGIN and purpose is not Purpose.STEP_UP:
                self.context.refuse_issue(tx.store, user, f"{purpose.name.lower()} challenge")
            entry = self._pick_device(user, device_id, purpose, now)
            if entry.type.method == "sms":
                # A text costs money and its answer would be refused: none is sent.
                self.context.refuse_issue(tx.store, user, "SMS code")
                self.context.meter(tx.store, quotas.Metered.SMS, user.id)
            challenge_id = self.context.next_challenge_id(tx.store)
        method = entry.type.method
        if method == "passcode":
            raise InvalidInputError("device_id", "a temporary passcode needs no challenge")
        value = challenge_value(method)
        expires = int(now + self.challenge_ttl) + 1
        token = self.context.tokens_for(task).seal(
            purpose=int(purpose),
            challenge_id=challenge_id,
            user_id=user.id,
            device_id=entry.row.id,
            issued_at=int(now),
            expires_at=expires,
            challenge=value,
        )
        if method == "sms":
            code = hotp.compute(
                self.context.sms_key, challenge_id, digits=SMS_CODE_DIGITS, algorithm="sha256"
            )
            if self.sms_sender is None:
                raise InvalidInputError("sms_sender", "no SMS sender is configured")
            assert entry.row.phone is not None
            self.sms_sender.send(entry.row.phone, f"Your login code is {code}.")
        return new_challenge(token, entry, purpose, expires, value, task)

    def issue_challenges(self, usernames: Sequence[str]) -> list[Challenge]:
        """Login challenges for many users at once (one store transaction), for gateways
        that batch a login storm. Each user's device is chosen as in
        :meth:`issue_challenge`; OCRA devices and code cards only (an SMS device sends a
        message, a temporary passcode needs no challenge).

        Only the reservation of challenge ids holds the store's write lock: a large batch
        chooses its devices before (from the directory as of a read snapshot, chosen again
        inside the lock if the directory changed in between, as :meth:`verify_batch`
        checks its answers), and every batch seals its tokens after the reservation has
        committed (a token is handed out only for an id that is durably its own)."""
        now = self.clock.now()
        expires = int(now + self.challenge_ttl) + 1
        with self.context.lock:  # this process's directory stays as read while we choose
            picks, seen = None, None
            if len(usernames) >= PRECHECK_MIN_ITEMS:
                self.context.catch_up()
                picks, seen = self._login_devices(usernames, now), self.context.directory.generation
            with self.context.write() as tx:
                if picks is None or self.context.directory.generation != seen:
                    picks = self._login_devices(usernames, now)
                challenge_ids = [self.context.next_challenge_id(tx.store) for _ in picks]
        seal = self.context.tokens.seal
        out: list[Challenge] = []
        for (user, entry), challenge_id in zip(picks, challenge_ids, strict=True):
            value = challenge_value(entry.type.method)
            token = seal(
                purpose=int(Purpose.LOGIN),
                challenge_id=challenge_id,
                user_id=user.id,
                device_id=entry.row.id,
                issued_at=int(now),
                expires_at=expires,
                challenge=value,
            )
            out.append(new_challenge(token, entry, Purpose.LOGIN, expires, value, None))
        return out

    def _login_devices(
        self, usernames: Sequence[str], now: float
    ) -> list[tuple[UserRow, DeviceEntry]]:
        """Each user and the device a batched login challenge is for (see
        :meth:`issue_challenges`); refuses the batch if one is neither OCRA nor a card."""
        picks = []
        for name in usernames:
            user = self.context.user(name)
            entry = self._pick_device(user, None, Purpose.LOGIN, now)
            if entry.type.method not in ("ocra", "card"):
                raise InvalidInputError(
                    "usernames", "batched challenges are for OCRA devices and code cards"
                )
            picks.append((user, entry))
        return picks

    def _pick_device(
        self, user: UserRow, device_id: int | None, purpose: Purpose, now: float
    ) -> DeviceEntry:
        wanted = lifecycle.state_answering(purpose)
        # A device with a replacement on its way (lost) is never reactivated.
        replaced = purpose is Purpose.REACTIVATION
        if device_id is not None:
            entry = self.context.device_of(user, device_id)
        else:
            entry = self.context.choose(
                user,
                lambda e: (
                    self.context.effective_state(e, now) is wanted
                    and e.type is not DeviceType.TEMPORARY_PASSCODE
                    and (e.row.expires_at or float("inf")) > now
                    and not (replaced and e.row.id in self.context.directory.replaced_by)
                ),
                f"{wanted.value} device",
            )
        state = self.context.effective_state(entry, now)
        if state is not wanted:
            raise InvalidInputError("device_id", f"the device is {state.value}")
        if replaced and entry.row.id in self.context.directory.replaced_by:
            raise InvalidInputError("device_id", "the device is being replaced (lost)")
        if entry.row.expires_at is not None and now >= entry.row.expires_at:
            raise InvalidInputError("device_id", "the device has expired")
        return entry

    # -- verification --------------------------------------------------------------------
    def verify(
        self,
        username: str,
        token: str | None,
        response: str,
        *,
        access: str = Access.TRADING,
        task: str | None = None,
    ) -> Verdict:
        """One attempt: the challenge ``token`` from :meth:`issue_challenge` and the typed
        ``response`` (or ``token=None`` and a temporary passcode). With ``task``, the
        answer to a step-up challenge for that task."""
        purpose = Purpose.STEP_UP if task is not None else Purpose.LOGIN
        result = self.verify_batch(
            [username], [token], [response], access=access, purpose=purpose, task=task
        )
        device = int(result.device_ids[0])
        return Verdict(result[0], device or None)

    def activate(
        self, username: str, token: str, response: str, *, purpose: int | None = None
    ) -> Verdict:
        """Activates a PENDING device (or online card), or reactivates the user's
        SUSPENDED device, by answering an activation or reactivation challenge with it
        (the token says which). Either ends the user's temporary passcode and online
        card when the device is permanent."""
        if purpose is None:
            purpose = self._token_purpose(token)
        purpose = check_purpose(purpose)
        if purpose not in (Purpose.ACTIVATION, Purpose.REACTIVATION):
            raise InvalidInputError("purpose", "must be ACTIVATION or REACTIVATION")
        result = self.verify_batch([username], [token], [response], purpose=purpose)
        return Verdict(result[0], int(result.device_ids[0]) or None)

    def _token_purpose(self, token: object) -> Purpose:
        """The purpose a token claims (checked again, with its signature, when verified)."""
        if isinstance(token, str):
            opened = self.context.tokens.open_batch([token], int(self.clock.now()))
            if int(opened["purpose"][0]) == Purpose.REACTIVATION:
                return Purpose.REACTIVATION
        return Purpose.ACTIVATION

    def verify_batch(
        self,
        usernames: Sequence[str],
        tokens: Sequence[str | None],
        responses: Sequence[str],
        *,
        access: str = Access.TRADING,
        purpose: int = Purpose.LOGIN,
        task: str | None = None,
        wait: bool = True,
        before_commit: Callable[[BatchResult], None] | None = None,
    ) -> BatchResult:
        """Verifies many attempts (mixed users, devices and methods) in input order.

        ``before_commit`` sees the verdicts inside the transaction, before it commits (a
        server writes its audit lines there): if it raises, nothing is applied, so no
        verdict is ever committed that the audit trail does not hold.

        The kernel work is one batch call per method; the store is read and written in one
        transaction, so replay and lockout hold across every process sharing the store and
        a crash leaves all of the batch applied or none of it. ``wait=False``: if another
        thread or process is writing, :class:`~sls_core.store.WriterBusyError` at once,
        with nothing done (a server's event loop tries a small batch this way).

        A large batch opens its tokens and checks its answers (the kernel work) against
        this process's directory *before* it takes the write lock, so that several
        processes sharing the store overlap that work and hold the lock only to settle
        replay and lockout. If the directory changed in between (a device revoked,
        enrolled or activated anywhere), or the checks are older than PRECHECK_MAX_AGE,
        they are done again inside the lock: the verdict is that of the state the
        transaction commits on, judged at most a second before it commits (consumed
        challenges outlive their tokens by PURGE_MARGIN, far more)."""
        n = len(usernames)
        if len(tokens) != n or len(responses) != n:
            raise InvalidInputError(
                "tokens", "usernames, tokens and responses must have the same length"
            )
        if access not in _ACCESS_VALUES:
            raise InvalidInputError("access", f"must be one of {', '.join(Access)}")
        purpose = check_purpose(purpose)
        task = check_task(purpose, task)
        if n == 0:
            return BatchResult(np.zeros(0, np.uint8), np.zeros(0, np.uint64))

        def checked(now: float) -> ResponsePlan:
            plan = ResponsePlan(
                self.context, usernames, tokens, responses, access, purpose, task, now
            )
            plan.resolve()
            plan.evaluate()
            return plan

        if not self.context.lock.acquire(blocking=wait):
            raise WriterBusyError
        try:
            plan, seen = None, None
            if wait and n >= PRECHECK_MIN_ITEMS:
                self.context.catch_up()
                plan, seen = checked(self.clock.now()), self.context.directory.generation
            with self.context.write(wait=wait) as tx:
                if (
                    plan is None
                    or self.context.directory.generation != seen
                    or self.clock.now() - plan.now > PRECHECK_MAX_AGE
                ):
                    plan = checked(self.clock.now())
                now = plan.now
                plan.settle(tx.store)
                if now >= self.context.next_purge:
                    # A consumed challenge past its expiry can never be presented again
                    # (the token is refused as expired first), so its row is dead weight.
                    purged = tx.store.purge_consumed(now - PURGE_MARGIN, PURGE_BATCH)
                    more = purged >= PURGE_BATCH  # a backlog: keep going, a slice at a time
                    self.context.next_purge = now + (1.0 if more else PURGE_INTERVAL)
                result = BatchResult(plan.out, plan.device_ids)
                if before_commit is not None:
                    before_commit(result)
        finally:
            self.context.lock.release()
        return result
