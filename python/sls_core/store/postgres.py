"""The shared store: PostgreSQL, for several sls_core nodes (psycopg 3 and its pool).

Same interface and the same exactness as the embedded store, across nodes:

* **One writer at a time, cluster-wide.** A write transaction starts by taking a
  transaction-scoped advisory lock (``pg_advisory_xact_lock``), the counterpart of SQLite's
  ``BEGIN IMMEDIATE``: the replay check and the consumed insert, a lockout count and its
  update, an enrollment and the change feed are decided by one transaction at a time, so
  no update is lost and no deadlock can form (one lock, always taken first). Large batches
  check their answers before they ask for the lock (the domain's pre-check), so the nodes'
  kernel work overlaps; only settling is serial. The change feed's generations are
  therefore committed in order, and every node's directory catches up at the start of its
  next transaction: a device revoked on node A is refused on node B at the very next
  attempt.
* **Consume once** is also enforced by the database: a challenge is one bit of its
  block's row in ``consumed_blocks`` (the block is the primary key), set by a statement
  that writes nothing if any of its bits is set already; a push is decided by
  ``UPDATE ... WHERE decision IS NULL``.
* **Failures are never verdicts.** A dropped connection, a PostgreSQL restart or failover,
  or a lock that stays busy for ``lock_timeout`` raise :class:`StoreUnavailableError`
  (servers answer UNAVAILABLE and turn NOT_SERVING until a probe succeeds). A connection
  found dead before anything was sent in it (the pool's connections after a restart) is
  replaced and the transaction started again on a fresh one; nothing is retried once a
  statement of the transaction has run.

Batches take one round trip per statement whatever their size: ids travel as arrays
(``= ANY(%b)``, ``unnest``), in binary: psycopg writes a text array element by element
in Python, three times slower, and that work happens under the write lock.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from sls_core.errors import AlreadyExistsError, InvalidInputError
from sls_core.sealing import MasterKeyRing, device_aad
from sls_core.store import postgres_load
from sls_core.store.base import (
    CONSUMED_BLOCK_BITS,
    DEVICE_COLUMNS,
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
    ids_marked,
    newer_schema,
    unique_ids,
)
from sls_core.store.keys import (
    COUNTED_TABLES,
    SEALED_VALUES,
    KeyFollower,
    count_key_ids,
    live_holders,
)
from sls_core.store.load import (
    DEVICE_DETAILS,
    USER_DETAILS,
    DirectoryLoad,
    ReadsDetails,
    UserColumns,
)
from sls_core.store.schema import POSTGRES_MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStore", "is_postgres_url"]

#: The advisory lock every write transaction takes first ("SLS1" as an integer).
WRITE_LOCK: Final = 0x534C5331
#: How long a writer waits for the lock before the call is UNAVAILABLE (milliseconds);
#: the counterpart of SQLite's busy_timeout.
LOCK_TIMEOUT_MS: Final = 30_000
#: A transaction left idle this long (a node stopped mid-transaction) is ended by the
#: server, so that its lock is released (milliseconds).
IDLE_IN_TRANSACTION_MS: Final = 60_000
#: How long a call waits for a connection while the database is known to be down.
DOWN_WAIT_SECONDS: Final = 0.5
#: How long a full load's second connection waits for the pool (which holds one
#: connection until asked for more; a new one takes milliseconds on a LAN): past it, the
#: load reads everything on its own connection instead.
SPARE_WAIT_SECONDS: Final = 0.25
#: How long the pool retries a lost connection before leaving it to the next call.
RECONNECT_SECONDS: Final = 2.0
_URL = re.compile(r"postgres(ql)?://", re.IGNORECASE)


def is_postgres_url(url: str | None) -> bool:
    """Whether ``url`` names a PostgreSQL store (``postgresql://`` or ``postgres://``)."""
    return url is not None and _URL.match(url) is not None


def _redacted(url: str) -> str:
    """The URL without its password, for messages and reprs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _ids(ids: Iterable[int]) -> list[int]:
    """Python ints for an array parameter (an integer numpy array in one ``tolist``)."""
    dtype = getattr(ids, "dtype", None)
    if dtype is not None and dtype.kind in "iu":
        return ids.tolist()  # type: ignore[attr-defined, no-any-return]
    return [int(i) for i in ids]


class _BigintArray:
    """A ``bigint[]`` parameter already in PostgreSQL's binary array format, built by numpy
    in one pass: psycopg dumps a list element by element in Python (0.3 s for the ids of
    a 100k batch, under the write lock); this takes about a millisecond."""

    __slots__ = ("payload",)

    #: Each element: its length (always 8) and its value, big-endian.
    _ELEMENT = np.dtype([("length", ">i4"), ("value", ">i8")])

    def __init__(self, ids: Ids) -> None:
        values = np.asarray(ids).astype(np.int64, copy=False)
        body = np.empty(len(values), dtype=self._ELEMENT)
        body["length"] = 8
        body["value"] = values
        # ndim, has-nulls, element type (int8), then the one dimension's size and lower bound.
        header = struct.pack(">iiiii", 1, 0, _INT8_OID, len(values), 1)
        self.payload = header + body.tobytes()


#: PostgreSQL's type ids of bigint and bigint[].
_INT8_OID, _INT8_ARRAY_OID = 20, 1016


#: The change feed's generation, and the schema version of the store as it is now.
_GENERATION_AND_SCHEMA: Final = (
    "SELECT coalesce(max(generation), 0), (SELECT max(version) FROM sls_schema) FROM changes"
)

#: Marks a batch's challenges consumed, all or none: no row is written when any of them is
#: marked already (parameters: the blocks and masks as arrays, then the expiry). The
#: check reads the table as the statement began; under the write lock the rowcount is
#: every block or none, and any other count is refused (``MarksConsumed._mark_all``).
_MARK_CONSUMED: Final = (
    "WITH n AS (SELECT * FROM unnest(%b::bigint[], %b::bigint[]) AS n(block, mask))"
    " INSERT INTO consumed_blocks (block, mask, expires_at) SELECT block, mask, %s FROM n"
    " WHERE NOT EXISTS (SELECT 1 FROM n JOIN consumed_blocks AS c USING (block)"
    " WHERE c.mask & n.mask <> 0)"
    " ON CONFLICT (block) DO UPDATE SET mask = consumed_blocks.mask | excluded.mask,"
    " expires_at = GREATEST(consumed_blocks.expires_at, excluded.expires_at)"
    # Checked again on the row as committed: a writer without the write lock that got
    # there first makes this update skip rather than take the same bit twice.
    " WHERE (consumed_blocks.mask & excluded.mask) = 0"
)


#: The bounded purge: the oldest blocks whose latest expiry is past (parameters: the time,
#: the limit, the time again). The outer expiry check runs on each row as it is when
#: deleted: a block that a writer extended meanwhile stays.
_PURGE_SLICE: Final = (
    "DELETE FROM consumed_blocks WHERE block = ANY(ARRAY(SELECT block FROM"
    " consumed_blocks WHERE expires_at <= %s ORDER BY expires_at LIMIT %s))"
    " AND expires_at <= %s"
)


@functools.cache
def _bigint_array_dumper() -> type:
    """The psycopg dumper of :class:`_BigintArray` (psycopg is imported on first use)."""
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class BigintArrayDumper(Dumper):
        format = Format.BINARY
        oid = _INT8_ARRAY_OID

        def dump(self, obj: Any) -> bytes:
            payload: bytes = obj.payload
            return payload

    return BigintArrayDumper


def _psycopg() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise InvalidInputError(
            "store",
            "a postgresql:// store needs psycopg 3 and its pool: "
            "pip install 'sls-core[postgresql]'",
        ) from None
    return psycopg, psycopg_pool


#: A loaded row's details (:class:`~sls_core.store.load.ReadsDetails`), by table.
_DETAILS: Final = {
    "users": f"SELECT {USER_DETAILS} FROM users WHERE id = %s",  # noqa: S608
    "devices": f"SELECT {DEVICE_DETAILS} FROM devices WHERE id = %s",  # noqa: S608
}


class _NoSpareConnectionError(Exception):
    """No pooled connection was free at once (``_begin(spare=True)``)."""


class _PostgresTx(MarksConsumed):
    """One transaction on one connection (see :class:`sls_core.store.StoreTx`)."""

    def __init__(
        self, conn: psycopg.Connection[Any], keyring: MasterKeyRing, store: PostgresStore
    ) -> None:
        self._conn = conn
        self._keyring = keyring
        self._store = store

    def _one(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(query, params).fetchone()

    def _all(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn.execute(query, params).fetchall()

    def _run(self, query: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(query, params).rowcount

    # -- change feed -------------------------------------------------------------------
    def generation(self) -> int:
        # The schema version rides along, in the same round trip: a node left running at
        # an older version after a newer one migrated the store (a rolling upgrade) then
        # refuses as unavailable, and its health turns NOT_SERVING, instead of failing on
        # tables that changed under it.
        generation, version = self._one(_GENERATION_AND_SCHEMA)
        if version is not None and int(version) > SCHEMA_VERSION:
            raise newer_schema(int(version), SCHEMA_VERSION, "node")
        return int(generation)

    def _changed(self, user_id: int | None = None, device_id: int | None = None) -> None:
        self._run("INSERT INTO changes (user_id, device_id) VALUES (%s, %s)", (user_id, device_id))

    def changes_since(self, generation: int) -> tuple[set[int], set[int]] | None:
        users: set[int] = set()
        devices: set[int] = set()
        for user_id, device_id in self._all(
            "SELECT user_id, device_id FROM changes WHERE generation > %s", (generation,)
        ):
            if user_id is None and device_id is None:
                return None
            if user_id is not None:
                users.add(int(user_id))
            if device_id is not None:
                devices.add(int(device_id))
        return users, devices

    # -- lockout -----------------------------------------------------------------------
    def failures(self, user_ids: Iterable[int]) -> dict[int, list[float]]:
        # Once per user: a batch names a user as often as it has attempts of theirs.
        ids = unique_ids(user_ids)
        if not len(ids):
            return {}
        # A join, not ``= ANY``: the planner hashes the smaller side (usually the few users
        # with failures) where ANY probes the index once per id, after planning each id.
        rows = self._all(
            "SELECT f.user_id, f.times FROM unnest(%b::bigint[]) AS u(id)"
            " JOIN failures AS f ON f.user_id = u.id",
            (_BigintArray(ids),),
        )
        return {int(uid): json.loads(times) for uid, times in rows}

    def put_failures(self, rows: dict[int, list[float]]) -> None:
        if not rows:
            return
        self._run(
            "INSERT INTO failures (user_id, times)"
            " SELECT * FROM unnest(%b::bigint[], %b::text[])"
            " ON CONFLICT (user_id) DO UPDATE SET times = excluded.times",
            ([int(u) for u in rows], [json.dumps(t) for t in rows.values()]),
        )

    def clear_failures(self, user_ids: Iterable[int]) -> None:
        ids = unique_ids(user_ids)
        if len(ids):
            self._run("DELETE FROM failures WHERE user_id = ANY(%b)", (_BigintArray(ids),))

    # -- replay ------------------------------------------------------------------------
    def consumed(self, challenge_ids: Ids) -> set[int]:
        if len(challenge_ids) == 0:
            return set()
        ids = unique_ids(challenge_ids)
        rows = self._all(
            "SELECT block, mask FROM consumed_blocks WHERE block = ANY(%b)",
            (_BigintArray(unique_ids(ids >> CONSUMED_BLOCK_BITS)),),
        )
        return ids_marked(ids, rows)

    def _mark(self, blocks: list[int], masks: list[int], expires_at: float) -> int:
        return self._run(_MARK_CONSUMED, (_BigintArray(blocks), _BigintArray(masks), expires_at))

    def purge_consumed(self, before: float, limit: int | None = None) -> int:
        if limit is None:
            return self._run("DELETE FROM consumed_blocks WHERE expires_at <= %s", (before,))
        # Bounded: the purge runs inside a login transaction and must stay short.
        return self._run(_PURGE_SLICE, (before, limit, before))

    # -- abuse limits ------------------------------------------------------------------
    def metered(self, kind: str, user_id: int, since: float) -> list[float]:
        rows = self._all(
            "SELECT at FROM metered WHERE kind = %s AND user_id = %s AND at > %s ORDER BY at",
            (kind, user_id, since),
        )
        return [float(at) for (at,) in rows]

    def meter(self, kind: str, user_id: int, at: float) -> None:
        self._run(
            "INSERT INTO metered (kind, user_id, at) VALUES (%s, %s, %s)", (kind, user_id, at)
        )
        self._run(
            "DELETE FROM metered WHERE kind = %s AND user_id = %s AND at < %s",
            (kind, user_id, at - 86_400),
        )

    # -- activations and pushes --------------------------------------------------------
    def insert_activation(self, row: ActivationRow) -> None:
        aad = b"activation:" + row.session_id
        self._run(
            "INSERT INTO activations (session_id, manual_prefix, user_id, server_private,"
            " server_public, channel, issued_at, expires_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
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
        query = (
            "SELECT session_id, manual_prefix, user_id, server_private, channel, issued_at,"
            " expires_at, used_at, server_public FROM activations WHERE "
        )
        if session_id is not None:
            row = self._one(query + "session_id = %s", (session_id,))
        else:
            row = self._one(query + "manual_prefix = %s", (manual_prefix,))
        if row is None:
            return None
        if row[7] is None:
            self._run("UPDATE activations SET used_at = %s WHERE session_id = %s", (now, row[0]))
        session = bytes(row[0])
        private = self._keyring.open(bytes(row[3]), aad=b"activation:" + session)
        return ActivationRow(
            session_id=session,
            manual_prefix=bytes(row[1]),
            user_id=int(row[2]),
            channel=row[4],
            issued_at=row[5],
            expires_at=row[6],
            used_at=row[7],
            server_public=bytes(row[8]),
            server_private=private,
        )

    _PUSH = (
        "SELECT challenge_id, user_id, device_id, issued_at, expires_at, decision, decided_at"
        " FROM pushes"
    )

    def insert_push(self, row: PushRow) -> None:
        self._run(
            "INSERT INTO pushes (challenge_id, user_id, device_id, issued_at, expires_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (row.challenge_id, row.user_id, row.device_id, row.issued_at, row.expires_at),
        )

    def pushes(self, challenge_ids: Sequence[int]) -> dict[int, PushRow]:
        rows = self._all(self._PUSH + " WHERE challenge_id = ANY(%b)", (_ids(challenge_ids),))
        return {int(r[0]): PushRow(*r) for r in rows}

    def push(self, challenge_id: int) -> PushRow | None:
        row = self._one(self._PUSH + " WHERE challenge_id = %s", (challenge_id,))
        return None if row is None else PushRow(*row)

    def pending_pushes(self, device_ids: Sequence[int], now: float) -> list[PushRow]:
        rows = self._all(
            self._PUSH + " WHERE decision IS NULL AND expires_at > %s AND device_id = ANY(%b)"
            " ORDER BY challenge_id",
            (now, _ids(device_ids)),
        )
        return [PushRow(*r) for r in rows]

    def decide_push(self, challenge_id: int, decision: str, now: float) -> bool:
        return (
            self._run(
                "UPDATE pushes SET decision = %s, decided_at = %s"
                " WHERE challenge_id = %s AND decision IS NULL",
                (decision, now, challenge_id),
            )
            == 1
        )

    # -- users and devices -------------------------------------------------------------
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

    def insert_user(self, username: str, identity: dict[str, str], now: float) -> int:
        row = self._one(
            "INSERT INTO users (username, identity, created_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (username) DO NOTHING RETURNING id",
            (username, json.dumps(identity, sort_keys=True), now),
        )
        if row is None:
            raise AlreadyExistsError("username", "already taken", "USERNAME_TAKEN")
        user_id = int(row[0])
        self._changed(user_id=user_id)
        return user_id

    def update_user(self, user_id: int, **values: Any) -> None:
        unknown = set(values) - self._USER_COLUMNS
        if unknown:
            raise ValueError(f"not user columns: {sorted(unknown)}")
        # Flags are integers, as in SQLite (a bool would not fit an integer column).
        values = {k: int(v) if isinstance(v, bool) else v for k, v in values.items()}
        sets = ", ".join(f"{k} = %s" for k in values)
        self._run(f"UPDATE users SET {sets} WHERE id = %s", (*values.values(), user_id))  # noqa: S608
        self._changed(user_id=user_id)

    def _seal(self, device_id: int, what: str, value: bytes | None) -> bytes | None:
        if value is None:
            return None
        return self._keyring.seal(value, aad=f"device:{device_id}:{what}".encode())

    def _open(self, device_id: int, what: str, value: bytes | None) -> bytes | None:
        if value is None:
            return None
        aad = device_aad(device_id, what)
        return self._keyring.open(bytes(value), aad=aad, record=f"device {device_id} {what}")

    def insert_device(self, row: DeviceRow, owners: Sequence[int]) -> int:
        # The id first: the sealed secret is bound to it, so the row is written once.
        device_id = int(self._one("SELECT nextval(pg_get_serial_sequence('devices', 'id'))")[0])
        self._run(
            "INSERT INTO devices (id, type, state, serial, suite, phone, issued_at, shipped_at,"
            " activated_at, expires_at, replaces, push_public, recovery_hash, secret, pin_hash)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                device_id,
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
                self._seal(device_id, "secret", row.secret),
                self._seal(device_id, "pin_hash", row.pin_hash),
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
        sets = ", ".join(f"{k} = %s" for k in values)
        self._run(f"UPDATE devices SET {sets} WHERE id = %s", (*values.values(), device_id))  # noqa: S608
        self._changed(device_id=device_id)

    def link(self, user_id: int, device_id: int) -> None:
        self._run(
            "INSERT INTO user_devices (user_id, device_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (user_id, device_id),
        )
        self._changed(user_id=user_id, device_id=device_id)

    def unlink(self, user_id: int, device_id: int) -> None:
        self._run(
            "DELETE FROM user_devices WHERE user_id = %s AND device_id = %s", (user_id, device_id)
        )
        self._changed(user_id=user_id, device_id=device_id)

    # -- sharing requests ----------------------------------------------------------------
    def insert_sharing(self, row: SharingRow) -> int:
        found = self._one(
            "INSERT INTO sharing_requests (owner_id, requester_id, device_id, state,"
            " set_aside, created_at, decided_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " RETURNING id",
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
        return int(found[0])

    def sharing(self, request_id: int) -> SharingRow | None:
        found = self._one(
            "SELECT id, owner_id, requester_id, device_id, state, set_aside, created_at,"
            " decided_at FROM sharing_requests WHERE id = %s",
            (request_id,),
        )
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
        found = self._one(
            "SELECT id FROM sharing_requests WHERE requester_id = %s AND device_id = %s"
            " AND state IN ('pending', 'active')",
            (requester_id, device_id),
        )
        return None if found is None else self.sharing(int(found[0]))

    def update_sharing(self, request_id: int, *, state: str, decided_at: float) -> None:
        self._run(
            "UPDATE sharing_requests SET state = %s, decided_at = %s WHERE id = %s",
            (state, decided_at, request_id),
        )

    def bulk_enroll(
        self, users: Sequence[tuple[str, dict[str, str]]], devices: Sequence[DeviceRow], now: float
    ) -> None:
        """``users[i]`` holding ``devices[i]``, by COPY (a million devices in seconds)."""
        if len(users) != len(devices):
            raise InvalidInputError("devices", "one device per user")
        first_user = int(self._one("SELECT coalesce(max(id), 0) FROM users")[0])
        first_device = int(self._one("SELECT coalesce(max(id), 0) FROM devices")[0])
        taken = self._one(
            "SELECT count(*) FROM users WHERE username = ANY(%b)", ([u for u, _ in users],)
        )
        if int(taken[0]) or len({u for u, _ in users}) != len(users):
            raise AlreadyExistsError("username", "already taken", "USERNAME_TAKEN")
        cur = self._conn.cursor()
        with cur.copy("COPY users (id, username, identity, created_at) FROM STDIN") as copy:
            for i, (name, identity) in enumerate(users):
                copy.write_row(
                    (first_user + 1 + i, name, json.dumps(identity, sort_keys=True), now)
                )
        with cur.copy(
            "COPY devices (id, type, state, serial, suite, secret, pin_hash, phone, issued_at,"
            " shipped_at, activated_at, expires_at) FROM STDIN"
        ) as copy:
            for i, d in enumerate(devices):
                device_id = first_device + 1 + i
                copy.write_row(
                    (
                        device_id,
                        d.type,
                        d.state,
                        d.serial,
                        d.suite,
                        self._seal(device_id, "secret", d.secret),
                        self._seal(device_id, "pin_hash", d.pin_hash),
                        d.phone,
                        d.issued_at,
                        d.shipped_at,
                        d.activated_at,
                        d.expires_at,
                    )
                )
        with cur.copy("COPY user_devices (user_id, device_id) FROM STDIN") as copy:
            for i in range(len(users)):
                copy.write_row((first_user + 1 + i, first_device + 1 + i))
        # Explicit ids leave the identity sequences behind: move them past what was used.
        for table in ("users", "devices"):
            self._run(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"  # noqa: S608 - constant
                f" greatest((SELECT coalesce(max(id), 0) FROM {table}), 1))"
            )
        self._changed()  # a bulk marker: every directory reloads in full

    def users(self, user_ids: Iterable[int] | None = None) -> list[UserRow]:
        query = f"SELECT {USER_COLUMNS} FROM users"  # noqa: S608 - constant
        rows = (
            self._all(query)
            if user_ids is None
            else self._all(query + " WHERE id = ANY(%b)", (_ids(user_ids),))
        )
        return [
            UserRow(
                int(r[0]),
                r[1],
                json.loads(r[2]),
                bool(r[3]),
                bool(r[4]),
                None if r[5] is None else int(r[5]),
                r[6],
            )
            for r in rows
        ]

    def devices(self, device_ids: Iterable[int] | None = None) -> list[DeviceRow]:
        query = f"SELECT {DEVICE_COLUMNS} FROM devices"  # noqa: S608 - constant
        rows = (
            self._all(query)
            if device_ids is None
            else self._all(query + " WHERE id = ANY(%b)", (_ids(device_ids),))
        )
        return [
            DeviceRow(
                id=int(r[0]),
                type=r[1],
                state=r[2],
                serial=r[3],
                suite=r[4],
                issued_at=r[5],
                shipped_at=r[6],
                activated_at=r[7],
                expires_at=r[8],
                replaces=None if r[9] is None else int(r[9]),
                phone=r[10],
                secret=self._open(int(r[0]), "secret", r[11]),
                pin_hash=self._open(int(r[0]), "pin_hash", r[12]),
                push_public=None if r[13] is None else bytes(r[13]),
                recovery_hash=None if r[14] is None else bytes(r[14]),
            )
            for r in rows
        ]

    def links(self, user_ids: Iterable[int] | None = None) -> list[tuple[int, int]]:
        query = "SELECT user_id, device_id FROM user_devices"
        rows = (
            self._all(query)
            if user_ids is None
            else self._all(query + " WHERE user_id = ANY(%b)", (_ids(user_ids),))
        )
        return [(int(u), int(d)) for u, d in rows]

    def load_directory(
        self, *, secret_width: int | None = None, pin_width: int | None = None
    ) -> DirectoryLoad:
        generation, store = self.generation(), self._store
        return postgres_load.load_directory(
            self._conn,
            self._keyring,
            store,
            lambda: store._users_and_links_beside(generation),
            (*store._pool_errors, store._psycopg.Error, StoreUnavailableError),
            secret_width=secret_width,
            pin_width=pin_width,
        )

    # -- sequences and server secrets --------------------------------------------------
    def reserve(self, name: str, count: int) -> int:
        row = self._one(
            "INSERT INTO sequences (name, next_value) VALUES (%s, 1 + %s)"
            " ON CONFLICT (name) DO UPDATE SET next_value = sequences.next_value + %s"
            " RETURNING next_value",
            (name, count, count),
        )
        return int(row[0]) - count

    def server_secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        aad = f"server:{name}".encode()
        row = self._one("SELECT sealed FROM server_secrets WHERE name = %s", (name,))
        if row is not None:
            return self._keyring.open(bytes(row[0]), aad=aad)
        value = make()
        self._run(
            "INSERT INTO server_secrets (name, sealed) VALUES (%s, %s)",
            (name, self._keyring.seal(value, aad=aad)),
        )
        return value


class PostgresStore(ReadsDetails, KeyFollower):
    """The store on PostgreSQL, shared by every node: ``url`` is a libpq URL
    (``postgresql://user@host:port/db``; a password is better given by ``PGPASSWORD`` or
    ``~/.pgpass`` than in the URL). ``pool_size`` connections at most (default: 2 + the
    CPUs), ``connect_timeout`` seconds to get one before the call is UNAVAILABLE."""

    def __init__(
        self,
        url: str,
        *,
        keyring: MasterKeyRing,
        key_file: str | os.PathLike[str] | None = None,
        pool_size: int | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        psycopg, psycopg_pool = _psycopg()
        self._psycopg = psycopg
        self._pool_errors: tuple[type[BaseException], ...] = (
            psycopg.OperationalError,
            psycopg_pool.PoolTimeout,
            psycopg_pool.PoolClosed,
        )
        self.url = url
        self._keyring = keyring
        self._key_file = Path(key_file) if key_file is not None else None
        self._key_file_seen = self._key_file_stamp()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._advertised: tuple[str, float] | None = None
        self._advertise_lock = threading.Lock()
        #: Per thread: its open transactions' connections, innermost last.
        self._per_thread = threading.local()
        self._timeout = connect_timeout
        self._reachable = True
        size = pool_size or (2 + (os.cpu_count() or 1))
        self._size = size

        self._unpooled: set[int] = set()

        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=size,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
            configure=self._configure,
            timeout=connect_timeout,
            # The pool's reconnection backs off exponentially until it gives up (5 min by
            # default): after a long outage it would come back minutes late. Giving up
            # after 2 s instead lets the next call (or the server's 1 s ping) start a fresh
            # attempt at once, so a node serves again within seconds of the database.
            reconnect_timeout=RECONNECT_SECONDS,
            open=False,
            name="sls-store",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg_pool.PoolTimeout:
            self._pool.close()
            raise StoreUnavailableError(
                f"no connection to {_redacted(url)} within {connect_timeout:g} s"
            ) from None
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({_redacted(self.url)!r})"

    @staticmethod
    def _configure(conn: Any) -> None:
        """Every connection: how long to wait for the write lock, and how long the
        database lets a transaction sit idle (a stopped node's lock is released then)."""
        conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        conn.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")
        conn.adapters.register_dumper(_BigintArray, _bigint_array_dumper())

    # -- connections and transactions -----------------------------------------------------
    def _unavailable(self, error: BaseException) -> StoreUnavailableError:
        self._reachable = False  # until a transaction starts again: fail fast meanwhile
        # The driver's message names the host and the cause, never a parameter: safe.
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return StoreUnavailableError(first)

    def _begin(self, *, lock: bool, wait: bool, spare: bool = False) -> psycopg.Connection[Any]:
        """A pooled connection inside ``BEGIN`` (holding the write lock when ``lock``). A
        connection that fails its first statement has applied nothing: it is dropped and
        another tried (after a PostgreSQL restart every pooled connection is dead).
        ``spare``: only a connection the pool has or opens within ``SPARE_WAIT_SECONDS``,
        else :class:`_NoSpareConnectionError` (a busy pool says nothing of the database)."""
        pg = self._psycopg
        last: BaseException | None = None
        for _ in range(self._size + 1):
            try:
                # While the database is known to be down, a call waits for a connection
                # only briefly: the gateway hears UNAVAILABLE at once and goes elsewhere.
                patience = (
                    self._timeout if self._reachable else min(DOWN_WAIT_SECONDS, self._timeout)
                )
                conn: psycopg.Connection[Any] = self._pool.getconn(
                    timeout=min(SPARE_WAIT_SECONDS, patience) if spare else patience
                )
            except self._pool_errors as e:
                if spare:
                    raise _NoSpareConnectionError from None
                if self._reachable:
                    raise self._unavailable(e) from None
                # The pool may be sleeping in its reconnection backoff while the database
                # is back already: one direct attempt tells (and serves this call).
                conn = self._connect_directly(e)
            try:
                conn.execute("BEGIN")
            except pg.OperationalError as e:
                last = e
                self._release(conn)  # broken: the pool discards it
                # A dead connection: the database restarted (a new one comes in
                # milliseconds) or is down (then waiting longer helps nobody).
                self._reachable = False
                continue
            try:
                if lock:
                    if wait:
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                    else:
                        got = conn.execute(
                            "SELECT pg_try_advisory_xact_lock(%s)", (WRITE_LOCK,)
                        ).fetchone()
                        if not (got and got[0]):
                            raise WriterBusyError
            except BaseException as e:
                self._finish(conn, commit=False)
                if isinstance(e, pg.errors.LockNotAvailable):
                    raise StoreUnavailableError(
                        f"the write lock stayed busy for {LOCK_TIMEOUT_MS / 1000:g} s"
                    ) from None
                if isinstance(e, pg.OperationalError):
                    raise self._unavailable(e) from None
                raise
            self._reachable = True
            return conn
        assert last is not None
        raise self._unavailable(last)

    def _finish(self, conn: psycopg.Connection[Any], *, commit: bool) -> None:
        """COMMIT (or ROLLBACK) and give the connection back to the pool."""
        try:
            conn.execute("COMMIT" if commit else "ROLLBACK")
        except self._psycopg.OperationalError as e:
            self._release(conn)
            if commit:  # the outcome is unknown: never answer as if it landed
                raise self._unavailable(e) from None
            return
        except self._psycopg.Error:
            self._release(conn)
            if commit:
                raise
            return
        self._release(conn)

    def _connect_directly(self, pool_error: BaseException) -> psycopg.Connection[Any]:
        """A connection made now, outside the pool (closed after its transaction), or the
        pool's error as StoreUnavailableError if the database still does not answer."""
        pg = self._psycopg
        try:
            conn: psycopg.Connection[Any] = pg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self._timeout))
            )
            self._configure(conn)
        except pg.Error:
            raise self._unavailable(pool_error) from None
        self._unpooled.add(id(conn))
        return conn

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        """Back to the pool (which discards a broken one), or closed if made outside it."""
        if id(conn) in self._unpooled:
            self._unpooled.discard(id(conn))
            conn.close()
        else:
            self._pool.putconn(conn)

    def _users_and_links_beside(
        self, generation: int
    ) -> tuple[UserColumns, postgres_load.Links] | None:
        """A full load's users and links on a pooled connection of its own (see
        :class:`~sls_core.store.load.BesideLoad`); None unless its snapshot (repeatable
        read) has ``generation``."""
        # Only a spare connection: waiting out a busy pool would delay the load (the
        # caller reads them itself instead) and mark the database unreachable.
        try:
            with self._read(spare=True) as tx:
                if tx.generation() != generation:
                    return None
                return postgres_load.user_columns(tx._conn), postgres_load.link_columns(tx._conn)
        except _NoSpareConnectionError:
            return None

    @contextlib.contextmanager
    def _open_in_this_thread(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Notes ``conn`` as this thread's open transaction while the block runs (a
        loaded row's details are read on it, see ``_read_details``)."""
        open_here: list[psycopg.Connection[Any]] = self._per_thread.__dict__.setdefault("open", [])
        open_here.append(conn)
        try:
            yield
        finally:
            open_here.pop()

    # -- what a full load leaves to first use (LoadDetails, ReadsDetails) ------------------
    def _read_details(self, table: str, row_id: int) -> Sequence[Any] | None:
        # Columns no UPDATE touches, of a row never deleted: any snapshot since the load
        # has the values it had. On this thread's open transaction if it has one (one
        # round trip, no second connection while it may hold the write lock).
        query = _DETAILS[table]
        open_here = self._per_thread.__dict__.get("open")
        row: Sequence[Any] | None = None
        if open_here:
            row = open_here[-1].execute(query, (row_id,)).fetchone()
        if row is None:
            # No transaction here, or one whose snapshot began before the row was written
            # (the load that listed it ran since, in another thread): a read of its own.
            with self.read() as tx:
                row = tx._one(query, (row_id,))
        return row

    def write(self, *, wait: bool = True) -> contextlib.AbstractContextManager[_PostgresTx]:
        return self._write(wait=wait, advertise=True)

    @contextlib.contextmanager
    def _write(self, *, wait: bool, advertise: bool) -> Iterator[_PostgresTx]:
        conn = self._begin(lock=True, wait=wait)
        try:
            # Under the write lock: a retirement decided under it (sls_core.admin) cannot
            # miss a writer that read the key file just before the new one was saved.
            self._follow_key_file()
            if advertise:
                self._advertise(conn)
            with self._open_in_this_thread(conn):
                yield _PostgresTx(conn, self._keyring, self)
        except self._psycopg.OperationalError as e:
            self._advertised = None
            self._finish(conn, commit=False)
            raise self._unavailable(e) from None
        except BaseException:
            self._advertised = None  # the row may not have landed: write it again
            self._finish(conn, commit=False)
            raise
        self._finish(conn, commit=True)

    def read(self) -> contextlib.AbstractContextManager[_PostgresTx]:
        return self._read(spare=False)

    @contextlib.contextmanager
    def _read(self, *, spare: bool) -> Iterator[_PostgresTx]:
        self._follow_key_file()
        conn = self._begin(lock=False, wait=True, spare=spare)
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            with self._open_in_this_thread(conn):
                yield _PostgresTx(conn, self._keyring, self)
        except self._psycopg.OperationalError as e:
            self._finish(conn, commit=False)
            raise self._unavailable(e) from None
        except BaseException:
            self._finish(conn, commit=False)
            raise
        self._finish(conn, commit=False)

    def ping(self) -> None:
        """One round trip; StoreUnavailableError if the database cannot be reached."""
        with self.read() as tx:
            tx.generation()

    def close(self) -> None:
        if self._advertised is not None:
            with contextlib.suppress(Exception), self.write() as tx:  # closing seals nothing
                tx._run("DELETE FROM key_holders WHERE holder = %s", (self.holder,))
            self._advertised = None
        self._pool.close()

    # -- schema ----------------------------------------------------------------------------
    def _migrate(self) -> None:
        # Under the write lock: nodes starting together migrate once, one after another.
        with self._write(wait=True, advertise=False) as tx:
            exists = tx._one("SELECT to_regclass('sls_schema') IS NOT NULL")[0]
            version = int(tx._one("SELECT version FROM sls_schema")[0]) if exists else 0
            if version > SCHEMA_VERSION:
                raise InvalidInputError(
                    "store",
                    f"schema version {version} is newer than this sls_core ({SCHEMA_VERSION})",
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in POSTGRES_MIGRATIONS.get(target, ()):
                    tx._run(statement)
                if target in POSTGRES_MIGRATIONS and target > min(POSTGRES_MIGRATIONS):
                    tx._run("UPDATE sls_schema SET version = %s", (target,))

    @property
    def schema_version(self) -> int:
        with self.read() as tx:
            return int(tx._one("SELECT version FROM sls_schema")[0])

    # -- keys --------------------------------------------------------------------------
    def _advertise(self, conn: psycopg.Connection[Any]) -> None:
        row = self._advertisement()
        if row is not None:
            conn.execute(
                "INSERT INTO key_holders (holder, host, pid, key_id, seen_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (holder) DO UPDATE SET"
                " key_id = excluded.key_id, seen_at = excluded.seen_at",
                row,
            )

    def key_holders(self) -> list[tuple[str, str, int, str, float]]:
        """(holder, host, pid, key id, last seen) of every store that may still seal."""
        with self.read() as tx:
            return live_holders(
                tx._all("SELECT holder, host, pid, key_id, seen_at FROM key_holders")
            )

    def key_ids_in_use(self) -> dict[str, int]:
        with self.read() as tx:
            return count_key_ids(tx._all(SEALED_VALUES))

    def row_counts(self) -> dict[str, int]:
        with self.read() as tx:
            counts = {
                table: int(tx._one(f"SELECT count(*) FROM {table}")[0])  # noqa: S608
                for table in COUNTED_TABLES
            }
            # Counted by the server: a backlog's masks need not travel.
            consumed = tx._one(
                "SELECT coalesce(sum(bit_count(mask::bit(64))), 0) FROM consumed_blocks"
            )[0]
            return counts | {"consumed": int(consumed)}

    def rotate_master_key(
        self,
        keyring: MasterKeyRing,
        *,
        chunk: int = 500,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """See :meth:`sls_core.store.SqliteStore.rotate_master_key`."""
        self._keyring = keyring
        active = keyring.active_key_id
        with self.read() as tx:
            todo = [
                int(device_id)
                for device_id, secret, pin_hash in tx._all(
                    "SELECT id, secret, pin_hash FROM devices ORDER BY id"
                )
                if any(
                    blob is not None and MasterKeyRing.key_id_of(bytes(blob)) != active
                    for blob in (secret, pin_hash)
                )
            ]
        total, done = len(todo), 0
        for start in range(0, total, chunk):
            with self.write() as tx:
                for row in tx.devices(todo[start : start + chunk]):
                    tx._run(
                        "UPDATE devices SET secret = %s, pin_hash = %s WHERE id = %s",
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
            for name, sealed in tx._all("SELECT name, sealed FROM server_secrets"):
                if MasterKeyRing.key_id_of(bytes(sealed)) != active:
                    aad = f"server:{name}".encode()
                    value = keyring.open(bytes(sealed), aad=aad)
                    tx._run(
                        "UPDATE server_secrets SET sealed = %s WHERE name = %s",
                        (keyring.seal(value, aad=aad), name),
                    )
                    done += 1
            tx._run(
                "DELETE FROM activations WHERE used_at IS NOT NULL OR expires_at < %s",
                (time.time(),),
            )
            for session, private in tx._all("SELECT session_id, server_private FROM activations"):
                if MasterKeyRing.key_id_of(bytes(private)) != active:
                    aad = b"activation:" + bytes(session)
                    tx._run(
                        "UPDATE activations SET server_private = %s WHERE session_id = %s",
                        (keyring.seal(keyring.open(bytes(private), aad=aad), aad=aad), session),
                    )
                    done += 1
        return done

    @staticmethod
    def holds_sealed_data(url: str, connect_timeout: float = 5.0) -> bool:
        """Whether the database at ``url`` already holds secrets sealed under some master
        key (then a missing key file must never be replaced by a new key)."""
        psycopg, _ = _psycopg()
        try:
            with psycopg.connect(
                url, autocommit=True, connect_timeout=max(1, int(connect_timeout))
            ) as conn:
                exists = conn.execute("SELECT to_regclass('server_secrets') IS NOT NULL").fetchone()
                if not (exists and exists[0]):
                    return False
                row = conn.execute("SELECT count(*) FROM server_secrets").fetchone()
                return bool(row and row[0])
        except psycopg.OperationalError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StoreUnavailableError(first) from None
