"""Operations on live server processes (issue 11, findings 8 and 6): a master-key rotation
and retirement while ``sls-core serve --workers 2`` serves logins and enrollments, and a
server killed with SIGKILL in the middle of a large audit write.

Everything here is real processes: ``sls-core serve`` (``python -m sls_core.server``), the
operator's ``python -m sls_core.admin`` commands, gateways through :class:`SlsClient`.
Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from grpc_fixtures import CALL_TIMEOUT, ROOT, ServerProcess, spawn_server
from sls_core.client import SlsClient
from sls_core.sealing import MasterKeyRing
from sls_core.server.audit import read_records, verify_trail
from sls_core.simulator import dsc_response
from sls_core.store.keys import CONSUMED_MASKS, count_consumed
from sls_core.values import DeviceType, LoginOutcome

pytest_plugins = ["grpc_fixtures"]

PIN = "4711"
#: Every column that holds a sealed record (what ``rotate-master-key`` re-seals).
SEALED_COLUMNS = (
    ("devices", "secret"),
    ("devices", "pin_hash"),
    ("server_secrets", "sealed"),
    ("activations", "server_private"),
)


def secret_of(username: str) -> bytes:
    """A device secret of its own for every user (20 bytes, as a DSC+ has)."""
    return hashlib.sha256(username.encode()).digest()[:20]


def gateway(address: str) -> SlsClient:
    """A client with a TCP connection of its own: SO_REUSEPORT hands each connection to
    one worker, so new connections reach both."""
    return SlsClient(
        address,
        timeout=CALL_TIMEOUT,
        channel_options=[("grpc.use_local_subchannel_pool", 1)],
    )


def enroll(client: SlsClient, username: str) -> None:
    client.create_user(username)
    client.enroll_device(username, DeviceType.DSC_PLUS, secret=secret_of(username), pin=PIN)


def login(client: SlsClient, username: str) -> LoginOutcome:
    """A challenge, and the right answer to it."""
    challenge = client.issue_challenge(username)
    answer = dsc_response(secret_of(username), PIN, challenge.challenge or "")
    return client.verify(username, challenge.token, answer).outcome


def admin(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m sls_core.admin --data-dir DATA ARGS``, as the operator runs it."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "sls_core.admin", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def serving_pids(server: ServerProcess) -> set[int]:
    return {
        json.loads(line)["pid"]
        for line in server.log().splitlines()
        if '"message":"serving"' in line
    }


def key_ids_in_store(db: Path) -> dict[str, int]:
    """How many sealed records name each key id, over every sealed column."""
    counts: dict[str, int] = {}
    conn = sqlite3.connect(db)
    try:
        for table, column in SEALED_COLUMNS:
            for (blob,) in conn.execute(f"SELECT {column} FROM {table}"):  # noqa: S608
                if blob is not None:
                    key_id = MasterKeyRing.key_id_of(blob)
                    counts[key_id] = counts.get(key_id, 0) + 1
    finally:
        conn.close()
    return counts


class LoginLoad:
    """Gateways logging users in (challenge, right answer) and enrolling new ones, each
    round over a new connection, until :meth:`stop`. Anything but OK is a failure."""

    def __init__(self, address: str, users: list[str], threads: int = 2) -> None:
        self.address = address
        self.users = list(users)
        self.failures: list[str] = []
        self.logins = 0
        self.enrolled: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"load-{n}", daemon=True)
            for n in range(threads)
        ]

    def __enter__(self) -> LoginLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(3 * CALL_TIMEOUT)
            assert not thread.is_alive(), "the load did not stop"

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        for round_ in range(10_000):
            if self._stop.is_set():
                return
            try:
                with gateway(self.address) as client:
                    with self._lock:
                        known = list(self.users)
                    for username in rng.sample(known, 3):
                        outcome = login(client, username)
                        with self._lock:
                            self.logins += 1
                            if outcome is not LoginOutcome.OK:
                                self.failures.append(f"login {username}: {outcome.name}")
                    # A new device: a sealed record written whichever key is active.
                    username = f"live{n}x{round_}"
                    enroll(client, username)
                    outcome = login(client, username)
                    with self._lock:
                        self.enrolled.append(username)
                        self.users.append(username)
                        if outcome is not LoginOutcome.OK:
                            self.failures.append(f"login {username}: {outcome.name}")
            except Exception as e:  # every failure is reported by the test
                with self._lock:
                    self.failures.append(f"round {round_} of load-{n}: {e!r}")
                time.sleep(0.05)


def test_a_live_rotation_and_retirement_under_load_loses_no_login_and_leaves_no_old_key(
    tmp_path: Path,
) -> None:
    """Issue 11, finding 8, with real processes: two workers serve logins and enrollments
    while the operator runs ``rotate-master-key --new-key-id k2`` and then ``--retire``.
    Servers move to the new key by themselves within a second, even an idle standby; an
    idle script that opened the store moves only at its next write, and ``--retire``
    refuses (naming it) until then. No call fails meanwhile, everyone enrolled before or
    during the rotation logs in, also after a restart, and nothing is left under k1, in the
    key file or in the store."""
    from sls_core.login import SecureLogin

    data = tmp_path / "data"
    before = [f"early{i}" for i in range(12)]
    with spawn_server(data, "--workers", "2") as supervisor:
        wait_for(lambda: len(serving_pids(supervisor)) == 2, "two workers serving")
        with gateway(supervisor.address) as client:
            for username in before:
                enroll(client, username)
        # A standby server on the same store: it writes once (so it holds k1), then idles.
        with spawn_server(data, "--log-level", "WARNING") as standby:
            with gateway(standby.address) as client:
                assert login(client, before[0]) is LoginOutcome.OK
            # An operator's script that opened the store and wrote once: it holds k1 too.
            script = SecureLogin.open(data)
            script.issue_challenge(before[2])
            with LoginLoad(supervisor.address, before) as load:
                wait_for(lambda: load.logins >= 30, "load under way")
                # A few devices per transaction: the re-sealing interleaves with the load.
                rotated = admin(
                    data, "rotate-master-key", "--new-key-id", "k2", "--chunk", "4", "--quiet"
                )
                assert rotated.returncode == 0, rotated.stderr
                retire = ["rotate-master-key", "--new-key-id", "k2", "--retire", "--quiet"]
                # Within seconds only the idle script still holds k1: every server, the
                # idle standby included, has moved by itself.
                holders: list[str] = []

                def only_the_script_holds_k1() -> bool:
                    refused = admin(data, *retire)
                    assert refused.returncode == 1, refused.stderr
                    assert "not retired: 'k1'" in refused.stderr
                    holders[:] = re.findall(r"pid (\d+)", refused.stderr)
                    return holders == [str(os.getpid())]

                wait_for(only_the_script_holds_k1, "the servers to move to k2")
                assert MasterKeyRing.from_file(data / "master-key.json").key_ids == {"k1", "k2"}
                # The operator's way: once the script has written since the rotation, run
                # --retire again (it also re-seals a record written under k1 meanwhile).
                script.issue_challenge(before[1])
                attempts: list[str] = []
                end = time.monotonic() + 20
                while True:
                    retired = admin(data, *retire)
                    attempts.append(retired.stderr)
                    if retired.returncode == 0:
                        break
                    assert time.monotonic() < end, "\n".join(attempts)
                    time.sleep(0.2)
                script.store.close()
                assert "retired key ids: k1" in retired.stderr, attempts
                # The workers now hold a key file with k2 alone: they go on serving.
                logins_at_retire = load.logins
                wait_for(lambda: load.logins >= logins_at_retire + 30, "load after retire")
            assert load.failures == [], load.failures[:10]
            assert load.enrolled, "no enrollment during the rotation"
            everyone = before + load.enrolled
            with gateway(supervisor.address) as client:
                assert {u: login(client, u) for u in everyone} == dict.fromkeys(
                    everyone, LoginOutcome.OK
                )
            assert standby.terminate() == 0
        assert supervisor.terminate() == 0, supervisor.log()[-2000:]
    assert MasterKeyRing.from_file(data / "master-key.json").key_ids == {"k2"}
    sealed = key_ids_in_store(data / "sls.db")
    assert set(sealed) == {"k2"}, sealed
    assert sealed["k2"] >= 2 * len(everyone)  # a secret and a PIN hash per device
    with spawn_server(data, "--workers", "2") as restarted:
        wait_for(lambda: len(serving_pids(restarted)) == 2, "two workers serving again")
        with gateway(restarted.address) as client:
            assert {u: login(client, u) for u in everyone} == dict.fromkeys(
                everyone, LoginOutcome.OK
            )
        assert restarted.terminate() == 0


# -- kill -9 during a large audit write ---------------------------------------------------

#: Items of the batch that is killed while its audit lines are being written (its lines
#: are about 18 MB, one write that takes tens of milliseconds).
BIG_BATCH = 100_000
#: Of which right answers of real users (the rest: unknown users, audited all the same).
RIGHT_ANSWERS = 200


def verdicts(records: list[dict[str, object]], request_prefix: str) -> list[dict[str, object]]:
    return [
        r
        for r in records
        if r["event"] == "verify" and str(r["request_id"]).startswith(request_prefix)
    ]


def consumed_challenges(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return count_consumed(conn.execute(CONSUMED_MASKS))
    finally:
        conn.close()


Batch = tuple[list[str], list[str], list[str]]


def big_batch(client: SlsClient, users: list[str]) -> Batch:
    """Usernames, tokens and answers: RIGHT_ANSWERS right answers of ``users`` first, then
    unknown users up to BIG_BATCH items."""
    usernames, tokens, answers = [], [], []
    for i in range(RIGHT_ANSWERS):
        username = users[i % len(users)]
        challenge = client.issue_challenge(username)
        usernames.append(username)
        tokens.append(challenge.token)
        answers.append(dsc_response(secret_of(username), PIN, challenge.challenge or ""))
    ghosts = BIG_BATCH - RIGHT_ANSWERS
    usernames += [f"ghost{i}" for i in range(ghosts)]
    tokens += [tokens[0]] * ghosts
    answers += ["12345678"] * ghosts
    return usernames, tokens, answers


def kill_during_a_large_audit_write(data: Path, users: list[str]) -> tuple[bool, Batch]:
    """A server that logged ``users`` in twice each is killed with SIGKILL as soon as the
    audit file grows under a BIG_BATCH-item VerifyBatch. Returns whether the kill left the
    trail cut short (it landed during the write, as it should) and the batch."""
    with spawn_server(data, "--log-level", "WARNING") as server, gateway(server.address) as client:
        for username in users:
            enroll(client, username)
        for username in users * 2:
            assert login(client, username) is LoginOutcome.OK
        batch = big_batch(client, users)
        trail = data / "audit.jsonl"
        size = trail.stat().st_size
        errors: list[BaseException] = []

        def send() -> None:
            try:
                client.verify_batch(*batch, timeout=60)
            except Exception as e:  # the connection dies with the server
                errors.append(e)

        sender = threading.Thread(target=send, name="big-batch", daemon=True)
        sender.start()
        end = time.monotonic() + 60
        # Polled without sleeping: the write lasts tens of milliseconds.
        while os.stat(trail).st_size == size and sender.is_alive():
            assert time.monotonic() < end, "the big batch never reached its audit write"
        os.kill(server.process.pid, signal.SIGKILL)
        assert server.process.wait(CALL_TIMEOUT) == -signal.SIGKILL
        sender.join(CALL_TIMEOUT)
        assert not sender.is_alive()
    check = verify_trail(trail)
    if check.ok:
        return False, batch  # the write had ended before the kill landed: try again
    assert check.reason.startswith("unsealed lines at the end"), check
    return True, batch


def test_a_server_killed_during_a_large_audit_write_leaves_a_trail_the_next_one_recovers(
    tmp_path: Path,
) -> None:
    """Issue 11, finding 6, with real processes: SIGKILL lands while a 100k-item batch's
    audit lines are being written (its transaction not yet committed). The next server on
    the same store ends and seals the torn block as recovered at its start, so none of its
    own records is swallowed; the chain verifies (``verify-audit``, also with the same
    100k batch sent again whole); and the trail agrees with the store: the killed batch
    applied nothing (its right answers still verify), and every verdict that consumed a
    challenge is in the trail, exactly once."""
    users = [f"user{i}" for i in range(10)]
    for attempt in range(3):
        data = tmp_path / f"data{attempt}"
        torn, batch = kill_during_a_large_audit_write(data, users)
        if torn:
            break
    else:
        raise AssertionError("the kill never landed during the audit write")
    trail, db = data / "audit.jsonl", data / "sls.db"
    before = len(users) * 2
    assert consumed_challenges(db) == before  # the killed batch committed nothing
    with spawn_server(data, "--log-level", "WARNING") as server:
        with gateway(server.address) as client:
            again = client.verify_batch(*batch, timeout=60)
            outcomes = [LoginOutcome(o) for o in again.outcomes]
            assert outcomes[:RIGHT_ANSWERS] == [LoginOutcome.OK] * RIGHT_ANSWERS
            assert set(outcomes[RIGHT_ANSWERS:]) == {LoginOutcome.UNKNOWN_USER}
            for username in users:
                assert login(client, username) is LoginOutcome.OK
        assert server.terminate() == 0
    with trail.open("rb") as f:
        recovered = [line for line in f if b'"recovered":true' in line]
    assert len(recovered) == 1, recovered
    records = list(read_records(trail))
    # The next process's records, each whole: the torn line swallowed none.
    second = verdicts(records, f"{server.process.pid:x}-")
    assert [r["username"] for r in second] == [*batch[0], *users]
    assert [r["outcome"] for r in second] == [o.name for o in outcomes] + ["OK"] * len(users)
    # Nothing of the killed block is read as a record; everything committed before is.
    first = verdicts(records, "")[: -len(second)]
    assert sorted(str(r["username"]) for r in first) == sorted(users * 2)
    # The trail and the store agree: one OK verdict per consumed challenge.
    ok = [r for r in records if r["event"] == "verify" and r["outcome"] == "OK"]
    assert len(ok) == consumed_challenges(db) == before + RIGHT_ANSWERS + len(users)
    # The operator's check, bounded (a 100k-item block once took minutes: see verify_trail).
    verified = admin(data, "verify-audit")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith(f"{trail}: intact, ")
    assert verify_trail(trail).ok
