"""Issue 12: the store interface on both backends, SQLite and PostgreSQL.

The same schema from one place, exactness between several stores open at once on the same
data (what several processes or nodes are), failures that are never verdicts, and the
bounded purge. Multi-node tests with real server processes are in ``test_cluster.py``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from sls_core import ocra
from sls_core.clock import ManualClock
from sls_core.devices import DeviceType
from sls_core.errors import InvalidInputError
from sls_core.login import LOCKOUT_FAILURES, SecureLogin
from sls_core.outcome import LoginOutcome
from sls_core.server.config import ConfigError, ServerConfig
from sls_core.store import SCHEMA_VERSION, StoreUnavailableError
from sls_core.store.postgres import PostgresStore, _redacted, is_postgres_url

if TYPE_CHECKING:  # imported by pytest as a plugin, never directly (assertion rewriting)
    from pg_fixtures import PgCluster

pytest_plugins = ["pg_fixtures"]

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
SECRET = bytes(range(20))
PIN = "4711"
NOW = 1_800_000_000.0


def _answer(challenge: str | None) -> str:
    assert challenge is not None
    return ocra.compute(SUITE, SECRET, question=challenge, pin=PIN)


@pytest.fixture
def two(tmp_path: Path, store_url: str | None) -> Iterator[tuple[SecureLogin, SecureLogin]]:
    """Two stores open on the same data at once (two processes, or two nodes), with alice
    and her DSC+ enrolled."""
    first = SecureLogin.open(tmp_path / "data", clock=ManualClock(NOW), store=store_url)
    first.create_user("alice")
    first.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    second = SecureLogin.open(tmp_path / "data", clock=ManualClock(NOW), store=store_url)
    yield first, second
    first.store.close()
    second.store.close()


# -- one schema ------------------------------------------------------------------------------


def _sqlite_columns(path: Path) -> set[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            name
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not name.startswith("sqlite_")
        ]
        return {
            (table, row[1])
            for table in tables
            for row in conn.execute(f"PRAGMA table_info({table})")
        }
    finally:
        conn.close()


def test_both_backends_end_with_the_same_tables_and_columns(tmp_path: Path, pg_url: str) -> None:
    import psycopg

    SecureLogin.open(tmp_path / "sqlite").store.close()
    pg = SecureLogin.open(tmp_path / "pg", store=pg_url)
    assert pg.store.schema_version == SCHEMA_VERSION
    pg.store.close()
    with psycopg.connect(pg_url) as conn:
        postgres = {
            (table, column)
            for table, column in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema()"
            )
            if table != "sls_schema"  # PostgreSQL's user_version
        }
    assert postgres == _sqlite_columns(tmp_path / "sqlite" / "sls.db")


def test_a_version_8_postgres_store_gets_blocks_for_what_it_consumed(
    tmp_path: Path, pg_url: str
) -> None:
    """Versions 9 and 10 replace the per-row ``consumed`` table by spans, then by a bit
    per challenge in blocks of 64 (``consumed_blocks``): a store made before them keeps
    its replay check and purges what it had consumed, a block once its latest expiry has
    passed (bit 63 of a block included)."""
    import psycopg

    from sls_core.store import schema

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in schema.POSTGRES_MIGRATIONS[8]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO consumed VALUES (7, 1.0), (8, 1.5), (63, 3.0), (%s, 1.2)", (1 << 62,)
        )
    sls = SecureLogin.open(tmp_path / "data", store=pg_url)
    try:
        assert sls.store.schema_version == SCHEMA_VERSION
        with sls.store.write() as tx:
            assert tx.consumed([7, 8, 9, 63, 1 << 62]) == {7, 8, 63, 1 << 62}
            assert tx.try_consume([9, 62, 64], 5.0) == set()  # bits beside the old ones
            assert tx.try_consume([10, 63], 5.0) == {63}
            assert tx.purge_consumed(2.0, 10) == 1  # the block of 1 << 62 alone
            assert tx.consumed([7, 8, 9, 63, 1 << 62]) == {7, 8, 9, 63}
            assert tx.purge_consumed(6.0, 10) == 2
            assert tx.consumed([7, 8, 9, 10, 62, 63, 64]) == set()
        with psycopg.connect(pg_url) as conn:
            indexes = {
                r[0]
                for r in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
                )
            }
        assert "consumed_by_expiry" not in indexes
        assert "consumed_blocks_by_expiry" in indexes
    finally:
        sls.store.close()


def test_a_newer_postgres_schema_is_refused(tmp_path: Path, pg_url: str) -> None:
    import psycopg

    SecureLogin.open(tmp_path / "a", store=pg_url).store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE sls_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(InvalidInputError, match="newer than this sls_core"):
        SecureLogin.open(tmp_path / "a", store=pg_url)


# -- exact between stores ----------------------------------------------------------------------


def test_a_right_answer_sent_to_two_stores_at_once_verifies_once(
    two: tuple[SecureLogin, SecureLogin],
) -> None:
    first, second = two
    for _ in range(20):
        challenge = first.issue_challenge("alice")
        answer = _answer(challenge.challenge)
        outcomes: list[LoginOutcome] = []
        barrier = threading.Barrier(4)
        threads = [
            threading.Thread(
                target=_send_together,
                args=(sls, challenge.token, answer, barrier, outcomes),
            )
            for sls in (first, second) * 2
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == [LoginOutcome.OK] + [LoginOutcome.REPLAYED] * 3


def _send_together(
    sls: SecureLogin,
    token: str,
    response: str,
    barrier: threading.Barrier,
    outcomes: list[LoginOutcome],
) -> None:
    barrier.wait()  # all at once: the stores race for the same challenge
    outcomes.append(sls.verify("alice", token, response).outcome)


def test_wrong_answers_spread_over_two_stores_count_exactly(
    two: tuple[SecureLogin, SecureLogin],
) -> None:
    """No lost update: 2 * LOCKOUT_FAILURES wrong answers from 4 threads on two stores
    count exactly LOCKOUT_FAILURES times, then the user is locked for every store."""
    first, second = two
    challenges = [first.issue_challenge("alice") for _ in range(2 * LOCKOUT_FAILURES)]
    outcomes: list[LoginOutcome] = []
    lock = threading.Lock()

    def send(sls: SecureLogin, mine: list[str]) -> None:
        for token in mine:
            outcome = sls.verify("alice", token, "00000000").outcome
            with lock:
                outcomes.append(outcome)

    tokens = [c.token for c in challenges]
    threads = [
        threading.Thread(target=send, args=(sls, tokens[i::4]))
        for i, sls in enumerate((first, second, first, second))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(LoginOutcome.WRONG) == LOCKOUT_FAILURES
    assert outcomes.count(LoginOutcome.LOCKED) == LOCKOUT_FAILURES
    right = first.issue_challenge("alice")
    for sls in (first, second):
        assert sls.lockout_status("alice").consecutive_failures == LOCKOUT_FAILURES
        verdict = sls.verify("alice", right.token, _answer(right.challenge))
        assert verdict.outcome is LoginOutcome.LOCKED


def test_a_revocation_on_one_store_is_seen_by_the_other_at_its_next_attempt(
    two: tuple[SecureLogin, SecureLogin],
) -> None:
    first, second = two
    device = first.devices("alice")[0]
    warm = second.issue_challenge("alice")  # the second store has loaded alice's device
    assert second.verify("alice", warm.token, _answer(warm.challenge)).ok
    challenge = second.issue_challenge("alice")
    first.revoke_device("alice", device.id)
    verdict = second.verify("alice", challenge.token, _answer(challenge.challenge))
    assert not verdict.ok


# -- issuing outside the write lock ----------------------------------------------------------


def test_a_device_revoked_while_a_large_batch_is_issued_gets_no_challenge(
    tmp_path: Path, store_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large batch chooses its devices before it takes the write lock; a revocation
    committed by another store in between is seen inside the lock, and the batch is
    chosen again (here: refused whole, as if the revocation had come first)."""
    from sls_core.login import PRECHECK_MIN_ITEMS

    first = SecureLogin.open(tmp_path / "data", clock=ManualClock(NOW), store=store_url)
    second = SecureLogin.open(tmp_path / "data", clock=ManualClock(NOW), store=store_url)
    try:
        names = [f"u{i}" for i in range(PRECHECK_MIN_ITEMS)]
        first.enroll_bulk(
            names, DeviceType.DSC_PLUS, [SECRET] * len(names), pins=[PIN] * len(names)
        )
        victim = second.devices("u7")[0]
        chosen = first._login_devices
        calls = []

        def choose_then_revoke(usernames: list[str], now: float) -> object:
            picks = chosen(usernames, now)
            if not calls:  # between the choice outside the lock and the reservation
                second.revoke_device("u7", victim.id)
            calls.append(len(picks))
            return picks

        monkeypatch.setattr(first, "_login_devices", choose_then_revoke)
        with pytest.raises(InvalidInputError, match="device_id"):
            first.issue_challenges(names)
        assert calls == [len(names)]  # chosen once outside; inside, the revocation refused it
        monkeypatch.undo()
        issued = first.issue_challenges([n for n in names if n != "u7"])
        assert len({c.token for c in issued}) == len(names) - 1
    finally:
        first.store.close()
        second.store.close()


