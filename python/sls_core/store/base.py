"""What every store backend shares: the rows the domain reads and writes, the transaction
interface (:class:`StoreTx`), the store interface (:class:`Store`) and its errors.

The domain layer (:mod:`sls_core.login`) talks to a store only through these: rows in and
out, no SQL outside :mod:`sls_core.store`. Every decision that must be exact across
processes and nodes (a consumed challenge, a counted failure, an enrollment) is written
inside one write transaction, so a process killed at any point leaves all of it or none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from sls_core.errors import SlsError

if TYPE_CHECKING:
    from sls_core.store.load import DirectoryLoad

__all__ = [
    "CONSUMED_BLOCK_BITS",
    "DEVICE_COLUMNS",
    "FEW_IDS",
    "USER_COLUMNS",
    "ActivationRow",
    "DeviceRow",
    "Ids",
    "MarksConsumed",
    "PushRow",
    "SharingRow",
    "Store",
    "StoreTx",
    "StoreUnavailableError",
    "UserRow",
    "WriterBusyError",
    "ascending_ids",
    "consumed_blocks",
    "distinct_ids",
    "id_list",
    "ids_marked",
    "newer_schema",
    "unique_ids",
]


class WriterBusyError(Exception):
    """``write(wait=False)`` found another writer in the middle of a transaction; nothing
    was done. (Not an :class:`~sls_core.errors.SlsError`: callers retry by waiting.)"""


class StoreUnavailableError(SlsError):
    """The database cannot be reached (a PostgreSQL restart or failover, a dropped
    connection): nothing of the call was applied, or its outcome is unknown if the
    connection broke at COMMIT. Servers answer UNAVAILABLE; never a verdict."""

    def __init__(self, what: str) -> None:
        super().__init__(f"store: unavailable ({what})")
        self.what = what


def newer_schema(version: int, current: int, by: str) -> StoreUnavailableError:
    """The refusal of a process whose store ``by`` migrated past its own schema: it answers
    as unavailable (gateways go elsewhere) instead of failing on tables that changed."""
    return StoreUnavailableError(
        f"schema version {version} is newer than this sls_core ({current}):"
        f" another {by} migrated the store; upgrade this one"
    )


@dataclass(frozen=True)
class UserRow:
    id: int
    username: str
    identity: dict[str, str] = field(repr=False)
    opted_out: bool
    closed: bool
    preferred_device: int | None
    created_at: float


@dataclass(frozen=True)
class DeviceRow:
    """A device row with its secrets opened. Never printed: the repr hides them."""

    id: int
    type: str
    state: str
    serial: str
    suite: str | None
    issued_at: float
    shipped_at: float | None
    activated_at: float | None
    expires_at: float | None
    replaces: int | None
    phone: str | None = field(repr=False, default=None)
    secret: bytes | None = field(repr=False, default=None)
    pin_hash: bytes | None = field(repr=False, default=None)
    push_public: bytes | None = field(repr=False, default=None)
    recovery_hash: bytes | None = field(repr=False, default=None)


#: The columns of a stored device, in the order every backend selects them.
DEVICE_COLUMNS: Final = (
    "id, type, state, serial, suite, issued_at, shipped_at, activated_at,"
    " expires_at, replaces, phone, secret, pin_hash, push_public, recovery_hash"
)
#: The columns of a stored user, in the order every backend selects them.
USER_COLUMNS: Final = "id, username, identity, opted_out, closed, preferred_device, created_at"


@dataclass(frozen=True)
class ActivationRow:
    """An IB Key activation offer. ``server_private`` is the X25519 key, opened.
    ``session_id`` and ``manual_prefix`` are what the caller stores: keyed hashes of the
    offer's values (:class:`sls_core.ibkey.IbKey`), so a database copy rebuilds no code."""

    session_id: bytes
    manual_prefix: bytes
    user_id: int
    channel: str
    issued_at: float
    expires_at: float
    used_at: float | None = None
    server_public: bytes = b""
    server_private: bytes = field(repr=False, default=b"")


@dataclass(frozen=True)
class PushRow:
    challenge_id: int
    user_id: int
    device_id: int
    issued_at: float
    expires_at: float
    decision: str | None = None
    decided_at: float | None = None


