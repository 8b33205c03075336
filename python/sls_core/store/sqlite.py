"""The embedded store: one SQLite file (WAL, versioned schema), shared by many processes
on one machine.

Device secrets and PIN hashes are sealed with AES-256-GCM (:mod:`sls_core.sealing`) bound to
their row (``aad = b"device:<id>:secret"``), and tagged with the master key id, so
:meth:`SqliteStore.rotate_master_key` can re-seal them under a new key and resume after an
interruption.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from sls_core.errors import AlreadyExistsError, InvalidInputError
from sls_core.sealing import MasterKeyRing, device_aad
from sls_core.store import sqlite_load
from sls_core.store.base import (
    CONSUMED_BLOCK_BITS,
    DEVICE_COLUMNS,
    FEW_IDS,
    USER_COLUMNS,
    ActivationRow,
    DeviceRow,
    Ids,
    MarksConsumed,
    PushRow,
    SharingRow,
    StoreUnavailableError,
    UserRow,
    WriterBusyError,
    distinct_ids,
    id_list,
    ids_marked,
    newer_schema,
)
from sls_core.store.keys import (
    CONSUMED_MASKS,
    COUNTED_TABLES,
    SEALED_VALUES,
    KeyFollower,
    count_consumed,
    count_key_ids,
    live_holders,
)
from sls_core.store.load import (
    DEVICE_DETAILS,
    USER_DETAILS,
    DirectoryLoad,
    ReadsDetails,
)
from sls_core.store.schema import SCHEMA_VERSION, SQLITE_MIGRATIONS

__all__ = ["SqliteStore"]


def _ids_json(ids: Iterable[int]) -> str:
    """A JSON array of the ids (for ``json_each``). An integer numpy array gives its Python
    ints in one ``tolist`` (twice as fast as ``int()`` per item; a 10k batch writes three)."""
    return _ints_json(id_list(ids))


def _ints_json(values: list[int]) -> str:
    """A JSON array of ``values``, Python ints already (no conversion per item: a large
    batch's ids come from one ``tolist``). A short list is joined by hand: ``json.dumps``
    costs more per call than the work."""
    if len(values) > FEW_IDS:
        return json.dumps(values)
    return "[" + ",".join(map(str, values)) + "]"


#: The change feed's generation, and the schema version of the file as it is now.
_GENERATION_AND_SCHEMA: Final = (
    "SELECT max(generation), (SELECT user_version FROM pragma_user_version) FROM changes"
)

#: Marks a batch's challenges consumed, all or none: no row is written when any of them is
#: marked already (parameters: the expiry, then the ``[block, mask]`` pairs twice). The
#: uncorrelated check runs once, before the first insert (SQLite materialises a SELECT
#: from the table it inserts into: ``Once`` and an ephemeral table in its plan), so the
#: rowcount is every block or none; the update's own check is the second guard.
_MARK_CONSUMED: Final = (
    "INSERT INTO consumed_blocks (block, mask, expires_at)"
    " SELECT j.value ->> 0, j.value ->> 1, ? FROM json_each(?) AS j"
    " WHERE NOT EXISTS (SELECT 1 FROM json_each(?) AS k JOIN consumed_blocks AS c"
    " ON c.block = k.value ->> 0 WHERE c.mask & (k.value ->> 1) <> 0)"
    " ON CONFLICT (block) DO UPDATE SET mask = mask | excluded.mask,"
    " expires_at = max(expires_at, excluded.expires_at) WHERE (mask & excluded.mask) = 0"
)
#: The same for the ids of one block: the update is skipped if any of them is marked.
_MARK_ONE_BLOCK: Final = (
    "INSERT INTO consumed_blocks (block, mask, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (block) DO UPDATE SET mask = mask | excluded.mask,"
    " expires_at = max(expires_at, excluded.expires_at) WHERE (mask & excluded.mask) = 0"
)


class _SqliteTx(MarksConsumed):
    def __init__(
        self, conn: sqlite3.Connection, keyring: MasterKeyRing, store: SqliteStore
    ) -> None:
        self._conn = conn
        self._keyring = keyring
        self._store = store
        #: The change feed's generation as this transaction sees it, once read.
        self._generation: int | None = None

    # -- change feed -------------------------------------------------------------------
    def generation(self) -> int:
        # Read once per transaction: a write transaction asks twice before it writes (is
        # the directory's refresh slow, then the refresh), a statement less on every small
        # batch. Only this transaction's own changes move it (the lock, or the snapshot).
        # The schema version rides along: a process left running at an older version after
        # a newer one migrated the file (an upgraded admin command, say) refuses as
        # unavailable instead of failing on tables that changed under it.
        if self._generation is None:
            generation, version = self._conn.execute(_GENERATION_AND_SCHEMA).fetchone()
            if version > SCHEMA_VERSION:
                raise newer_schema(version, SCHEMA_VERSION, "process")
            self._generation = int(generation or 0)
        return self._generation

    def _changed(self, user_id: int | None = None, device_id: int | None = None) -> None:
        self._generation = None
        self._conn.execute(
            "INSERT INTO changes (user_id, device_id) VALUES (?, ?)", (user_id, device_id)
        )

    def changes_since(self, generation: int) -> tuple[set[int], set[int]] | None:
        """Users and devices changed after ``generation``; None when a bulk import
        happened since (reload everything)."""
        users: set[int] = set()
        devices: set[int] = set()
        for user_id, device_id in self._conn.execute(
            "SELECT user_id, device_id FROM changes WHERE generation > ?", (generation,)
        ):
            if user_id is None and device_id is None:
                return None
            if user_id is not None:
                users.add(user_id)
            if device_id is not None:
                devices.add(device_id)
        return users, devices

    # -- lockout -----------------------------------------------------------------------
    def failures(self, user_ids: Iterable[int]) -> dict[int, list[float]]:
        # The ids drive the join (CROSS JOIN keeps them the outer loop): one primary-key
        # probe each, in key order. ``IN (SELECT ...)`` would first build a temporary index
        # of the ids, three times slower for a batch of 100k.
        ids = distinct_ids(user_ids)
        if not ids:
            return {}
        rows = self._conn.execute(
            "SELECT f.user_id, f.times FROM json_each(?) AS j"
            " CROSS JOIN failures AS f ON f.user_id = j.value",
            (_ints_json(ids),),
        )
        return {uid: json.loads(times) for uid, times in rows}

    def put_failures(self, rows: dict[int, list[float]]) -> None:
        if not rows:
            return  # no statement for nothing (most batches record no failure)
        self._conn.executemany(
            "INSERT INTO failures (user_id, times) VALUES (?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET times = excluded.times",
            [(uid, json.dumps(times)) for uid, times in rows.items()],
        )

    def clear_failures(self, user_ids: Iterable[int]) -> None:
        ids = distinct_ids(user_ids)
        if not ids:
            return
        self._conn.execute(
            "DELETE FROM failures WHERE user_id IN (SELECT value FROM json_each(?))",
            (_ints_json(ids),),
        )

    # -- replay ------------------------------------------------------------------------
    def consumed(self, challenge_ids: Ids) -> set[int]:
        ids = distinct_ids(challenge_ids)
        if not ids:
            return set()
        blocks = sorted({i >> CONSUMED_BLOCK_BITS for i in ids})
        rows = self._conn.execute(
            "SELECT c.block, c.mask FROM json_each(?) AS j"
            " CROSS JOIN consumed_blocks AS c ON c.block = j.value",
            (_ints_json(blocks),),
        )
        return ids_marked(ids, rows)

    def _mark(self, blocks: list[int], masks: list[int], expires_at: float) -> int:
        if len(blocks) == 1:  # most small batches: a plain upsert is all or none already
            row = (blocks[0], masks[0], expires_at)
            return int(self._conn.execute(_MARK_ONE_BLOCK, row).rowcount)
        pairs = "[" + ",".join(f"[{b},{m}]" for b, m in zip(blocks, masks, strict=True)) + "]"
        return int(self._conn.execute(_MARK_CONSUMED, (expires_at, pairs, pairs)).rowcount)

    def purge_consumed(self, before: float, limit: int | None = None) -> int:
        if limit is None:
            purged = self._conn.execute(
                "DELETE FROM consumed_blocks WHERE expires_at <= ?", (before,)
            ).rowcount
            return int(purged)
        # Bounded: the purge runs inside a login transaction and must stay short.
        purged = self._conn.execute(
            "DELETE FROM consumed_blocks WHERE block IN (SELECT block FROM consumed_blocks"
            " WHERE expires_at <= ? ORDER BY expires_at LIMIT ?) AND expires_at <= ?",
            (before, limit, before),
        ).rowcount
        return int(purged)

    # -- activations and pushes --------------------------------------------------------
    def metered(self, kind: str, user_id: int, since: float) -> list[float]:
        """When ``kind`` happened to ``user_id`` after ``since``, oldest first."""
        rows = self._conn.execute(
            "SELECT at FROM metered WHERE kind = ? AND user_id = ? AND at > ? ORDER BY at",
            (kind, user_id, since),
        )
        return [float(at) for (at,) in rows]

    def meter(self, kind: str, user_id: int, at: float) -> None:
        self._conn.execute(
            "INSERT INTO metered (kind, user_id, at) VALUES (?, ?, ?)", (kind, user_id, at)
        )
        # Keep the table small: a user's events older than a day count for nothing.
        self._conn.execute(
            "DELETE FROM metered WHERE kind = ? AND user_id = ? AND at < ?",
            (kind, user_id, at - 86_400),
        )

    def insert_activation(self, row: ActivationRow) -> None:
        aad = b"activation:" + row.session_id
        self._conn.execute(
            "INSERT INTO activations (session_id, manual_prefix, user_id, server_private,"
            " server_public, channel, issued_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.session_id,
                row.manual_prefix,
                row.user_id,
                self._keyring.seal(row.server_private, aad=aad),
                row.server_public,
                row.channel,
                row.issued_at,
                row.expires_at,
            ),
        )

    def take_activation(
        self, *, session_id: bytes | None = None, manual_prefix: bytes | None = None, now: float
    ) -> ActivationRow | None:
        """The activation, marked used in this transaction (an attempt uses it up, whatever
        its outcome); None when there is no such activation. ``used_at`` is the earlier
        use, if any, so the caller can refuse a second attempt."""
        query = (
            "SELECT session_id, manual_prefix, user_id, server_private, channel, issued_at,"
            " expires_at, used_at, server_public FROM activations WHERE "
        )
        if session_id is not None:
            row = self._conn.execute(query + "session_id = ?", (session_id,)).fetchone()
        else:
            row = self._conn.execute(query + "manual_prefix = ?", (manual_prefix,)).fetchone()
        if row is None:
            return None
        if row[7] is None:
            self._conn.execute(
                "UPDATE activations SET used_at = ? WHERE session_id = ?", (now, row[0])
            )
        private = self._keyring.open(row[3], aad=b"activation:" + row[0])
        return ActivationRow(
            session_id=row[0],
            manual_prefix=row[1],
            user_id=row[2],
            channel=row[4],
            issued_at=row[5],
            expires_at=row[6],
            used_at=row[7],
            server_public=row[8],
            server_private=private,
        )

    def insert_push(self, row: PushRow) -> None:
        self._conn.execute(
            "INSERT INTO pushes (challenge_id, user_id, device_id, issued_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (row.challenge_id, row.user_id, row.device_id, row.issued_at, row.expires_at),
        )

    def pushes(self, challenge_ids: Sequence[int]) -> dict[int, PushRow]:
        """The pushes among ``challenge_ids``, in one query."""
        rows = self._conn.execute(
            "SELECT challenge_id, user_id, device_id, issued_at, expires_at, decision,"
            " decided_at FROM pushes WHERE challenge_id IN (SELECT value FROM json_each(?))",
            (_ids_json(challenge_ids),),
        )
        return {r[0]: PushRow(*r) for r in rows}

    def push(self, challenge_id: int) -> PushRow | None:
        row = self._conn.execute(
            "SELECT challenge_id, user_id, device_id, issued_at, expires_at, decision,"
            " decided_at FROM pushes WHERE challenge_id = ?",
            (challenge_id,),
        ).fetchone()
        return None if row is None else PushRow(*row)

    def pending_pushes(self, device_ids: Sequence[int], now: float) -> list[PushRow]:
        rows = self._conn.execute(
            "SELECT challenge_id, user_id, device_id, issued_at, expires_at, decision,"
            " decided_at FROM pushes WHERE decision IS NULL AND expires_at > ?"
            " AND device_id IN (SELECT value FROM json_each(?)) ORDER BY challenge_id",
            (now, _ids_json(device_ids)),
        )
        return [PushRow(*r) for r in rows]

    def decide_push(self, challenge_id: int, decision: str, now: float) -> bool:
        """Records the app's answer once: False when the push was already decided."""
        cur = self._conn.execute(
            "UPDATE pushes SET decision = ?, decided_at = ?"
            " WHERE challenge_id = ? AND decision IS NULL",
            (decision, now, challenge_id),
        )
        return cur.rowcount == 1

    # -- users and devices -------------------------------------------------------------
    def insert_user(self, username: str, identity: dict[str, str], now: float) -> int:
        try:
            cur = self._conn.execute(
                "INSERT INTO users (username, identity, created_at) VALUES (?, ?, ?)",
                (username, json.dumps(identity, sort_keys=True), now),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExistsError("username", "already taken", "USERNAME_TAKEN") from None
        user_id = int(cur.lastrowid or 0)
        self._changed(user_id=user_id)
        return user_id

    _USER_COLUMNS = frozenset({"opted_out", "closed", "preferred_device"})
    _DEVICE_COLUMNS = frozenset(
        {
            "state",
            "activated_at",
            "expires_at",
            "shipped_at",
            "secret",
            "pin_hash",
            "suite",
            "push_public",
            "recovery_hash",
        }
    )

    def update_user(self, user_id: int, **values: Any) -> None:
        unknown = set(values) - self._USER_COLUMNS
        if unknown:
            raise ValueError(f"not user columns: {sorted(unknown)}")
        sets = ", ".join(f"{k} = ?" for k in values)
        self._conn.execute(f"UPDATE users SET {sets} WHERE id = ?", (*values.values(), user_id))  # noqa: S608
        self._changed(user_id=user_id)

    def _seal(self, device_id: int, what: str, value: bytes | None) -> bytes | None:
        if value is None:
            return None
        return self._keyring.seal(value, aad=f"device:{device_id}:{what}".encode())

    def _open(self, device_id: int, what: str, value: bytes | None) -> bytes | None:
        if value is None:
            return None
        aad = device_aad(device_id, what)
        return self._keyring.open(value, aad=aad, record=f"device {device_id} {what}")

    def insert_device(self, row: DeviceRow, owners: Sequence[int]) -> int:
        cur = self._conn.execute(
            "INSERT INTO devices (type, state, serial, suite, phone, issued_at, shipped_at,"
            " activated_at, expires_at, replaces, push_public, recovery_hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.type,
                row.state,
                row.serial,
                row.suite,
                row.phone,
                row.issued_at,
                row.shipped_at,
                row.activated_at,
                row.expires_at,
                row.replaces,
                row.push_public,
                row.recovery_hash,
            ),
        )
        device_id = int(cur.lastrowid or 0)
        self._conn.execute(
            "UPDATE devices SET secret = ?, pin_hash = ? WHERE id = ?",
            (
                self._seal(device_id, "secret", row.secret),
                self._seal(device_id, "pin_hash", row.pin_hash),
                device_id,
            ),
        )
        for owner in owners:
            self.link(owner, device_id)
        self._changed(device_id=device_id)
        return device_id

    def update_device(self, device_id: int, **values: Any) -> None:
        unknown = set(values) - self._DEVICE_COLUMNS
        if unknown:
            raise ValueError(f"not device columns: {sorted(unknown)}")
        for what in ("secret", "pin_hash"):
            if what in values:
                values[what] = self._seal(device_id, what, values[what])
        sets = ", ".join(f"{k} = ?" for k in values)
        self._conn.execute(
            f"UPDATE devices SET {sets} WHERE id = ?",  # noqa: S608
            (*values.values(), device_id),
        )
        self._changed(device_id=device_id)

    def link(self, user_id: int, device_id: int) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO user_devices (user_id, device_id) VALUES (?, ?)",
            (user_id, device_id),
        )
        self._changed(user_id=user_id, device_id=device_id)

    def unlink(self, user_id: int, device_id: int) -> None:
        self._conn.execute(
            "DELETE FROM user_devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        )
        self._changed(user_id=user_id, device_id=device_id)

    # -- sharing requests ----------------------------------------------------------------
    def insert_sharing(self, row: SharingRow) -> int:
        cur = self._conn.execute(
            "INSERT INTO sharing_requests (owner_id, requester_id, device_id, state,"
            " set_aside, created_at, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.owner_id,
                row.requester_id,
                row.device_id,
                row.state,
                json.dumps(list(row.set_aside)),
                row.created_at,
                row.decided_at,
            ),
        )
        return int(cur.lastrowid or 0)

    def sharing(self, request_id: int) -> SharingRow | None:
        found = self._conn.execute(
            "SELECT id, owner_id, requester_id, device_id, state, set_aside, created_at,"
            " decided_at FROM sharing_requests WHERE id = ?",
            (request_id,),
        ).fetchone()
        if found is None:
            return None
        rid, owner, requester, device, state, aside, created, decided = found
        return SharingRow(
            int(rid),
            int(owner),
            int(requester),
            int(device),
            str(state),
            tuple(int(i) for i in json.loads(aside)),
            float(created),
            None if decided is None else float(decided),
        )

    def open_sharing(self, requester_id: int, device_id: int) -> SharingRow | None:
        """The pending or active request of ``requester_id`` for ``device_id``, if any."""
        found = self._conn.execute(
            "SELECT id FROM sharing_requests WHERE requester_id = ? AND device_id = ?"
            " AND state IN ('pending', 'active')",
            (requester_id, device_id),
        ).fetchone()
        return None if found is None else self.sharing(int(found[0]))

    def update_sharing(self, request_id: int, *, state: str, decided_at: float) -> None:
        self._conn.execute(
            "UPDATE sharing_requests SET state = ?, decided_at = ? WHERE id = ?",
            (state, decided_at, request_id),
        )

    def bulk_enroll(
        self, users: Sequence[tuple[str, dict[str, str]]], devices: Sequence[DeviceRow], now: float
    ) -> None:
        """Creates ``users[i]`` holding ``devices[i]`` for every i, in this transaction:
        for migrations from another system and for benchmarks (a million devices in
        seconds, not one transaction each)."""
        if len(users) != len(devices):
            raise InvalidInputError("devices", "one device per user")
        first_user = int(self._conn.execute("SELECT coalesce(max(id), 0) FROM users").fetchone()[0])
        first_device = int(
            self._conn.execute("SELECT coalesce(max(id), 0) FROM devices").fetchone()[0]
        )
        try:
            self._conn.executemany(
                "INSERT INTO users (id, username, identity, created_at) VALUES (?, ?, ?, ?)",
                (
                    (first_user + 1 + i, name, json.dumps(identity, sort_keys=True), now)
                    for i, (name, identity) in enumerate(users)
                ),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExistsError("username", "already taken", "USERNAME_TAKEN") from None
        self._conn.executemany(
            "INSERT INTO devices (id, type, state, serial, suite, secret, pin_hash, phone,"
            " issued_at, shipped_at, activated_at, expires_at, replaces)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    first_device + 1 + i,
                    d.type,
                    d.state,
                    d.serial,
                    d.suite,
                    self._seal(first_device + 1 + i, "secret", d.secret),
                    self._seal(first_device + 1 + i, "pin_hash", d.pin_hash),
                    d.phone,
                    d.issued_at,
                    d.shipped_at,
                    d.activated_at,
                    d.expires_at,
                    None,
                )
                for i, d in enumerate(devices)
            ),
        )
        self._conn.executemany(
            "INSERT INTO user_devices (user_id, device_id) VALUES (?, ?)",
            ((first_user + 1 + i, first_device + 1 + i) for i in range(len(users))),
        )
        self._changed()  # a bulk marker: every directory reloads in full

    def users(self, user_ids: Iterable[int] | None = None) -> list[UserRow]:
        query = f"SELECT {USER_COLUMNS} FROM users"  # noqa: S608 - constant
        if user_ids is None:
            rows = self._conn.execute(query)
        else:
            rows = self._conn.execute(
                query + " WHERE id IN (SELECT value FROM json_each(?))",  # noqa: S608 - constant
                (_ids_json(user_ids),),
            )
        return [
            UserRow(r[0], r[1], json.loads(r[2]), bool(r[3]), bool(r[4]), r[5], r[6]) for r in rows
        ]

    def devices(self, device_ids: Iterable[int] | None = None) -> list[DeviceRow]:
        query = f"SELECT {DEVICE_COLUMNS} FROM devices"  # noqa: S608 - constant
        if device_ids is None:
            rows = self._conn.execute(query)
        else:
            rows = self._conn.execute(
                query + " WHERE id IN (SELECT value FROM json_each(?))",  # noqa: S608 - constant
                (_ids_json(device_ids),),
            )
        return [
            DeviceRow(
                id=r[0],
                type=r[1],
                state=r[2],
                serial=r[3],
                suite=r[4],
                issued_at=r[5],
                shipped_at=r[6],
                activated_at=r[7],
                expires_at=r[8],
                replaces=r[9],
                phone=r[10],
                secret=self._open(r[0], "secret", r[11]),
                pin_hash=self._open(r[0], "pin_hash", r[12]),
                push_public=r[13],
                recovery_hash=r[14],
            )
            for r in rows
        ]

    def links(self, user_ids: Iterable[int] | None = None) -> list[tuple[int, int]]:
        if user_ids is None:
            rows = self._conn.execute("SELECT user_id, device_id FROM user_devices")
        else:
            rows = self._conn.execute(
                "SELECT user_id, device_id FROM user_devices"
                " WHERE user_id IN (SELECT value FROM json_each(?))",
                (_ids_json(user_ids),),
            )
        return [(int(u), int(d)) for u, d in rows]

    def load_directory(
        self, *, secret_width: int | None = None, pin_width: int | None = None
    ) -> DirectoryLoad:
        store = self._store
        return sqlite_load.load_directory(
            self._conn,
            self.generation(),
            store.path,
            self._keyring,
            store,
            secret_width=secret_width,
            pin_width=pin_width,
        )

    # -- sequences and server secrets --------------------------------------------------
    def reserve(self, name: str, count: int) -> int:
        """Reserves ``count`` consecutive numbers of sequence ``name``; returns the first."""
        row = self._conn.execute(
            "INSERT INTO sequences (name, next_value) VALUES (?, 1 + ?) "
            "ON CONFLICT (name) DO UPDATE SET next_value = next_value + ? RETURNING next_value",
            (name, count, count),
        ).fetchone()
        return int(row[0]) - count

    def server_secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        aad = f"server:{name}".encode()
        row = self._conn.execute(
            "SELECT sealed FROM server_secrets WHERE name = ?", (name,)
        ).fetchone()
        if row is not None:
            return self._keyring.open(row[0], aad=aad)
        value = make()
        self._conn.execute(
            "INSERT INTO server_secrets (name, sealed) VALUES (?, ?)",
            (name, self._keyring.seal(value, aad=aad)),
        )
        return value


