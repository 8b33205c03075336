"""Where random arrivals wait (issue 14): the server's debug timing of its batches
(SLS_CORE_DEBUG_PHASES, off unless set) and the write-ahead log checkpointed off the
serving path. No test asserts a duration: only that each phase is timed and reported,
that nothing else is, and that the log's pages reach the database file by themselves."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from grpc_fixtures import CALL_TIMEOUT, InProcessServer
from sls_core import ocra
from sls_core.api.v1 import common_pb2, verification_pb2
from sls_core.devices import DeviceType
from sls_core.server.app import WAL_RESTART_PAGES, WalCheckpointer
from sls_core.server.metrics import DEBUG_PHASES_ENV, PhaseTimes

pytest_plugins = ["grpc_fixtures"]

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
SECRET = bytes(range(20))
PIN = "4711"


def test_a_batch_is_split_at_its_audit_write_and_a_dump_starts_a_new_window(
    tmp_path: Path,
) -> None:
    phases = PhaseTimes(tmp_path / "phases")
    started = phases.batch_started()
    phases.audit_written(started + 0.001, started + 0.002, started + 0.003)
    phases.batch_finished("inline")
    phases.add("event loop lag", 0.0005)
    summary = phases.summary()["phases"]
    assert set(summary) == {
        "audit lock wait",
        "audit append",
        "batch before audit",
        "batch commit after audit",
        "batch run (inline)",
        "event loop lag",
    }
    assert all(stats["count"] == 1 for stats in summary.values())
    path = phases.dump()
    assert json.loads(path.read_text())["phases"].keys() == summary.keys()
    assert phases.summary()["phases"] == {}  # the next window starts empty
    # An audit write outside a batch (an activation's record) times only itself.
    phases.audit_written(1.0, 1.5, 2.0)
    phases.batch_finished("inline")
    assert set(phases.summary()["phases"]) == {"audit lock wait", "audit append"}


def test_debug_timing_is_off_unless_its_variable_names_a_directory(
    monkeypatch: pytest.MonkeyPatch, serve: Callable[..., InProcessServer]
) -> None:
    monkeypatch.delenv(DEBUG_PHASES_ENV, raising=False)
    assert PhaseTimes.from_environment() is None
    server = serve()
    assert server.server.phases is None
    assert server.server.audit is not None
    assert server.server.audit.phases is None


def test_a_server_times_each_phase_of_single_and_streamed_verifications(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Callable[..., InProcessServer]
) -> None:
    monkeypatch.setenv(DEBUG_PHASES_ENV, str(tmp_path / "phases"))
    server = serve()
    assert server.server.phases is not None
    sls = server.sls
    sls.create_user("alice")
    sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    stubs = server.stubs()

    def attempt() -> tuple[str, str]:
        c = sls.issue_challenge("alice")
        return c.token, ocra.compute(SUITE, SECRET, question=c.challenge, pin=PIN)

    token, answer = attempt()
    verdict = stubs.verification.Verify(
        verification_pb2.VerifyRequest(username="alice", token=token, response=answer),
        timeout=CALL_TIMEOUT,
    )
    assert verdict.outcome == common_pb2.OUTCOME_OK
    token, answer = attempt()
    request = verification_pb2.VerifyBatchRequest(
        usernames=["alice"], tokens=[token], responses=[answer]
    )
    (streamed,) = stubs.verification.VerifyStream(iter([request]), timeout=CALL_TIMEOUT)
    assert list(streamed.outcomes) == [common_pb2.OUTCOME_OK]

    path = server.server.phases.dump()
    timed = json.loads(path.read_text())
    assert {
        "coalescing queue wait",
        "batch run (inline)",
        "batch before audit",
        "audit lock wait",
        "audit append",
        "batch commit after audit",
        "batch server time (inline)",
    } <= set(timed["phases"])
    assert timed["phases"]["batch run (inline)"]["count"] == 2  # the call and the message
    # Durations and counts only: nothing a caller sent.
    text = path.read_text()
    for sent in ("alice", answer, token):
        assert sent not in text


def test_the_write_ahead_log_reaches_the_database_file_without_a_commit_doing_it(
    tmp_path: Path,
) -> None:
    database = tmp_path / "wal.db"
    writer = sqlite3.connect(database, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")  # no commit ever checkpoints here
    writer.execute("CREATE TABLE t (x BLOB)")
    for _ in range(50):
        writer.execute("INSERT INTO t VALUES (randomblob(4000))")
    before = database.stat().st_size
    checkpointer = WalCheckpointer(database, interval=0.01)
    checkpointer.start()
    try:
        deadline = time.monotonic() + 30.0
        while database.stat().st_size <= before and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        checkpointer.stop()
    assert database.stat().st_size > before + 50 * 4000  # the rows' pages were copied in
    assert writer.execute("SELECT count(*) FROM t").fetchone() == (50,)
    writer.close()


def test_a_server_on_the_embedded_store_checkpoints_its_log_until_it_stops(
    serve: Callable[..., InProcessServer],
) -> None:
    server = serve()
    checkpointer = server.server.checkpointer
    assert checkpointer is not None
    assert checkpointer._thread.is_alive()
    # A commit starts the log over (three syncs on the event loop) only past the raised
    # bound: the connections the store opened before the checkpointer follow it too.
    store = server.server.sls.store
    pages = store._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert pages == WAL_RESTART_PAGES
    server.stop()
    assert server.server.checkpointer is None
    assert not checkpointer._thread.is_alive()


def test_checkpoint_past_sets_the_bound_on_every_connection_of_the_store(tmp_path: Path) -> None:
    """SqliteStore.checkpoint_past: every connection of the store, opened before or after,
    checkpoints (and so starts the log over) only once the log holds that many pages."""
    from sls_core.errors import InvalidInputError
    from sls_core.login import SecureLogin

    sls = SecureLogin.open(tmp_path / "data")
    store = sls.store
    before = store._connection()
    assert before.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
    store.checkpoint_past(5000)
    assert store._connection().execute("PRAGMA wal_autocheckpoint").fetchone() == (5000,)
    seen: list[int] = []
    thread = threading.Thread(
        target=lambda: seen.append(
            store._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
    )
    thread.start()
    thread.join()
    assert seen == [5000]
    for wrong in (0, 99, 1_000_001):
        with pytest.raises(InvalidInputError, match="pages"):
            store.checkpoint_past(wrong)
