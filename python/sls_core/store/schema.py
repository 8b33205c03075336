"""The schema of every store backend, versioned, in one place.

``SCHEMA_VERSION`` is what this code writes. SQLite files are migrated step by step from
whatever version they hold (``SQLITE_MIGRATIONS``); PostgreSQL stores start at version 8,
the first one PostgreSQL supports, and follow the same numbers from there
(``POSTGRES_MIGRATIONS``). A change to the schema adds the same version to both, and
``tests/test_store_backends.py`` checks that both end with the same tables and columns.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["POSTGRES_MIGRATIONS", "SCHEMA_VERSION", "SQLITE_MIGRATIONS"]

#: The schema version this code writes; older files are migrated on open.
SCHEMA_VERSION = 10

SQLITE_MIGRATIONS: dict[int, Sequence[str]] = {
    1: (
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            identity TEXT NOT NULL,
            opted_out INTEGER NOT NULL DEFAULT 0,
            closed INTEGER NOT NULL DEFAULT 0,
            preferred_device INTEGER,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE devices (
            id INTEGER PRIMARY KEY,
            type TEXT NOT NULL,
            state TEXT NOT NULL,
            serial TEXT NOT NULL,
            suite TEXT,
            secret BLOB,
            pin_hash BLOB,
            phone TEXT,
            issued_at REAL NOT NULL,
            shipped_at REAL,
            activated_at REAL,
            expires_at REAL,
            replaces INTEGER REFERENCES devices(id)
        )""",
        """CREATE TABLE user_devices (
            user_id INTEGER NOT NULL REFERENCES users(id),
            device_id INTEGER NOT NULL REFERENCES devices(id),
            PRIMARY KEY (user_id, device_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX user_devices_by_device ON user_devices(device_id)",
        # Consecutive failures since the last success: the last 10 times, JSON.
        "CREATE TABLE failures (user_id INTEGER PRIMARY KEY, times TEXT NOT NULL)",
        # Challenges used once; rows past their expiry can be purged (the token is refused
        # as expired before the replay check would matter).
        "CREATE TABLE consumed (challenge_id INTEGER PRIMARY KEY, expires_at REAL NOT NULL)",
        "CREATE TABLE sequences (name TEXT PRIMARY KEY, next_value INTEGER NOT NULL)",
        "CREATE TABLE server_secrets (name TEXT PRIMARY KEY, sealed BLOB NOT NULL)",
        # The change feed: every write to users/devices bumps it, so each process's
        # in-memory directory reloads exactly what changed.
        """CREATE TABLE changes (
            generation INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER,
            device_id INTEGER
        )""",
    ),
    # 2: expired challenges are purged as verification goes (see purge_consumed).
    2: ("CREATE INDEX consumed_by_expiry ON consumed(expires_at)",),
    # 3: IB Key activation by QR code / manual string / SMS token, and push approvals.
    3: (
        # The app's Ed25519 key that signs push approvals; it also identifies the app
        # installation that holds the user ("already enrolled" on that app).
        "ALTER TABLE devices ADD COLUMN push_public BLOB",
        """CREATE TABLE activations (
            session_id BLOB PRIMARY KEY,
            manual_prefix BLOB NOT NULL UNIQUE,
            user_id INTEGER NOT NULL REFERENCES users(id),
            server_private BLOB NOT NULL,
            server_public BLOB NOT NULL,
            channel TEXT NOT NULL,
            issued_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            used_at REAL
        )""",
        """CREATE TABLE pushes (
            challenge_id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            device_id INTEGER NOT NULL REFERENCES devices(id),
            issued_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            decision TEXT,
            decided_at REAL
        )""",
    ),
    # 4: the IB Key PIN doubles as the recovery PIN: its keyed hash, per device.
    4: ("ALTER TABLE devices ADD COLUMN recovery_hash BLOB",),
    # 5: sharing requests (SLS-RULES "Several devices and sharing"): proved by the owner,
    # maybe pending compliance approval, cancellable; set_aside is a JSON list of the
    # requester's device ids suspended while the shared device serves them.
    5: (
        """CREATE TABLE sharing_requests (
            id INTEGER PRIMARY KEY,
            owner_id INTEGER NOT NULL REFERENCES users(id),
            requester_id INTEGER NOT NULL REFERENCES users(id),
            device_id INTEGER NOT NULL REFERENCES devices(id),
            state TEXT NOT NULL,
            set_aside TEXT NOT NULL,
            created_at REAL NOT NULL,
            decided_at REAL
        )""",
    ),
    # 6: activation offers keep keyed hashes of their session id and manual prefix, never
    # the values (a database copy must not rebuild a pending QR code or manual string).
    # Offers stored before kept them in clear: dropped (they live 10 minutes anyway).
    6: ("DELETE FROM activations",),
    # 7: every open store says which master key it seals with, so a key is retired only
    # once no live process uses it (see SqliteStore.key_holders).
    7: (
        """CREATE TABLE key_holders (
            holder TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            key_id TEXT NOT NULL,
            seen_at REAL NOT NULL
        )""",
    ),
    # 8: per-user abuse limits (texts sent, activation offers): one row per event.
    8: (
        "CREATE TABLE metered (kind TEXT NOT NULL, user_id INTEGER NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX metered_by_user ON metered(kind, user_id, at)",
    ),
    # 9: the purge finds expired challenges through one row per second of expiry and
    # block of 2^20 ids (the range of ids consumed with that expiry in that block) instead
    # of an index entry per challenge: that index was a third of the cost of consuming a
    # batch. Blocks keep a range narrow when far-apart ids (a push redemption's key, an old
    # reservation) expire in the same second.
    9: (
        """CREATE TABLE consumed_spans (
            expires_at REAL NOT NULL,
            id_block INTEGER NOT NULL,
            first_id INTEGER NOT NULL,
            last_id INTEGER NOT NULL,
            PRIMARY KEY (expires_at, id_block)
        )""",
        "INSERT INTO consumed_spans (expires_at, id_block, first_id, last_id)"
        " SELECT CAST(expires_at AS INTEGER) + 1, challenge_id >> 20, min(challenge_id),"
        " max(challenge_id) FROM consumed"
        " GROUP BY CAST(expires_at AS INTEGER) + 1, challenge_id >> 20",
        "DROP INDEX consumed_by_expiry",
    ),
    # 10: consumed challenges as one row per block of 64 ids, a bit each (see
    # store.base.consumed_blocks): a batch writes a row per block instead of one per
    # challenge. A block is kept until its latest expiry. ``sum`` of distinct bits is
    # their OR (SQLite has no bit_or aggregate), and stays in range as the result does.
    10: (
        """CREATE TABLE consumed_blocks (
            block INTEGER PRIMARY KEY,
            mask INTEGER NOT NULL,
            expires_at REAL NOT NULL
        )""",
        "INSERT INTO consumed_blocks (block, mask, expires_at)"
        " SELECT challenge_id >> 6, sum(1 << (challenge_id & 63)), max(expires_at)"
        " FROM consumed GROUP BY challenge_id >> 6",
        "CREATE INDEX consumed_blocks_by_expiry ON consumed_blocks(expires_at)",
        "DROP TABLE consumed_spans",
        "DROP TABLE consumed",
    ),
}

#: Times are seconds since the epoch (double precision), flags integers (0/1), sealed values
#: and keys bytea, as in SQLite. ``sls_schema`` holds the version (SQLite: user_version).
POSTGRES_MIGRATIONS: dict[int, Sequence[str]] = {
    8: (
        "CREATE TABLE sls_schema (version INTEGER NOT NULL)",
        """CREATE TABLE users (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            identity TEXT NOT NULL,
            opted_out INTEGER NOT NULL DEFAULT 0,
            closed INTEGER NOT NULL DEFAULT 0,
            preferred_device BIGINT,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE devices (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            type TEXT NOT NULL,
            state TEXT NOT NULL,
            serial TEXT NOT NULL,
            suite TEXT,
            secret BYTEA,
            pin_hash BYTEA,
            phone TEXT,
            issued_at DOUBLE PRECISION NOT NULL,
            shipped_at DOUBLE PRECISION,
            activated_at DOUBLE PRECISION,
            expires_at DOUBLE PRECISION,
            replaces BIGINT REFERENCES devices(id),
            push_public BYTEA,
            recovery_hash BYTEA
        )""",
        """CREATE TABLE user_devices (
            user_id BIGINT NOT NULL REFERENCES users(id),
            device_id BIGINT NOT NULL REFERENCES devices(id),
            PRIMARY KEY (user_id, device_id)
        )""",
        "CREATE INDEX user_devices_by_device ON user_devices(device_id)",
        "CREATE TABLE failures (user_id BIGINT PRIMARY KEY, times TEXT NOT NULL)",
        """CREATE TABLE consumed (
            challenge_id BIGINT PRIMARY KEY,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX consumed_by_expiry ON consumed(expires_at)",
        "CREATE TABLE sequences (name TEXT PRIMARY KEY, next_value BIGINT NOT NULL)",
        "CREATE TABLE server_secrets (name TEXT PRIMARY KEY, sealed BYTEA NOT NULL)",
        """CREATE TABLE changes (
            generation BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id BIGINT,
            device_id BIGINT
        )""",
        """CREATE TABLE activations (
            session_id BYTEA PRIMARY KEY,
            manual_prefix BYTEA NOT NULL UNIQUE,
            user_id BIGINT NOT NULL REFERENCES users(id),
            server_private BYTEA NOT NULL,
            server_public BYTEA NOT NULL,
            channel TEXT NOT NULL,
            issued_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            used_at DOUBLE PRECISION
        )""",
        """CREATE TABLE pushes (
            challenge_id BIGINT PRIMARY KEY,
            user_id BIGINT NOT NULL REFERENCES users(id),
            device_id BIGINT NOT NULL REFERENCES devices(id),
            issued_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            decision TEXT,
            decided_at DOUBLE PRECISION
        )""",
        """CREATE TABLE sharing_requests (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            owner_id BIGINT NOT NULL REFERENCES users(id),
            requester_id BIGINT NOT NULL REFERENCES users(id),
            device_id BIGINT NOT NULL REFERENCES devices(id),
            state TEXT NOT NULL,
            set_aside TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            decided_at DOUBLE PRECISION
        )""",
        """CREATE TABLE key_holders (
            holder TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid BIGINT NOT NULL,
            key_id TEXT NOT NULL,
            seen_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE metered (
            kind TEXT NOT NULL,
            user_id BIGINT NOT NULL,
            at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX metered_by_user ON metered(kind, user_id, at)",
        "INSERT INTO sls_schema (version) VALUES (8)",
    ),
    9: (
        """CREATE TABLE consumed_spans (
            expires_at DOUBLE PRECISION NOT NULL,
            id_block BIGINT NOT NULL,
            first_id BIGINT NOT NULL,
            last_id BIGINT NOT NULL,
            PRIMARY KEY (expires_at, id_block)
        )""",
        "INSERT INTO consumed_spans (expires_at, id_block, first_id, last_id)"
        " SELECT floor(expires_at) + 1, challenge_id >> 20, min(challenge_id),"
        " max(challenge_id) FROM consumed GROUP BY floor(expires_at) + 1, challenge_id >> 20",
        "DROP INDEX consumed_by_expiry",
    ),
    10: (
        """CREATE TABLE consumed_blocks (
            block BIGINT PRIMARY KEY,
            mask BIGINT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "INSERT INTO consumed_blocks (block, mask, expires_at)"
        " SELECT challenge_id >> 6, bit_or(1::bigint << (challenge_id & 63)::int),"
        " max(expires_at) FROM consumed GROUP BY challenge_id >> 6",
        "CREATE INDEX consumed_blocks_by_expiry ON consumed_blocks(expires_at)",
        "DROP TABLE consumed_spans",
        "DROP TABLE consumed",
    ),
}
