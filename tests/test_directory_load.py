"""Issue 14: a process's directory loaded in full from columns (secrets opened in one
native pass, per-row objects made on first use) is exactly the directory built row by row
from ``users()``, ``devices()`` and ``links()``: revoked, pending, replaced, shared,
temporary and closed, under several master keys; and stays exact as other processes
change rows it has not looked at yet. On both backends."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sls_core import ocra
from sls_core.clock import ManualClock
from sls_core.devices import DeviceState, DeviceType
from sls_core.login import SecureLogin
from sls_core.login.directory import Columns, DeviceEntry, Directory
from sls_core.sealing import MasterKeyRing, SealingError
from sls_core.store import StoreTx
from sls_core.values import Identity

pytest_plugins = ["pg_fixtures"]

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
OTHER_SUITE = "OCRA-1:HOTP-SHA256-8:QN08-PSHA1"
PIN = "4711"
NOW = 1_800_000_000.0


def secret(i: int) -> bytes:
    return bytes((i + k) % 256 for k in range(20))


def open_sls(data: Path, store_url: str | None) -> SecureLogin:
    return SecureLogin.open(data, clock=ManualClock(NOW), store=store_url)


def populate(data: Path, store_url: str | None) -> SecureLogin:
    """Users and devices in every shape the directory distinguishes, sealed under two
    master keys (a live rotation halfway)."""
    sls = open_sls(data, store_url)
    sls.enroll_bulk(
        [f"bulk{i}" for i in range(40)],
        DeviceType.DSC_PLUS,
        [secret(i) for i in range(40)],
        pins=[PIN] * 40,
    )
    for name in ("alice", "bob", "carol", "dave", "erin", "frank"):
        sls.create_user(name)
    sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=secret(100), pin=PIN)
    sls.enroll_device("bob", DeviceType.DSC_PLUS, secret=secret(101), pin=PIN, shipped=True)
    carol = sls.enroll_device("carol", DeviceType.DSC_PLUS, secret=secret(102), pin=PIN)
    sls.revoke_device("carol", carol.id)
    # A live rotation: what is sealed from now on is under k2, the rest stays under k1.
    key_file = data / "master-key.json"
    MasterKeyRing.from_file(key_file).with_new_active_key("k2").save(key_file)
    lost = sls.enroll_device("dave", DeviceType.DSC_PLUS, secret=secret(103), pin=PIN)
    sls.enroll_device(
        "dave",
        DeviceType.DSC_PLUS,
        secret=secret(104),
        pin=PIN,
        replaces=lost.id,
        replaces_lost=True,
    )
    sls.issue_temporary_passcode("erin")
    sls.enroll_device("frank", DeviceType.DSC_PLUS, secret=secret(105), pin=PIN)
    sls.close_account("frank")
    # An identity a full load does not code (fetched as its text), beside the default.
    sls.create_user("hana", Identity(citizenship="CH", residence="Zug"))
    # A suite a full load does not code (fetched as its text), beside the coded ones.
    sls.create_user("gina")
    sls.enroll_device("gina", DeviceType.DSC_PLUS, secret=secret(106), pin=PIN, suite=OTHER_SUITE)
    # A device with two owners (linked at the store level: the rules of sharing are not
    # what is tested here) is never on the batch fast path.
    alice, shared = sls.user("alice").id, sls.devices("bulk3")[0].id
    with sls.context.write() as tx:
        tx.store.link(alice, shared)
    return sls


def reference(tx: StoreTx) -> dict[str, Any]:
    """The directory's content, built row by row from the store (the old full load)."""
    users = {u.id: u for u in tx.users()}
    devices = {d.id: d for d in tx.devices()}
    owners: dict[int, set[int]] = {d: set() for d in devices}
    devices_of: dict[int, set[int]] = {}
    for user_id, device_id in tx.links():
        owners[device_id].add(user_id)
        devices_of.setdefault(user_id, set()).add(device_id)
    replaced_by: dict[int, set[int]] = {}
    for d in devices.values():
        if d.replaces is not None:
            replaced_by.setdefault(d.replaces, set()).add(d.id)
    entries = {}
    for d in devices.values():
        entry = DeviceEntry(d, DeviceType(d.type), owners[d.id])
        entry.plain_active = (
            d.state == DeviceState.ACTIVE.value
            and d.expires_at is None
            and d.id not in replaced_by
            and entry.type is not DeviceType.TEMPORARY_PASSCODE
        )
        entry.group = (entry.type.method, d.suite)
        entries[d.id] = entry
    columns = Columns()
    columns.update([entries[i] for i in sorted(entries)])
    return {
        "users": users,
        "entries": entries,
        "devices_of": devices_of,
        "replaced_by": replaced_by,
        "closed": {u.id for u in users.values() if u.closed},
        "columns": columns,
    }