# -- consume once, optimistically ---------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 300, 5_000])  # one block of 64 ids; several; many
def test_try_consume_takes_all_of_a_batch_or_none_and_names_the_replays(
    tmp_path: Path, store_url: str | None, size: int
) -> None:
    sls = SecureLogin.open(tmp_path / "data", store=store_url)
    try:
        ids = np.arange(10, 10 + size, dtype=np.uint64)
        with sls.store.write() as tx:
            assert tx.try_consume(ids[::-1], 500.0) == set()  # any order
            assert tx.consumed(ids) == set(ids.tolist())
        later = np.arange(10 + size, 10 + 2 * size, dtype=np.uint64)
        mixed = np.concatenate((later, ids[-2:]))  # two of them were used before
        with sls.store.write() as tx:
            assert tx.try_consume(mixed, 600.0) == set(ids[-2:].tolist())
            assert tx.consumed(later) == set()  # none of the batch was taken
            tx.consume(later, 600.0)  # and the transaction still works
        with sls.store.write() as tx:
            assert tx.consumed(mixed) == set(mixed.tolist())
            assert tx.try_consume([], 700.0) == set()
        # consume() is for ids known to be fresh: one used already is a bug upstream, an
        # error that rolls the transaction back, never a silent pass.
        fresh = int(later[-1]) + 1

        def consume_one_used_before() -> None:
            with sls.store.write() as tx:
                tx.consume([fresh], 800.0)
                tx.consume([fresh + 1, int(ids[0])], 800.0)

        with pytest.raises(Exception, match="consumed already"):
            consume_one_used_before()
        with sls.store.write() as tx:
            assert tx.consumed([fresh, fresh + 1]) == set()
    finally:
        sls.store.close()