@dataclass(frozen=True)
class SharingRow:
    id: int
    owner_id: int
    requester_id: int
    device_id: int
    state: str
    set_aside: tuple[int, ...]
    created_at: float
    decided_at: float | None = None


#: The challenge ids of a batch: a list, or an integer numpy column (no Python int per item).
Ids: TypeAlias = Sequence[int] | npt.NDArray[np.integer[Any]]


#: Consumed challenges are kept as one row per block of 64 consecutive ids, a bit each in
#: a 64-bit mask (schema version 10). A batch's challenges are issued close together, so
#: a 100k batch writes about 1,600 rows instead of 100k, and the write-ahead logs with
#: them: on PostgreSQL a tenth of the time (7 ms instead of 75 ms, 0.3 MB of WAL instead of
#: 9 MB). The primary key is the block: each id still has one place only.
CONSUMED_BLOCK_BITS: Final = 6
_BLOCK_MASK: Final = (1 << CONSUMED_BLOCK_BITS) - 1
_SIGN: Final = 1 << 63


def _as_int64(mask: int) -> int:
    """A 64-bit mask as the signed integer both databases store (bit 63: negative)."""
    return mask - (1 << 64) if mask & _SIGN else mask


#: At most this many ids go through the Python paths of the id helpers
#: (``consumed_blocks``, ``distinct_ids``): below it, numpy's fixed cost per call is more
#: than the work.
FEW_IDS: Final = 64


def _check_id_range(ids: Ids) -> None:
    """A challenge id is a non-negative signed 64-bit key (as both databases hold it): an
    id past it (a uint64 column's top half) would wrap to another block on one path and
    not on the other, so it is refused, never marked somewhere."""
    if not len(ids):
        return
    dtype = getattr(ids, "dtype", None)
    if dtype is not None and dtype.kind in "iu":
        column = np.asarray(ids)
        low, high = int(column.min()), int(column.max())
    else:
        listed = [int(i) for i in ids]
        low, high = min(listed), max(listed)
    if low < 0 or high >= _SIGN:
        raise ValueError("a challenge id must be from 0 to 2^63 - 1")


def consumed_blocks(ids: Ids) -> tuple[list[int], list[int]]:
    """The rows of ``consumed_blocks`` that mark ``ids`` consumed: per block of 64 ids
    touched, ascending, the block and the mask of its ids (as signed 64-bit integers).

    The ids must be distinct (a challenge named twice in one consume is a bug upstream,
    which the old one-row-per-id primary key refused, so this refuses it too) and each
    from 0 to 2^63 - 1: one place per id, whichever path computes it."""
    if len(ids) > FEW_IDS:
        _check_id_range(ids)
        values = ascending_ids(ids)
        if bool(np.any(values[1:] == values[:-1])):
            raise ValueError("a duplicate challenge id: each is consumed once")
        blocks = values >> CONSUMED_BLOCK_BITS
        starts = np.flatnonzero(np.concatenate(([True], blocks[1:] != blocks[:-1])))
        bits = np.left_shift(np.uint64(1), (values & _BLOCK_MASK).astype(np.uint64))
        masks = np.bitwise_or.reduceat(bits, starts).view(np.int64)
        return blocks[starts].tolist(), masks.tolist()
    by_block: dict[int, int] = {}
    listed = id_list(ids)
    _check_id_range(listed)
    for i in sorted(listed):
        by_block[i >> CONSUMED_BLOCK_BITS] = by_block.get(i >> CONSUMED_BLOCK_BITS, 0) | (
            1 << (i & _BLOCK_MASK)
        )
    if len(set(listed)) != len(listed):
        raise ValueError("a duplicate challenge id: each is consumed once")
    return list(by_block), [_as_int64(m) for m in by_block.values()]


def ids_marked(ids: Ids, rows: Iterable[tuple[int, int]]) -> set[int]:
    """Those of ``ids`` whose bit is set in the ``(block, mask)`` rows read back from
    ``consumed_blocks`` (a replay check's answer)."""
    _check_id_range(ids)
    masks = {int(block): int(mask) for block, mask in rows}
    if not masks:
        return set()
    return {
        i for i in id_list(ids) if (masks.get(i >> CONSUMED_BLOCK_BITS, 0) >> (i & _BLOCK_MASK)) & 1
    }