def suite_names(columns: Columns) -> list[str | None]:
    return [None if c < 0 else columns.suites[c] for c in columns.suite.tolist()]


def assert_same(directory: Directory, expected: dict[str, Any]) -> None:
    users = expected["users"]
    assert sorted(directory.user_by_id) == sorted(users)
    for user_id, user in users.items():
        assert directory.user_by_id[user_id] == user
        assert directory.user_by_name.get(user.username) == user
        assert int(directory.names.lookup([user.username])[0]) == user_id
        assert directory.devices_of.get(user_id, set()) == expected["devices_of"].get(
            user_id, set()
        )
    assert directory.closed == expected["closed"]
    assert directory.replaced_by == expected["replaced_by"]
    entries = expected["entries"]
    assert sorted(directory.devices) == sorted(entries)
    for device_id, entry in entries.items():
        assert directory.devices.get(device_id) == entry
    assert directory.devices.get(10**9) is None
    assert directory.user_by_name.get("nobody") is None
    want, got = expected["columns"], directory.columns
    top = max(entries) + 1
    assert got.owner[:top].tolist() == want.owner[:top].tolist()
    assert suite_names(got)[:top] == suite_names(want)[:top]
    fast = np.asarray([s is not None for s in suite_names(want)[:top]])
    assert np.array_equal(got.keys[:top][fast], want.keys[:top][fast])
    assert np.array_equal(got.pins[:top][fast], want.pins[:top][fast])


def test_a_full_load_from_columns_is_the_directory_built_row_by_row(
    tmp_path: Path, store_url: str | None
) -> None:
    data = tmp_path / "data"
    writer = populate(data, store_url)
    fresh = open_sls(data, store_url)
    fresh.warm()
    directory = fresh.context.directory
    # Nothing per device was made to answer the first lookup: it is made on first use.
    assert dict.__len__(directory.devices) == 0
    assert fresh.user("bulk7").username == "bulk7"
    with fresh.store.read() as tx:
        expected = reference(tx)
    assert_same(directory, expected)
    assert any(e.row.id in expected["replaced_by"] for e in expected["entries"].values())
    fresh.store.close()
    writer.store.close()


def test_rows_changed_elsewhere_after_a_lazy_load_are_seen_exactly(
    tmp_path: Path, store_url: str | None
) -> None:
    data = tmp_path / "data"
    writer = populate(data, store_url)
    reader = open_sls(data, store_url)
    reader.warm()
    # Changes to users and devices the reader has not looked at yet.
    writer.revoke_device("bulk5", writer.devices("bulk5")[0].id)
    writer.close_account("bulk6")
    bulk8, bulk9 = writer.user("bulk8").id, writer.devices("bulk9")[0].id
    alice, shared = writer.user("alice").id, writer.devices("bulk3")[0].id
    with writer.context.write() as tx:
        tx.store.link(bulk8, bulk9)
        tx.store.unlink(alice, shared)
    writer.enroll_device("bulk10", DeviceType.DSC_PLUS, secret=secret(200), pin=PIN)
    reader.context.catch_up()
    with reader.store.read() as tx:
        expected = reference(tx)
    assert_same(reader.context.directory, expected)
    # And the batch path answers with what changed: bulk5's device is revoked now.
    challenge = reader.issue_challenge("bulk11")
    assert challenge.challenge is not None
    answer = ocra.compute(SUITE, secret(11), question=challenge.challenge, pin=PIN)
    assert reader.verify("bulk11", challenge.token, answer).ok
    reader.store.close()
    writer.store.close()


