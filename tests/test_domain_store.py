"""The store: durability, exactness across processes, encryption at rest and rotation.

Concurrency and crash tests use real processes (``multiprocessing`` with the ``spawn``
start method, so no process forks after rayon or SQLite started).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sls_core import ocra
from sls_core.clock import ManualClock
from sls_core.devices import DeviceType
from sls_core.errors import InvalidInputError
from sls_core.login import SecureLogin, pipeline
from sls_core.outcome import LoginOutcome
from sls_core.sealing import MasterKeyRing, SealingError
from sls_core.store import SCHEMA_VERSION, SqliteStore

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
SECRET = bytes(range(20))
PIN = "4711"
NOW = 1_800_000_000.0


def _answer(challenge: str) -> str:
    return ocra.compute(SUITE, SECRET, question=challenge, pin=PIN)


def _setup(data: Path, users: int = 1) -> SecureLogin:
    sls = SecureLogin.open(data, clock=ManualClock(NOW))
    for u in range(users):
        name = f"user{u}"
        sls.create_user(name)
        sls.enroll_device(name, DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    return sls


def _verify_in_process(data: str, token: str, answer: str, start: object) -> int:
    sls = SecureLogin.open(data, clock=ManualClock(NOW))
    start.wait()  # type: ignore[attr-defined]
    return int(sls.verify("user0", token, answer).outcome)


def test_the_same_right_response_from_8_processes_at_once_is_ok_exactly_once(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    sls = _setup(data)
    challenge = sls.issue_challenge("user0")
    answer = _answer(challenge.challenge or "")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(8) as pool:
            pending = [
                pool.apply_async(_verify_in_process, (str(data), challenge.token, answer, start))
                for _ in range(8)
            ]
            start.set()
            outcomes = sorted(p.get(timeout=120) for p in pending)
    assert outcomes == [LoginOutcome.OK] + [LoginOutcome.REPLAYED] * 7


_CRASHING_WORKER = textwrap.dedent(
    """
    import os, signal, sys
    from sls_core.clock import ManualClock
    from sls_core.login import SecureLogin
    from sls_core.store.sqlite import _SqliteTx

    data, mode = sys.argv[1], sys.argv[2]
    sls = SecureLogin.open(data, clock=ManualClock({now}))
    tokens = [line.split()[0] for line in open(os.path.join(data, "tokens.txt"))]
    answers = [line.split()[1] for line in open(os.path.join(data, "tokens.txt"))]
    original = getattr(_SqliteTx, mode)

    def die_after(self, *args, **kwargs):
        original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the batch's writes

    setattr(_SqliteTx, mode, die_after)
    users = [f"user{{i}}" for i in range(len(tokens))]
    sls.verify_batch(users, tokens, answers)
    """
).format(now=NOW)


@pytest.mark.parametrize("die_after", ["try_consume", "put_failures"])
def test_kill_9_in_the_middle_of_a_batch_loses_nothing_and_half_applies_nothing(
    tmp_path: Path, die_after: str
) -> None:
    data = tmp_path / "data"
    sls = _setup(data, users=20)
    lines = []
    for u in range(20):
        challenge = sls.issue_challenge(f"user{u}")
        answer = _answer(challenge.challenge or "")
        if u % 2:  # odd users answer wrong: failures to count
            answer = f"{(int(answer) + 1) % 10**8:08d}"
        lines.append(f"{challenge.token} {answer}\n")
    (data / "tokens.txt").write_text("".join(lines))
    worker = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _CRASHING_WORKER, str(data), die_after],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr.decode()[-2000:]
    # The batch died before COMMIT: nothing of it is applied, so the same attempts decide
    # now, exactly once, and every failure is counted exactly once.
    reopened = SecureLogin.open(data, clock=ManualClock(NOW))
    tokens = [line.split()[0] for line in lines]
    answers = [line.split()[1] for line in lines]
    users = [f"user{u}" for u in range(20)]
    first = reopened.verify_batch(users, tokens, answers)
    assert [first[u] for u in range(20)] == [
        LoginOutcome.WRONG if u % 2 else LoginOutcome.OK for u in range(20)
    ]
    again = reopened.verify_batch(users, tokens, answers)
    assert all(again[u] is LoginOutcome.REPLAYED for u in range(20))
    for u in range(20):
        expected = 1 if u % 2 else 0
        assert reopened.lockout_status(f"user{u}").consecutive_failures == expected


def test_a_committed_batch_survives_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sls = _setup(data)
    challenge = sls.issue_challenge("user0")
    answer = _answer(challenge.challenge or "")
    script = textwrap.dedent(
        f"""
        import os, signal
        from sls_core.clock import ManualClock
        from sls_core.login import SecureLogin
        sls = SecureLogin.open({str(data)!r}, clock=ManualClock({NOW}))
        assert sls.verify("user0", {challenge.token!r}, {answer!r}).ok
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    worker = subprocess.run(  # noqa: S603
        [sys.executable, "-c", script], capture_output=True, check=False, timeout=120
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr.decode()[-2000:]
    reopened = SecureLogin.open(data, clock=ManualClock(NOW))
    assert reopened.verify("user0", challenge.token, answer).outcome is LoginOutcome.REPLAYED


def test_an_enrollment_that_fails_halfway_does_not_exist(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sls = _setup(data)
    user_id = sls.user("user0").id

    def enroll_then_fail() -> None:
        with sls.context.write() as tx:
            tx.store.insert_device(_row(), [user_id])
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        enroll_then_fail()
    assert len(sls.devices("user0")) == 1
    count = sqlite3.connect(data / "sls.db").execute("SELECT count(*) FROM devices").fetchone()
    assert count == (1,)


def _row():  # type: ignore[no-untyped-def]
    from sls_core.store import DeviceRow

    return DeviceRow(
        id=0,
        type="dsc_plus",
        state="active",
        serial="DS-X",
        suite=SUITE,
        issued_at=NOW,
        shipped_at=None,
        activated_at=NOW,
        expires_at=None,
        replaces=None,
        secret=SECRET,
        pin_hash=b"\x00" * 20,
    )


def test_schema_is_versioned_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    keyring = MasterKeyRing({"k1": os.urandom(32)}, "k1")
    store = SqliteStore(tmp_path / "s.db", keyring=keyring)
    assert store.schema_version == SCHEMA_VERSION
    store.close()
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ValueError, match="newer"):
        SqliteStore(tmp_path / "s.db", keyring=keyring)


def test_device_secrets_are_tagged_with_their_key_id_and_bound_to_their_row(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    _setup(data, users=2)
    conn = sqlite3.connect(data / "sls.db")
    rows = conn.execute("SELECT id, secret FROM devices ORDER BY id").fetchall()
    assert all(MasterKeyRing.key_id_of(secret) == "k1" for _, secret in rows)
    # Swap the two sealed secrets: each is bound to its row, so neither opens.
    (a, sa), (b, sb) = rows
    conn.execute("UPDATE devices SET secret = ? WHERE id = ?", (sb, a))
    conn.execute("UPDATE devices SET secret = ? WHERE id = ?", (sa, b))
    conn.commit()
    with pytest.raises(SealingError):
        SecureLogin.open(data, clock=ManualClock(NOW)).devices("user0")


def test_master_key_rotation_re_encrypts_everything_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sls = _setup(data, users=7)
    challenge = sls.issue_challenge("user3")
    key_file = data / "master-key.json"
    old = MasterKeyRing.from_file(key_file)
    new = old.with_new_active_key("k2")
    store = SqliteStore(data / "sls.db", keyring=new)
    seen: list[tuple[int, int]] = []

    def stop_after_first_chunk(done: int, total: int) -> None:
        seen.append((done, total))
        if len(seen) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.rotate_master_key(new, chunk=3, progress=stop_after_first_chunk)
    assert seen == [(3, 7)]
    rest = store.rotate_master_key(new, chunk=3, progress=lambda d, t: seen.append((d, t)))
    assert rest == 4 + 3  # 4 devices left, then 3 server secrets
    conn = sqlite3.connect(data / "sls.db")
    ids = {MasterKeyRing.key_id_of(s) for (s,) in conn.execute("SELECT secret FROM devices")}
    assert ids == {"k2"}
    new.save(key_file)
    reopened = SecureLogin.open(data, clock=ManualClock(NOW))
    assert reopened.verify("user3", challenge.token, _answer(challenge.challenge or "")).ok


def test_the_rotation_command_resumes_and_retires_the_old_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sls_core import admin

    data = tmp_path / "data"
    sls = _setup(data, users=5)
    challenge = sls.issue_challenge("user2")
    args = ["--data-dir", str(data), "rotate-master-key", "--new-key-id", "k2", "--quiet"]
    assert admin.main([*args, "--chunk", "2"]) == 0
    sls.issue_challenge("user1")  # the running process writes: it moves to k2
    assert admin.main([*args, "--retire"]) == 0  # a second run resumes: nothing left
    err = capsys.readouterr().err
    assert "resuming" in err
    assert "retired key ids: k1" in err
    ring = MasterKeyRing.from_file(data / "master-key.json")
    assert ring.key_ids == {"k2"}
    reopened = SecureLogin.open(data, clock=ManualClock(NOW))
    assert reopened.verify("user2", challenge.token, _answer(challenge.challenge or "")).ok
    assert admin.main(["--data-dir", str(data), "status"]) == 0
    assert "'k2': " in capsys.readouterr().out


def test_a_version_1_store_is_migrated_on_open(tmp_path: Path) -> None:
    from sls_core.store import schema

    keyring = MasterKeyRing({"k1": os.urandom(32)}, "k1")
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in schema.SQLITE_MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO consumed VALUES (7, 1.0)")
    conn.execute("INSERT INTO consumed VALUES (8, 1.5)")
    conn.execute("INSERT INTO consumed VALUES (63, 3.0)")
    conn.execute("INSERT INTO consumed VALUES (?, 1.2)", (1 << 62,))
    conn.commit()
    conn.close()
    store = SqliteStore(path, keyring=keyring)
    assert store.schema_version == SCHEMA_VERSION
    with store.write() as tx:
        assert tx.consumed([7, 8, 9, 63, 1 << 62]) == {7, 8, 63, 1 << 62}
        # Version 10 keeps them 64 ids to a row, until the row's latest expiry.
        assert tx.purge_consumed(2.0, 10) == 1
        assert tx.consumed([7, 8, 63, 1 << 62]) == {7, 8, 63}
        assert tx.purge_consumed(4.0, 10) == 1
        assert tx.consumed([7, 8, 63]) == set()
    names = {name for (name,) in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert {"consumed", "consumed_spans", "consumed_by_expiry"}.isdisjoint(names)
    assert {"consumed_blocks", "consumed_blocks_by_expiry"} <= names


def test_expired_consumed_challenges_are_purged_as_verification_goes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    clock = ManualClock(NOW)
    sls = SecureLogin.open(data, clock=clock)
    sls.create_user("user0")
    sls.enroll_device("user0", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    challenge = sls.issue_challenge("user0")
    assert sls.verify("user0", challenge.token, _answer(challenge.challenge or "")).ok
    db = sqlite3.connect(data / "sls.db")
    assert db.execute("SELECT count(*) FROM consumed_blocks").fetchone() == (1,)
    from sls_core.login import PURGE_MARGIN

    clock.advance(sls.challenge_ttl + PURGE_MARGIN - 60)
    sls.verify("user0", None, "x")  # expired, but within the margin: kept
    assert db.execute("SELECT count(*) FROM consumed_blocks").fetchone() == (1,)
    clock.advance(120)
    sls.context.next_purge = 0.0  # purges run once a minute
    sls.verify("user0", None, "x")  # any later batch purges
    assert db.execute("SELECT count(*) FROM consumed_blocks").fetchone() == (0,)


def test_the_native_name_index_maps_usernames_and_refuses_non_strings() -> None:
    from sls_core.challenge import NameIndex

    index = NameIndex()
    index.insert("alice", 7)
    index.insert("bob", 9)
    index.remove("bob")
    assert index.lookup(["alice", "bob", None, 7, "\ud800", "ALICE"]).tolist() == [
        7,
        -1,
        -1,
        -1,
        -1,
        -1,
    ]
    assert len(index) == 1
    with pytest.raises(ValueError, match="user_id"):
        index.insert("carol", -1)
    with pytest.raises(TypeError, match="usernames"):
        index.lookup(("alice",))  # type: ignore[arg-type]


def test_writers_queue_on_the_writer_gate_and_start_when_it_opens(tmp_path: Path) -> None:
    """Writers wait on an flock of ``<file>-writer`` (woken at once on release) instead of
    SQLite's busy-wait sleeps of 1, 2, 5 ms and more; the gate is 0600 like the store."""
    import fcntl
    import threading

    sls = _setup(tmp_path / "data")
    store = sls.store
    assert isinstance(store, SqliteStore)
    gate = store.writer_gate
    assert gate.exists()
    assert gate.stat().st_mode & 0o777 == 0o600
    challenge = sls.issue_challenge("user0")
    done = threading.Event()
    outcome: list[LoginOutcome] = []

    def verify() -> None:
        outcome.append(
            sls.verify("user0", challenge.token, _answer(challenge.challenge or "")).outcome
        )
        done.set()

    holder = os.open(gate, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another process's writer holds the gate
        worker = threading.Thread(target=verify)
        worker.start()
        assert not done.wait(0.3), "a write went ahead while another writer held the gate"
        fcntl.flock(holder, fcntl.LOCK_UN)
        assert done.wait(10.0)
        worker.join()
    finally:
        os.close(holder)
    assert outcome == [LoginOutcome.OK]


def test_a_plain_sqlite_writer_without_the_gate_is_still_excluded(tmp_path: Path) -> None:
    """The gate orders sls_core's writers; exactness still rests on BEGIN IMMEDIATE, so a
    program that ignores the gate (the sqlite3 shell) cannot write in the middle."""
    sls = _setup(tmp_path / "data")
    store = sls.store
    assert isinstance(store, SqliteStore)
    other = sqlite3.connect(store.path, timeout=0.05, isolation_level=None)
    try:
        with store.write(), pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_warm_loads_the_directory_from_a_snapshot_while_another_process_writes(
    tmp_path: Path,
) -> None:
    """A server loads its directory before it says SERVING, without the write lock: a
    long write elsewhere neither blocks it nor is blocked by it."""
    data = tmp_path / "data"
    _setup(data, users=3)
    fresh = SecureLogin.open(data, clock=ManualClock(NOW))
    store = fresh.store
    assert isinstance(store, SqliteStore)
    writer = sqlite3.connect(store.path, timeout=0.05, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process is in the middle of a write
        fresh.warm()
        writer.execute("ROLLBACK")
    finally:
        writer.close()
    assert [fresh.user(f"user{u}").username for u in range(3)] == ["user0", "user1", "user2"]
    challenge = fresh.issue_challenge("user2")
    answer = _answer(challenge.challenge or "")
    assert fresh.verify("user2", challenge.token, answer).outcome is LoginOutcome.OK
    user1 = fresh.user("user1").id
    with store.read() as tx:  # a snapshot discards what is written in it
        tx.update_user(user1, opted_out=1)
    assert not fresh.user("user1").opted_out


def test_a_large_batch_checked_before_the_write_lock_sees_a_revocation_made_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of PRECHECK_MIN_ITEMS or more checks its answers before it takes the write
    lock; a device revoked by another process in between is refused all the same, because
    the batch checks again against the state it commits on."""
    from sls_core import login

    data = tmp_path / "data"
    sls = _setup(data, users=2)
    other = SecureLogin.open(data, clock=ManualClock(NOW))  # another process's view
    half = login.PRECHECK_MIN_ITEMS // 2 + 1
    users = ["user0"] * half + ["user1"] * half
    challenges = sls.issue_challenges(users)
    answers = [_answer(c.challenge or "") for c in challenges]
    revoked_device = challenges[-1].device_id
    evaluate = pipeline.ResponsePlan.evaluate
    calls: list[int] = []
    revoke = [True]

    def evaluate_then_revoke(plan: pipeline.ResponsePlan) -> None:
        evaluate(plan)
        calls.append(plan.n)
        if revoke.pop() if revoke else False:  # once, between the check and the lock
            other.revoke_device("user1", revoked_device)

    monkeypatch.setattr(pipeline.ResponsePlan, "evaluate", evaluate_then_revoke)
    result = sls.verify_batch(users, [c.token for c in challenges], answers)
    assert calls == [2 * half, 2 * half]  # checked before the lock, then again inside
    assert [result[i] for i in range(half)] == [LoginOutcome.OK] * half
    assert [result[i] for i in range(half, 2 * half)] == [LoginOutcome.DEVICE_NOT_ACTIVE] * half
    # Nothing changed in between: checked once, before the lock.
    calls.clear()
    challenges = sls.issue_challenges(["user0"] * 2 * half)
    result = sls.verify_batch(
        ["user0"] * 2 * half,
        [c.token for c in challenges],
        [_answer(c.challenge or "") for c in challenges],
    )
    assert calls == [2 * half]
    assert set(result.outcomes.tolist()) == {LoginOutcome.OK}


def test_a_token_used_elsewhere_stays_replayed_for_a_batch_checked_just_before_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large batch checked before the write lock, half a second before a token expires,
    commits after another process purged old consumed challenges: the token's use is
    still on record (PURGE_MARGIN), so it is REPLAYED, never a second OK; and a check
    older than PRECHECK_MAX_AGE is done again at commit time (the token has expired)."""
    from sls_core import login

    data = tmp_path / "data"
    clock = ManualClock(NOW)  # one wall clock for both processes
    mine = SecureLogin.open(data, clock=clock)
    mine.create_user("user0")
    mine.enroll_device("user0", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    other = SecureLogin.open(data, clock=clock)
    used = mine.issue_challenge("user0")
    answer = _answer(used.challenge or "")
    assert other.verify("user0", used.token, answer).outcome is LoginOutcome.OK
    clock.advance(used.expires_at - NOW - 0.5)  # half a second before it expires
    fresh = mine.issue_challenges(["user0"] * (login.PRECHECK_MIN_ITEMS - 1))
    users = ["user0"] * login.PRECHECK_MIN_ITEMS
    tokens = [used.token] + [c.token for c in fresh]
    answers = [answer] + [_answer(c.challenge or "") for c in fresh]
    evaluate = pipeline.ResponsePlan.evaluate
    pending = [0.9]  # seconds that pass between the check and the write lock

    def evaluate_then_other_process_purges(plan: pipeline.ResponsePlan) -> None:
        evaluate(plan)
        if pending:
            clock.advance(pending.pop())
            other._next_purge = 0.0
            other.verify("user0", None, "x")  # its batch purges old consumed records

    monkeypatch.setattr(pipeline.ResponsePlan, "evaluate", evaluate_then_other_process_purges)
    result = mine.verify_batch(users, tokens, answers)
    assert result[0] is LoginOutcome.REPLAYED
    assert set(result.outcomes[1:].tolist()) == {LoginOutcome.OK}
    # The same with more than PRECHECK_MAX_AGE between check and commit: checked again,
    # at a time when the token has expired.
    pending[:] = [login.PRECHECK_MAX_AGE + 0.5]
    fresh = mine.issue_challenges(["user0"] * (login.PRECHECK_MIN_ITEMS - 1))
    almost = mine.issue_challenge("user0")
    clock.advance(almost.expires_at - clock.now() - 0.5)
    result = mine.verify_batch(
        users,
        [almost.token] + [c.token for c in fresh],
        [_answer(almost.challenge or "")] + [_answer(c.challenge or "") for c in fresh],
    )
    assert result[0] is LoginOutcome.EXPIRED


def test_a_write_that_must_not_wait_waits_for_nothing(tmp_path: Path) -> None:
    """write(wait=False) refuses at once (WriterBusyError, nothing done) when a program
    that ignores the writer gate holds SQLite's write lock, instead of sitting in SQLite's
    busy handler; a waiting write then still gets SQLite's busy_timeout."""
    import time

    from sls_core.store import WriterBusyError

    sls = _setup(tmp_path / "data")
    store = sls.store
    assert isinstance(store, SqliteStore)
    shell = sqlite3.connect(store.path, timeout=0.05, isolation_level=None)
    try:
        shell.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(WriterBusyError), store.write(wait=False):
            pass
        assert time.monotonic() - started < 1.0  # not SQLite's 30 s busy wait
        shell.execute("ROLLBACK")
    finally:
        shell.close()
    challenge = sls.issue_challenge("user0")  # the connection's busy_timeout is back
    assert sls.verify("user0", challenge.token, _answer(challenge.challenge or "")).ok


def test_the_writer_gate_gives_up_after_busy_timeout(tmp_path: Path) -> None:
    import fcntl

    from sls_core.sealing import MasterKeyRing

    path = tmp_path / "sls.db"
    keyring = MasterKeyRing.generate_file(tmp_path / "master-key.json")
    store = SqliteStore(path, keyring=keyring, busy_timeout=0.2)
    holder = os.open(store.writer_gate, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # a writer stopped while holding the gate
        with (
            pytest.raises(sqlite3.OperationalError, match="writer gate stayed busy"),
            store.write(),
        ):
            pass
    finally:
        os.close(holder)
    with store.write() as tx:
        assert tx.generation() >= 0


def test_a_forked_child_does_not_keep_its_parents_gate_locked(tmp_path: Path) -> None:
    """A flock lives while any copy of its descriptor is open: a child forked while the
    parent wrote must not keep the gate locked after the parent is gone."""
    data = tmp_path / "data"
    _setup(data)
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from sls_core.login import SecureLogin
        sls = SecureLogin.open({str(data)!r})
        with sls.store.write():
            if os.fork() == 0:  # the child lives on, idle, with its copies of the fds
                quiet = os.open(os.devnull, os.O_RDWR)
                os.dup2(quiet, 1)  # not the test's pipe: it must not wait for this child
                os.dup2(quiet, 2)
                time.sleep(4)
                os._exit(0)
            print("forked", flush=True)
            os._exit(0)  # the parent dies holding the gate
        """
    )
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.strip() == "forked", done.stderr
    import fcntl

    gate = os.open(data / "sls.db-writer", os.O_RDWR)
    try:
        fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held
    finally:
        os.close(gate)


def test_a_write_that_must_not_wait_leaves_a_directory_reload_to_one_that_may(
    tmp_path: Path,
) -> None:
    """After a bulk enrollment elsewhere this process's directory must be reloaded in
    full (seconds at a million devices): verify_batch(wait=False), the server's event
    loop, refuses with WriterBusyError and nothing done; a waiting call reloads it."""
    from sls_core.store import WriterBusyError

    data = tmp_path / "data"
    sls = _setup(data)
    challenge = sls.issue_challenge("user0")
    answer = _answer(challenge.challenge or "")
    other = SecureLogin.open(data, clock=ManualClock(NOW))
    other.enroll_bulk(["bulk0", "bulk1"], DeviceType.DSC_PLUS, [SECRET, SECRET], pins=[PIN] * 2)
    with pytest.raises(WriterBusyError):
        sls.verify_batch(["user0"], [challenge.token], [answer], wait=False)
    result = sls.verify_batch(["user0"], [challenge.token], [answer])  # not used up above
    assert result[0] is LoginOutcome.OK
    assert sls.user("bulk1").username == "bulk1"  # reloaded
    other_challenge = sls.issue_challenge("user0")
    done = sls.verify_batch(
        ["user0"], [other_challenge.token], [_answer(other_challenge.challenge or "")], wait=False
    )
    assert done[0] is LoginOutcome.OK  # up to date again: no need to wait


def test_a_failing_request_undoes_only_what_it_touched_and_reloads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11, finding 1: a request that fails inside a transaction (a taken username, an
    unknown one) must not make the next write reload the whole directory under the lock."""
    from sls_core.store.sqlite import _SqliteTx

    sls = _setup(tmp_path / "data")
    full_reloads = []
    original = _SqliteTx.users

    def counting(self: _SqliteTx, user_ids: object = None) -> object:
        if user_ids is None:
            full_reloads.append(1)
        return original(self, user_ids)  # type: ignore[arg-type]

    monkeypatch.setattr(_SqliteTx, "users", counting)
    generation = sls.context.directory.generation
    with pytest.raises(InvalidInputError):
        sls.create_user("user0")  # taken
    with pytest.raises(InvalidInputError):
        sls.issue_challenge("nosuchuser")
    assert sls.context.directory.generation == generation
    assert sls.issue_challenge("user0").challenge is not None
    assert full_reloads == []


def test_ids_reserved_in_a_rolled_back_transaction_are_never_handed_out(tmp_path: Path) -> None:
    sls = _setup(tmp_path / "data")

    def reserve_then_fail() -> None:
        with sls.context.write() as tx:
            sls.context.next_challenge_id(tx.store)
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        reserve_then_fail()
    # Another process reserves the range the rollback undid.
    other = SecureLogin.open(tmp_path / "data", clock=sls.clock)
    tokens = [c.token for c in other.issue_challenges(["user0"] * 3)]
    tokens += [c.token for c in sls.issue_challenges(["user0"] * 3)]
    opened = sls.context.tokens.open_batch(tokens, int(sls.clock.now()))
    assert len(set(opened["challenge_id"].tolist())) == 6


def test_the_data_directory_and_every_file_in_it_are_owner_only(tmp_path: Path) -> None:
    """Issue 11, finding 3: sls.db, -wal and -shm hold identity data and pending
    activations; a reader of -shm could stall every writer."""
    data = tmp_path / "data"
    sls = SecureLogin.open(data)
    sls.create_user("alice")
    sls.enroll_device("alice", DeviceType.SMS, phone="+41791234567")
    sls.issue_challenge("alice")  # writes the SMS outbox
    names = {p.name for p in data.iterdir()}
    assert {"sls.db", "sls.db-wal", "sls.db-shm", "master-key.json", "sms-outbox.jsonl"} <= names
    assert data.stat().st_mode & 0o777 == 0o700
    for path in data.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path.name


def test_a_store_left_readable_by_an_older_version_is_narrowed_at_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    SecureLogin.open(data).store.close()
    data.chmod(0o755)
    for path in data.iterdir():
        if path.name != "master-key.json":  # a readable key file is refused, on purpose
            path.chmod(0o644)
    reopened = SecureLogin.open(data)
    reopened.create_user("bob")
    assert data.stat().st_mode & 0o777 == 0o700
    for name in ("sls.db", "sls.db-wal", "sls.db-shm"):
        assert (data / name).stat().st_mode & 0o077 == 0, name


def test_a_live_rotation_never_retires_a_key_a_running_process_still_seals_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11, finding 8: a server keeps running through `rotate-master-key` and
    `--retire`: it follows the key file at its next write (new secrets sealed under the
    new key), and `--retire` keeps a key while a live process or a record still uses it."""
    from sls_core import admin

    data = tmp_path / "data"
    running = _setup(data, users=2)  # a server process that keeps running
    idle = SecureLogin.open(data, clock=ManualClock(NOW))  # a second one, idle meanwhile
    idle.issue_challenge("user0")
    args = ["--data-dir", str(data), "rotate-master-key", "--new-key-id", "k2", "--quiet"]
    assert admin.main(args) == 0
    running.enroll_device("user1", DeviceType.DSC_PLUS, secret=os.urandom(20), pin=PIN)
    sealed = (
        sqlite3.connect(data / "sls.db")
        .execute("SELECT secret FROM devices ORDER BY id DESC LIMIT 1")
        .fetchone()[0]
    )
    assert MasterKeyRing.key_id_of(sealed) == "k2"  # the live process moved to the new key
    assert admin.main([*args, "--retire"]) == 1  # the idle one still holds k1
    err = capsys.readouterr().err
    assert "not retired: 'k1'" in err
    assert MasterKeyRing.from_file(data / "master-key.json").key_ids == {"k1", "k2"}
    idle.issue_challenge("user0")  # its next write: it moves too
    assert admin.main([*args, "--retire"]) == 0
    assert MasterKeyRing.from_file(data / "master-key.json").key_ids == {"k2"}
    # Every record opens after a restart with the one key left.
    for s in (running, idle):
        s.store.close()
    restarted = SecureLogin.open(data, clock=ManualClock(NOW))
    assert len(restarted.devices("user1")) == 2
    challenge = restarted.issue_challenge("user0")
    assert restarted.verify("user0", challenge.token, _answer(challenge.challenge or "")).ok


def test_after_a_live_rotation_a_large_batch_opens_what_another_process_sealed(
    tmp_path: Path,
) -> None:
    from sls_core import admin

    data = tmp_path / "data"
    running = _setup(data, users=1)
    offer = running.ibkey.create_activation("user0")  # pending: its key is sealed too
    args = ["--data-dir", str(data), "rotate-master-key", "--new-key-id", "k2", "--quiet"]
    assert admin.main(args) == 0
    other = SecureLogin.open(data, clock=running.clock)
    other.create_user("late")
    other.enroll_device("late", DeviceType.DSC_PLUS, secret=os.urandom(20), pin=PIN)
    batch = running.issue_challenges(["user0"] * pipeline_min())
    result = running.verify_batch(
        ["user0"] * len(batch),
        [c.token for c in batch],
        [_answer(c.challenge or "") for c in batch],
    )
    assert all(result[i] is LoginOutcome.OK for i in range(len(batch)))
    other.issue_challenge("user0")
    assert admin.main([*args, "--retire"]) == 0
    from sls_core.simulator import SimulatedApp

    SimulatedApp().activate(running.ibkey, manual_code=offer.manual_code)  # still opens


def pipeline_min() -> int:
    from sls_core.login import PRECHECK_MIN_ITEMS

    return PRECHECK_MIN_ITEMS
