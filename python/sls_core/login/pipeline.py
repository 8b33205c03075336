"""The one decision point: every attempt of every kind is decided here, in three steps.

1. **resolve**: who (user id), with what (the device, at the moment of the answer), for
   what (purpose, task) and under which replay key (challenge id), for a whole batch;
2. **evaluate**: the kernel checks the answers, one batch call per method and suite
   (OCRA, code card, SMS, passcode, push signature, recovery PIN);
3. **settle**: inside the store transaction, the account rules (closed, locked), replay
   and lockout, then the durable writes and each kind's effect on success.

The kinds: challenge/response and code-card answers, SMS codes and temporary passcodes
(:class:`ResponsePlan`, all purposes: login, activation, reactivation, step-up), IB Key
push approvals and declines (:class:`PushPlan`), recovery PINs (:class:`RecoveryPlan`),
IB Key activation offers (:class:`OfferPlan`), approved pushes redeemed by a login
(:class:`PushRedemptionPlan`) and wrong passwords reported by gateways
(:class:`PasswordFailurePlan`). Each kind only resolves and evaluates; the gates of
:mod:`sls_core.rules.access` and the lockout of :mod:`sls_core.rules.lockout` are applied
by :class:`Plan` for all of them, once. Nothing here logs a secret, PIN or code.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sls_core import card, hotp, ocra, push
from sls_core.challenge import TokenStatus
from sls_core.devices import DeviceState, DeviceType
from sls_core.errors import InvalidInputError
from sls_core.login.context import LoginContext
from sls_core.login.directory import DeviceEntry
from sls_core.outcome import LoginOutcome, Outcome
from sls_core.rules import access, lifecycle, lockout
from sls_core.rules.usernames import unknown_username_outcome
from sls_core.store import PushRow, StoreTx
from sls_core.values import Purpose, PushDecision

__all__ = [
    "SMS_CODE_DIGITS",
    "OfferPlan",
    "PasswordFailurePlan",
    "Plan",
    "PushPlan",
    "PushRedemptionPlan",
    "RecoveryPlan",
    "ResponsePlan",
    "redemption_key",
]

SMS_CODE_DIGITS = 6
#: Raw verdicts of the evaluate step: the kernel's Outcome values.
# Plain ints, not the enum members: numpy comparing an array or scalar with an IntEnum
# member probes the enum class for its array protocol (``__array_ufunc__`` ...), which an
# Enum class answers through its slow ``__getattr__``: 10% of a 10k batch's time.
_OK, _WRONG, _MALFORMED = int(Outcome.OK), int(Outcome.WRONG), int(Outcome.MALFORMED)
_EXPIRED_TOKEN, _VALID_TOKEN = int(TokenStatus.EXPIRED), int(TokenStatus.VALID)
_LOCKED, _REPLAYED = int(LoginOutcome.LOCKED), int(LoginOutcome.REPLAYED)
#: Not decided yet (out) / not evaluated yet (raw).
_OPEN = 255
#: Each verdict the in-order settle gives: its code, and what it does to the run of
#: failures as the lockout rules say (ends the run, counts as a failure). Looked up per
#: item instead of asking the rules (and the enum) again for each of a batch's items.
_SETTLED: Final = {
    o: (int(o), lockout.ends_failure_run(o), lockout.counts_as_failure(o))
    for o in (LoginOutcome.OK, LoginOutcome.SCOPE_LIMITED, LoginOutcome.WRONG)
}
#: Temporary credentials that the activation of a permanent device ends (SLS-RULES).
_ENDED_BY_ACTIVATION = (DeviceType.TEMPORARY_PASSCODE, DeviceType.ONLINE_CARD)
#: Push redemptions are replay keys from here on (see :func:`redemption_key`).
_REDEMPTION_KEYS = 1 << 62
#: A batch with at most this many items to settle replays all of them in order (see
#: ``Plan.settle``); other small-input branches of the pipeline use it too.
FEW_ITEMS = 32
#: A settle effect: what a decided item writes, given the transaction and its outcome.
Effect = Callable[[StoreTx, LoginOutcome], None]


class Plan:
    """The columns every kind fills, and the steps every kind shares: the account gate,
    the device gate, and settle (replay, lockout, effects)."""

    def __init__(self, ctx: LoginContext, n: int, purpose: Purpose, now: float) -> None:
        self.ctx = ctx
        self.n = n
        self.purpose = purpose
        self.now = now
        self.out = _column(n, _OPEN, np.uint8)
        self.raw = _column(n, _OPEN, np.uint8)
        self.user_ids = _column(n, -1, np.int64)
        self.device_ids = np.zeros(n, dtype=np.uint64)
        #: Items with a replay key (a challenge id, consumed once across every process).
        self.has_token = np.zeros(n, dtype=bool)
        self.challenge_ids = np.zeros(n, dtype=np.uint64)
        self.devices: list[DeviceEntry | None] = [None] * n
        #: A passcode past its full-access days: a right answer is SCOPE_LIMITED.
        self.scope_limited = np.zeros(n, dtype=bool)
        #: A right answer that neither succeeds nor fails (a declined push, an activation
        #: offer taken up): its outcome, else 255. It does not end the run of failures.
        self.neutral = _column(n, _OPEN, np.uint8)
        self.effects: dict[int, Effect] = {}
        #: A wrong answer leaves the replay key unused (a forged push signature must not
        #: burn the holder's push); elsewhere any answer uses its challenge up.
        self.keep_on_wrong = np.zeros(n, dtype=bool)

    def _set(self, mask: npt.NDArray[np.bool_], value: LoginOutcome) -> None:
        self.out[mask & (self.out == _OPEN)] = value

    def resolve(self) -> None:
        """Fills who, with which device, under which replay key; refuses what it can."""
        raise NotImplementedError

    def evaluate(self) -> None:
        """Fills ``raw`` for the items still open: the kernel's check of each answer."""
        raise NotImplementedError

    def decide(self, tx: StoreTx) -> None:
        """All three steps at once, inside ``tx`` (a kind with nothing to pre-check)."""
        self.resolve()
        self.evaluate()
        self.settle(tx)

    def require_device(self, i: int, device_id: int) -> None:
        """Item ``i`` must answer with ``device_id`` (an answer from another device of the
        user is refused as CHALLENGE_INVALID, before it could count)."""
        if self.out[i] == _OPEN and int(self.device_ids[i]) != device_id:
            self.out[i] = LoginOutcome.CHALLENGE_INVALID

    # -- shared gates -------------------------------------------------------------------------
    def gate_users(self, names: Sequence[object]) -> None:
        """Unknown usernames (bad characters or simply no such user) and closed accounts."""
        for i in _rows(self.user_ids < 0).tolist():
            if self.out[i] == _OPEN:
                self.out[i] = unknown_username_outcome(names[i])
        closed = self.ctx.directory.closed
        if closed:
            if self.n > FEW_ITEMS:
                is_closed = np.isin(self.user_ids, np.fromiter(closed, np.int64))
            else:  # a few users: set lookups, not numpy's sort of every closed account
                is_closed = np.array([u in closed for u in self.user_ids.tolist()], dtype=bool)
            self._set(is_closed, LoginOutcome.ACCOUNT_CLOSED)  # closed before anything else

    def gate_device(self, i: int, entry: DeviceEntry, wanted: DeviceState) -> bool:
        """The device answers only in the state the purpose needs, at the moment of the
        answer (revoked, suspended, replaced, pending or expired: refused)."""
        state = self.ctx.effective_state(entry, self.now)
        refused = access.device_refusal(state, wanted, entry.row.expires_at, self.now)
        if refused is not None:
            self.out[i] = refused
            return False
        return True

    # -- settle -------------------------------------------------------------------------------
    def settle(self, tx: StoreTx) -> None:
        """Replay and lockout, then the durable writes, inside the batch's transaction.

        A challenge id belongs to one user (the token binds it), so users are independent.
        Users with failures on record or a wrong answer now are replayed item by item in
        input order (the lock can start mid-batch); everyone else's items are decided with
        numpy: the first use of each challenge is consumed, any later one is REPLAYED.

        Both groups consume optimistically (:meth:`StoreTx.try_consume`: the replay check
        and the insert are one write when nothing is replayed, the usual batch); only when
        the store names replays is a group decided again knowing them.

        A few items (``FEW_ITEMS`` or fewer, as a server's coalesced single calls come) are
        all replayed in order: the same verdicts and writes (for a user with no failure on
        record and only right answers, the order changes nothing), without the fixed cost
        of the numpy steps, which is most of such a batch's time."""
        self._set((self.out == _OPEN) & (self.raw == _MALFORMED), LoginOutcome.MALFORMED)
        evaluated = _rows(self.out == _OPEN)
        uids = self.user_ids[evaluated]
        on_record = tx.failures(uids)  # the store looks each user up once
        expiry = self.now + self.ctx.challenge_ttl + 1
        if len(evaluated) > FEW_ITEMS:
            in_order = self._settle_in_bulk(tx, evaluated, uids, on_record, expiry)
        else:
            in_order = evaluated
        failures: dict[int, list[float]] = {}
        if len(in_order):
            consumed, failures = self._settle_in_order(in_order, on_record, set())
            already = tx.try_consume(consumed, expiry)
            if already:  # replays among them: decided again, knowing which
                consumed, failures = self._settle_in_order(in_order, on_record, already)
                tx.consume(consumed, expiry)
        recorded = {u: t for u, t in failures.items() if t}
        if recorded:
            tx.put_failures(recorded)
        cleared = [u for u, t in failures.items() if not t and u in on_record]
        if cleared:
            tx.clear_failures(cleared)
        for i, effect in self.effects.items():
            effect(tx, LoginOutcome(int(self.out[i])))

    def _settle_in_bulk(
        self,
        tx: StoreTx,
        evaluated: npt.NDArray[np.intp],
        uids: npt.NDArray[np.int64],
        on_record: dict[int, list[float]],
        expiry: float,
    ) -> npt.NDArray[np.intp]:
        """Decides, with numpy, the items of users whose count cannot matter (no failure on
        record, no wrong answer now); returns the other items, to be replayed in order."""
        # Anything but a right answer is counted in order (a wrong one; never an unchecked one).
        sequential_users = uids[self.raw[evaluated] != _OK]
        if on_record:
            recorded = np.fromiter(on_record, np.int64, len(on_record))
            sequential_users = np.concatenate((sequential_users, recorded))
        if len(sequential_users):
            in_sequence = np.isin(uids, sequential_users)
        else:
            in_sequence = np.zeros(len(evaluated), dtype=bool)
        # Everyone else: every answer is right (or a passcode out of scope).
        fast = evaluated[~in_sequence]
        fast_tokens = fast[self.has_token[fast]]
        cids = self.challenge_ids[fast_tokens]
        first, distinct = _first_occurrences(cids)
        already = tx.try_consume(distinct, expiry)
        if already:
            first &= ~np.isin(cids, np.fromiter(already, np.uint64, len(already)))
            tx.consume(cids[first], expiry)
        self.out[fast_tokens[~first]] = LoginOutcome.REPLAYED
        decided = fast[self.out[fast] == _OPEN]
        neutral = self.neutral[decided]
        self.out[decided] = np.where(
            neutral != _OPEN,
            neutral,
            np.where(self.scope_limited[decided], LoginOutcome.SCOPE_LIMITED, LoginOutcome.OK),
        )
        in_order: npt.NDArray[np.intp] = evaluated[in_sequence]
        return in_order

    def _settle_in_order(
        self,
        rows: npt.NDArray[np.intp],
        on_record: dict[int, list[float]],
        seen: set[int],
    ) -> tuple[list[int], dict[int, list[float]]]:
        """Decides the items of users whose count matters, one at a time in input order (a
        lock can start mid-batch), given the challenges ``seen`` consumed before. Returns
        the challenges these items consume and each such user's failure times after."""
        # Plain Python values: indexing numpy columns one item at a time costs more than
        # the rules themselves. Every item (a small batch, all of it open): whole columns.
        every = len(rows) == self.n

        def values(column: npt.NDArray[Any]) -> list[Any]:
            picked: list[Any] = (column if every else column[rows]).tolist()
            return picked

        uids = values(self.user_ids)
        tokened = values(self.has_token)
        cids = values(self.challenge_ids)
        raws = values(self.raw)
        keeps = values(self.keep_on_wrong)
        neutrals = values(self.neutral)
        scoped = values(self.scope_limited)
        seen = set(seen)
        now = self.now
        failures = {u: list(on_record.get(u, [])) for u in set(uids)}
        # Whether each user is locked: the batch has one ``now``, so it changes only when
        # the user's failures do, and is asked again only then (not once per item: a batch
        # of 100k attempts by 1k users replays most of them here).
        locked = {u: lockout.is_locked(f, now) for u, f in failures.items()}
        consumed: list[int] = []
        outcomes: list[int] = []
        for k, uid in enumerate(uids):
            if locked[uid]:
                outcomes.append(_LOCKED)
                continue
            right = raws[k] == _OK
            if tokened[k]:
                cid = cids[k]
                if cid in seen:
                    outcomes.append(_REPLAYED)
                    continue
                if right or not keeps[k]:
                    seen.add(cid)
                    consumed.append(cid)
            if right and neutrals[k] != _OPEN:
                outcomes.append(neutrals[k])  # neither a success nor a failure
                continue
            if right:
                outcome = LoginOutcome.SCOPE_LIMITED if scoped[k] else LoginOutcome.OK
            else:
                outcome = LoginOutcome.WRONG
            code, ends, counts = _SETTLED[outcome]
            outcomes.append(code)
            if ends:
                if failures[uid]:
                    failures[uid] = []
                    locked[uid] = lockout.is_locked(failures[uid], now)
            elif counts:
                failures[uid] = lockout.with_failure(failures[uid], now)
                locked[uid] = lockout.is_locked(failures[uid], now)
        self.out[rows] = outcomes
        return consumed, failures