def test_users_and_links_read_in_several_slices_are_the_same_read_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_url: str | None
) -> None:
    from sls_core.store import postgres_load, sqlite_load

    data = tmp_path / "data"
    writer = populate(data, store_url)
    monkeypatch.setattr(sqlite_load if store_url is None else postgres_load, "_ROWS_PER_SELECT", 3)
    fresh = open_sls(data, store_url)
    fresh.warm()
    with fresh.store.read() as tx:
        expected = reference(tx)
        links = sorted(tx.links())
    load_links = fresh.context.directory.devices_of
    assert_same(fresh.context.directory, expected)
    assert sorted((u, d) for u in expected["users"] for d in load_links.get(u, set())) == links
    fresh.store.close()
    writer.store.close()


def test_a_full_load_codes_only_texts_it_knows_and_gives_back_the_texts() -> None:
    from sls_core.store.load import DirectoryLoad, LoadedDevice, UserColumns
    from sls_core.store.sqlite_load import _device_codes

    codes = _device_codes()
    kind, state, suite = LoadedDevice.TYPE, LoadedDevice.STATE, LoadedDevice.SUITE
    assert codes[kind] == tuple(t.value for t in DeviceType)
    assert SUITE in codes[suite]
    assert OTHER_SUITE not in codes[suite]
    empty = np.zeros(0, np.int64)
    load = DirectoryLoad(
        UserColumns.concatenate([]),
        [],
        empty,
        None,
        None,
        empty,
        empty,
        None,
        codes,  # type: ignore[arg-type]
    )
    assert load.device_text(suite, codes[suite].index(SUITE)) == SUITE
    assert load.device_text(suite, OTHER_SUITE) == OTHER_SUITE
    assert load.device_text(suite, None) is None
    assert load.device_cell(state, "active") == codes[state].index("active")
    assert load.device_cell(suite, OTHER_SUITE) == OTHER_SUITE


def _swap_secrets(data: Path, store_url: str | None, first: int, second: int) -> None:
    """Swaps two devices' sealed secrets in the database itself (what a bad restore or an
    attacker with write access to the database could do)."""
    query = "SELECT id, secret FROM devices WHERE id IN ({0}, {1})"
    if store_url is None:
        conn = sqlite3.connect(data / "sls.db")
        rows = dict(conn.execute(query.format(first, second)).fetchall())
        for device_id, other in ((first, second), (second, first)):
            conn.execute("UPDATE devices SET secret = ? WHERE id = ?", (rows[other], device_id))
        conn.commit()
        conn.close()
        return
    import psycopg

    with psycopg.connect(store_url, autocommit=True) as pg:
        rows = dict(pg.execute(query.format(first, second)).fetchall())
        for device_id, other in ((first, second), (second, first)):
            pg.execute("UPDATE devices SET secret = %s WHERE id = %s", (rows[other], device_id))


def test_a_secret_that_does_not_open_fails_the_load_naming_the_device_not_the_secret(
    tmp_path: Path, store_url: str | None
) -> None:
    data = tmp_path / "data"
    writer = open_sls(data, store_url)
    writer.enroll_bulk(
        ["u0", "u1", "u2"], DeviceType.DSC_PLUS, [secret(i) for i in range(3)], pins=[PIN] * 3
    )
    first, second = (writer.devices(name)[0].id for name in ("u1", "u2"))
    writer.store.close()
    _swap_secrets(data, store_url, first, second)
    reader = open_sls(data, store_url)
    with pytest.raises(SealingError) as caught:
        reader.warm()
    assert caught.value.record == f"device {first} secret"
    assert "authentication failed" in str(caught.value)
    for i in range(3):
        assert secret(i).hex() not in str(caught.value)
    # Half loaded is not loaded: the next transaction tries the full load again.
    assert reader.context.directory.generation == -1
    reader.store.close()


