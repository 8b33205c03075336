"""Issue 14: a small verification batch takes cheaper paths (Python where numpy's fixed
cost per call was most of the work, no SQL statement for nothing), and every one of them
decides and writes exactly what the general path does.

Each branch is run both ways on the same attempts: the small-input branches on, then
forced off (``FEW_ITEMS`` / ``FEW_IDS`` set to 0), on both store backends; verdicts,
answering devices, failure records and consumed challenges must be the same.
"""

from __future__ import annotations

import datetime
import json
import random
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import sls_core.login.pipeline as pipeline
import sls_core.server.metrics as metrics_module
import sls_core.store.base as store_base
import sls_core.store.sqlite as store_sqlite
from sls_core import card, ocra
from sls_core.clock import ManualClock
from sls_core.devices import DeviceType
from sls_core.errors import InvalidInputError
from sls_core.login import LOCKOUT_FAILURES, SecureLogin
from sls_core.outcome import LoginOutcome
from sls_core.server import audit
from sls_core.server.metrics import Metrics

if TYPE_CHECKING:  # imported by pytest as a plugin, never directly (assertion rewriting)
    from pg_fixtures import PgCluster  # noqa: F401

pytest_plugins = ["pg_fixtures"]

PIN_SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
PLAIN_SUITE = "OCRA-1:HOTP-SHA1-8:QN06"
PIN = "2580"
NOW = 1_800_000_000.0
USERS = 12
#: What each user holds: DSC+ (OCRA with PIN), Platinum (OCRA, no PIN), a code card.
KINDS = [DeviceType.DSC_PLUS, DeviceType.PLATINUM, DeviceType.SECURITY_CODE_CARD]


def _secret(i: int) -> bytes:
    return bytes((i * 7 + k) % 256 for k in range(20))


class Site:
    """A store with ``USERS`` users (each a device of ``KINDS``, in turn) and a way to
    answer a challenge as the device would."""

    def __init__(self, data: Path, store_url: str | None) -> None:
        self.clock = ManualClock(NOW)
        self.sls = SecureLogin.open(data, clock=self.clock, store=store_url)
        self.names = [f"user{i}" for i in range(USERS)]
        self.cards: dict[int, list[str]] = {}
        for i, name in enumerate(self.names):
            kind = KINDS[i % len(KINDS)]
            self.sls.create_user(name)
            if kind is DeviceType.SECURITY_CODE_CARD:
                self.sls.import_device(name, kind, secret=_secret(i))
                self.cards[i] = list(card.card_codes(_secret(i), 100))
            elif kind is DeviceType.DSC_PLUS:
                self.sls.enroll_device(name, kind, secret=_secret(i), pin=PIN)
            else:  # legacy: imported
                self.sls.import_device(name, kind, secret=_secret(i))

    def answer(self, i: int, challenge: Any) -> str:
        kind = KINDS[i % len(KINDS)]
        if kind is DeviceType.SECURITY_CODE_CARD:
            first, second = challenge.card_indices
            return self.cards[i][first - 1] + self.cards[i][second - 1]
        if kind is DeviceType.DSC_PLUS:
            return ocra.compute(PIN_SUITE, _secret(i), question=challenge.challenge, pin=PIN)
        return ocra.compute(PLAIN_SUITE, _secret(i), question=challenge.challenge)


def _attempts(site: Site, plan: list[tuple[int, str]], earlier: list[tuple[str, str]]) -> Any:
    """The usernames, tokens and responses of ``plan``: (user, what) with ``what`` one of
    right, wrong, malformed, replay (an answer used in an earlier batch), twice (the item
    before, sent again), stranger (another user's token), unknown (no such user)."""
    challenges = site.sls.issue_challenges([site.names[u] for u, _ in plan])
    names, tokens, responses = [], [], []
    for (user, what), challenge in zip(plan, challenges, strict=True):
        name, token, response = site.names[user], challenge.token, site.answer(user, challenge)
        if what == "wrong":
            response = response[:-1] + str((int(response[-1]) + 1) % 10)
        elif what == "malformed":
            response = response[:3] + " " + response[3:]
        elif what == "replay" and earlier:
            token, response = earlier[user % len(earlier)]
            name = site.names[token_owner(site, token)]
        elif what == "twice" and tokens:
            name, token, response = names[-1], tokens[-1], responses[-1]
        elif what == "stranger":
            name = site.names[(user + 1) % USERS]
        elif what == "unknown":
            name = "nobody"
        names.append(name)
        tokens.append(token)
        responses.append(response)
    return names, tokens, responses


def token_owner(site: Site, token: str) -> int:
    opened = site.sls.context.tokens.open_batch([token], int(site.clock.now()))
    user_id = int(opened["user_id"][0])
    return next(i for i, n in enumerate(site.names) if site.sls.context.user(n).id == user_id)


