"""The SLS domain: users, devices, challenges, lockout and temporary credentials.

:class:`SecureLogin` answers a login gateway's question "is this second factor right for
this user, now?" with one :class:`~sls_core.outcome.LoginOutcome`, one attempt at a time or
a batch at once, enforcing the rules of SLS-RULES over a durable store:

* a challenge is a signed token bound to user, device, purpose and expiry (the kernel signs
  and checks it); it verifies once, from any process sharing the store;
* 10 consecutive failures within 24 hours lock the user until 24 hours after the last one;
  a success resets the count; malformed input is not a guess;
* temporary passcodes, online cards, SMS codes, device sharing and the policy tables.

Batch verification does the kernel work in one call per method, the store reads and writes
in one transaction, and per-item Python only where a rule is sequential by nature (users
with failures to count).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import re
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from sls_core import _native, ocra
from sls_core.cardprint import PrintableCard
from sls_core.clock import DAY, HOUR, Clock, SystemClock
from sls_core.devices import AUTO_ACTIVATION_DELAY, Device, DeviceState, DeviceType
from sls_core.errors import InvalidInputError, InvalidInputTypeError, SlsError
from sls_core.outcome import LoginOutcome
from sls_core.sealing import MasterKeyRing
from sls_core.sms import OutboxSender, SmsSender, check_phone
from sls_core.store import DeviceRow, SqliteStore, Store, StoreTx, UserRow, WriterBusyError

if TYPE_CHECKING:
    from sls_core.ibkey import IbKey

__all__ = [
    "CARD_INDICES",
    "LOCKOUT_FAILURES",
    "LOCKOUT_PERIOD",
    "ONLINE_CARD_VALIDITY",
    "PASSCODE_FULL_ACCESS",
    "PASSCODE_PORTAL_ACCESS",
    "Access",
    "BatchResult",
    "Challenge",
    "Identity",
    "LockoutStatus",
    "Purpose",
    "SecureLogin",
    "SharingError",
    "User",
    "Verdict",
    "WithdrawalLimits",
    "validate_username",
]

#: Consecutive failures that lock a user (SLS-RULES: "10 consecutive failed login attempts").
LOCKOUT_FAILURES = 10
#: ... within this period, and the lock lasts this long after the last failure.
LOCKOUT_PERIOD = 24 * HOUR
#: Temporary passcode: full access for 2 days, then portal-only (online card) for 10 more.
PASSCODE_FULL_ACCESS = 2 * DAY
PASSCODE_PORTAL_ACCESS = 12 * DAY
#: An Online Security Code Card is valid for 21 days.
ONLINE_CARD_VALIDITY = 21 * DAY
#: Index numbers on a code card.
CARD_INDICES = 100
#: Characters of a temporary passcode: upper case and digits without look-alikes
#: (no 0/O, 1/I/L), 31 symbols; 12 of them carry 59 bits.
PASSCODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PASSCODE_LENGTH = 12
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
SMS_CODE_DIGITS = 6
OCRA_SUITES = {
    # DSC+ and Android IB Key put the device PIN in the computation.
    DeviceType.DSC_PLUS: "OCRA-1:HOTP-SHA1-8:QN06-PSHA1",
    DeviceType.IB_KEY: "OCRA-1:HOTP-SHA1-8:QN06-PSHA1",
    DeviceType.PLATINUM: "OCRA-1:HOTP-SHA1-8:QN06",
    DeviceType.GOLD: "OCRA-1:HOTP-SHA1-8:QN06",
    DeviceType.DIGITAL_SECURITY_CARD: "OCRA-1:HOTP-SHA1-8:QN06",
}
_USERNAME = re.compile(r"[a-z0-9]{1,64}")
_PASSCODE_SHAPE = re.compile(rf"[A-Za-z0-9]{{{PASSCODE_LENGTH}}}")


def validate_username(username: object) -> str:
    """Usernames are lower-case letters and digits only; anything else is an "invalid
    characters" error, raised before any lookup or secret is touched."""
    if not isinstance(username, str):
        raise InvalidInputTypeError("username", "must be a str")
    if not _USERNAME.fullmatch(username):
        raise InvalidInputError(
            "username", "invalid characters: only lower-case letters and digits (1-64)"
        )
    return username


class Purpose:
    """What a challenge's answer unlocks (the token's purpose byte)."""

    LOGIN = 1
    ACTIVATION = 2


class Access:
    """What a login is for: the temporary passcode's second period allows only the portal's
    online-card page."""

    TRADING = "trading"
    PORTAL = "portal"
    ONLINE_CARD = "online_card"
    ALL = (TRADING, PORTAL, ONLINE_CARD)


