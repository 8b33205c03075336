"""What every domain service shares: the store, the clock, this process's directory, the
server keys and the write transaction that keeps the directory exact.

:class:`LoginContext` is the small object that :class:`~sls_core.login.SecureLogin`,
:class:`~sls_core.ibkey.IbKey` and the decision pipeline use instead of one another's
private members. It answers lookups (user by name, device of a user, a device's state now)
and hands out challenge ids; it decides no rule itself (those are in :mod:`sls_core.rules`)
and never logs a secret, PIN or code.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
import threading
from collections.abc import Callable
from typing import Any

from sls_core.challenge import TokenKeys
from sls_core.clock import Clock
from sls_core.devices import Device, DeviceState, DeviceType
from sls_core.errors import InvalidInputError, NoSuchItemError
from sls_core.login.directory import DeviceEntry, Directory
from sls_core.rules import access, lifecycle, lockout, quotas
from sls_core.rules.usernames import validate_username
from sls_core.sms import SmsSender
from sls_core.store import Store, StoreTx, UserRow, WriterBusyError

__all__ = ["LoginContext", "WriteTx"]

#: Token key ids: 1 for every purpose but step-up, whose tokens are signed with a key
#: derived per task, so an answer for one task never opens for another.
_TOKEN_KEY_ID = 1
_LIVE = (DeviceState.ACTIVE.value, DeviceState.PENDING.value)


class LoginContext:
    """The shared state of one process's domain services. Thread-safe through ``lock``."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        sms_sender: SmsSender | None,
        challenge_ttl: float,
        threads: int | None,
        auto_activation_delay: float = lifecycle.AUTO_ACTIVATION_DELAY,
    ) -> None:
        self.store = store
        self.auto_activation_delay = lifecycle.check_auto_activation_delay(auto_activation_delay)
        self.limits = dict(quotas.DEFAULT_LIMITS)
        self.clock = clock
        self.sms_sender = sms_sender
        self.challenge_ttl = challenge_ttl
        self.threads = threads
        self.directory = Directory()
        self.lock = threading.RLock()
        self._ids: list[int] = []
        #: The transaction that reserved ``_ids``, until it commits.
        self._reserved_in: StoreTx | None = None
        self.next_purge = 0.0
        with store.write() as tx:
            self._token_key = tx.server_secret("token_key.1", lambda: secrets.token_bytes(32))
            self.pepper = tx.server_secret("passcode_pepper", lambda: secrets.token_bytes(32))
            self.sms_key = tx.server_secret("sms_key", lambda: secrets.token_bytes(32))
        self.tokens = TokenKeys({_TOKEN_KEY_ID: self._token_key}, active=_TOKEN_KEY_ID)
        self._task_tokens: dict[str, TokenKeys] = {}

    # -- transactions ----------------------------------------------------------------------
    def write(self, *, wait: bool = True) -> WriteTx:
        """A store write transaction with the directory brought up to date first."""
        return WriteTx(self, wait=wait)

    def catch_up(self) -> None:
        """The directory brought up to date from a read snapshot (no write lock)."""
        with self.lock, self.store.read() as tx:
            try:
                self.directory.refresh(tx)
            except BaseException:
                self.directory.generation = -1  # half loaded: the next transaction reloads
                raise

    # -- keys ------------------------------------------------------------------------------
    def tokens_for(self, task: str | None) -> TokenKeys:
        """The token keys of a purpose: login-like tokens share one key; a step-up token's
        key is derived from its task name, binding the answer to that task."""
        if task is None:
            return self.tokens
        keys = self._task_tokens.get(task)
        if keys is None:
            derived = hmac.new(self._token_key, b"step-up:" + task.encode(), "sha256").digest()
            keys = TokenKeys({_TOKEN_KEY_ID: derived}, active=_TOKEN_KEY_ID)
            if len(self._task_tokens) < 1024:  # tasks are a short fixed list; bound anyway
                self._task_tokens[task] = keys
        return keys

    def passcode_hash(self, passcode: str) -> bytes:
        return hmac.new(self.pepper, passcode.encode(), hashlib.sha256).digest()

    def recovery_hash(self, user_id: int, pin: str) -> bytes:
        # Keyed with the server pepper and bound to the user: a stolen database alone
        # does not let anyone test the 4-6 character PINs offline.
        message = b"recovery:%d:" % user_id + pin.encode()
        return hmac.new(self.pepper, message, hashlib.sha256).digest()

    def next_challenge_id(self, tx: StoreTx) -> int:
        """A fresh id for a challenge or push (ids are reserved 1024 at a time)."""
        if not self._ids:
            first = tx.reserve("challenge_id", 1024)
            self._ids = list(range(first + 1023, first - 1, -1))
            self._reserved_in = tx
        return self._ids.pop()

    def end_reservation(self, tx: WriteTx, *, committed: bool) -> None:
        """At the end of ``tx``: a rolled-back reservation is void (another process may get
        the same ids), so the ids left of it are dropped."""
        if self._reserved_in is tx.store and not committed:
            self._ids = []
        self._reserved_in = None

    # -- lookups (call inside a transaction) -------------------------------------------------
    def user(self, username: object, *, field: str = "username") -> UserRow:
        """The user named ``username``; errors name ``field`` (the request's own name for
        it, when a request carries several usernames)."""
        try:
            name = validate_username(username)
        except InvalidInputError as e:
            raise type(e)(field, e.rule) from None
        user = self.directory.user_by_name.get(name)
        if user is None:
            raise NoSuchItemError(field, "no such user", "USER_NOT_FOUND")
        return user

    def device_of(self, user: UserRow, device_id: int) -> DeviceEntry:
        entry = self.directory.devices.get(device_id)
        if entry is None or user.id not in entry.owners:
            raise NoSuchItemError("device_id", "the user has no such device", "DEVICE_NOT_FOUND")
        return entry

    def devices_of(self, user_id: int) -> list[DeviceEntry]:
        return [
            self.directory.devices[i] for i in sorted(self.directory.devices_of.get(user_id, ()))
        ]

    def effective_state(self, entry: DeviceEntry, now: float) -> DeviceState:
        """The device's state now, with the timed rules of the life cycle applied."""
        replaced = any(
            self.effective_state(self.directory.devices[newer], now) is DeviceState.ACTIVE
            for newer in self.directory.replaced_by.get(entry.row.id, ())
        )
        return lifecycle.effective_state(
            DeviceState(entry.row.state),
            entry.row.shipped_at,
            now,
            replaced,
            self.auto_activation_delay,
        )

    def public(self, entry: DeviceEntry, now: float) -> Device:
        r = entry.row
        return Device(
            id=r.id,
            type=entry.type,
            state=self.effective_state(entry, now),
            serial=r.serial,
            suite=r.suite,
            issued_at=r.issued_at,
            shipped_at=r.shipped_at,
            activated_at=r.activated_at,
            expires_at=r.expires_at,
            replaces=r.replaces,
            phone=r.phone,
        )

    def choose(
        self, user: UserRow, eligible: Callable[[DeviceEntry], bool], what: str
    ) -> DeviceEntry:
        """M2FS: among the user's ``eligible`` devices, their chosen one, else the only one;
        several with none chosen is an error asking to choose, never "all must answer"."""
        candidates = [e for e in self.devices_of(user.id) if eligible(e)]
        preferred = [c for c in candidates if c.row.id == user.preferred_device]
        if preferred:
            return preferred[0]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise InvalidInputError("device_id", f"the user has no {what}")
        raise InvalidInputError("device_id", f"the user has several {what}s: choose one (M2FS)")

    def is_locked(self, tx: StoreTx, user_id: int, now: float) -> bool:
        return lockout.is_locked(tx.failures([user_id]).get(user_id, []), now)

    def meter(self, tx: StoreTx, what: quotas.Metered, user_id: int) -> None:
        """Counts one ``what`` for the user, or raises :class:`QuotaExceededError` (nothing
        counted) when the user is at the limit (SLS abuse limits, our choice)."""
        limit = self.limits[what]
        now = self.clock.now()
        wait = quotas.retry_after(tx.metered(what.value, user_id, now - limit.window), limit, now)
        if wait is not None:
            raise quotas.QuotaExceededError(what, limit, wait)
        tx.meter(what.value, user_id, now)

    def refuse_issue(self, tx: StoreTx, user: UserRow, what: str) -> None:
        """SLS-RULES: nothing is issued for a closed account, nor for a locked user."""
        access.issue_refusal(
            closed=user.closed, locked=self.is_locked(tx, user.id, self.clock.now()), what=what
        )

    def end_sms(self, tx: StoreTx, user_id: int) -> None:
        """Activating IB Key removes the user's SMS device (SLS-RULES)."""
        for entry in self.devices_of(user_id):
            if entry.type is DeviceType.SMS and entry.row.state in _LIVE:
                tx.update_device(entry.row.id, state=DeviceState.REVOKED.value)

    def ended_by_auto_activation(self, user_id: int, issued_at: float, now: float) -> bool:
        """Whether a temporary credential issued at ``issued_at`` was ended by one of the
        user's shipped devices activating itself since (auto-activation ends it too)."""
        return any(
            e.row.state == DeviceState.PENDING.value
            and e.row.shipped_at is not None
            and lifecycle.auto_activated(e.row.shipped_at, now, self.auto_activation_delay)
            and e.row.shipped_at + self.auto_activation_delay > issued_at
            and not e.type.is_temporary
            for e in self.devices_of(user_id)
        )

    def end_temporary(self, tx: StoreTx, user_id: int) -> None:
        """Ends the user's temporary passcode and online card (SLS-RULES: activation,
        reactivation and auto-activation of a permanent device end them)."""
        for device_id in self.directory.live_temporary(user_id):
            tx.update_device(device_id, state=DeviceState.REVOKED.value)