def id_list(ids: Iterable[int]) -> list[int]:
    """The ids as a list of Python ints (an integer numpy column in one ``tolist``)."""
    dtype = getattr(ids, "dtype", None)
    if dtype is not None and dtype.kind in "iu":
        values: list[int] = ids.tolist()  # type: ignore[attr-defined]
        return values
    return [int(i) for i in ids]


def distinct_ids(ids: Iterable[int]) -> list[int]:
    """Each id once, ascending, as Python ints: :func:`unique_ids` as a list, the sort of
    a few ids (``FEW_IDS`` or fewer) done by Python's set and sort."""
    if not hasattr(ids, "__len__"):
        ids = list(ids)
    if len(ids) > FEW_IDS:  # type: ignore[arg-type]
        values: list[int] = unique_ids(ids).tolist()
        return values
    return sorted(set(id_list(ids)))


def ascending_ids(ids: Ids) -> npt.NDArray[np.int64]:
    """The ids as int64, ascending (duplicates kept: a caller that inserts them wants the
    primary key to refuse one); sorted only if they are not already."""
    values = np.asarray(ids).astype(np.int64, copy=False)
    if len(values) > 1 and not bool(np.all(values[1:] >= values[:-1])):
        values = np.sort(values)
    return values


def unique_ids(ids: Iterable[int]) -> npt.NDArray[np.int64]:
    """Each id once, ascending, as int64 (every store key fits). A batch of B-tree probes or
    inserts in key order touches each page once, in order: 100k random-order inserts into
    ``consumed`` take twice as long as the same ids sorted. Dense ids (user ids) are
    deduplicated with a bitmap, ten times faster than a sort; ids already sorted and
    distinct (the pipeline's) pass through."""
    dtype = getattr(ids, "dtype", None)
    if dtype is not None and dtype.kind in "iu":
        values = np.asarray(ids).astype(np.int64, copy=False)
    else:
        values = np.fromiter((int(i) for i in ids), np.int64)
    if len(values) < 2 or bool(np.all(values[1:] > values[:-1])):
        return values
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high < 4 * len(values) + 1024:
        seen = np.zeros(high + 1, dtype=bool)
        seen[values] = True
        return np.flatnonzero(seen).astype(np.int64)
    return np.unique(values)