def test_the_name_index_takes_a_whole_column_of_names_at_once() -> None:
    from sls_core.challenge import NameIndex
    from sls_core.errors import InvalidInputError, InvalidInputTypeError

    names = NameIndex()
    names.extend(["ann", "bo", "cy"], np.array([3, 1, 2], np.int64))
    assert names.lookup(["bo", "cy", "ann", "dee", 5]).tolist() == [1, 2, 3, -1, -1]
    names.extend(["bo"], np.array([9], np.int64))  # replaces, as insert does
    assert names.lookup(["bo"]).tolist() == [9]
    with pytest.raises(InvalidInputError, match="user_ids"):
        names.extend(["x", "y"], np.array([1], np.int64))
    with pytest.raises(InvalidInputError, match="user_id"):
        names.extend(["x"], np.array([-1], np.int64))
    with pytest.raises(InvalidInputTypeError, match="username"):
        names.extend([b"x"], np.array([1], np.int64))  # type: ignore[list-item]


def test_devices_holding_a_push_key_are_found_without_making_every_entry(
    tmp_path: Path, store_url: str | None
) -> None:
    data = tmp_path / "data"
    writer = populate(data, store_url)
    holders = [writer.devices(name)[0].id for name in ("bulk1", "bulk2")]
    with writer.context.write() as tx:
        for device_id in holders:
            tx.store.update_device(device_id, push_public=b"P" * 32)
    reader = open_sls(data, store_url)
    reader.warm()
    devices = reader.context.directory.devices
    assert [e.row.id for e in devices.with_push_public(b"P" * 32)] == holders
    assert dict.__len__(devices) == 2  # only the two that match were made
    assert devices.with_push_public(b"Q" * 32) == []
    # A change seen by a refresh wins over the loaded row.
    with writer.context.write() as tx:
        tx.store.update_device(holders[0], push_public=b"Q" * 32)
    reader.context.catch_up()
    assert [e.row.id for e in devices.with_push_public(b"P" * 32)] == holders[1:]
    assert [e.row.id for e in devices.with_push_public(b"Q" * 32)] == holders[:1]
    reader.store.close()
    writer.store.close()


def test_key_columns_fill_a_slice_only_for_ids_counting_up_by_one() -> None:
    from sls_core.login.directory import _consecutive

    assert _consecutive(np.array([4, 5, 6], np.int64))
    for ids in ([], [1, 3], [2, 1, 3], [1, 2, 4, 3], [1, 1, 2]):
        assert not _consecutive(np.array(ids, np.int64))


def test_what_never_changes_is_read_on_first_use_from_any_thread(
    tmp_path: Path, store_url: str | None
) -> None:
    """Issue 14 (cold start): a full load leaves each row's details (identity, created_at;
    serial, issued_at, phone) to first use; they never change once written, so a lookup
    from another thread, later, after other changes, still gives exactly the stored row."""
    import threading

    data = tmp_path / "data"
    writer = populate(data, store_url)
    reader = open_sls(data, store_url)
    reader.warm()
    directory = reader.context.directory
    assert dict.__len__(directory.user_by_id) == 0  # nothing made by the load itself
    writer.close_account("bulk4")  # a change the reader has not seen yet
    hana = writer.user("hana").id
    made: dict[str, Any] = {}

    def look_up() -> None:
        with reader.context.lock:
            made["hana"] = directory.user_by_id[hana]
            made["device"] = directory.devices[writer.devices("bulk2")[0].id].row
            made["identity"] = made["hana"].identity  # read here, in this thread
            made["serial"] = made["device"].serial

    thread = threading.Thread(target=look_up)
    thread.start()
    thread.join()
    with writer.store.read() as tx:
        assert made["hana"] == tx.users([hana])[0]
        assert made["identity"]["citizenship"] == "CH"
        assert made["serial"] == tx.devices([made["device"].id])[0].serial
        assert made["device"] == tx.devices([made["device"].id])[0]
    reader.context.catch_up()
    with reader.store.read() as tx:
        assert_same(reader.context.directory, reference(tx))
    reader.store.close()
    writer.store.close()