class ResponsePlan(Plan):
    """Challenge tokens with typed answers (OCRA, code card, SMS) and temporary passcodes
    (no token), for one purpose (and one task, for step-up), over numpy columns."""

    def __init__(
        self,
        ctx: LoginContext,
        usernames: Sequence[str],
        tokens: Sequence[str | None],
        responses: Sequence[str],
        access_: str,
        purpose: Purpose,
        task: str | None,
        now: float,
    ) -> None:
        super().__init__(ctx, len(usernames), purpose, now)
        self.usernames = usernames
        self.tokens = tokens
        self.responses = responses
        self.access = access_
        self.task = task
        self.challenges = np.zeros(self.n, dtype=np.uint32)
        self.fast = np.zeros(self.n, dtype=bool)
        self.dev_i = np.zeros(self.n, dtype=np.intp)

    def resolve(self) -> None:
        d = self.ctx.directory
        # Username -> user id for the whole batch in one native call (-1: unknown).
        names = self.usernames if isinstance(self.usernames, list) else list(self.usernames)
        self.user_ids = d.names.lookup(names)
        self.gate_users(names)
        # Challenge tokens, opened and checked by the kernel in one call.
        tokens = self.tokens if isinstance(self.tokens, list) else list(self.tokens)
        every_token = set(map(type, tokens)) <= {str}
        if every_token:  # the usual batch: every item has its token
            has_token, texts = _column(self.n, True, np.bool_), tokens
        else:
            has_token = np.fromiter((t is not None for t in tokens), bool, self.n)
            texts = [t if isinstance(t, str) else "" for t in tokens]

        def with_token(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
            return mask if every_token else has_token & mask  # (no step for nothing)

        keys = self.ctx.tokens_for(self.task if self.purpose is Purpose.STEP_UP else None)
        opened = keys.open_batch(texts, int(self.now), threads=self.ctx.threads)
        status = opened["status"]
        self._set(with_token(status == _EXPIRED_TOKEN), LoginOutcome.EXPIRED)
        # A token answers only for the purpose it was issued for (login, step-up, ...).
        bound = (opened["user_id"].astype(np.int64) == self.user_ids) & (
            opened["purpose"] == int(self.purpose)
        )
        self._set(with_token((status != _VALID_TOKEN) | ~bound), LoginOutcome.CHALLENGE_INVALID)
        self.challenge_ids = opened["challenge_id"]
        self.challenges = opened["challenge"]
        self.has_token = has_token
        cols = d.columns
        dev = opened["device_id"]
        in_range = dev < len(cols.owner)
        self.dev_i = np.where(in_range, dev, 0).astype(np.intp)
        login_like = self.purpose in (Purpose.LOGIN, Purpose.STEP_UP)
        # The fast path: a plain active OCRA device of this user (one owner).
        is_open = self.out == _OPEN
        self.fast = with_token(
            is_open
            & in_range
            & (cols.owner[self.dev_i] == self.user_ids)
            & (cols.suite[self.dev_i] >= 0)
        )
        if not login_like:
            self.fast[:] = False
        self.device_ids[self.fast] = dev[self.fast]
        slow = _rows(is_open & ~self.fast).tolist()
        # The usual login batch has no slow item: no Python list of a whole column then.
        token_devices = dev.tolist() if slow else []
        devices_get = d.devices.get
        uid_list = self.user_ids.tolist() if slow else []
        has_token_list = has_token.tolist() if slow else []
        entries = self.devices
        for i in slow:
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
            self.device_ids[i] = entry.row.id
            if login_like and entry.plain_active:
                continue  # the common case: an active challenge/response device
            if not self.gate_device(i, entry, lifecycle.state_answering(self.purpose)):
                continue
            if self.purpose is Purpose.REACTIVATION and entry.row.id in d.replaced_by:
                # A replacement is on its way (the device was lost): it never comes back.
                self.out[i] = LoginOutcome.DEVICE_NOT_ACTIVE
                continue
            if entry.type in _ENDED_BY_ACTIVATION and self.ctx.ended_by_auto_activation(
                uid, entry.row.issued_at, self.now
            ):
                self.out[i] = LoginOutcome.DEVICE_NOT_ACTIVE
            elif entry.type is DeviceType.TEMPORARY_PASSCODE:
                # A passcode logs in; a step-up is a challenge/response, once per task.
                if has_token_list[i] or self.purpose is not Purpose.LOGIN:
                    self.out[i] = LoginOutcome.CHALLENGE_INVALID
                else:
                    self.scope_limited[i] = lifecycle.passcode_scope_limited(
                        entry.row.issued_at, self.now, self.access
                    )
            elif not has_token_list[i]:
                self.out[i] = LoginOutcome.CHALLENGE_INVALID
        if self.purpose in (Purpose.ACTIVATION, Purpose.REACTIVATION):
            for i in _rows(self.out == _OPEN).tolist():
                self.effects[i] = self._activation_effect(i)

    def _activation_effect(self, i: int) -> Effect:
        entry = self.devices[i]
        assert entry is not None
        user_id = int(self.user_ids[i])
        now = self.now

        def activate(tx: StoreTx, outcome: LoginOutcome) -> None:
            if outcome is not LoginOutcome.OK:
                return
            tx.update_device(entry.row.id, state=DeviceState.ACTIVE.value, activated_at=now)
            if entry.row.replaces is not None:
                tx.update_device(entry.row.replaces, state=DeviceState.REPLACED.value)
            if lifecycle.ends_temporary(entry.type):
                self.ctx.end_temporary(tx, user_id)

        return activate

    def _passcode_of(self, user_id: int) -> DeviceEntry | None:
        """The user's newest temporary passcode, whatever its state (items without a token
        answer with it; one that was ended is refused by the device gate)."""
        d = self.ctx.directory
        passcodes = [
            device_id
            for device_id in d.devices_of.get(user_id, ())
            if d.devices[device_id].type is DeviceType.TEMPORARY_PASSCODE
        ]
        return d.devices[max(passcodes)] if passcodes else None

    def _responses(self, rows: npt.NDArray[np.intp]) -> tuple[npt.NDArray[np.intp], list[Any]]:
        """The responses of ``rows``; a response that is not str or bytes is MALFORMED."""
        source = self.responses
        if len(rows) == len(source) and (
            rows.tolist() == list(range(len(rows)))  # a few: Python's compare is cheaper
            if len(rows) <= FEW_ITEMS
            else np.array_equal(rows, np.arange(len(rows)))
        ):
            responses = source if isinstance(source, list) else list(source)  # every item
        else:
            responses = list(map(source.__getitem__, rows.tolist()))
        if set(map(type, responses)) <= {str, bytes}:  # the usual batch: one pass in C
            return rows, responses
        typed = [isinstance(r, str | bytes) for r in responses]
        if all(typed):
            return rows, responses
        self.raw[rows[~np.asarray(typed)]] = _MALFORMED
        return rows[np.asarray(typed)], [r for r, t in zip(responses, typed, strict=True) if t]

    def _ocra(
        self, suite: str, rows: npt.NDArray[np.intp], keys: Any, pins: Any, responses: list[Any]
    ) -> None:
        if not len(rows):
            return
        try:
            self.raw[rows] = ocra.verify_batch(
                suite,
                keys,
                _six_digits(self.challenges[rows]),
                responses,
                pin_hashes=pins,
                threads=self.ctx.threads,
            )
        except InvalidInputError:
            # A device whose suite this path cannot verify (enrolled before such suites
            # were refused): its items fail alone, as not evaluated; never their batch.
            self.raw[rows] = _MALFORMED

    def evaluate(self) -> None:
        """Kernel work: one batch call per OCRA suite and per method."""
        cols = self.ctx.directory.columns
        is_open = self.out == _OPEN  # (only ``raw`` changes below)
        fast_rows = _rows(self.fast & is_open)
        suite_of = cols.suite[self.dev_i[fast_rows]]
        suites = _distinct(suite_of)
        for g in suites:
            rows = fast_rows if len(suites) == 1 else fast_rows[suite_of == g]
            suite = cols.suites[g]
            pin_algorithm = ocra.parse_suite(suite).pin_algorithm
            rows, responses = self._responses(rows)
            dev = self.dev_i[rows]
            pins = None
            if pin_algorithm is not None:
                width = _digest_size(pin_algorithm)
                pins = np.ascontiguousarray(cols.pins[dev, :width])
            self._ocra(suite, rows, cols.keys[dev], pins, responses)
        slow = _rows(~self.fast & is_open).tolist()
        groups: dict[tuple[str, str | None], list[int]] = {}
        devices = self.devices
        for i in slow:
            groups.setdefault(devices[i].group, []).append(i)
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
                result = card.verify_batch(
                    [e.row.secret for e in entries],
                    self.challenges[rows],
                    responses,
                    threads=self.ctx.threads,
                )
            elif method == "sms":
                result = hotp.verify_batch(
                    [self.ctx.sms_key] * len(rows),
                    responses,
                    self.challenge_ids[rows],
                    window=0,
                    digits=SMS_CODE_DIGITS,
                    algorithm="sha256",
                    threads=self.ctx.threads,
                ).outcomes
            else:  # passcode: case-sensitive keyed-hash comparison, never normalized
                result = np.empty(len(rows), dtype=np.uint8)
                for k, (entry, typed) in enumerate(zip(entries, responses, strict=True)):
                    text = typed if isinstance(typed, str) else typed.decode("ascii", "replace")
                    if not lifecycle.passcode_shape_ok(text):
                        result[k] = _MALFORMED
                    else:
                        same = hmac.compare_digest(
                            self.ctx.passcode_hash(text),
                            entry.row.secret or b"",
                        )
                        result[k] = _OK if same else _WRONG
            self.raw[rows] = result


class PushPlan(Plan):
    """IB Key app answers to pushes: the signature is the answer (Ed25519, one kernel
    batch); an approval is a success, a decline is neutral (audited, not counted), a bad
    signature is a failure. The push's device must still be active when the answer comes."""

    def __init__(
        self,
        ctx: LoginContext,
        rows: Sequence[PushRow | None],
        decisions: Sequence[int],
        signatures: Sequence[object],
        now: float,
    ) -> None:
        super().__init__(ctx, len(rows), Purpose.LOGIN, now)
        self.rows = rows
        self.decisions = decisions
        self.signatures = signatures

    def resolve(self) -> None:
        d = self.ctx.directory
        for i, row in enumerate(self.rows):
            if row is None:
                self.out[i] = LoginOutcome.CHALLENGE_INVALID
                continue
            self.user_ids[i] = row.user_id
            if self.decisions[i] not in (PushDecision.APPROVE, PushDecision.DECLINE):
                self.out[i] = LoginOutcome.MALFORMED
                continue
            entry = d.devices.get(row.device_id)
            if entry is None or entry.row.push_public is None or row.user_id not in entry.owners:
                self.out[i] = LoginOutcome.NO_SUCH_DEVICE
                continue
            self.devices[i] = entry
            self.device_ids[i] = entry.row.id
            self.has_token[i] = True
            self.keep_on_wrong[i] = True
            self.challenge_ids[i] = row.challenge_id
        self.gate_users(
            [d.user_by_id[u].username if u in d.user_by_id else "" for u in self.user_ids.tolist()]
        )
        for i in _rows(self.out == _OPEN).tolist():
            row, entry = self.rows[i], self.devices[i]
            assert row is not None
            assert entry is not None
            if not self.gate_device(i, entry, DeviceState.ACTIVE):
                continue
            if row.decision is not None:
                self.out[i] = LoginOutcome.REPLAYED
            elif self.now >= row.expires_at:
                self.out[i] = LoginOutcome.EXPIRED

    def evaluate(self) -> None:
        rows = _rows(self.out == _OPEN).tolist()
        if not rows:
            return
        publics, messages, sigs = [], [], []
        for i in rows:
            row, entry = self.rows[i], self.devices[i]
            assert row is not None
            assert entry is not None
            assert entry.row.push_public is not None
            publics.append(entry.row.push_public)
            messages.append(
                bytes(
                    push.approval_message(
                        row.challenge_id,
                        row.user_id,
                        row.device_id,
                        int(row.expires_at),
                        int(self.decisions[i]),
                    )
                )
            )
            signature = self.signatures[i]
            sigs.append(signature if isinstance(signature, bytes) else b"")
        verdicts = push.verify_approvals_batch(publics, messages, sigs, threads=self.ctx.threads)
        self.raw[rows] = verdicts
        for i in rows:
            if self.decisions[i] == PushDecision.DECLINE:
                self.neutral[i] = LoginOutcome.DECLINED
            self.effects[i] = self._decide(i)

    def _decide(self, i: int) -> Effect:
        row = self.rows[i]
        assert row is not None
        decision = "approved" if self.decisions[i] == PushDecision.APPROVE else "declined"
        now = self.now

        def record(tx: StoreTx, outcome: LoginOutcome) -> None:
            if outcome in (LoginOutcome.OK, LoginOutcome.DECLINED):
                tx.decide_push(row.challenge_id, decision, now)

        return record


class PushRedemptionPlan(Plan):
    """A login redeems the push approval made for it (a gateway that polls and then asks
    "is this login done?", as privacyIDEA's ``/validate/check`` does). The push was made
    for the login's challenge token (``IbKey.create_push(for_token=...)``: it carries the
    token's challenge id), so the token finds it and must be the push's user's and
    device's. The replay key is the push's own redemption key: one approval logs in one
    login, once (answering the push already used the challenge id itself, so the offline
    challenge of that login can no longer be answered either). A declined push is
    neutral; an unanswered, expired one is EXPIRED. The device must still be active."""

    def __init__(
        self, ctx: LoginContext, username: str, token: str, row: PushRow | None, now: float
    ) -> None:
        super().__init__(ctx, 1, Purpose.LOGIN, now)
        self.username = username
        self.token = token
        self.row = row

    def resolve(self) -> None:
        d = self.ctx.directory
        self.user_ids = d.names.lookup([self.username])
        self.gate_users([self.username])
        opened = self.ctx.tokens.open_batch([self.token], int(self.now), threads=1)
        status = int(opened["status"][0])
        self._set(np.array([status == TokenStatus.EXPIRED]), LoginOutcome.EXPIRED)
        self._set(np.array([status != TokenStatus.VALID]), LoginOutcome.CHALLENGE_INVALID)
        if self.out[0] != _OPEN:
            return
        user_id, device_id = int(self.user_ids[0]), int(opened["device_id"][0])
        row = self.row
        if (
            int(opened["user_id"][0]) != user_id
            or int(opened["purpose"][0]) != int(Purpose.LOGIN)
            or row is None
            or row.challenge_id != int(opened["challenge_id"][0])
            or row.user_id != user_id
            or row.device_id != device_id
        ):
            self.out[0] = LoginOutcome.CHALLENGE_INVALID
            return
        entry = d.devices.get(device_id)
        if entry is None or user_id not in entry.owners:
            self.out[0] = LoginOutcome.NO_SUCH_DEVICE
            return
        self.devices[0] = entry
        self.device_ids[0] = device_id
        if not self.gate_device(0, entry, DeviceState.ACTIVE):
            return
        if row.decision is None:
            self.out[0] = LoginOutcome.EXPIRED  # never answered, and now too late
            return
        self.has_token[0] = True
        self.challenge_ids[0] = redemption_key(row.challenge_id)

    def evaluate(self) -> None:
        if self.out[0] != _OPEN:
            return
        assert self.row is not None
        self.raw[0] = _OK  # the app's signature was checked when it answered
        if self.row.decision != "approved":
            self.neutral[0] = LoginOutcome.DECLINED


def redemption_key(challenge_id: int) -> int:
    """The replay key of a push's redemption: apart from every challenge id (those are
    counted up from 1 and stay far below 2^62), still a signed 64-bit store key."""
    if not 0 <= challenge_id < _REDEMPTION_KEYS:
        raise InvalidInputError("challenge_id", "out of range")
    return _REDEMPTION_KEYS + challenge_id


class RecoveryPlan(Plan):
    """A recovery PIN (the IB Key PIN) re-enabling a reinstalled app: a wrong PIN is a
    failure; the user's IB Key must be active at the moment of the answer."""

    def __init__(
        self,
        ctx: LoginContext,
        user_id: int,
        username: str,
        pin: str,
        effect: Callable[[StoreTx, DeviceEntry], None],
        now: float,
    ) -> None:
        super().__init__(ctx, 1, Purpose.LOGIN, now)
        self.user_ids[0] = user_id
        self.username = username
        self.pin = pin
        self._on_success = effect

    def resolve(self) -> None:
        self.gate_users([self.username])
        if self.out[0] != _OPEN:
            return
        user_id = int(self.user_ids[0])
        candidates = [
            e
            for e in self.ctx.devices_of(user_id)
            if e.type is DeviceType.IB_KEY
            and e.row.recovery_hash is not None
            and self.ctx.effective_state(e, self.now) is DeviceState.ACTIVE
        ]
        if not candidates:
            self.out[0] = LoginOutcome.NO_SUCH_DEVICE
            return
        self.devices[0] = candidates[0]
        self._candidates = candidates

    def evaluate(self) -> None:
        if self.out[0] != _OPEN:
            return
        expected = self.ctx.recovery_hash(int(self.user_ids[0]), self.pin)
        match = [
            e for e in self._candidates if hmac.compare_digest(e.row.recovery_hash or b"", expected)
        ]
        self.raw[0] = _OK if match else _WRONG
        if match:
            entry = match[0]
            self.devices[0] = entry
            self.device_ids[0] = entry.row.id

            def recover(tx: StoreTx, outcome: LoginOutcome) -> None:
                if outcome is LoginOutcome.OK:
                    self._on_success(tx, entry)

            self.effects[0] = recover


class OfferPlan(Plan):
    """An IB Key activation offer taken up by the app (the offer was consumed once by the
    store): the account gate and lockout apply; enrollment is the effect. It is neutral:
    not a login, so it neither fails nor ends a run of failures."""

    def __init__(
        self,
        ctx: LoginContext,
        user_id: int,
        refusal: LoginOutcome | None,
        effect: Callable[[StoreTx], None],
        now: float,
    ) -> None:
        super().__init__(ctx, 1, Purpose.ACTIVATION, now)
        self.user_ids[0] = user_id
        if refusal is not None:
            self.out[0] = refusal
        self._enroll = effect

    def resolve(self) -> None:
        user = self.ctx.directory.user_by_id.get(int(self.user_ids[0]))
        self.gate_users([user.username if user else ""])

    def evaluate(self) -> None:
        if self.out[0] != _OPEN:
            return
        self.raw[0] = _OK
        self.neutral[0] = LoginOutcome.OK

        def enroll(tx: StoreTx, outcome: LoginOutcome) -> None:
            if outcome is LoginOutcome.OK:
                self._enroll(tx)

        self.effects[0] = enroll


class PasswordFailurePlan(Plan):
    """Wrong username/password attempts reported by gateways: each is a failure of the same
    run as wrong second factors (refused, not counted, while the user is locked)."""

    def __init__(self, ctx: LoginContext, usernames: Sequence[str], now: float) -> None:
        super().__init__(ctx, len(usernames), Purpose.LOGIN, now)
        self.usernames = list(usernames)

    def resolve(self) -> None:
        self.user_ids = self.ctx.directory.names.lookup(self.usernames)
        self.gate_users(self.usernames)

    def evaluate(self) -> None:
        self.raw[self.out == _OPEN] = _WRONG


def _column(n: int, value: int | bool, dtype: Any) -> npt.NDArray[Any]:
    """``np.full(n, value, dtype)``: a plan makes several per batch, and ``np.full`` (Python
    code around ``empty`` and ``copyto``) costs twice this on a small one."""
    column = np.empty(n, dtype=dtype)
    column.fill(value)
    return column


def _rows(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """Where the 1-D ``mask`` holds: ``np.flatnonzero`` without its Python wrappers (a
    fixed cost a small batch paid a dozen times)."""
    rows: npt.NDArray[np.intp] = mask.nonzero()[0]
    return rows


def _distinct(values: npt.NDArray[Any]) -> list[Any]:
    """The distinct values, ascending (``np.unique``; a few sorted by Python instead)."""
    if len(values) <= FEW_ITEMS:
        return sorted(set(values.tolist()))
    distinct: list[Any] = np.unique(values).tolist()
    return distinct


@functools.cache
def _digest_size(algorithm: str) -> int:
    """The digest width of a PIN hash algorithm named by a suite (few names: cached)."""
    return hashlib.new(algorithm).digest_size


def _first_occurrences(
    values: npt.NDArray[np.uint64],
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint64]]:
    """True at the first occurrence of each value, in input order, and the distinct values
    in ascending order (what the store inserts best). One stable sort: cheaper than numpy's
    hash-based unique for a batch that rarely repeats a value, and nearly free for ids
    issued in the order they come back."""
    first = np.ones(len(values), dtype=bool)
    if len(values) < 2:
        return first, values
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    repeat = ranked[1:] == ranked[:-1]
    if not repeat.any():
        return first, ranked
    first[order[1:][repeat]] = False
    return first, ranked[np.concatenate(([True], ~repeat))]


def _six_digits(values: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint8]:
    """Challenges as an (N, 6) matrix of ASCII digits (each value's last six), without a
    Python string per item; a few values are formatted by Python (numpy's fixed cost per
    call is more than the work)."""
    if len(values) <= FEW_ITEMS:
        text = b"".join([b"%06d" % (v % 1_000_000) for v in values.tolist()])
        return np.frombuffer(text, dtype=np.uint8).reshape(len(values), 6)
    powers = 10 ** np.arange(5, -1, -1, dtype=np.uint32)
    digits = (values.astype(np.uint32)[:, None] // powers) % 10 + ord("0")
    return np.ascontiguousarray(digits, dtype=np.uint8)