def test_try_consume_refuses_a_batch_that_repeats_an_id(
    tmp_path: Path, store_url: str | None
) -> None:
    """The caller passes each id once; a repeat is a bug upstream, never a silent pass."""
    sls = SecureLogin.open(tmp_path / "data", store=store_url)
    try:
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"), sls.store.write() as tx:
            tx.try_consume([*range(1, 2_000), 7], 500.0)
        with sls.store.write() as tx:
            assert tx.consumed(range(1, 2_000)) == set()  # rolled back whole
    finally:
        sls.store.close()


def test_a_large_batch_with_replays_from_earlier_batches_decides_each_item_once(
    tmp_path: Path, store_url: str | None
) -> None:
    """Replays among users with a clean record and among users with failures on record
    (decided item by item), in a batch large enough to take the optimistic path: the
    replayed items are REPLAYED, every other item decided as if alone, and each challenge
    consumed exactly once."""
    clock = ManualClock(NOW)
    sls = SecureLogin.open(tmp_path / "data", clock=clock, store=store_url)
    try:
        names = [f"u{i}" for i in range(300)]
        sls.enroll_bulk(names, DeviceType.DSC_PLUS, [SECRET] * 300, pins=[PIN] * 300)
        first = sls.issue_challenges(names)
        wrong = {5, 6}  # users with a failure on record from the first batch
        answers = ["00000000" if i in wrong else _answer(c.challenge) for i, c in enumerate(first)]
        done = sls.verify_batch(names, [c.token for c in first], answers)
        assert [done[i] for i in (4, 5)] == [LoginOutcome.OK, LoginOutcome.WRONG]
        second = sls.issue_challenges(names)
        tokens = [c.token for c in second]
        responses = [_answer(c.challenge) for c in second]
        # u4 (clean record) and u5 (a failure on record) send their first answers again.
        tokens[4], responses[4] = first[4].token, answers[4]
        tokens[5], responses[5] = first[5].token, _answer(first[5].challenge)
        result = sls.verify_batch(names, tokens, responses)
        assert result[4] is LoginOutcome.REPLAYED
        assert result[5] is LoginOutcome.REPLAYED
        assert all(result[i] is LoginOutcome.OK for i in range(300) if i not in (4, 5))
        assert sls.lockout_status("u5").consecutive_failures == 1  # a replay never counts
        assert sls.lockout_status("u6").consecutive_failures == 0  # a success ends the run
        again = sls.verify_batch(names, tokens, responses)
        assert all(again[i] is LoginOutcome.REPLAYED for i in range(300))
    finally:
        sls.store.close()