def test_details_of_a_row_written_after_this_threads_snapshot_are_read_from_the_latest(
    tmp_path: Path, store_url: str | None
) -> None:
    """A thread whose transaction began before a row was written (the load that listed
    the row having run since, elsewhere) still gets the row's details; a row that is not
    in the store at all is an error naming it, not a made-up row."""
    data = tmp_path / "data"
    writer = open_sls(data, store_url)
    reader = open_sls(data, store_url)
    store = reader.store
    with store.read() as tx:
        tx.generation()  # the snapshot is taken
        user_id = writer.create_user("late", Identity(residence="Bern")).id
        device_id = writer.enroll_device("late", DeviceType.DSC_PLUS, secret=secret(1), pin=PIN).id
        identity, created_at = store.user_details(user_id)  # type: ignore[attr-defined]
        serial, issued_at, phone = store.device_details(device_id)  # type: ignore[attr-defined]
    with writer.store.read() as tx:
        user, device = tx.users([user_id])[0], tx.devices([device_id])[0]
    assert (json.loads(identity), created_at) == (user.identity, user.created_at)
    assert (serial, issued_at, phone) == (device.serial, device.issued_at, device.phone)
    with pytest.raises(RuntimeError, match=r"user 999999 of a full load is not in the store"):
        store.user_details(999_999)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match=r"device 999999 of a full load"):
        store.device_details(999_999)  # type: ignore[attr-defined]
    reader.store.close()
    writer.store.close()


def test_logins_after_a_restart_read_no_details_until_one_is_asked_for(
    tmp_path: Path, store_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted node in a login storm: issuing challenges and verifying DSC+ answers
    make users' and devices' rows, but read none of their details (one read each would
    be a round trip per user on PostgreSQL); the first field asked for reads them."""
    data = tmp_path / "data"
    writer = populate(data, store_url)
    reader = open_sls(data, store_url)
    reader.warm()
    reads: list[tuple[str, int]] = []
    store = reader.store
    for kind in ("user", "device"):
        real = getattr(store, f"{kind}_details")
        monkeypatch.setattr(
            store,
            f"{kind}_details",
            lambda i, real=real, kind=kind: reads.append((kind, i)) or real(i),
        )
    for k in (11, 12, 13):
        challenge = reader.issue_challenge(f"bulk{k}")
        assert challenge.challenge is not None
        answer = ocra.compute(SUITE, secret(k), question=challenge.challenge, pin=PIN)
        assert reader.verify(f"bulk{k}", challenge.token, answer).ok
        wrong = reader.issue_challenge(f"bulk{k}")
        assert not reader.verify(f"bulk{k}", wrong.token, "00000000").ok
    assert dict.__len__(reader.context.directory.user_by_id) >= 3  # rows were made
    assert reads == []
    user = reader.context.directory.user_by_name["bulk11"]
    with writer.store.read() as tx:
        stored = tx.users([user.id])[0]
    assert user.identity == stored.identity
    assert user.created_at == stored.created_at  # read once, then kept
    assert user == stored
    assert reads == [("user", user.id)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        user.identity = {}  # type: ignore[misc]
    closed = dataclasses.replace(user, closed=True)
    assert closed.closed
    assert closed.identity == stored.identity
    assert dataclasses.replace(closed, closed=False) == stored
    assert reads == [("user", user.id)]
    reader.store.close()
    writer.store.close()


def _count_user_column_reads(
    monkeypatch: pytest.MonkeyPatch, store_url: str | None, moved: bool
) -> list[str]:
    """Notes the thread each full load's user columns are read in; ``moved``: the second
    connection's snapshot made to look one generation off (a write between the two)."""
    import threading

    from sls_core.store import postgres as pg_store
    from sls_core.store import postgres_load, sqlite_load

    read_in: list[str] = []
    owner: Any = sqlite_load if store_url is None else postgres_load
    name = "_user_columns" if store_url is None else "user_columns"
    real = getattr(owner, name)

    def user_columns(where: Any) -> Any:
        read_in.append(threading.current_thread().name)
        return real(where)

    monkeypatch.setattr(owner, name, user_columns)
    if moved and store_url is None:
        snapshot = sqlite_load._snapshot
        monkeypatch.setattr(sqlite_load, "_snapshot", lambda conn: snapshot(conn) + 1)
    elif moved:
        beside = pg_store.PostgresStore._users_and_links_beside
        monkeypatch.setattr(
            pg_store.PostgresStore,
            "_users_and_links_beside",
            lambda store, generation: beside(store, generation + 1),
        )
    return read_in


@pytest.mark.parametrize("moved", [False, True])
def test_users_and_links_read_beside_the_devices_only_from_the_same_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moved: bool, store_url: str | None
) -> None:
    """A full load reads its users and links on a second connection while the device rows
    are fetched (SQLite: a connection of its own; PostgreSQL: a pooled one, repeatable
    read), and uses them only when that connection's snapshot has the same change-feed
    generation; otherwise (a write came between, here simulated) it reads them again in
    the load's own transaction. Either way the directory is exact."""
    data = tmp_path / "data"
    writer = populate(data, store_url)
    read_in = _count_user_column_reads(monkeypatch, store_url, moved)
    fresh = open_sls(data, store_url)
    fresh.warm()
    assert read_in == (["MainThread"] if moved else ["sls-load-beside"])
    with fresh.store.read() as tx:
        assert_same(fresh.context.directory, reference(tx))
    fresh.store.close()
    writer.store.close()


