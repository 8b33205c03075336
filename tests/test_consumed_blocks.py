"""Schema 10: consumed challenges as one row per block of 64 ids, a bit each.

Review tests of ``consumed_blocks`` on both stores: ``try_consume`` takes a batch all or
none and names exactly the replays (any order, lists or numpy arrays, bit 63 of a block,
ids near 2^63, the single-block and multi-block statements), two writers never consume the
same id, the 9 -> 10 migration keeps every consumed id (bit 63 included), and the purge
never forgets an id before the latest expiry of its block.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sls_core.sealing import MasterKeyRing
from sls_core.store import SCHEMA_VERSION, schema
from sls_core.store.base import CONSUMED_BLOCK_BITS, consumed_blocks, ids_marked
from sls_core.store.postgres import PostgresStore
from sls_core.store.sqlite import SqliteStore

pytest_plugins = ["pg_fixtures"]

TOP = (1 << 63) - 1  # the largest challenge id a signed 64-bit key holds
Store = SqliteStore | PostgresStore


def _keyring() -> MasterKeyRing:
    return MasterKeyRing({"k1": os.urandom(32)}, "k1")


def _open(tmp_path: Path, store_url: str | None, keyring: MasterKeyRing) -> Store:
    if store_url is None:
        return SqliteStore(tmp_path / "sls.db", keyring=keyring)
    return PostgresStore(store_url, keyring=keyring)


@pytest.fixture
def stores(tmp_path: Path, store_url: str | None) -> Iterator[tuple[Store, Store]]:
    """Two stores open on the same data: what two processes or two nodes are."""
    keyring = _keyring()
    first = _open(tmp_path, store_url, keyring)
    second = _open(tmp_path, store_url, keyring)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def _reference_blocks(ids: list[int]) -> dict[int, int]:
    """Per block, the signed 64-bit mask of its ids, computed the slow and obvious way."""
    masks: dict[int, int] = {}
    for i in ids:
        masks[i // 64] = masks.get(i // 64, 0) | (1 << (i % 64))
    return {b: m - (1 << 64) if m >= 1 << 63 else m for b, m in masks.items()}


def _as_form(ids: list[int], form: str) -> Any:
    if form == "list":
        return ids
    return np.array(ids, dtype=np.int64 if form == "int64" else np.uint64)


# -- the rows of a batch ------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["list", "int64", "uint64"])
@pytest.mark.parametrize("count", [1, 3, 64, 65, 500])  # the Python path, then numpy's
def test_consumed_blocks_gives_one_row_per_block_with_a_bit_per_id(form: str, count: int) -> None:
    """Rule: each id is the bit ``id & 63`` of block ``id >> 6``; bit 63 makes a negative
    mask; both paths (a few ids in Python, more with numpy) give the same rows."""
    rng = random.Random(count)
    pool = [*range(0, 300), *range(TOP - 300, TOP + 1), 1 << 62, (1 << 62) + 63]
    ids = rng.sample(pool, count)
    blocks, masks = consumed_blocks(_as_form(ids, form))
    reference = _reference_blocks(ids)
    assert blocks == sorted(reference)
    assert dict(zip(blocks, masks, strict=True)) == reference
    assert all(-(1 << 63) <= m < 1 << 63 for m in masks)
    assert ids_marked(_as_form(ids, form), zip(blocks, masks, strict=True)) == set(ids)


@pytest.mark.parametrize("count", [2, 200])
def test_consumed_blocks_refuses_an_id_named_twice(count: int) -> None:
    """Rule: a batch names each challenge once (a repeat is a bug upstream)."""
    ids = [*range(1, count), 1]
    with pytest.raises(ValueError, match="duplicate challenge id"):
        consumed_blocks(ids)


# -- all or none ------------------------------------------------------------------------------


def test_try_consume_is_all_or_none_and_names_exactly_the_replays(
    stores: tuple[Store, Store],
) -> None:
    """Rule: when any id of a batch was consumed before, nothing is written and exactly
    those ids come back; otherwise every id is marked. Checked against a plain set over
    random batches: one block or many, bit 63, ids near 2^63, any order and form."""
    store, _ = stores
    rng = random.Random(10)
    pool = [*range(0, 700), *range(TOP - 700, TOP + 1), *range(1 << 62, (1 << 62) + 200)]
    model: set[int] = set()
    for round_ in range(60):
        size = rng.choice([1, 2, 5, 63, 64, 65, 130, 400])
        if rng.random() < 0.5:  # a run of neighbours: few blocks
            start = rng.randrange(len(pool) - size)
            ids = pool[start : start + size]
        else:
            ids = rng.sample(pool, size)
        rng.shuffle(ids)
        form = rng.choice(["list", "int64", "uint64"])
        replays = set(ids) & model
        with store.write() as tx:
            got = tx.try_consume(_as_form(ids, form), 1_000.0 + round_)
            assert got == replays, (round_, form, size)
            if not replays:
                model |= set(ids)
            probe = rng.sample(pool, 300) + ids
            assert tx.consumed(probe) == set(probe) & model


@pytest.mark.parametrize(
    ("used", "fresh"),
    [
        (63, [62]),  # the same block, one statement's upsert on SQLite
        (127, [64, 128, 191]),  # the block before and after it
        (TOP, [TOP - 1, TOP - 64, 5]),  # the top id, with a block far away
        (TOP, list(range(TOP - 200, TOP))),  # many blocks, numpy's path
    ],
)
def test_a_replay_of_bit_63_refuses_the_whole_batch(
    stores: tuple[Store, Store], used: int, fresh: list[int]
) -> None:
    """Rule: bit 63 of a block (a negative mask) is a consumed id like any other: replayed
    alone or among fresh ids of the same or other blocks, nothing is written."""
    store, _ = stores
    with store.write() as tx:
        assert tx.try_consume([used], 100.0) == set()
    with store.write() as tx:
        assert tx.try_consume([*fresh, used], 200.0) == {used}
        assert tx.try_consume(np.array([used, *fresh], dtype=np.uint64), 200.0) == {used}
        assert tx.consumed(fresh) == set()
    with store.write() as tx:
        assert tx.try_consume(np.array(fresh[::-1], dtype=np.uint64), 300.0) == set()
        assert tx.consumed([*fresh, used]) == {*fresh, used}


def test_consume_of_an_id_used_before_is_an_error_and_writes_nothing(
    stores: tuple[Store, Store],
) -> None:
    """Rule: ``consume`` is for ids known fresh; one used already is an error that rolls
    the transaction back (the ids of the same transaction included)."""
    store, _ = stores
    with store.write() as tx:
        tx.consume([5, 63], 100.0)

    def consume_one_used_before() -> None:
        with store.write() as tx:
            tx.consume([1000], 100.0)
            tx.consume([*range(100, 300), 63], 100.0)

    with pytest.raises(Exception, match="consumed already"):
        consume_one_used_before()
    with store.write() as tx:
        assert tx.consumed([1000, 100, 299, 5, 63]) == {5, 63}


# -- several writers ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 200])  # one block (SQLite's upsert), several blocks
def test_two_writers_never_both_consume_an_id(stores: tuple[Store, Store], size: int) -> None:
    """Rule: a challenge is consumed once across every process and node. Two stores on the
    same data race to consume overlapping batches; each id is won by one batch only."""
    won: list[list[list[int]]] = [[], []]
    start = threading.Barrier(2)

    def race(k: int) -> None:
        rng = random.Random(k)
        for round_ in range(25):
            base = round_ * 1_000
            ids = list(range(base, base + size))
            rng.shuffle(ids)
            start.wait()
            with stores[k].write() as tx:
                if not tx.try_consume(ids, 1_000.0):
                    won[k].append(ids)

    threads = [threading.Thread(target=race, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won[0]) + len(won[1]) == 25  # each round: exactly one winner


def test_postgres_mark_alone_consumes_an_id_once_without_the_write_lock(pg_url: str) -> None:
    """Rule (module docstring: "consume once is also enforced by the database"): two
    transactions that mark the same id at once, neither holding the write lock, must not
    both report it marked."""
    import psycopg

    from sls_core.store.postgres import _MARK_CONSUMED, _bigint_array_dumper, _BigintArray

    PostgresStore(pg_url, keyring=_keyring()).close()  # the schema

    def connect() -> Any:
        conn = psycopg.connect(pg_url)
        conn.adapters.register_dumper(_BigintArray, _bigint_array_dumper())
        return conn

    def mark(conn: Any, ids: list[int]) -> int:
        blocks, masks = consumed_blocks(ids)
        rows = conn.execute(_MARK_CONSUMED, (_BigintArray(blocks), _BigintArray(masks), 9.0))
        return int(rows.rowcount)

    first, second = connect(), connect()
    try:
        assert mark(first, [5]) == 1  # not committed yet
        counts: list[int] = []
        waiting = threading.Thread(target=lambda: counts.append(mark(second, [5, 6])))
        waiting.start()
        waiting.join(0.5)  # blocked on the first one's row
        first.commit()
        waiting.join()
        second.commit()
        assert counts == [0]  # id 5 is taken: the second batch marks nothing
    finally:
        first.close()
        second.close()


def test_postgres_bounded_purge_alone_keeps_a_block_extended_meanwhile(pg_url: str) -> None:
    """Rule: a block is deleted only once every id in it has expired, even when a writer
    without the write lock marks a later id in it while the purge runs."""
    import psycopg

    from sls_core.store.postgres import (
        _MARK_CONSUMED,
        _PURGE_SLICE,
        _bigint_array_dumper,
        _BigintArray,
    )

    store = PostgresStore(pg_url, keyring=_keyring())
    try:
        with store.write() as tx:
            tx.consume([0], 100.0)
        writer = psycopg.connect(pg_url)
        writer.adapters.register_dumper(_BigintArray, _bigint_array_dumper())
        blocks, masks = consumed_blocks([5])
        writer.execute(_MARK_CONSUMED, (_BigintArray(blocks), _BigintArray(masks), 10_000.0))
        purged: list[int] = []

        def purge() -> None:
            with psycopg.connect(pg_url) as conn:
                purged.append(conn.execute(_PURGE_SLICE, (1_000.0, 10, 1_000.0)).rowcount)

        waiting = threading.Thread(target=purge)  # the bounded purge's statement
        waiting.start()
        waiting.join(0.5)  # blocked on the writer's row
        writer.commit()
        writer.close()
        waiting.join()
        with store.write() as tx:
            assert tx.consumed([0, 5]) == {0, 5}  # id 5 lives until 10,000
    finally:
        store.close()


def test_an_id_beyond_a_signed_64_bit_key_is_refused(stores: tuple[Store, Store]) -> None:
    """Rule: every challenge id has one place only. An id that no signed 64-bit key holds
    (a uint64 array's top half) is refused rather than marked under some block."""
    store, _ = stores
    beyond = np.array([(1 << 63) + 5], dtype=np.uint64)
    with pytest.raises((ValueError, OverflowError)), store.write() as tx:
        tx.try_consume(beyond, 10.0)


# -- migration 9 -> 10 ----------------------------------------------------------------------------

#: Old ``consumed`` rows: a full block (its mask is -1), bit 63 alone, the top id, two
#: expiries in one block.
OLD_ROWS = [
    *[(i, 50.0) for i in range(64)],
    (127, 60.0),
    (TOP, 70.0),
    (128, 10.0),
    (191, 900.0),
]


def _old_ids() -> set[int]:
    return {i for i, _ in OLD_ROWS}


def _check_migrated(store: Store) -> None:
    assert store.schema_version == SCHEMA_VERSION
    assert store.row_counts()["consumed"] == len(OLD_ROWS)
    probe = [*range(0, 200), TOP - 1, TOP]
    with store.write() as tx:
        assert tx.consumed(probe) == _old_ids()
        assert tx.try_consume([129, 191], 1_000.0) == {191}
        assert tx.try_consume([TOP - 1, TOP], 1_000.0) == {TOP}
        assert tx.try_consume([126, 127, 190], 1_000.0) == {127}
        # The block of 128 and 191 is kept until 191's expiry, 128's is earlier.
        assert tx.purge_consumed(100.0) == 3  # blocks 0, 1 and TOP's
        assert tx.consumed(probe) == {128, 191}
        assert tx.purge_consumed(900.0) == 1
        assert tx.consumed(probe) == set()


def test_sqlite_version_9_consumed_rows_become_blocks(tmp_path: Path) -> None:
    """Rule: the migration keeps every consumed id (a block's ``sum`` of distinct bits is
    their OR, bit 63 included) and each block's latest expiry."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for version in range(1, 10):
        for statement in schema.SQLITE_MIGRATIONS[version]:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 9")
    conn.executemany("INSERT INTO consumed VALUES (?, ?)", OLD_ROWS)
    conn.commit()
    conn.close()
    store = SqliteStore(path, keyring=_keyring())
    try:
        rows = dict(store._connection().execute("SELECT block, mask FROM consumed_blocks"))
        assert rows == _reference_blocks(sorted(_old_ids()))
        assert rows[0] == -1  # all 64 bits: the sum of distinct bits is their OR
        assert rows[1] == -(1 << 63)  # bit 63 alone
        _check_migrated(store)
    finally:
        store.close()


def test_postgres_version_9_consumed_rows_become_blocks(pg_url: str) -> None:
    """Rule: the same on PostgreSQL (``bit_or``), bit 63 and the top id included."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for version in range(1, 10):
            for statement in schema.POSTGRES_MIGRATIONS.get(version, ()):
                conn.execute(statement)
        conn.execute("UPDATE sls_schema SET version = 9")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO consumed VALUES (%s, %s)", OLD_ROWS)
    store = PostgresStore(pg_url, keyring=_keyring())
    try:
        with psycopg.connect(pg_url) as conn:
            rows: dict[int, int] = dict(
                conn.execute("SELECT block, mask FROM consumed_blocks").fetchall()
            )
        assert rows == _reference_blocks(sorted(_old_ids()))
        _check_migrated(store)
    finally:
        store.close()


# -- the purge --------------------------------------------------------------------------------


def test_a_block_is_kept_until_its_latest_expiry_whichever_path_marked_it(
    stores: tuple[Store, Store],
) -> None:
    """Rule: a block is purged only once every id in it has expired. A later consume with
    an earlier expiry never shortens a block's life (one-block and multi-block statements
    alike), and the bounded purge counts rows, at most ``limit``, oldest first."""
    store, _ = stores
    with store.write() as tx:
        tx.consume([1], 5_000.0)  # block 0, late
        assert tx.try_consume([2], 100.0) == set()  # block 0 again, early: one-block path
        tx.consume([64, 200], 5_000.0)  # blocks 1 and 3, late
        assert tx.try_consume([65, 130, 201], 100.0) == set()  # 1, 2 and 3 again, early
    with store.write() as tx:
        assert tx.purge_consumed(1_000.0, 10) == 1  # block 2 alone has expired
        assert tx.consumed([1, 2, 64, 65, 130, 200, 201]) == {1, 2, 64, 65, 200, 201}
        assert tx.purge_consumed(6_000.0, 2) == 2  # a slice of ``limit`` rows
        assert tx.purge_consumed(6_000.0, 2) == 1
        assert tx.purge_consumed(6_000.0, 2) == 0
        assert tx.consumed([1, 2, 64, 65, 130, 200, 201]) == set()


def test_the_purge_takes_the_oldest_blocks_first(stores: tuple[Store, Store]) -> None:
    """Rule: a bounded purge deletes expired blocks oldest first, never a live one."""
    store, _ = stores
    with store.write() as tx:
        for k in range(10):
            tx.consume([k << CONSUMED_BLOCK_BITS], 100.0 + k)
        tx.consume([TOP], 10_000.0)
    with store.write() as tx:
        assert tx.purge_consumed(105.0, 3) == 3
        assert tx.consumed([k << CONSUMED_BLOCK_BITS for k in range(10)]) == {
            k << CONSUMED_BLOCK_BITS for k in range(3, 10)
        }
        assert tx.purge_consumed(1_000.0) == 7
        assert tx.consumed([TOP]) == {TOP}