WHATS = ["right"] * 6 + ["wrong", "malformed", "replay", "twice", "stranger", "unknown"]


def _scenario(seed: int) -> list[list[tuple[int, str]]]:
    rng = random.Random(seed)
    batches = []
    for size in [1, 2, 3, 5, 8, 1, 12, 4, 7, 1, 40, 6]:
        batches.append([(rng.randrange(USERS), rng.choice(WHATS)) for _ in range(size)])
    # A user driven to lockout, then answering right (LOCKED), in small batches.
    batches += [[(0, "wrong")]] * LOCKOUT_FAILURES + [[(0, "right"), (1, "right")]]
    return batches


def _run(site: Site, seed: int) -> dict[str, Any]:
    """Every batch of the scenario; the verdicts, devices and what the store holds after."""
    earlier: list[tuple[str, str]] = []
    verdicts, devices = [], []
    for plan in _scenario(seed):
        names, tokens, responses = _attempts(site, plan, earlier)
        result = site.sls.verify_batch(names, tokens, responses, wait=False)
        verdicts.append([LoginOutcome(int(o)).name for o in result.outcomes])
        # Device ids are the store's own (the same on both sites: same enrollment order).
        devices.append(result.device_ids.tolist())
        earlier += [(t, r) for t, r in zip(tokens, responses, strict=True) if t]
        site.clock.advance(5.0)  # the tokens stay fresh: a replay shows as one
    failures = {n: site.sls.lockout_status(n).consecutive_failures for n in site.names}
    # Every answer sent again: what each path consumed shows (REPLAYED) or not.
    again = site.sls.verify_batch(
        [site.names[token_owner(site, t)] for t, _ in earlier],
        [t for t, _ in earlier],
        [r for _, r in earlier],
    )
    used = [LoginOutcome(int(o)).name for o in again.outcomes]
    return {"verdicts": verdicts, "devices": devices, "failures": failures, "used": used}