#: A loaded row's details (:class:`~sls_core.store.load.ReadsDetails`), by table.
_DETAILS: Final = {
    "users": f"SELECT {USER_DETAILS} FROM users WHERE id = ?",  # noqa: S608
    "devices": f"SELECT {DEVICE_DETAILS} FROM devices WHERE id = ?",  # noqa: S608
}


class _WriteTransaction:
    """:meth:`SqliteStore.write`: ``BEGIN IMMEDIATE`` behind the writer gate, ``COMMIT`` when
    the block ends, ``ROLLBACK`` when it raises. A class rather than a generator context
    manager: a small verification batch pays for this entry and exit on every call."""

    __slots__ = ("_conn", "_gate", "_store", "_wait")

    def __init__(self, store: SqliteStore, wait: bool) -> None:
        self._store = store
        self._wait = wait

    def __enter__(self) -> _SqliteTx:
        store = self._store
        conn = self._conn = store._connection(busy_wait=self._wait)
        gate = self._gate = store._local.gate
        store._begin(conn, gate, wait=self._wait)
        try:
            # Under the write lock: a retirement decided under it (sls_core.admin) cannot
            # miss a writer that read the key file just before the new one was saved.
            store._follow_key_file()
            store._advertise(conn)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return _SqliteTx(conn, store._keyring, store)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._conn.execute("COMMIT")
            else:
                self._store._advertised = None  # the row may not have landed: write it again
                self._conn.execute("ROLLBACK")
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)