def test_a_loaded_row_pickles_and_copies_as_the_plain_row(tmp_path: Path) -> None:
    import copy
    import pickle

    data = tmp_path / "data"
    writer = populate(data, None)
    reader = open_sls(data, None)
    reader.warm()
    directory = reader.context.directory
    user = directory.user_by_name["hana"]
    device = directory.devices[writer.devices("bulk2")[0].id].row
    with writer.store.read() as tx:
        stored_user, stored_device = tx.users([user.id])[0], tx.devices([device.id])[0]
    for row, stored in ((user, stored_user), (device, stored_device)):
        for made in (pickle.loads(pickle.dumps(row)), copy.deepcopy(row)):  # noqa: S301
            assert type(made) is type(stored)  # the store is not carried along
            assert made == stored
    reader.store.close()
    writer.store.close()


def test_a_failed_device_fetch_leaves_no_second_connection_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from sls_core.store import sqlite_load

    data = tmp_path / "data"
    writer = populate(data, None)
    monkeypatch.setattr(sqlite_load, "LOADED_DEVICE_COLUMNS", "id, no_such_column")
    reader = open_sls(data, None)
    with pytest.raises(sqlite3.OperationalError, match="no_such_column"):
        reader.warm()
    assert "sls-load-beside" not in {t.name for t in threading.enumerate()}
    reader.store.close()
    writer.store.close()


def test_postgres_reads_details_on_the_threads_open_transaction_and_never_waits_for_a_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    """Inside a transaction a loaded row's details are read on its own connection (no
    second pooled one while it may hold the write lock); the second connection of a full
    load is taken only if one is free at once, and a busy pool does not count as the
    database being down."""
    import psycopg_pool

    from sls_core.store import postgres as pg_store

    data = tmp_path / "data"
    writer = populate(data, pg_url)
    reader = open_sls(data, pg_url)
    store: Any = reader.store
    taken: list[float | None] = []
    getconn = store._pool.getconn

    def busy_pool(timeout: float | None = None) -> Any:
        taken.append(timeout)
        if timeout == pg_store.SPARE_WAIT_SECONDS:
            raise psycopg_pool.PoolTimeout("no spare connection (simulated)")
        return getconn(timeout=timeout)

    monkeypatch.setattr(store._pool, "getconn", busy_pool)
    read_in = _count_user_column_reads(monkeypatch, pg_url, moved=False)
    reader.warm()
    assert read_in == ["MainThread"]  # no spare: the load read them itself
    assert pg_store.SPARE_WAIT_SECONDS in taken
    assert store._reachable
    with reader.store.read() as tx:
        assert_same(reader.context.directory, reference(tx))
    (device,) = writer.devices("bulk4")
    with reader.context.write():
        taken.clear()
        assert reader.context.directory.devices[device.id].row.serial == device.serial
        assert taken == []  # read on the write transaction's own connection
    reader.store.close()
    writer.store.close()