class StoreTx(Protocol):
    """One write transaction: everything in it lands together or not at all."""

    def generation(self) -> int: ...
    def changes_since(self, generation: int) -> tuple[set[int], set[int]] | None: ...
    def failures(self, user_ids: Iterable[int]) -> dict[int, list[float]]: ...
    def put_failures(self, rows: dict[int, list[float]]) -> None: ...
    def clear_failures(self, user_ids: Iterable[int]) -> None: ...
    def consumed(self, challenge_ids: Ids) -> set[int]: ...
    def consume(self, challenge_ids: Ids, expires_at: float) -> None: ...
    def try_consume(self, challenge_ids: Ids, expires_at: float) -> set[int]:
        """Consumes the distinct ``challenge_ids``, all or none: when none was consumed
        before, all of them, and returns the empty set (one write: the usual batch);
        otherwise none, and returns those that were (the replays)."""
        ...

    def purge_consumed(self, before: float, limit: int | None = None) -> int:
        """Forgets consumed challenges whose tokens have all expired by ``before``: the
        rows of ``consumed_blocks`` (64 ids each) whose latest expiry is past, at most
        ``limit`` rows. Returns how many rows. An id can outlive its own expiry while a
        later one shares its block: keeping it longer is safe (its token is refused as
        expired first); forgetting it early would not be."""
        ...

    def metered(self, kind: str, user_id: int, since: float) -> list[float]: ...
    def meter(self, kind: str, user_id: int, at: float) -> None: ...
    def insert_activation(self, row: ActivationRow) -> None: ...
    def take_activation(
        self, *, session_id: bytes | None = None, manual_prefix: bytes | None = None, now: float
    ) -> ActivationRow | None: ...
    def insert_push(self, row: PushRow) -> None: ...
    def push(self, challenge_id: int) -> PushRow | None: ...
    def pushes(self, challenge_ids: Sequence[int]) -> dict[int, PushRow]: ...
    def pending_pushes(self, device_ids: Sequence[int], now: float) -> list[PushRow]: ...
    def decide_push(self, challenge_id: int, decision: str, now: float) -> bool: ...
    def insert_user(self, username: str, identity: dict[str, str], now: float) -> int: ...
    def update_user(self, user_id: int, **values: Any) -> None: ...
    def insert_device(self, row: DeviceRow, owners: Sequence[int]) -> int: ...
    def update_device(self, device_id: int, **values: Any) -> None: ...
    def link(self, user_id: int, device_id: int) -> None: ...
    def unlink(self, user_id: int, device_id: int) -> None: ...
    def insert_sharing(self, row: SharingRow) -> int: ...
    def sharing(self, request_id: int) -> SharingRow | None: ...
    def open_sharing(self, requester_id: int, device_id: int) -> SharingRow | None: ...
    def update_sharing(self, request_id: int, *, state: str, decided_at: float) -> None: ...
    def bulk_enroll(
        self, users: Sequence[tuple[str, dict[str, str]]], devices: Sequence[DeviceRow], now: float
    ) -> None: ...
    def users(self, user_ids: Iterable[int] | None = None) -> list[UserRow]: ...
    def devices(self, device_ids: Iterable[int] | None = None) -> list[DeviceRow]: ...
    def links(self, user_ids: Iterable[int] | None = None) -> list[tuple[int, int]]: ...
    def load_directory(
        self, *, secret_width: int | None = None, pin_width: int | None = None
    ) -> DirectoryLoad: ...
    def reserve(self, name: str, count: int) -> int: ...
    def server_secret(self, name: str, make: Callable[[], bytes]) -> bytes: ...


class Store(Protocol):
    def write(self, *, wait: bool = True) -> contextlib.AbstractContextManager[StoreTx]:
        """A write transaction; ``wait=False`` raises :class:`WriterBusyError` at once
        instead of waiting for another writer."""
        ...

    def read(self) -> contextlib.AbstractContextManager[StoreTx]:
        """A consistent snapshot for reading, holding no write lock; anything written in
        it is discarded."""
        ...

    def close(self) -> None: ...


class MarksConsumed:
    """``consume`` and ``try_consume`` of every store, over the store's one statement that
    marks a batch's ``consumed_blocks`` rows: ``_mark`` writes them unless one of their
    bits is set already, and returns how many rows it wrote."""

    def _mark(self, blocks: list[int], masks: list[int], expires_at: float) -> int:
        raise NotImplementedError

    def consumed(self, challenge_ids: Ids) -> set[int]:
        raise NotImplementedError

    def _mark_all(self, challenge_ids: Ids, expires_at: float) -> bool:
        """Every id marked consumed (True) or none, one of them being so already (False).
        Any other count is a partial write that only a writer without the write lock could
        cause: an error, so that the transaction is rolled back rather than half done."""
        blocks, masks = consumed_blocks(challenge_ids)
        marked = self._mark(blocks, masks, expires_at)
        if marked == len(blocks):
            return True
        if marked:
            raise RuntimeError(f"consume marked {marked} of {len(blocks)} blocks: rolled back")
        return False

    def consume(self, challenge_ids: Ids, expires_at: float) -> None:
        # For ids known to be fresh (the caller checked): one used already is a bug
        # upstream, an error that rolls the whole batch back.
        if len(challenge_ids) and not self._mark_all(challenge_ids, expires_at):
            raise RuntimeError("a challenge to consume was consumed already")

    def try_consume(self, challenge_ids: Ids, expires_at: float) -> set[int]:
        # Optimistic, one statement: marks them all unless one was consumed before, and
        # only then looks up which (a replay check first would cost a second statement).
        if not len(challenge_ids) or self._mark_all(challenge_ids, expires_at):
            return set()
        already = self.consumed(challenge_ids)
        if not already:  # would read as "all consumed" while nothing was written
            raise RuntimeError("consume was refused, yet none of its challenges is marked")
        return already