#: The store's files hold identity data, sealed secrets and pending activations: owner only.
#: SQLite gives the -wal and -shm files the database file's mode, so creating that file
#: 0600 first covers them (and nobody else can take a lock on -shm to stall writers).
_FILE_MODE, _DIR_MODE = 0o600, 0o700


def _owner_only(path: Path) -> None:
    """Creates the database's folder (0700) and file (0600) if missing, and narrows the
    modes of what exists already (a store made by an older version, a lax umask)."""
    path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), _FILE_MODE))
    for existing in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-writer")):
        if existing.exists() and existing.stat().st_mode & 0o077:
            existing.chmod(_FILE_MODE)
    if path.parent.stat().st_mode & 0o077:
        path.parent.chmod(_DIR_MODE)


class SqliteStore(ReadsDetails, KeyFollower):
    """The embedded store: one SQLite file in WAL mode, shared safely by many processes.

    Each thread gets its own connection. Write transactions are ``BEGIN IMMEDIATE``: they
    take SQLite's single write lock up front, which is what makes replay and lockout exact
    across every process that opens the same file.

    Writers first queue on an ``flock`` of ``<file>-writer`` (the *writer gate*, created
    0600 beside the database). SQLite's own wait for a busy write lock polls with sleeps of
    1, 2, 5, 10 ms and more, so two server processes contending for it would add whole
    milliseconds to a login that needs a fraction of one; the gate is polled from 20 us,
    doubling to 250 us, for at most ``busy_timeout`` seconds (then "database is locked", as
    SQLite would say). A forked child closes its inherited gate descriptors, so a lock
    dies with the process that took it. The gate only orders writers: correctness still rests on
    ``BEGIN IMMEDIATE``, so a program that opens the file without the gate (the ``sqlite3``
    shell, an older sls_core) is still safe, it just waits the SQLite way.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keyring: MasterKeyRing,
        busy_timeout: float = 30.0,
        synchronous: str = "NORMAL",
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if synchronous not in {"NORMAL", "FULL"}:
            raise InvalidInputError("synchronous", "must be NORMAL or FULL")
        self.path = Path(path)
        _owner_only(self.path)
        self._keyring = keyring
        #: The key file ``keyring`` came from: re-read when it changes (a rotation), so a
        #: running process moves to the new active key before the old one can be retired.
        self._key_file = Path(key_file) if key_file is not None else None
        self._key_file_seen = self._key_file_stamp()
        #: This open store's entry in ``key_holders`` and the key id it last advertised.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._advertised: tuple[str, float] | None = None
        self._busy_timeout = busy_timeout
        #: Turns SQLite's busy timeout back on (see ``_begin``).
        self._busy_timeout_on = f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}"
        self._synchronous = synchronous
        #: ``PRAGMA wal_autocheckpoint`` of every connection (SQLite's default: 1000 pages);
        #: ``_checkpoint_setting`` counts its changes, so each thread's connection follows.
        self._autocheckpoint_pages = 1000
        self._checkpoint_setting = 0
        self._local = threading.local()
        self.writer_gate = self.path.with_name(self.path.name + "-writer")
        self._gates: set[int] = set()
        this = weakref.ref(self)

        def forget_gates_in_child() -> None:
            store = this()
            if store is not None:
                store._forget_gates()

        os.register_at_fork(after_in_child=forget_gates_in_child)
        self._migrate()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    def _connection(self, *, busy_wait: bool = True) -> sqlite3.Connection:
        """This thread's connection. ``busy_wait=False``: for a write that must not wait,
        which may find SQLite's busy timeout still off from the last such write (see
        :meth:`_begin`); everything else gets the timeout back first."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        pid = os.getpid()
        if conn is not None and getattr(self._local, "pid", None) == pid:
            if busy_wait and self._local.busy_off:
                conn.execute(self._busy_timeout_on)
                self._local.busy_off = False
            if self._local.checkpoint_setting != self._checkpoint_setting:
                self._set_autocheckpoint(conn)
            return conn
        # None yet, or the parent's: a connection must never cross fork (the child opens
        # its own).
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=True
        )
        conn.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL survives a killed process (the WAL is written before COMMIT
        # returns); FULL also survives power loss, at a cost per commit.
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        self._set_autocheckpoint(conn)
        self._local.conn = conn
        self._local.pid = pid
        self._local.busy_off = False
        # Its own open file description per thread: flock then orders this process's
        # threads as well as other processes.
        self._local.gate = os.open(self.writer_gate, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._gates.add(self._local.gate)
        return conn

    def _forget_gates(self) -> None:
        """In a forked child: close the inherited gate descriptors, so that a lock the
        parent holds dies with the parent (a flock lives while any copy is open)."""
        for fd in self._gates:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._gates.clear()
        # The parent's connections and descriptor numbers are not the child's to use or
        # close (a number may be reused by then): the child opens its own.
        self._local = threading.local()

    def _take_gate(self, gate: int, *, wait: bool) -> None:
        try:
            fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not wait:
                raise WriterBusyError from None
        # Poll from 20 us, doubling up to 250 us (SQLite's own wait sleeps 1, 2, 5, 10 ms
        # and more), and give up after busy_timeout as SQLite would: a writer stopped
        # while holding the gate must not hang every other one.
        deadline = time.monotonic() + self._busy_timeout
        delay = 20e-6
        while True:
            time.sleep(delay)
            try:
                fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError(
                        f"database is locked: the writer gate stayed busy for"
                        f" {self._busy_timeout:g} s"
                    ) from None
                delay = min(delay * 2, 0.00025)

    def _begin(self, conn: sqlite3.Connection, gate: int, *, wait: bool) -> None:
        """``BEGIN IMMEDIATE`` behind the writer gate (see the class docstring), or the gate
        released again and the error raised. With ``wait=False`` nothing waits: not the
        gate, and not SQLite's own busy handler either (a program that ignores the gate
        may hold the write lock)."""
        self._take_gate(gate, wait=wait)
        try:
            if wait:
                conn.execute("BEGIN IMMEDIATE")
            else:
                # The timeout stays off after this write: the next one that must not wait
                # (a server's small batches, one after another) needs no statement to turn
                # it off again, and whatever else uses the connection next turns it back on
                # first (``_connection``). Inside the transaction it changes nothing: in WAL
                # mode a statement of a transaction that holds the write lock never waits
                # on a lock (a busy WAL restart or checkpoint is skipped, not waited for).
                if not self._local.busy_off:
                    conn.execute("PRAGMA busy_timeout = 0")
                    self._local.busy_off = True
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as e:
                    if "locked" in str(e) or "busy" in str(e):
                        raise WriterBusyError from None
                    raise
        except BaseException:
            fcntl.flock(gate, fcntl.LOCK_UN)
            raise

    @contextlib.contextmanager
    def _gated(self, conn: sqlite3.Connection, *, wait: bool = True) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … behind the writer gate (see :meth:`_begin`)."""
        gate: int = self._local.gate
        self._begin(conn, gate, wait=wait)
        try:
            yield
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)

    def _migrate(self) -> None:
        conn = self._connection()
        with self._gated(conn):
            self._migrate_in(conn)

    def _migrate_in(self, conn: sqlite3.Connection) -> None:
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise InvalidInputError(
                    "store",
                    f"schema version {version} is newer than this sls_core ({SCHEMA_VERSION})",
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in SQLITE_MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        return int(self._connection().execute("PRAGMA user_version").fetchone()[0])

    def ping(self) -> None:
        """The server's store probe (about once a second): StoreUnavailableError if the
        file cannot be read, or another process migrated it past this code's schema (the
        server then reports NOT_SERVING until it is restarted on the new version)."""
        try:
            version = self.schema_version
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"sqlite: {e}") from None
        if version > SCHEMA_VERSION:
            raise newer_schema(version, SCHEMA_VERSION, "process")

    def key_holders(self) -> list[tuple[str, str, int, str, float]]:
        """(holder, host, pid, key id, last seen) of every store that may still seal."""
        rows = self._connection().execute(
            "SELECT holder, host, pid, key_id, seen_at FROM key_holders"
        )
        return live_holders(rows.fetchall())

    def _advertise(self, conn: sqlite3.Connection) -> None:
        row = self._advertisement()
        if row is not None:
            conn.execute(
                "INSERT INTO key_holders (holder, host, pid, key_id, seen_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(holder) DO UPDATE SET"
                " key_id = excluded.key_id, seen_at = excluded.seen_at",
                row,
            )

    def checkpoint_past(self, pages: int) -> None:
        """A commit of this store checkpoints the write-ahead log itself only once the log
        holds ``pages`` pages (SQLite's default: 1000), for a process that checkpoints from
        a thread of its own (the server's ``WalCheckpointer``). Such a commit copies the
        pages and syncs the log, the database and the new log's header: milliseconds on
        the event loop. With a larger bound the thread's PASSIVE checkpoints copy the pages
        first, and the commit that starts the log over syncs only its header; the log grows
        to ``pages`` pages (4 KiB each) at most."""
        if not 100 <= pages <= 1_000_000:
            raise InvalidInputError("pages", "between 100 and 1000000")
        self._autocheckpoint_pages = pages
        self._checkpoint_setting += 1

    def _set_autocheckpoint(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA wal_autocheckpoint = {self._autocheckpoint_pages}")
        self._local.checkpoint_setting = self._checkpoint_setting

    def write(self, *, wait: bool = True) -> _WriteTransaction:
        return _WriteTransaction(self, wait)

    @contextlib.contextmanager
    def read(self) -> Iterator[_SqliteTx]:
        conn = self._connection()
        self._follow_key_file()  # records sealed under a rotated-in key must open here too
        conn.execute("BEGIN")  # WAL: a snapshot that neither waits for nor blocks writers
        try:
            yield _SqliteTx(conn, self._keyring, self)
        finally:
            conn.execute("ROLLBACK")

    # -- what a full load leaves to first use (LoadDetails, ReadsDetails) ------------------
    def _read_details(self, table: str, row_id: int) -> Sequence[Any] | None:
        # Columns no UPDATE touches, of a row never deleted: this thread's connection,
        # inside its transaction or not, has the values the load had.
        query = _DETAILS[table]
        row: Sequence[Any] | None = self._connection().execute(query, (row_id,)).fetchone()
        if row is None:
            # Unless its open transaction began before the row was written, and the load
            # that listed the row ran since, in another thread: the latest snapshot has it.
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout)
            try:
                row = conn.execute(query, (row_id,)).fetchone()
            finally:
                conn.close()
        return row

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "busy_off", False):
            with contextlib.suppress(sqlite3.Error):
                conn.execute(self._busy_timeout_on)
            self._local.busy_off = False
        if conn is not None and self._advertised is not None:
            with contextlib.suppress(sqlite3.Error):  # closing seals nothing more
                conn.execute("DELETE FROM key_holders WHERE holder = ?", (self.holder,))
            self._advertised = None
        if conn is not None:
            conn.close()
            self._local.conn = None
            self._gates.discard(self._local.gate)
            os.close(self._local.gate)

    # -- what operators ask --------------------------------------------------------------
    def key_ids_in_use(self) -> dict[str, int]:
        """How many sealed values each master key id seals (rotation and ``--retire``)."""
        return count_key_ids(self._connection().execute(SEALED_VALUES))

    def row_counts(self) -> dict[str, int]:
        """Rows of the tables an operator asks about first."""
        conn = self._connection()
        counts = {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
            for table in COUNTED_TABLES
        }
        return counts | {"consumed": count_consumed(conn.execute(CONSUMED_MASKS))}

    # -- master key rotation -----------------------------------------------------------
    def rotate_master_key(
        self,
        keyring: MasterKeyRing,
        *,
        chunk: int = 500,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Re-seals every device secret, PIN hash and server secret not yet under
        ``keyring``'s active key, ``chunk`` rows per transaction; returns how many rows
        changed. Interrupted, it resumes where it stopped: finished rows carry the new key
        id and are skipped. ``progress(done, total)`` is called after each chunk."""
        self._keyring = keyring
        active = keyring.active_key_id
        conn = self._connection()

        def stale_devices() -> list[int]:
            ids = []
            for device_id, secret, pin_hash in conn.execute(
                "SELECT id, secret, pin_hash FROM devices"
            ):
                if any(
                    blob is not None and MasterKeyRing.key_id_of(blob) != active
                    for blob in (secret, pin_hash)
                ):
                    ids.append(device_id)
            return ids

        todo = stale_devices()
        total, done = len(todo), 0
        for start in range(0, total, chunk):
            with self.write() as tx:
                for row in tx.devices(todo[start : start + chunk]):
                    conn.execute(
                        "UPDATE devices SET secret = ?, pin_hash = ? WHERE id = ?",
                        (
                            tx._seal(row.id, "secret", row.secret),
                            tx._seal(row.id, "pin_hash", row.pin_hash),
                            row.id,
                        ),
                    )
                    done += 1
            if progress is not None:
                progress(done, total)
        with self.write() as tx:
            for name, sealed in conn.execute("SELECT name, sealed FROM server_secrets").fetchall():
                if MasterKeyRing.key_id_of(sealed) != active:
                    aad = f"server:{name}".encode()
                    value = keyring.open(sealed, aad=aad)
                    conn.execute(
                        "UPDATE server_secrets SET sealed = ? WHERE name = ?",
                        (keyring.seal(value, aad=aad), name),
                    )
                    done += 1
            # Pending activation offers seal their X25519 key too; expired or used ones are
            # dead weight (and could not be opened after the old key is retired).
            conn.execute(
                "DELETE FROM activations WHERE used_at IS NOT NULL OR expires_at < ?",
                (time.time(),),
            )
            for session, private in conn.execute(
                "SELECT session_id, server_private FROM activations"
            ).fetchall():
                if MasterKeyRing.key_id_of(private) != active:
                    aad = b"activation:" + bytes(session)
                    conn.execute(
                        "UPDATE activations SET server_private = ? WHERE session_id = ?",
                        (keyring.seal(keyring.open(private, aad=aad), aad=aad), session),
                    )
                    done += 1
            del tx
        return done