class SharingError(SlsError, ValueError):
    """Device sharing refused; ``reason`` is one of the SLS-RULES errors."""

    LESS_SECURE = "less secure device"
    DIFFERENT_IDENTITY = "different identification information"
    TEMPORARY_DEVICE = "a temporary device is assigned"
    NOT_SHAREABLE = "this device type is not shared"

    def __init__(self, reason: str) -> None:
        super().__init__(f"device sharing refused: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    """Identification information; two users are the same person or entity when all of
    date of birth, citizenship, country of residence, ID document type and number match,
    or when their SSNs match."""

    date_of_birth: str = ""
    citizenship: str = ""
    residence: str = ""
    id_type: str = ""
    id_number: str = field(default="", repr=False)
    ssn: str = field(default="", repr=False)

    def as_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def same_holder(self, other: Identity) -> bool:
        if self.ssn and other.ssn:
            return hmac.compare_digest(self.ssn, other.ssn)
        document = ("date_of_birth", "citizenship", "residence", "id_type", "id_number")
        mine = tuple(getattr(self, k) for k in document)
        return all(mine) and mine == tuple(getattr(other, k) for k in document)


@dataclass(frozen=True)
class User:
    id: int
    username: str
    opted_out: bool
    closed: bool
    preferred_device: int | None


@dataclass(frozen=True)
class Challenge:
    """What the gateway shows and carries back. ``token`` is opaque and signed."""

    token: str
    device_id: int
    device_type: DeviceType
    purpose: int
    expires_at: float
    #: The 6 digits to show, for challenge/response devices.
    challenge: str | None = None
    #: The two index numbers to show, for code cards.
    card_indices: tuple[int, int] | None = None


@dataclass(frozen=True)
class Verdict:
    outcome: LoginOutcome
    device_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is LoginOutcome.OK

    @property
    def message(self) -> str:
        return self.outcome.message


@dataclass(frozen=True)
class BatchResult:
    """Per-item outcomes in input order (``LoginOutcome`` values) and the answering device
    (0 where none)."""

    outcomes: npt.NDArray[np.uint8]
    device_ids: npt.NDArray[np.uint64]

    def __len__(self) -> int:
        return len(self.outcomes)

    def __getitem__(self, i: int) -> LoginOutcome:
        return LoginOutcome(int(self.outcomes[i]))


@dataclass(frozen=True)
class LockoutStatus:
    consecutive_failures: int
    locked_until: float | None


@dataclass(frozen=True)
class WithdrawalLimits:
    """USD per day and per 5 business days; ``None`` means unlimited."""

    device: DeviceType | None
    per_day: int | None
    per_five_days: int | None


_LIMITS: dict[DeviceType | None, tuple[int | None, int | None]] = {
    None: (50_000, 100_000),
    DeviceType.SMS: (200_000, 600_000),
    DeviceType.IB_KEY: (1_000_000, 1_000_000),
    DeviceType.SECURITY_CODE_CARD: (200_000, 600_000),
    DeviceType.DIGITAL_SECURITY_CARD: (1_000_000, 1_500_000),
    DeviceType.DSC_PLUS: (None, None),
    DeviceType.PLATINUM: (None, None),
    DeviceType.GOLD: (None, None),
}


def locked_until(failures: Sequence[float]) -> float | None:
    """When the lock from these consecutive failure times ends, or None if not locked:
    the last 10 fall within 24 hours, and the lock lasts 24 hours from the last one."""
    if len(failures) < LOCKOUT_FAILURES:
        return None
    window = failures[-LOCKOUT_FAILURES:]
    if window[-1] - window[0] > LOCKOUT_PERIOD:
        return None
    return window[-1] + LOCKOUT_PERIOD


def _is_locked(failures: Sequence[float], now: float) -> bool:
    until = locked_until(failures)
    return until is not None and now < until


# -- the in-memory directory -------------------------------------------------------------


_TYPE_CODES = {t: i for i, t in enumerate(DeviceType)}


@dataclass
class _DeviceEntry:
    row: DeviceRow
    type: DeviceType
    owners: set[int]
    #: Active with no timed rule to apply (not shipped-pending, no expiry, not replaced,
    #: answers challenges): the batch path skips the state rules for these.
    plain_active: bool = False
    #: Items with the same group go to the kernel in one batch call.
    group: tuple[str, str | None] = ("", None)


class _Columns:
    """The batch fast path's view of devices, as numpy arrays indexed by device id, so a
    batch of a million attempts resolves and gathers keys without a Python object per
    item. A device is on the fast path when it is a plain active OCRA device with one
    owner, a key of at most :data:`KEY_WIDTH` bytes (HMAC zero-pads shorter keys, so a
    zero-padded row is the same key) and a PIN hash of at most :data:`PIN_WIDTH`; every
    other device takes the per-item path."""

    KEY_WIDTH = 32
    PIN_WIDTH = 64

    def __init__(self) -> None:
        self.owner = np.full(1, -1, dtype=np.int64)  # id 0 is never a device
        self.suite = np.full(1, -1, dtype=np.int16)
        self.keys = np.zeros((1, self.KEY_WIDTH), dtype=np.uint8)
        self.pins = np.zeros((1, self.PIN_WIDTH), dtype=np.uint8)
        self.suites: list[str] = []

    def _grow(self, top: int) -> None:
        size = len(self.owner)
        if top < size:
            return
        new = max(top + 1, 2 * size, 1024)
        self.owner = np.concatenate([self.owner, np.full(new - size, -1, np.int64)])
        self.suite = np.concatenate([self.suite, np.full(new - size, -1, np.int16)])
        self.keys = np.concatenate([self.keys, np.zeros((new - size, self.KEY_WIDTH), np.uint8)])
        self.pins = np.concatenate([self.pins, np.zeros((new - size, self.PIN_WIDTH), np.uint8)])

    def update(self, entries: Sequence[_DeviceEntry]) -> None:
        if not entries:
            return
        self._grow(max(e.row.id for e in entries))
        ids = np.fromiter((e.row.id for e in entries), np.intp, len(entries))
        fast = [
            e.plain_active
            and e.type.method == "ocra"
            and len(e.owners) == 1
            and e.row.secret is not None
            and len(e.row.secret) <= self.KEY_WIDTH
            and len(e.row.pin_hash or b"") <= self.PIN_WIDTH
            for e in entries
        ]
        suites = []
        for e, on in zip(entries, fast, strict=True):
            if not on:
                suites.append(-1)
                continue
            suite = e.row.suite or ""
            if suite not in self.suites:
                self.suites.append(suite)
            suites.append(self.suites.index(suite))
        self.suite[ids] = suites
        self.owner[ids] = [next(iter(e.owners)) if len(e.owners) == 1 else -1 for e in entries]
        keys = b"".join(
            (e.row.secret or b"").ljust(self.KEY_WIDTH, b"\0")[: self.KEY_WIDTH] for e in entries
        )
        self.keys[ids] = np.frombuffer(keys, np.uint8).reshape(-1, self.KEY_WIDTH)
        pins = b"".join(
            (e.row.pin_hash or b"").ljust(self.PIN_WIDTH, b"\0")[: self.PIN_WIDTH] for e in entries
        )
        self.pins[ids] = np.frombuffer(pins, np.uint8).reshape(-1, self.PIN_WIDTH)


class _Directory:
    """Each process's view of users and devices, kept exact by the store's change feed:
    every write transaction first reloads what other processes changed."""

    def __init__(self) -> None:
        self.generation = -1
        self.user_by_name: dict[str, UserRow] = {}
        self.user_by_id: dict[int, UserRow] = {}
        self.names = _native.NameIndex()
        self.closed: set[int] = set()
        self.devices: dict[int, _DeviceEntry] = {}
        self.devices_of: dict[int, set[int]] = {}
        #: old device id -> ids of devices enrolled to replace it
        self.replaced_by: dict[int, set[int]] = {}
        self.columns = _Columns()

    def live_temporary(
        self,
        user_id: int,
        types: tuple[DeviceType, ...] = (DeviceType.TEMPORARY_PASSCODE, DeviceType.ONLINE_CARD),
    ) -> list[int]:
        """The user's temporary passcodes and online cards that are not yet ended."""
        live = (DeviceState.ACTIVE.value, DeviceState.PENDING.value)
        return [
            device_id
            for device_id in sorted(self.devices_of.get(user_id, ()))
            if self.devices[device_id].type in types and self.devices[device_id].row.state in live
        ]

    #: Changed rows past which a refresh counts as slow (see ``slow_to_refresh``).
    SLOW_REFRESH_ROWS = 256

    def slow_to_refresh(self, tx: StoreTx) -> bool:
        """Whether bringing the directory up to date means a full reload, or more than
        ``SLOW_REFRESH_ROWS`` changed rows."""
        if tx.generation() == self.generation:
            return False
        if self.generation < 0:
            return True
        changed = tx.changes_since(self.generation)
        return changed is None or len(changed[0]) + len(changed[1]) > self.SLOW_REFRESH_ROWS

    def refresh(self, tx: StoreTx) -> None:
        generation = tx.generation()
        if generation == self.generation:
            return
        changed = None if self.generation < 0 else tx.changes_since(self.generation)
        if changed is None:
            users, devices, links = tx.users(), tx.devices(), tx.links()
            self.user_by_name.clear()
            self.user_by_id.clear()
            self.names.clear()
            self.closed.clear()
            self.devices.clear()
            self.devices_of.clear()
            self.replaced_by.clear()
            self.columns = _Columns()
        else:
            user_ids, device_ids = changed
            users, devices = tx.users(user_ids), tx.devices(device_ids)
            links = tx.links(user_ids)
        for u in users:
            old = self.user_by_id.get(u.id)
            if old is not None:
                self.user_by_name.pop(old.username, None)
                self.names.remove(old.username)
            self.user_by_id[u.id] = u
            self.user_by_name[u.username] = u
            self.names.insert(u.username, u.id)
            if u.closed:
                self.closed.add(u.id)
            else:
                self.closed.discard(u.id)
        for d in devices:
            entry = self.devices.get(d.id)
            owners = entry.owners if entry is not None else set()
            self.devices[d.id] = _DeviceEntry(d, DeviceType(d.type), owners)
            if d.replaces is not None:
                self.replaced_by.setdefault(d.replaces, set()).add(d.id)
        for user_id, device_id in links:
            self.devices[device_id].owners.add(user_id)
            self.devices_of.setdefault(user_id, set()).add(device_id)
        touched = {d.id for d in devices}
        touched.update(d.replaces for d in devices if d.replaces is not None)
        touched.update(device_id for _, device_id in links)
        for device_id in touched:
            entry = self.devices[device_id]
            entry.plain_active = (
                entry.row.state == DeviceState.ACTIVE.value
                and entry.row.expires_at is None
                and device_id not in self.replaced_by
                and entry.type is not DeviceType.TEMPORARY_PASSCODE
            )
            entry.group = (entry.type.method, entry.row.suite)
        self.columns.update([self.devices[i] for i in sorted(touched)])
        self.generation = generation


# -- the service -------------------------------------------------------------------------


class SecureLogin:
    """The domain layer over a store. Thread-safe; each process keeps its own directory."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        sms_sender: SmsSender | None = None,
        challenge_ttl: float = DEFAULT_CHALLENGE_TTL,
        threads: int | None = None,
    ) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.sms_sender = sms_sender
        self.challenge_ttl = challenge_ttl
        self.threads = threads
        self._directory = _Directory()
        self._lock = threading.RLock()
        self._ids: list[int] = []
        self._next_purge = 0.0
        with store.write() as tx:
            token_key = tx.server_secret("token_key.1", lambda: secrets.token_bytes(32))
            self._pepper = tx.server_secret("passcode_pepper", lambda: secrets.token_bytes(32))
            self._sms_key = tx.server_secret("sms_key", lambda: secrets.token_bytes(32))
        self._tokens = _native.TokenKeys({1: token_key}, active=1)

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        clock: Clock | None = None,
        key_file: str | Path | None = None,
        sms_outbox: str | Path | None = None,
        **options: Any,
    ) -> SecureLogin:
        """The embedded default: ``data_dir/sls.db`` (SQLite), master key from
        ``SLS_CORE_MASTER_KEYS`` or ``key_file`` (default ``data_dir/master-key.json``,
        generated on first use with mode 0600), SMS to ``data_dir/sms-outbox.jsonl``."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        key_path = Path(key_file) if key_file is not None else data_dir / "master-key.json"
        try:
            keyring = MasterKeyRing.load(key_file=key_path)
        except FileNotFoundError:
            keyring = MasterKeyRing.generate_file(key_path)
        store = SqliteStore(data_dir / "sls.db", keyring=keyring)
        outbox = Path(sms_outbox) if sms_outbox is not None else data_dir / "sms-outbox.jsonl"
        return cls(store, clock=clock, sms_sender=OutboxSender(outbox), **options)

    def __repr__(self) -> str:
        return f"SecureLogin(store={self.store!r})"

    def _catch_up(self) -> None:
        """The directory brought up to date from a read snapshot (no write lock)."""
        with self._lock, self.store.read() as tx:
            try:
                self._directory.refresh(tx)
            except BaseException:
                self._directory.generation = -1  # half loaded: the next transaction reloads
                raise

    def warm(self) -> None:
        """Loads this process's directory of users and devices now, from a read snapshot
        that holds no write lock, rather than inside the first login's transaction (where
        a million devices would take tens of seconds with every other writer waiting). A
        server calls it before it reports SERVING; later transactions catch up from the
        change feed."""
        self._catch_up()

    @functools.cached_property
    def ibkey(self) -> IbKey:
        """IB Key activation and push approvals (:mod:`sls_core.ibkey`)."""
        from sls_core.ibkey import IbKey

        return IbKey(self)

    # -- helpers -------------------------------------------------------------------------
    def _write(self, *, wait: bool = True) -> _Tx:
        return _Tx(self, wait=wait)

    def _user(self, username: object) -> UserRow:
        name = validate_username(username)
        user = self._directory.user_by_name.get(name)
        if user is None:
            raise InvalidInputError("username", "no such user")
        return user

    def _device_of(self, user: UserRow, device_id: int) -> _DeviceEntry:
        entry = self._directory.devices.get(device_id)
        if entry is None or user.id not in entry.owners:
            raise InvalidInputError("device_id", "the user has no such device")
        return entry

    def _effective_state(self, entry: _DeviceEntry, now: float) -> DeviceState:
        """Stored state, with the timed rules applied: a shipped device auto-activates 21
        days after shipment; a device replaced by an active one is REPLACED."""
        row = entry.row
        state = DeviceState(row.state)
        if (
            state is DeviceState.PENDING
            and row.shipped_at is not None
            and now >= row.shipped_at + AUTO_ACTIVATION_DELAY
        ):
            state = DeviceState.ACTIVE
        if state is DeviceState.ACTIVE:
            for newer in self._directory.replaced_by.get(row.id, ()):
                replacement = self._directory.devices[newer]
                if self._effective_state(replacement, now) is DeviceState.ACTIVE:
                    return DeviceState.REPLACED
        return state

    def _public(self, entry: _DeviceEntry, now: float) -> Device:
        r = entry.row
        return Device(
            id=r.id,
            type=entry.type,
            state=self._effective_state(entry, now),
            serial=r.serial,
            suite=r.suite,
            issued_at=r.issued_at,
            shipped_at=r.shipped_at,
            activated_at=r.activated_at,
            expires_at=r.expires_at,
            replaces=r.replaces,
            phone=r.phone,
        )

    def _next_challenge_id(self, tx: StoreTx) -> int:
        if not self._ids:
            first = tx.reserve("challenge_id", 1024)
            self._ids = list(range(first + 1023, first - 1, -1))
        return self._ids.pop()

    # -- users ---------------------------------------------------------------------------
    def create_user(self, username: str, identity: Identity | None = None) -> User:
        name = validate_username(username)
        with self._write() as tx:
            tx.store.insert_user(name, (identity or Identity()).as_dict(), self.clock.now())
        return self.user(name)

    def user(self, username: str) -> User:
        with self._write():
            u = self._user(username)
        return User(u.id, u.username, u.opted_out, u.closed, u.preferred_device)

    def set_opted_out(self, username: str, opted_out: bool) -> None:
        with self._write() as tx:
            tx.store.update_user(self._user(username).id, opted_out=int(opted_out))

    def close_account(self, username: str) -> None:
        with self._write() as tx:
            tx.store.update_user(self._user(username).id, closed=1)

    def second_factor_required(self, username: str, access: str = Access.TRADING) -> bool:
        """Opted-out users trade without a second factor; a closed account logs into the
        portal with username and password only (statements)."""
        user = self.user(username)
        if user.closed:
            return False
        return not (user.opted_out and access == Access.TRADING)

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
    ) -> Device:
        """Registers a device. Physical devices may be ``shipped`` (PENDING until activated
        by answering a challenge, or automatically 21 days after shipment); others are
        active at once. The PIN is kept only as the hash the suite needs."""
        if not isinstance(device_type, DeviceType):
            raise InvalidInputTypeError("device_type", "must be a DeviceType")
        if device_type in (DeviceType.TEMPORARY_PASSCODE, DeviceType.ONLINE_CARD):
            raise InvalidInputError(
                "device_type", "issue temporary credentials with their own methods"
            )
        now = self.clock.now()
        pin_hash = None
        if device_type.method == "ocra":
            suite = suite or OCRA_SUITES[device_type]
            info = ocra.parse_suite(suite)
            if secret is None:
                secret = secrets.token_bytes(20)
            if info.pin_algorithm is not None:
                pin_hash = _pin_hash(device_type, pin, info.pin_algorithm)
            elif pin is not None:
                raise InvalidInputError("pin", "not used by this device's suite")
        elif device_type.method == "card":
            secret = secret if secret is not None else secrets.token_bytes(20)
            _native.card_codes(secret, 1)  # validates the secret
        elif device_type is DeviceType.SMS:
            check_phone(phone)
        if secret is not None and len(secret) < 16:
            raise InvalidInputError("secret", "must be at least 16 bytes")
        if shipped and not device_type.is_physical:
            raise InvalidInputError("shipped", "only physical devices are shipped")
        with self._write() as tx:
            user = self._user(username)
            if replaces is not None:
                self._device_of(user, replaces)
            row = DeviceRow(
                id=0,
                type=device_type.value,
                state=(DeviceState.PENDING if shipped else DeviceState.ACTIVE).value,
                serial=serial or _serial(device_type),
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
            if not shipped and not device_type.is_temporary:
                self._end_temporary(tx, user, now)
        return self.device(username, device_id)

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
            validate_username(name)
            if len(secrets_[i]) < 16:
                raise InvalidInputError("secrets", f"row {i}: must be at least 16 bytes")
            pin_hash = (
                _pin_hash(device_type, pins[i], algorithm)
                if pins is not None and algorithm
                else None
            )
            rows.append(
                DeviceRow(
                    id=0,
                    type=device_type.value,
                    state=DeviceState.ACTIVE.value,
                    serial=_serial(device_type),
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
        with self._write() as tx:
            tx.store.bulk_enroll([(name, Identity().as_dict()) for name in usernames], rows, now)

    def device(self, username: str, device_id: int) -> Device:
        with self._write():
            return self._public(self._device_of(self._user(username), device_id), self.clock.now())

    def devices(self, username: str) -> list[Device]:
        with self._write():
            user = self._user(username)
            now = self.clock.now()
            ids = sorted(self._directory.devices_of.get(user.id, ()))
            return [self._public(self._directory.devices[i], now) for i in ids]

    def active_devices(self, username: str) -> list[Device]:
        return [d for d in self.devices(username) if d.state is DeviceState.ACTIVE]

    def choose_device(self, username: str, device_id: int) -> None:
        """M2FS: the device that answers this user's logins when the gateway names none."""
        with self._write() as tx:
            user = self._user(username)
            entry = self._device_of(user, device_id)
            if self._effective_state(entry, self.clock.now()) is not DeviceState.ACTIVE:
                raise InvalidInputError("device_id", "the device is not active")
            tx.store.update_user(user.id, preferred_device=device_id)

    def revoke_device(self, username: str, device_id: int) -> None:
        with self._write() as tx:
            entry = self._device_of(self._user(username), device_id)
            tx.store.update_device(entry.row.id, state=DeviceState.REVOKED.value)

    def reactivate_device(self, username: str, device_id: int) -> None:
        """Client services re-enable a permanent device; this ends the user's temporary
        passcode and online card (SLS-RULES)."""
        with self._write() as tx:
            user = self._user(username)
            entry = self._device_of(user, device_id)
            if entry.type.is_temporary:
                raise InvalidInputError("device_id", "only permanent devices are reactivated")
            now = self.clock.now()
            tx.store.update_device(entry.row.id, state=DeviceState.ACTIVE.value, activated_at=now)
            self._end_temporary(tx, user, now)

    def _end_temporary(self, tx: _Tx, user: UserRow, now: float) -> None:
        for device_id in self._directory.live_temporary(user.id):
            tx.store.update_device(device_id, state=DeviceState.REVOKED.value)

    def share_device(self, owner: str, device_id: int, with_username: str) -> None:
        """Lets ``with_username`` answer with ``owner``'s physical device, when SLS-RULES
        allows it: same holder, no temporary device among them, and the shared device is
        the most secure any of them holds."""
        with self._write() as tx:
            first = self._user(owner)
            second = self._user(with_username)
            entry = self._device_of(first, device_id)
            now = self.clock.now()
            if not entry.type.is_physical:
                raise SharingError(SharingError.NOT_SHAREABLE)
            if not Identity(**first.identity).same_holder(Identity(**second.identity)):
                raise SharingError(SharingError.DIFFERENT_IDENTITY)
            best = entry.type.security_level
            for user in (first, second):
                for other_id in self._directory.devices_of.get(user.id, ()):
                    other = self._directory.devices[other_id]
                    state = self._effective_state(other, now)
                    if state not in (DeviceState.ACTIVE, DeviceState.PENDING):
                        continue
                    if other.type.is_temporary:
                        raise SharingError(SharingError.TEMPORARY_DEVICE)
                    if other.type.security_level < best:
                        raise SharingError(SharingError.LESS_SECURE)
            tx.store.link(second.id, device_id)

    # -- policy --------------------------------------------------------------------------
    def withdrawal_limits(self, username: str) -> WithdrawalLimits:
        """Limits set by the strongest active device (SLS-RULES table); temporary
        passcodes and online cards count as no device."""
        best: WithdrawalLimits = WithdrawalLimits(None, *_LIMITS[None])
        for device in self.active_devices(username):
            if device.type not in _LIMITS:
                continue
            candidate = WithdrawalLimits(device.type, *_LIMITS[device.type])
            if _limit_rank(candidate) > _limit_rank(best):
                best = candidate
        return best

    @staticmethod
    def trading_session_length(unlock: str) -> float:
        """Seconds a trading session lasts after IB Key authentication: 12 hours when
        unlocked with a PIN or passcode, 30 hours with fingerprint or face recognition."""
        if unlock in ("pin", "passcode"):
            return 12 * HOUR
        if unlock in ("fingerprint", "face", "biometric"):
            return 30 * HOUR
        raise InvalidInputError("unlock", "must be pin, passcode, fingerprint, face or biometric")

    # -- temporary credentials ------------------------------------------------------------
    def issue_temporary_passcode(self, username: str) -> str:
        """A new passcode (upper case, 12 characters, 59 bits), stored only as a keyed
        hash. Full access for 2 days, then portal access limited to getting an Online
        Security Code Card for 10 more. Returns it once; it is never shown again."""
        passcode = "".join(secrets.choice(PASSCODE_ALPHABET) for _ in range(PASSCODE_LENGTH))
        now = self.clock.now()
        with self._write() as tx:
            user = self._user(username)
            self._end_temporary(tx, user, now)
            tx.store.insert_device(
                DeviceRow(
                    id=0,
                    type=DeviceType.TEMPORARY_PASSCODE.value,
                    state=DeviceState.ACTIVE.value,
                    serial=_serial(DeviceType.TEMPORARY_PASSCODE),
                    suite=None,
                    issued_at=now,
                    shipped_at=None,
                    activated_at=now,
                    expires_at=now + PASSCODE_PORTAL_ACCESS,
                    replaces=None,
                    secret=self._passcode_hash(passcode),
                ),
                [user.id],
            )
        return passcode

    def _passcode_hash(self, passcode: str) -> bytes:
        return hmac.new(self._pepper, passcode.encode(), hashlib.sha256).digest()

    def issue_online_card(self, username: str) -> tuple[Device, PrintableCard]:
        """A new Online Security Code Card (PENDING until activated with two of its codes),
        valid 21 days from issue; returns the device and the printable card."""
        now = self.clock.now()
        secret = secrets.token_bytes(20)
        with self._write() as tx:
            user = self._user(username)
            for device_id in self._directory.devices_of.get(user.id, ()):
                entry = self._directory.devices[device_id]
                if entry.type is DeviceType.ONLINE_CARD and entry.row.state in (
                    "active",
                    "pending",
                ):
                    tx.store.update_device(device_id, state=DeviceState.REVOKED.value)
            serial = _serial(DeviceType.ONLINE_CARD)
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
                    expires_at=now + ONLINE_CARD_VALIDITY,
                    replaces=None,
                    secret=secret,
                ),
                [user.id],
            )
        expires = datetime.datetime.fromtimestamp(now + ONLINE_CARD_VALIDITY, datetime.timezone.utc)
        card = PrintableCard(
            serial=serial,
            username=username,
            expires_on=expires.date(),
            codes=tuple(_native.card_codes(secret, CARD_INDICES)),
        )
        return self.device(username, device_id), card

    # -- challenges ----------------------------------------------------------------------
    def issue_challenge(
        self,
        username: str,
        *,
        device_id: int | None = None,
        purpose: int = Purpose.LOGIN,
    ) -> Challenge:
        """A challenge for the user's chosen device (M2FS: the gateway's ``device_id``, else
        the user's preferred device, else their only active one). SMS devices get the code
        by text message now."""
        if purpose not in (Purpose.LOGIN, Purpose.ACTIVATION):
            raise InvalidInputError("purpose", "must be Purpose.LOGIN or Purpose.ACTIVATION")
        now = self.clock.now()
        with self._write() as tx:
            user = self._user(username)
            entry = self._pick_device(user, device_id, purpose, now)
            challenge_id = self._next_challenge_id(tx.store)
        method = entry.type.method
        if method == "passcode":
            raise InvalidInputError("device_id", "a temporary passcode needs no challenge")
        value = _challenge_value(method)
        expires = now + self.challenge_ttl
        token = self._tokens.seal(
            purpose=purpose,
            challenge_id=challenge_id,
            user_id=user.id,
            device_id=entry.row.id,
            issued_at=int(now),
            expires_at=int(expires) + 1,
            challenge=value,
        )
        if method == "sms":
            code = _native.hotp_compute(
                self._sms_key, challenge_id, digits=SMS_CODE_DIGITS, algorithm="sha256"
            )
            if self.sms_sender is None:
                raise InvalidInputError("sms_sender", "no SMS sender is configured")
            assert entry.row.phone is not None
            self.sms_sender.send(entry.row.phone, f"Your login code is {code}.")
        return Challenge(
            token=token,
            device_id=entry.row.id,
            device_type=entry.type,
            purpose=purpose,
            expires_at=float(int(expires) + 1),
            challenge=f"{value:06d}" if method == "ocra" else None,
            card_indices=(value >> 16, value & 0xFFFF) if method == "card" else None,
        )

    def issue_challenges(self, usernames: Sequence[str]) -> list[Challenge]:
        """Login challenges for many users at once (one store transaction), for gateways
        that batch a login storm. Each user's device is chosen as in
        :meth:`issue_challenge`; OCRA devices and code cards only (an SMS device sends a
        message, a temporary passcode needs no challenge)."""
        now = self.clock.now()
        expires = int(now + self.challenge_ttl) + 1
        out: list[Challenge] = []
        with self._write() as tx:
            for name in usernames:
                user = self._user(name)
                entry = self._pick_device(user, None, Purpose.LOGIN, now)
                method = entry.type.method
                if method not in ("ocra", "card"):
                    raise InvalidInputError(
                        "usernames", "batched challenges are for OCRA devices and code cards"
                    )
                value = _challenge_value(method)
                token = self._tokens.seal(
                    purpose=Purpose.LOGIN,
                    challenge_id=self._next_challenge_id(tx.store),
                    user_id=user.id,
                    device_id=entry.row.id,
                    issued_at=int(now),
                    expires_at=expires,
                    challenge=value,
                )
                out.append(
                    Challenge(
                        token=token,
                        device_id=entry.row.id,
                        device_type=entry.type,
                        purpose=Purpose.LOGIN,
                        expires_at=float(expires),
                        challenge=f"{value:06d}" if method == "ocra" else None,
                        card_indices=(value >> 16, value & 0xFFFF) if method == "card" else None,
                    )
                )
        return out

    def _choose(
        self,
        user: UserRow,
        eligible: Callable[[_DeviceEntry], bool],
        what: str,
    ) -> _DeviceEntry:
        """M2FS: among the user's ``eligible`` devices, their chosen one, else the only one;
        several with none chosen is an error asking to choose, never "all must answer"."""
        candidates = [
            self._directory.devices[i]
            for i in sorted(self._directory.devices_of.get(user.id, ()))
            if eligible(self._directory.devices[i])
        ]
        preferred = [c for c in candidates if c.row.id == user.preferred_device]
        if preferred:
            return preferred[0]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise InvalidInputError("device_id", f"the user has no {what}")
        raise InvalidInputError("device_id", f"the user has several {what}s: choose one (M2FS)")

    def _pick_device(
        self, user: UserRow, device_id: int | None, purpose: int, now: float
    ) -> _DeviceEntry:
        wanted = DeviceState.PENDING if purpose == Purpose.ACTIVATION else DeviceState.ACTIVE
        if device_id is not None:
            entry = self._device_of(user, device_id)
        else:
            entry = self._choose(
                user,
                lambda e: (
                    self._effective_state(e, now) is wanted
                    and e.type is not DeviceType.TEMPORARY_PASSCODE
                    and (e.row.expires_at or float("inf")) > now
                ),
                f"{wanted.value} device",
            )
        state = self._effective_state(entry, now)
        if state is not wanted:
            raise InvalidInputError("device_id", f"the device is {state.value}")
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
    ) -> Verdict:
        """One attempt: the challenge ``token`` from :meth:`issue_challenge` and the typed
        ``response`` (or ``token=None`` and a temporary passcode)."""
        result = self.verify_batch([username], [token], [response], access=access)
        device = int(result.device_ids[0])
        return Verdict(result[0], device or None)

    def activate(self, username: str, token: str, response: str) -> Verdict:
        """Activates a PENDING device (or online card) by answering an activation
        challenge with it; a permanent device's activation ends temporary credentials."""
        result = self.verify_batch([username], [token], [response], purpose=Purpose.ACTIVATION)
        return Verdict(result[0], int(result.device_ids[0]) or None)

    def lockout_status(self, username: str) -> LockoutStatus:
        with self._write() as tx:
            user = self._user(username)
            failures = tx.store.failures([user.id]).get(user.id, [])
        until = locked_until(failures)
        now = self.clock.now()
        return LockoutStatus(len(failures), until if until is not None and now < until else None)

    def verify_batch(
        self,
        usernames: Sequence[str],
        tokens: Sequence[str | None],
        responses: Sequence[str],
        *,
        access: str = Access.TRADING,
        purpose: int = Purpose.LOGIN,
        wait: bool = True,
    ) -> BatchResult:
        """Verifies many attempts (mixed users, devices and methods) in input order.

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
        if access not in Access.ALL:
            raise InvalidInputError("access", f"must be one of {', '.join(Access.ALL)}")
        outcome = np.full(n, 255, dtype=np.uint8)
        device_ids = np.zeros(n, dtype=np.uint64)
        if n == 0:
            return BatchResult(outcome, device_ids)

        def checked(now: float) -> _Plan:
            outcome.fill(255)
            device_ids.fill(0)
            plan = _Plan(self, usernames, tokens, responses, access, purpose, now, outcome)
            plan.resolve(device_ids)
            plan.evaluate()
            return plan

        if not self._lock.acquire(blocking=wait):
            raise WriterBusyError
        try:
            plan, seen = None, None
            if wait and n >= PRECHECK_MIN_ITEMS:
                self._catch_up()
                plan, seen = checked(self.clock.now()), self._directory.generation
            with self._write(wait=wait) as tx:
                if (
                    plan is None
                    or self._directory.generation != seen
                    or self.clock.now() - plan.now > PRECHECK_MAX_AGE
                ):
                    plan = checked(self.clock.now())
                now = plan.now
                plan.settle(tx.store)
                if now >= self._next_purge:
                    # A consumed challenge past its expiry can never be presented again
                    # (the token is refused as expired first), so its row is dead weight.
                    tx.store.purge_consumed(now - PURGE_MARGIN)
                    self._next_purge = now + PURGE_INTERVAL
        finally:
            self._lock.release()
        return BatchResult(outcome, device_ids)


def _challenge_value(method: str) -> int:
    """What a token carries as its challenge: six random digits (OCRA, SMS), or two
    different card index numbers from 1 to CARD_INDICES (``first << 16 | second``)."""
    if method == "card":
        first = secrets.randbelow(CARD_INDICES) + 1
        second = secrets.randbelow(CARD_INDICES - 1) + 1
        second += second >= first  # two different index numbers
        return (first << 16) | second
    return secrets.randbelow(1_000_000)


def _limit_rank(limits: WithdrawalLimits) -> tuple[float, float]:
    def value(x: int | None) -> float:
        return float("inf") if x is None else float(x)

    return (value(limits.per_day), value(limits.per_five_days))


def _pin_hash(device_type: DeviceType, pin: str | None, algorithm: str) -> bytes:
    if pin is None:
        raise InvalidInputError("pin", "required by this device's suite")
    if not isinstance(pin, str):
        raise InvalidInputTypeError("pin", "must be a str")
    if device_type is DeviceType.DSC_PLUS:
        if not re.fullmatch(r"[0-9]{4}", pin):
            raise InvalidInputError("pin", "a DSC+ PIN is exactly 4 digits")
    elif not re.fullmatch(r"[\x21-\x7e]{4,6}", pin):
        raise InvalidInputError(
            "pin", "an IB Key PIN is 4 to 6 letters, digits or special characters"
        )
    return hashlib.new(algorithm, pin.encode()).digest()


def _serial(device_type: DeviceType) -> str:
    prefix = {
        DeviceType.ONLINE_CARD: "OC",
        DeviceType.TEMPORARY_PASSCODE: "TP",
        DeviceType.SMS: "SM",
    }.get(device_type, device_type.value[:2].upper())
    return f"{prefix}-{''.join(secrets.choice(PASSCODE_ALPHABET) for _ in range(8))}"


class _Tx:
    """A store write transaction that first brings the directory up to date."""

    def __init__(self, service: SecureLogin, *, wait: bool = True) -> None:
        self._service = service
        self._wait = wait
        self._cm: Any = None
        self.store: Any = None

    def __enter__(self) -> _Tx:
        if not self._service._lock.acquire(blocking=self._wait):
            raise WriterBusyError
        try:
            self._cm = self._service.store.write(wait=self._wait)
            self.store = self._cm.__enter__()
            directory = self._service._directory
            if not self._wait and directory.slow_to_refresh(self.store):
                # A caller that must not wait (a server's event loop) leaves a reload of
                # the directory (seconds at a million devices) to one that may.
                self._cm.__exit__(WriterBusyError, WriterBusyError(), None)
                self._cm = None
                raise WriterBusyError
            directory.refresh(self.store)
        except BaseException:
            if self._cm is not None and self.store is not None:
                # Roll back (not commit) what was opened, and reload the directory next time.
                self._cm.__exit__(*sys.exc_info())
                self._service._directory.generation = -1
            self._service._lock.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._cm.__exit__(*exc)
        finally:
            if exc[0] is not None:
                # A failed transaction may have left the directory ahead of the store.
                self._service._directory.generation = -1
            self._service._lock.release()


_OK, _WRONG, _MALFORMED = 0, 1, 2


class _Plan:
    """One verify_batch call, step by step, over numpy columns."""

    def __init__(
        self,
        service: SecureLogin,
        usernames: Sequence[str],
        tokens: Sequence[str | None],
        responses: Sequence[str],
        access: str,
        purpose: int,
        now: float,
        outcome: npt.NDArray[np.uint8],
    ) -> None:
        self.s = service
        self.usernames = usernames
        self.tokens = tokens
        self.responses = responses
        self.access = access
        self.purpose = purpose
        self.now = now
        self.out = outcome
        self.n = len(usernames)
        self.raw = np.full(self.n, 255, dtype=np.uint8)
        self.user_ids = np.zeros(self.n, dtype=np.int64)
        self.challenge_ids = np.zeros(self.n, dtype=np.uint64)
        self.devices: list[_DeviceEntry | None] = [None] * self.n
        self.challenges = np.zeros(self.n, dtype=np.uint32)
        self.scope_limited = np.zeros(self.n, dtype=bool)
        self.has_token = np.zeros(self.n, dtype=bool)
        self.fast = np.zeros(self.n, dtype=bool)
        self.dev_i = np.zeros(self.n, dtype=np.intp)

    def _set(self, mask: npt.NDArray[np.bool_], value: LoginOutcome) -> None:
        self.out[mask & (self.out == 255)] = value

    def resolve(self, device_ids: npt.NDArray[np.uint64]) -> None:
        d = self.s._directory
        # Username -> user id for the whole batch in one native call (-1: unknown).
        names = self.usernames if isinstance(self.usernames, list) else list(self.usernames)
        self.user_ids = d.names.lookup(names)
        for i in np.flatnonzero(self.user_ids < 0).tolist():
            name = self.usernames[i]
            ok_name = isinstance(name, str) and _USERNAME.fullmatch(name)
            self.out[i] = LoginOutcome.UNKNOWN_USER if ok_name else LoginOutcome.INVALID_USERNAME
        if d.closed:
            closed = np.isin(self.user_ids, np.fromiter(d.closed, np.int64))
            self.out[closed & (self.out == 255)] = LoginOutcome.ACCOUNT_CLOSED
        # Challenge tokens, opened and checked by the kernel in one call.
        tokens = self.tokens if isinstance(self.tokens, list) else list(self.tokens)
        if set(map(type, tokens)) <= {str}:  # the usual batch: every item has its token
            has_token, texts = np.ones(self.n, dtype=bool), tokens
        else:
            has_token = np.fromiter((t is not None for t in tokens), bool, self.n)
            texts = [t if isinstance(t, str) else "" for t in tokens]
        opened = self.s._tokens.open_batch(texts, int(self.now), threads=self.s.threads)
        status = opened["status"]
        self._set(has_token & (status == 5), LoginOutcome.EXPIRED)
        self._set(has_token & (status != 0), LoginOutcome.CHALLENGE_INVALID)
        bound = (opened["user_id"].astype(np.int64) == self.user_ids) & (
            opened["purpose"] == self.purpose
        )
        self._set(has_token & ~bound, LoginOutcome.CHALLENGE_INVALID)
        self.challenge_ids = opened["challenge_id"]
        self.challenges = opened["challenge"]
        self.has_token = has_token
        cols = d.columns
        dev = opened["device_id"]
        in_range = dev < len(cols.owner)
        self.dev_i = np.where(in_range, dev, 0).astype(np.intp)
        # The fast path: a login to a plain active OCRA device of this user (one owner).
        self.fast = (
            (self.out == 255)
            & has_token
            & in_range
            & (cols.owner[self.dev_i] == self.user_ids)
            & (cols.suite[self.dev_i] >= 0)
        )
        if self.purpose != Purpose.LOGIN:
            self.fast[:] = False
        device_ids[self.fast] = dev[self.fast]
        token_devices = dev.tolist()
        now = self.now
        login = self.purpose == Purpose.LOGIN
        wanted = DeviceState.ACTIVE if login else DeviceState.PENDING
        devices_get = d.devices.get
        uid_list = self.user_ids.tolist()
        has_token_list = has_token.tolist()
        entries = self.devices
        for i in np.flatnonzero((self.out == 255) & ~self.fast).tolist():
            uid = uid_list[i]
            if has_token_list[i]:
                entry = devices_get(token_devices[i])
                if entry is None or uid not in entry.owners:
                    self.out[i] = LoginOutcome.NO_SUCH_DEVICE
                    continue
            else:
                entry = self._passcode_of(uid)
                if entry is None:
                    self.out[i] = LoginOutcome.NO_SUCH_DEVICE
                    continue
            entries[i] = entry
            device_ids[i] = entry.row.id
            if login and entry.plain_active:
                continue  # the common case: an active challenge/response device
            if self.s._effective_state(entry, now) is not wanted:
                self.out[i] = LoginOutcome.DEVICE_NOT_ACTIVE
            elif entry.row.expires_at is not None and now >= entry.row.expires_at:
                self.out[i] = LoginOutcome.EXPIRED
            elif entry.type is DeviceType.TEMPORARY_PASSCODE:
                if has_token_list[i]:
                    self.out[i] = LoginOutcome.CHALLENGE_INVALID
                else:
                    in_full = now < entry.row.issued_at + PASSCODE_FULL_ACCESS
                    self.scope_limited[i] = not in_full and self.access != Access.ONLINE_CARD
            elif not has_token_list[i]:
                self.out[i] = LoginOutcome.CHALLENGE_INVALID

    def _passcode_of(self, user_id: int) -> _DeviceEntry | None:
        """The user's live temporary passcode (items without a token answer with it)."""
        d = self.s._directory
        for device_id in d.live_temporary(user_id, (DeviceType.TEMPORARY_PASSCODE,)):
            if d.devices[device_id].row.state == DeviceState.ACTIVE.value:
                return d.devices[device_id]
        return None

    def _responses(self, rows: npt.NDArray[np.intp]) -> tuple[npt.NDArray[np.intp], list[Any]]:
        """The responses of ``rows``; a response that is not str or bytes is MALFORMED."""
        responses = [self.responses[i] for i in rows.tolist()]
        typed = [isinstance(r, str | bytes) for r in responses]
        if all(typed):
            return rows, responses
        self.raw[rows[~np.asarray(typed)]] = _MALFORMED
        return rows[np.asarray(typed)], [r for r, t in zip(responses, typed, strict=True) if t]

    def _ocra(
        self, suite: str, rows: npt.NDArray[np.intp], keys: Any, pins: Any, responses: list[Any]
    ) -> None:
        if len(rows):
            self.raw[rows] = _native.ocra_verify_batch(
                suite,
                keys,
                _six_digits(self.challenges[rows]),
                responses,
                pin_hashes=pins,
                threads=self.s.threads,
            )

    def evaluate(self) -> None:
        """Kernel work: one batch call per OCRA suite and per method."""
        cols = self.s._directory.columns
        fast_rows = np.flatnonzero(self.fast & (self.out == 255))
        suite_of = cols.suite[self.dev_i[fast_rows]]
        for g in np.unique(suite_of).tolist():
            rows = fast_rows[suite_of == g]
            suite = cols.suites[g]
            pin_algorithm = ocra.parse_suite(suite).pin_algorithm
            rows, responses = self._responses(rows)
            dev = self.dev_i[rows]
            pins = None
            if pin_algorithm is not None:
                width = hashlib.new(pin_algorithm).digest_size
                pins = np.ascontiguousarray(cols.pins[dev, :width])
            self._ocra(suite, rows, cols.keys[dev], pins, responses)
        slow = np.flatnonzero(~self.fast & (self.out == 255)).tolist()
        groups: dict[tuple[str, str | None], list[int]] = {}
        devices = self.devices
        for i in slow:
            groups.setdefault(devices[i].group, []).append(i)  # type: ignore[union-attr]
        for (method, suite), row_list in groups.items():
            rows = np.asarray(row_list, dtype=np.intp)
            if method == "ocra":
                assert suite is not None
                rows, responses = self._responses(rows)
                entries = [devices[i] for i in rows.tolist()]
                uses_pin = ocra.parse_suite(suite).pin_algorithm is not None
                self._ocra(
                    suite,
                    rows,
                    [e.row.secret for e in entries],
                    [e.row.pin_hash for e in entries] if uses_pin else None,
                    responses,
                )
                continue
            rows, responses = self._responses(rows)
            if not len(rows):
                continue
            entries = [devices[i] for i in rows.tolist()]
            if method == "card":
                result = _native.card_verify_batch(
                    [e.row.secret for e in entries],
                    self.challenges[rows],
                    responses,
                    threads=self.s.threads,
                )
            elif method == "sms":
                result, _ = _native.otp_verify_batch(
                    "hotp",
                    [self.s._sms_key] * len(rows),
                    responses,
                    self.challenge_ids[rows],
                    window=0,
                    digits=SMS_CODE_DIGITS,
                    algorithm="sha256",
                    threads=self.s.threads,
                )
            else:  # passcode: case-sensitive keyed-hash comparison, never normalized
                result = np.empty(len(rows), dtype=np.uint8)
                for k, (entry, typed) in enumerate(zip(entries, responses, strict=True)):
                    text = typed if isinstance(typed, str) else typed.decode("ascii", "replace")
                    if not _PASSCODE_SHAPE.fullmatch(text):
                        result[k] = _MALFORMED
                    else:
                        same = hmac.compare_digest(
                            self.s._passcode_hash(text),
                            entry.row.secret or b"",
                        )
                        result[k] = _OK if same else _WRONG
            self.raw[rows] = result

    def settle(self, tx: StoreTx) -> None:
        """Replay and lockout, then the durable writes, inside the batch's transaction.

        A challenge id belongs to one user (the token binds it), so users are independent.
        Users with failures on record or a wrong answer now are replayed item by item in
        input order (the lock can start mid-batch); everyone else's items are decided with
        numpy: the first use of each challenge is consumed, any later one is REPLAYED."""
        self._set((self.out == 255) & (self.raw == _MALFORMED), LoginOutcome.MALFORMED)
        evaluated = np.flatnonzero(self.out == 255)
        uids = self.user_ids[evaluated]
        wrong_users = np.unique(uids[self.raw[evaluated] == _WRONG])
        on_record = tx.failures(uids.tolist())  # duplicates are harmless in the query
        sequential_users = set(wrong_users.tolist()) | set(on_record)
        has_token = self.has_token
        token_rows = evaluated[has_token[evaluated]]
        already = tx.consumed(self.challenge_ids[token_rows].tolist())
        expiry = self.now + self.s.challenge_ttl + 1
        if sequential_users:
            in_sequence = np.isin(uids, np.fromiter(sequential_users, np.int64))
        else:
            in_sequence = np.zeros(len(evaluated), dtype=bool)
        # Everyone else: every answer is right (or a passcode out of scope).
        fast = evaluated[~in_sequence]
        fast_tokens = fast[has_token[fast]]
        cids = self.challenge_ids[fast_tokens]
        first = _first_occurrences(cids)
        if already:
            first &= ~np.isin(cids, np.fromiter(already, np.uint64))
        self.out[fast_tokens[~first]] = LoginOutcome.REPLAYED
        decided = np.setdiff1d(fast, fast_tokens[~first], assume_unique=True)
        self.out[decided] = np.where(
            self.scope_limited[decided], LoginOutcome.SCOPE_LIMITED, LoginOutcome.OK
        )
        consumed: list[int] = cids[first].tolist()
        # Users whose count matters, one item at a time.
        seen = set(already)
        failures = {u: list(on_record.get(u, [])) for u in sequential_users}
        for i in evaluated[in_sequence].tolist():
            uid = int(self.user_ids[i])
            if _is_locked(failures[uid], self.now):
                self.out[i] = LoginOutcome.LOCKED
                continue
            if has_token[i]:
                cid = int(self.challenge_ids[i])
                if cid in seen:
                    self.out[i] = LoginOutcome.REPLAYED
                    continue
                seen.add(cid)
                consumed.append(cid)
            if self.raw[i] == _OK:
                self.out[i] = (
                    LoginOutcome.SCOPE_LIMITED if self.scope_limited[i] else LoginOutcome.OK
                )
                failures[uid] = []
            else:
                self.out[i] = LoginOutcome.WRONG
                # Sorted: another process may have recorded a failure a moment "later".
                failures[uid] = sorted([*failures[uid], self.now])[-LOCKOUT_FAILURES:]
        tx.consume(consumed, expiry)
        tx.put_failures({u: t for u, t in failures.items() if t})
        tx.clear_failures([u for u, t in failures.items() if not t and u in on_record])
        if self.purpose == Purpose.ACTIVATION:
            self._activate(tx)

    def _activate(self, tx: StoreTx) -> None:
        for i in np.flatnonzero(self.out == LoginOutcome.OK).tolist():
            entry = self.devices[i]
            assert entry is not None
            tx.update_device(entry.row.id, state=DeviceState.ACTIVE.value, activated_at=self.now)
            if entry.row.replaces is not None:
                tx.update_device(entry.row.replaces, state=DeviceState.REPLACED.value)
            if not entry.type.is_temporary:
                for device_id in self.s._directory.live_temporary(int(self.user_ids[i])):
                    tx.update_device(device_id, state=DeviceState.REVOKED.value)


def _first_occurrences(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """True at the first occurrence of each value, in input order (a stable sort: cheaper
    than numpy's hash-based unique for a batch that rarely repeats a value)."""
    first = np.ones(len(values), dtype=bool)
    if len(values) > 1:
        order = np.argsort(values, kind="stable")
        ranked = values[order]
        first[order[1:][ranked[1:] == ranked[:-1]]] = False
    return first


def _six_digits(values: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint8]:
    """Challenges as an (N, 6) matrix of ASCII digits, without a Python string per item."""
    powers = 10 ** np.arange(5, -1, -1, dtype=np.uint32)
    digits = (values.astype(np.uint32)[:, None] // powers) % 10 + ord("0")
    return np.ascontiguousarray(digits, dtype=np.uint8)