@pytest.mark.parametrize("seed", [1, 2])
def test_small_batches_decide_and_write_exactly_as_the_general_path_does(
    tmp_path: Path, store_url: str | None, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_site = Site(tmp_path / "small", store_url)
    try:
        small = _run(small_site, seed)
    finally:
        small_site.sls.store.close()
    with monkeypatch.context() as patch:  # every small-input branch off
        patch.setattr(pipeline, "FEW_ITEMS", 0)
        patch.setattr(store_base, "FEW_IDS", 0)
        patch.setattr(store_sqlite, "FEW_IDS", 0)
        bulk_site = Site(tmp_path / "bulk", _second_schema(store_url))
        try:
            bulk = _run(bulk_site, seed)
        finally:
            bulk_site.sls.store.close()
    assert small == bulk
    # The scenario reaches what it is for: each kind of verdict, and a lockout.
    seen = {v for batch in small["verdicts"] for v in batch}
    assert {"OK", "WRONG", "MALFORMED", "REPLAYED", "CHALLENGE_INVALID", "LOCKED"} <= seen
    assert "REPLAYED" in small["used"]


def _second_schema(store_url: str | None) -> str | None:
    """A fresh PostgreSQL schema beside the one of ``store_url`` (None: SQLite)."""
    if store_url is None:
        return None
    import urllib.parse

    import psycopg

    base, _, query = store_url.partition("?")
    options = urllib.parse.unquote(query.removeprefix("options="))
    schema = options.removeprefix("-csearch_path=") + "_bulk"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{base}?options={urllib.parse.quote(f'-csearch_path={schema}')}"


# -- the helpers' small branches, each against its general one -----------------------------------


@given(st.sets(st.integers(0, (1 << 63) - 1), max_size=140), st.sets(st.integers(0, 1 << 12)))
def test_consumed_blocks_mark_exactly_their_ids_on_either_path(
    ids: set[int], others: set[int]
) -> None:
    """A bit per id in its block of 64, bit 63 as a negative mask as the databases store
    it; up to FEW_IDS ids by Python, more by numpy, the same rows from a list or a column."""
    expected: dict[int, int] = {}
    for i in sorted(ids):
        expected[i >> 6] = expected.get(i >> 6, 0) | (1 << (i % 64))
    rows = (list(expected), [m - (1 << 64) if m >> 63 else m for m in expected.values()])
    assert store_base.consumed_blocks(sorted(ids)) == rows
    assert store_base.consumed_blocks(np.asarray(sorted(ids, reverse=True), np.int64)) == rows
    marked = list(zip(*rows, strict=True))
    assert store_base.ids_marked([*ids, *others], marked) == ids | (others & ids)
    assert store_base.ids_marked(sorted(others - ids), marked) == set()


@pytest.mark.parametrize("count", [2, 200])
def test_consumed_blocks_refuse_an_id_named_twice(count: int) -> None:
    with pytest.raises(ValueError, match="duplicate challenge id"):
        store_base.consumed_blocks([*range(count), 1])


@given(st.lists(st.integers(0, 1 << 62), max_size=80))
def test_distinct_ids_are_the_unique_ids_as_a_list(ids: list[int]) -> None:
    expected = store_base.unique_ids(np.asarray(ids, np.int64)).tolist() if ids else []
    assert store_base.distinct_ids(ids) == expected
    assert store_base.distinct_ids(np.asarray(ids, np.uint64)) == expected
    assert store_base.distinct_ids(iter(ids)) == expected


@given(st.lists(st.integers(0, 1 << 62), max_size=80))
def test_the_json_of_ids_reads_back_as_the_ids(ids: list[int]) -> None:
    assert json.loads(store_sqlite._ids_json(ids)) == ids
    assert json.loads(store_sqlite._ids_json(np.asarray(ids, np.uint64))) == ids


@given(st.lists(st.integers(0, (1 << 32) - 1), max_size=40))
def test_six_digit_challenges_are_formatted_alike_on_both_paths(values: list[int]) -> None:
    column = np.asarray(values, np.uint32)
    small = pipeline._six_digits(column)
    powers = 10 ** np.arange(5, -1, -1, dtype=np.uint32)
    expected = ((column[:, None] // powers) % 10 + ord("0")).astype(np.uint8)
    assert small.shape == (len(values), 6)
    assert small.tolist() == expected.reshape(len(values), 6).tolist()


def test_the_small_helpers_of_the_pipeline_match_numpy() -> None:
    rng = np.random.default_rng(5)
    for n in (0, 1, 8, 40):
        mask = rng.random(n) < 0.5
        assert pipeline._rows(mask).tolist() == np.flatnonzero(mask).tolist()
        values = rng.integers(-3, 3, n).astype(np.int16)
        assert pipeline._distinct(values) == np.unique(values).tolist()
        column = pipeline._column(n, 255, np.uint8)
        assert column.dtype == np.uint8
        assert column.tolist() == np.full(n, 255, np.uint8).tolist()


def test_a_parsed_suite_is_kept_and_a_bad_one_is_refused_every_time() -> None:
    assert ocra.parse_suite(PIN_SUITE) is ocra.parse_suite(PIN_SUITE)
    assert ocra.parse_suite(PIN_SUITE).pin_algorithm == "sha1"
    for _ in range(2):
        with pytest.raises(InvalidInputError, match="suite"):
            ocra.parse_suite("OCRA-1:HOTP-SHA1-8")
        with pytest.raises(InvalidInputError, match="suite"):
            ocra.parse_suite(5)  # type: ignore[arg-type]


# -- the store's statements --------------------------------------------------------------------


def test_a_batch_runs_no_statement_for_nothing_and_the_busy_timeout_comes_back(
    tmp_path: Path,
) -> None:
    """A clean small batch on SQLite: BEGIN, one change-feed read, the failure records,
    one statement that marks its challenges consumed (the replay check inside it), COMMIT;
    the busy timeout turned off once for writes that must not wait, and on again for
    anything else."""
    site = Site(tmp_path / "data", None)
    try:
        store = site.sls.store
        assert isinstance(store, store_sqlite.SqliteStore)
        site.sls.verify_batch(*_attempts(site, [(1, "right")], []), wait=False)  # warm up
        batches = [_attempts(site, [(1, "right"), (4, "right")], []) for _ in range(2)]
        conn = store._connection()  # issuing waited: the timeout is on
        statements: list[str] = []

        def trace(statement: str) -> None:
            if not statement.startswith("-- "):  # a step inside a statement (the pragma's)
                statements.append(statement)

        conn.set_trace_callback(trace)
        clean = [
            "BEGIN IMMEDIATE",
            "SELECT max(generation), (SELECT user_version FROM pragma_user_version)",
            "SELECT f.user_id, f.times FROM json_each",
            "INSERT INTO consumed_blocks (block, mask, expires_at)",
            "COMMIT",
        ]
        for k, (names, tokens, responses) in enumerate(batches):
            statements.clear()
            result = site.sls.verify_batch(names, tokens, responses, wait=False)
            assert [LoginOutcome(int(o)) for o in result.outcomes] == [LoginOutcome.OK] * 2
            expected = ["PRAGMA busy_timeout = 0", *clean] if k == 0 else clean
            assert len(statements) == len(expected), statements
            pairs = zip(statements, expected, strict=True)
            assert all(s.startswith(e) for s, e in pairs), statements
        statements.clear()
        with store.read() as tx:
            tx.generation()
        assert statements[:2] == ["PRAGMA busy_timeout = 30000", "BEGIN"], statements
        conn.set_trace_callback(None)
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    finally:
        site.sls.store.close()


def test_a_write_that_must_not_wait_still_refuses_at_once_while_another_writes(
    tmp_path: Path,
) -> None:
    """With the timeout left off between such writes, a program that ignores the writer
    gate and holds the write lock still gets WriterBusyError at once; a waiting write after
    it waits again."""
    site = Site(tmp_path / "data", None)
    try:
        store = site.sls.store
        assert isinstance(store, store_sqlite.SqliteStore)
        with store.write(wait=False):
            pass
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(store_base.WriterBusyError), store.write(wait=False):
                pass
        finally:
            other.execute("ROLLBACK")
            other.close()
        with store.write() as tx:
            assert tx.generation() >= 0
        assert store._connection().execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    finally:
        store.close()


# -- audit and metrics ---------------------------------------------------------------------------


@given(st.text(), st.text(), st.text(), st.text())
def test_an_audit_head_is_what_json_dumps_writes(
    time: str, event: str, caller: str, request_id: str
) -> None:
    line = {"time": time, "event": event, "caller": caller, "request_id": request_id}
    assert (
        audit._head(time, event, caller, request_id) == json.dumps(line, separators=(",", ":"))[:-1]
    )


def test_the_audit_time_is_utc_to_the_millisecond_as_isoformat_writes_it() -> None:
    def reference() -> str:
        now = datetime.datetime.now(datetime.timezone.utc)
        return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    for _ in range(50):
        before, text, after = reference(), audit._now_iso(), reference()
        assert before <= text <= after
        assert len(text) == len(before)
        assert text.endswith("Z")


def test_coalesced_calls_get_the_same_audit_lines_as_before(tmp_path: Path) -> None:
    trail = audit.AuditTrail(tmp_path / "audit.log")
    callers = [("gw-1", "r1"), ("gw \u00e9", 'r"2'), ("gw-1", "r3")]
    outcomes = np.array([0, 1, int(LoginOutcome.INVALID_USERNAME)], np.uint8)
    devices = np.array([7, 0, 0], np.uint64)
    trail.verdicts_of_calls("login.verify", callers, ["al", "bo", "secret"], devices, outcomes)
    trail.close()
    records = list(audit.read_records(tmp_path / "audit.log"))
    assert [(r["caller"], r["request_id"], r["username"]) for r in records] == [
        ("gw-1", "r1", "al"),
        ("gw \u00e9", 'r"2', "bo"),
        ("gw-1", "r3", ""),
    ]
    assert {r["event"] for r in records} == {"login.verify"}
    assert len({r["time"] for r in records}) == 1
    assert audit.verify_trail(tmp_path / "audit.log").ok


@pytest.mark.parametrize("n", [1, 7, 64, 65, 500])
def test_outcome_metrics_count_the_same_on_both_paths(n: int) -> None:
    rng = np.random.default_rng(n)
    outcomes = rng.choice(
        [int(LoginOutcome.OK), int(LoginOutcome.WRONG), int(LoginOutcome.LOCKED), 200], n
    ).astype(np.uint8)

    def counted(few: int) -> dict[tuple[str, ...], float]:
        metrics = Metrics(CollectorRegistry())
        old = metrics_module._FEW_OUTCOMES
        metrics_module._FEW_OUTCOMES = few
        try:
            metrics.outcomes("Verify", outcomes, batch=True)
        finally:
            metrics_module._FEW_OUTCOMES = old
        return {
            (s.name, *sorted(s.labels.values())): s.value
            for family in metrics.registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert counted(1_000) == counted(0)
    assert counted(1_000)[("sls_locked_outcomes_total",)] == int(
        (outcomes == LoginOutcome.LOCKED).sum()
    )


def test_a_transaction_reads_the_change_feed_once_until_it_changes_something(
    tmp_path: Path,
) -> None:
    site = Site(tmp_path / "data", None)
    try:
        store = site.sls.store
        assert isinstance(store, store_sqlite.SqliteStore)
        statements: list[str] = []
        with store.write() as tx:
            store._connection().set_trace_callback(statements.append)
            before = tx.generation()
            assert tx.generation() == before
            assert sum("max(generation)" in s for s in statements) == 1
            tx.insert_user("newcomer", {}, NOW)
            assert tx.generation() > before  # its own change moves it: read again
            store._connection().set_trace_callback(None)
        with store.read() as tx:
            assert tx.generation() > before
    finally:
        site.sls.store.close()