# -- the purge ---------------------------------------------------------------------------------


def test_the_purge_of_expired_challenges_is_bounded(tmp_path: Path, store_url: str | None) -> None:
    """Consumed challenges are kept 64 to a row (a block of ids): the purge takes the rows
    whose latest expiry has passed, ``limit`` rows at a time, and keeps a block with any
    id still live (keeping an id longer is safe; forgetting it early would not be)."""
    sls = SecureLogin.open(tmp_path / "data", store=store_url)
    try:
        with sls.store.write() as tx:
            tx.consume(list(range(0, 320)), 100.0)  # 5 blocks
            tx.consume(list(range(320, 384)), 10_000.0)  # 1 block
            tx.consume([384], 100.0)
            tx.consume([385], 10_000.0)  # the same block as 384: kept with it
        with sls.store.write() as tx:
            assert tx.purge_consumed(1_000.0, 2) == 2  # a slice at a time
            assert tx.purge_consumed(1_000.0, 2) == 2
            assert tx.purge_consumed(1_000.0, 2) == 1
            assert tx.purge_consumed(1_000.0, 2) == 0
            assert tx.consumed(list(range(0, 400))) == set(range(320, 386))
            assert tx.purge_consumed(20_000.0) == 2  # unbounded
            assert tx.consumed(list(range(0, 400))) == set()
    finally:
        sls.store.close()


# -- failures are never verdicts -----------------------------------------------------------------


def test_postgres_down_is_unavailable_and_the_store_recovers_by_itself(
    tmp_path: Path, pg_url: str, pg_cluster: PgCluster
) -> None:
    """A PostgreSQL restart under a running store: calls raise StoreUnavailableError (a
    server answers UNAVAILABLE), never a verdict; once it is back the same store serves
    again (the pool replaces its dead connections), and nothing committed is lost."""
    sls = SecureLogin.open(tmp_path / "data", clock=ManualClock(NOW), store=pg_url)
    try:
        sls.create_user("alice")
        sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
        used = sls.issue_challenge("alice")
        assert sls.verify("alice", used.token, _answer(used.challenge)).ok
        pending = sls.issue_challenge("alice")
        pg_cluster.stop()
        try:
            with pytest.raises(StoreUnavailableError) as down:
                sls.verify("alice", pending.token, _answer(pending.challenge))
            assert "store: unavailable" in str(down.value)
            assert PIN not in str(down.value)
            with pytest.raises(StoreUnavailableError):
                sls.issue_challenge("alice")
        finally:
            pg_cluster.start()
        # The same store, no restart: the right answer was never applied, so it verifies.
        assert sls.verify("alice", pending.token, _answer(pending.challenge)).ok
        assert sls.verify("alice", used.token, _answer(used.challenge)).outcome is (
            LoginOutcome.REPLAYED
        )
    finally:
        sls.store.close()


def test_a_node_left_behind_by_a_schema_migration_refuses_as_unavailable(
    tmp_path: Path, store_url: str | None
) -> None:
    """An upgrade under a running node: a process of a newer version migrated the store
    (another PostgreSQL node, or an upgraded admin command on the SQLite file). Each call
    now raises StoreUnavailableError naming both versions (a server answers UNAVAILABLE,
    and its health probe fails too, so gateways go elsewhere) instead of failing on
    tables that changed; nothing is applied, and it serves again if the store is at its
    version once more."""
    import psycopg

    data = tmp_path / "data"
    sls = SecureLogin.open(data, clock=ManualClock(NOW), store=store_url)

    def set_version(version: int) -> None:
        if store_url is None:
            with contextlib.closing(sqlite3.connect(data / "sls.db")) as conn:
                conn.execute(f"PRAGMA user_version = {version}")
        else:
            with psycopg.connect(store_url, autocommit=True) as conn:
                conn.execute("UPDATE sls_schema SET version = %s", (version,))

    try:
        sls.create_user("alice")
        sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
        pending = sls.issue_challenge("alice")
        set_version(SCHEMA_VERSION + 1)
        try:
            with pytest.raises(StoreUnavailableError) as behind:
                sls.verify("alice", pending.token, _answer(pending.challenge))
            newer = f"schema version {SCHEMA_VERSION + 1} is newer than this sls_core"
            assert newer in str(behind.value)
            assert "upgrade this one" in str(behind.value)
            with pytest.raises(StoreUnavailableError, match="is newer than this"):
                sls.issue_challenge("alice")
            with pytest.raises(StoreUnavailableError, match="is newer than this"):
                sls.store.ping()  # type: ignore[attr-defined]  # the server's health probe
        finally:
            set_version(SCHEMA_VERSION)
        sls.store.ping()  # type: ignore[attr-defined]
        assert sls.verify("alice", pending.token, _answer(pending.challenge)).ok  # not used
    finally:
        sls.store.close()