class WriteTx:
    """A store write transaction that first brings the directory up to date."""

    def __init__(self, context: LoginContext, *, wait: bool = True) -> None:
        self._context = context
        self._wait = wait
        self._cm: Any = None
        self.store: Any = None

    def __enter__(self) -> WriteTx:
        context = self._context
        if not context.lock.acquire(blocking=self._wait):
            raise WriterBusyError
        try:
            self._cm = context.store.write(wait=self._wait)
            self.store = self._cm.__enter__()
            if not self._wait and context.directory.slow_to_refresh(self.store):
                # A caller that must not wait (a server's event loop) leaves a reload of
                # the directory (seconds at a million devices) to one that may.
                self._cm.__exit__(WriterBusyError, WriterBusyError(), None)
                self._cm = None
                raise WriterBusyError
            context.directory.refresh(self.store)
        except BaseException:
            try:
                if self._cm is not None and self.store is not None:
                    # Roll back (not commit) what was opened; reload the directory next time.
                    context.directory.generation = -1
                    self._cm.__exit__(*sys.exc_info())
            finally:
                # Even when the rollback itself fails (a connection lost with the database):
                # a lock left held here would hang every later write of this process.
                context.lock.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        committed = exc[0] is None
        try:
            self._cm.__exit__(*exc)
        except BaseException:
            committed = False  # the COMMIT itself failed: nothing of the transaction stays
            raise
        finally:
            # Rolled back, the directory (read at the start, never written by the
            # transaction) still matches the store: no reload. Only ids reserved in the
            # transaction are void.
            self._context.end_reservation(self, committed=committed)
            self._context.lock.release()