def test_a_store_that_cannot_be_reached_at_start_says_so(tmp_path: Path) -> None:
    from sls_core.sealing import MasterKeyRing

    ring = MasterKeyRing({"k1": bytes(32)}, "k1")
    with pytest.raises(StoreUnavailableError) as refused:
        PostgresStore(
            "postgresql://sls:secret-password@127.0.0.1:1/sls", keyring=ring, connect_timeout=1
        )
    assert "secret-password" not in str(refused.value)


def test_a_missing_key_file_is_never_replaced_over_a_postgres_store_with_sealed_data(
    tmp_path: Path, pg_url: str
) -> None:
    first = SecureLogin.open(tmp_path / "node1", store=pg_url)
    first.create_user("alice")
    first.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    first.store.close()
    # A second node without the cluster's key file: it must not make a key of its own.
    with pytest.raises(InvalidInputError) as refused:
        SecureLogin.open(tmp_path / "node2", store=pg_url)
    assert refused.value.field == "key_file"
    assert "the PostgreSQL store holds secrets sealed with it" in str(refused.value)
    assert not (tmp_path / "node2" / "master-key.json").exists()


# -- choosing the store ---------------------------------------------------------------------------


def test_the_store_is_chosen_by_a_postgresql_url_and_anything_else_is_refused(
    tmp_path: Path,
) -> None:
    assert is_postgres_url("postgresql://u@h:5432/db")
    assert is_postgres_url("postgres://u@h/db")
    assert not is_postgres_url("sqlite:///x.db")
    with pytest.raises(InvalidInputError) as refused:
        SecureLogin.open(tmp_path / "data", store="mysql://u@h/db")
    assert refused.value.field == "store"
    with pytest.raises(ConfigError) as config:
        ServerConfig(store="sqlite:///x.db").validated()
    assert "store.url" in str(config.value)
    assert ServerConfig(store="postgresql://u@h/db").validated().store == "postgresql://u@h/db"
    # In the TOML config: a [store] table with its url.
    from sls_core.server.config import config_from_mapping

    chosen = config_from_mapping({"store": {"url": "postgresql://sls@db:5432/sls"}})
    assert chosen.store == "postgresql://sls@db:5432/sls"
    for wrong, field in (
        ({"store": "postgresql://sls@db/sls"}, "store"),
        ({"store": {"url": 5}}, "store.url"),
        ({"store": {"url": "postgresql://x/y", "pool": 3}}, "store"),
        ({"store": {"url": "mysql://x/y"}}, "store.url"),
    ):
        with pytest.raises(ConfigError) as refused:
            config_from_mapping(wrong)
        assert str(refused.value).startswith(f"{field}:"), str(refused.value)


def test_a_password_in_the_url_never_shows() -> None:
    url = "postgresql://sls:hunter2@db.internal:5432/sls"
    assert "hunter2" not in _redacted(url)
    assert _redacted(url) == "postgresql://sls:***@db.internal:5432/sls"


def test_the_operator_commands_work_on_a_postgres_store(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """rotate-master-key (and --retire), status and unlock with ``--store``."""
    from sls_core import admin
    from sls_core.sealing import MasterKeyRing

    data = tmp_path / "data"
    sls = SecureLogin.open(data, clock=ManualClock(NOW), store=pg_url)
    for name in ("alice", "bob", "carol"):
        sls.create_user(name)
        sls.enroll_device(name, DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    for _ in range(LOCKOUT_FAILURES):
        challenge = sls.issue_challenge("carol")
        sls.verify("carol", challenge.token, "00000000")
    sls.store.close()
    base = ["--data-dir", str(data), "--store", pg_url]

    assert (
        admin.main([*base, "rotate-master-key", "--new-key-id", "k2", "--retire", "--quiet"]) == 0
    )
    assert MasterKeyRing.from_file(data / "master-key.json").key_ids == {"k2"}
    assert admin.main([*base, "status"]) == 0
    printed = capsys.readouterr().out
    assert "records per key id: {'k2': 9}" in printed  # 3 secrets, 3 PIN hashes, 3 server
    assert "devices: 3" in printed
    assert "sls:***" not in printed  # no password in this URL, and none invented
    assert admin.main([*base, "unlock", "carol", "--by", "ops-1"]) == 0
    reopened = SecureLogin.open(data, clock=ManualClock(NOW), store=pg_url)
    try:
        for name in ("alice", "bob", "carol"):
            challenge = reopened.issue_challenge(name)
            assert reopened.verify(name, challenge.token, _answer(challenge.challenge)).ok
    finally:
        reopened.store.close()


def test_a_rollback_that_fails_still_releases_the_process_write_lock(tmp_path: Path) -> None:
    """A connection lost while a transaction starts (the directory refresh fails) whose
    rollback fails too (the database is gone): the process's write lock is released all the
    same. Kept held, every later write of the node hung after a PostgreSQL restart."""
    import contextlib
    from typing import Any

    sls = SecureLogin.open(tmp_path / "data", clock=ManualClock(NOW))
    sls.create_user("alice")
    sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    real = sls.store

    class LostConnection:
        """Writes whose change feed read fails, and whose rollback fails after it."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @contextlib.contextmanager
        def write(self, *, wait: bool = True) -> Iterator[Any]:
            with real.write(wait=wait) as tx:

                class Broken:
                    def __getattr__(self, name: str) -> Any:
                        if name in ("generation", "changes_since"):
                            raise StoreUnavailableError("connection lost")
                        return getattr(tx, name)

                try:
                    yield Broken()
                except StoreUnavailableError:
                    raise StoreUnavailableError("rollback failed: connection lost") from None

    sls.context.directory.generation = -2  # the next write must read the change feed
    sls.context.store = LostConnection()  # type: ignore[assignment]
    with pytest.raises(StoreUnavailableError):
        sls.issue_challenge("alice")
    # Released, not held forever (an RLock: ask from another thread, as a call would).
    acquired: list[bool] = []

    def probe() -> None:
        got = sls.context.lock.acquire(blocking=False)
        acquired.append(got)
        if got:
            sls.context.lock.release()

    prober = threading.Thread(target=probe)
    prober.start()
    prober.join()
    assert acquired == [True]
    sls.context.store = real
    assert sls.issue_challenge("alice").token  # and the process writes again
    real.close()


def test_serve_takes_the_store_from_the_flag_then_the_environment_then_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sls_core.server import main

    config = tmp_path / "sls.toml"
    config.write_text('[store]\nurl = "postgresql://sls@from-config/sls"\n')

    def chosen(*flags: str) -> str | None:
        args = main._parser().parse_args(["serve", "--config", str(config), *flags])
        return main._config(args).store

    monkeypatch.delenv("SLS_CORE_STORE", raising=False)
    assert chosen() == "postgresql://sls@from-config/sls"
    monkeypatch.setenv("SLS_CORE_STORE", "postgresql://sls@from-env/sls")
    assert chosen() == "postgresql://sls@from-env/sls"
    assert chosen("--store", "postgresql://sls@from-flag/sls") == "postgresql://sls@from-flag/sls"


def test_the_admin_commands_read_the_store_url_as_the_server_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``python -m sls_core.admin`` takes ``--store``, else ``SLS_CORE_STORE_URL``, else the
    older ``SLS_CORE_STORE``; both set and different is an error naming the variable."""
    import argparse

    from sls_core import admin

    def chosen(flag: str | None = None) -> str | None:
        return admin._store_url(argparse.Namespace(store=flag))

    monkeypatch.delenv("SLS_CORE_STORE", raising=False)
    monkeypatch.delenv("SLS_CORE_STORE_URL", raising=False)
    assert chosen() is None
    monkeypatch.setenv("SLS_CORE_STORE", "postgresql://sls@old-name/sls")
    assert chosen() == "postgresql://sls@old-name/sls"
    monkeypatch.delenv("SLS_CORE_STORE")
    monkeypatch.setenv("SLS_CORE_STORE_URL", "postgresql://sls@new-name/sls")
    assert chosen() == "postgresql://sls@new-name/sls"
    assert chosen("postgresql://sls@flag/sls") == "postgresql://sls@flag/sls"
    monkeypatch.setenv("SLS_CORE_STORE", "postgresql://sls:hunter2@other/sls")
    with pytest.raises(SystemExit) as refused:
        chosen()
    assert "SLS_CORE_STORE_URL" in str(refused.value)
    assert "hunter2" not in str(refused.value)
