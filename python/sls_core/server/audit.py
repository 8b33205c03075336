"""The audit trail: one JSON line per decision, appended to a file.

Each line says who asked (the client identity: certificate CN, or the peer address on a
plaintext development server), which user and device, the outcome, when, and the request id
that also appears in the access log. It never holds a secret, a code, a response, a PIN, a
passcode or a token: the callers of this module pass none, and a username that failed
validation (it may be a password typed into the wrong field) is written as ``""``.

A batch's lines are formatted natively (:func:`sls_core.auditfmt.audit_lines`): Python
JSON-encodes the head of a call's lines once (time, event, caller, request id, with
``json.dumps``); Rust adds each item's username (JSON-escaped, ASCII only, as ``json.dumps``
writes it), device id and outcome name, without the GIL for a large batch. The bytes go out
with one ``write`` on an ``O_APPEND`` descriptor under an exclusive ``flock``, so several
server processes can share the file and a batch's lines stay together.

The trail is tamper-evident and survives a crash mid-write. Each write is a block of lines
followed by a seal line, ``{"event":"audit.seal","lines":N,"prev":P,"hash":H}`` with
``H = SHA-256(P || SHA-256(block))`` (hex digests; the block's own digest is computed
before the file lock is taken, so writers hold it only to chain and append) and ``P`` the
hash of the seal before (64 zeros first): editing,
removing or reordering a line breaks a seal, and :func:`verify_trail` (``sls-core-admin
verify-audit``) names the first broken record. A write cut short (kill -9) leaves bytes
after the last seal; the next writer (or the next open) ends that torn line and seals what
is there as ``"recovered":true`` before it writes, so a torn line never swallows the next
record and nothing committed is lost from the chain.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import json.encoder
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from sls_core.auditfmt import audit_lines
from sls_core.outcome import LoginOutcome

if TYPE_CHECKING:
    from sls_core.server.metrics import PhaseTimes

__all__ = ["SEAL_EVENT", "AuditTrail", "TrailCheck", "read_records", "verify_trail"]

#: The event of the chain's seal lines (every other line is a record).
SEAL_EVENT = "audit.seal"
_GENESIS = "0" * 64
_SEAL_MARK = b'"event":"audit.seal"'
_TORN = b" (torn)\n"
#: How much of the file's end is read at a time when looking for the last seal (a seal
#: line is about 220 bytes: one read finds it unless a write was cut short).
_TAIL_CHUNK = 4096

_INVALID_USERNAME = int(LoginOutcome.INVALID_USERNAME)
# The name of each outcome value, by value (a gap in the values would raise here).
_OUTCOME_NAMES = tuple(LoginOutcome(value).name for value in range(len(LoginOutcome)))


def _now_iso() -> str:
    """UTC now to the millisecond, ``2026-01-31T12:00:00.123Z`` (what ``datetime``'s
    ``isoformat(timespec="milliseconds")`` writes, with ``Z``). Each write asks twice (its
    lines' head and its seal), so the text up to the second is made once per second."""
    global _second_text
    now_ms = time.time_ns() // 1_000_000
    second, ms = divmod(now_ms, 1000)
    cached = _second_text
    if cached[0] != second:
        text = datetime.datetime.fromtimestamp(second, datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
        cached = _second_text = (second, text)
    return f"{cached[1]}.{ms:03d}Z"


#: (a Unix second, its text): the last second :func:`_now_iso` formatted.
_second_text: tuple[int, str] = (-1, "")


class AuditTrail:
    """Appends audit lines to ``path`` (created 0600). ``path=None`` keeps no trail."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._fd: int | None = None
        self._lock = threading.Lock()
        #: (file size after this process's last write, the chain's hash there).
        self._known: tuple[tuple[int, int], str] | None = None
        self._rfd: int | None = None
        #: Told True/False when writes start failing or work again (health follows it).
        self.on_health: Any = None
        #: Debug timing of the lock wait and the append (metrics.PhaseTimes); None: off.
        self.phases: PhaseTimes | None = None
        self.healthy = True
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._write(b"")  # a torn tail left by a crash is ended and sealed now

    def __repr__(self) -> str:
        return f"AuditTrail({str(self.path) if self.path else None!r})"

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            return
        # The block's digest and line count outside the locks: a writer holds the file
        # lock only to chain a short seal to the last one and append.
        phases = self.phases
        called = time.perf_counter() if phases is not None else 0.0
        digest = hashlib.sha256(data).hexdigest()
        lines = data.count(b"\n")
        with self._lock:
            fd = self._fd
            if fd is None:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                locked = time.perf_counter() if phases is not None else 0.0
                try:
                    prev, inode, size = self._chain_head(fd)
                    if data:
                        chained = _chained(prev, digest)
                        seal = _seal_line(prev, chained, lines, recovered=False)
                        _write_all(fd, data, seal)
                        # Appended under the lock: the file now ends where this write did
                        # (no second fstat on the hot path).
                        prev, size = chained, size + len(data) + len(seal)
                    self._known = ((inode, size), prev)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                if phases is not None:
                    phases.audit_written(called, locked, time.perf_counter())
            except OSError:
                self._known = None  # what landed is unknown: read the file's end next time
                self._set_health(False)
                raise
            self._set_health(True)

    def _set_health(self, healthy: bool) -> None:
        if healthy != self.healthy:
            self.healthy = healthy
            if self.on_health is not None:
                self.on_health(healthy)

    def _reader(self, fd: int) -> int:
        """A read descriptor of the file ``fd`` appends to (kept open, and reopened when the
        file was rotated: same inode as ``fd``)."""
        st = os.fstat(fd)
        if self._rfd is not None:
            mine = os.fstat(self._rfd)
            if (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino):
                return self._rfd
            os.close(self._rfd)
        assert self.path is not None
        self._rfd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self._rfd

    def _chain_head(self, fd: int) -> tuple[str, int, int]:
        """The hash the next block chains to, with the file's inode and size (under the
        lock). Another process's writes are read from the file's end; unsealed bytes there
        (a write cut short) are ended with a newline and sealed as recovered first."""
        st = os.fstat(fd)
        size = st.st_size
        if self._known is not None and self._known[0] == (st.st_ino, size):
            return self._known[1], st.st_ino, size
        prev, tail = _last_seal(self._reader(fd), size)
        if not tail:
            return prev, st.st_ino, size
        if not tail.endswith(b"\n"):
            # Ends the torn line so that it can never read as a record or a seal (a seal
            # cut just before its newline would otherwise parse).
            tail += _TORN
            _write_all(fd, _TORN)
        digest = hashlib.sha256(tail).hexdigest()
        chained = _chained(prev, digest)
        _write_all(fd, _seal_line(prev, chained, tail.count(b"\n"), recovered=True))
        return chained, st.st_ino, os.fstat(fd).st_size

    def record(
        self,
        event: str,
        caller: str,
        request_id: str,
        *,
        username: str | None = None,
        device_id: int | None = None,
        outcome: str,
        **details: Any,
    ) -> None:
        """One decision (an activation, a push answer, a client-services action)."""
        if self._fd is None:
            return
        line = {
            "time": _now_iso(),
            "event": event,
            "caller": caller,
            "request_id": request_id,
            "username": username,
            "device_id": device_id,
            "outcome": outcome,
            **details,
        }
        self._write((json.dumps(line, separators=(",", ":")) + "\n").encode())

    def verdicts(
        self,
        event: str,
        caller: str,
        request_id: str,
        usernames: Sequence[str],
        device_ids: npt.NDArray[np.uint64],
        outcomes: npt.NDArray[np.uint8],
    ) -> None:
        """One line per login attempt of a batch (``LoginOutcome`` values), in one write."""
        if self._fd is not None and len(outcomes):
            head = _head(_now_iso(), event, caller, request_id)
            self._write(_lines(head, usernames, device_ids, outcomes))

    def verdicts_of_calls(
        self,
        event: str,
        callers: Sequence[tuple[str, str]],
        usernames: Sequence[str],
        device_ids: npt.NDArray[np.uint64],
        outcomes: npt.NDArray[np.uint8],
    ) -> None:
        """Like :meth:`verdicts` for single calls verified together: each item has its own
        caller and request id, ``callers[i] = (identity, request_id)``; one write."""
        if self._fd is None or not len(outcomes):
            return
        # The time and event are the same for every line: their text is made once.
        start = _head_start(_now_iso(), event)
        heads = [start + _head_caller(who, rid) for who, rid in callers]
        self._write(_lines(heads, usernames, device_ids, outcomes))

    def reopen(self) -> None:
        """Opens ``path`` afresh (SIGHUP, after logrotate moved the file away): later
        lines go to the new file; none is lost or split between the two."""
        if self.path is None:
            return
        fresh = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with self._lock:
            old = self._fd
            if old is not None:  # not after close(): a SIGHUP during shutdown
                self._fd = fresh
                self._known = None  # a new file: its chain head is read from it
        os.close(old if old is not None else fresh)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._rfd is not None:
                os.close(self._rfd)
                self._rfd = None


def _head(time: str, event: str, caller: str, request_id: str) -> str:
    """The JSON text a call's lines start with: their first keys, the object left open.

    The same text as ``json.dumps({...}, separators=(",", ":"))[:-1]``, four times faster:
    each string goes straight to the C escaper ``json.dumps`` would use (coalesced calls
    need one head each).
    """
    return _head_start(time, event) + _head_caller(caller, request_id)


def _head_start(time: str, event: str) -> str:
    """The first two keys of a head (see :func:`_head`)."""
    return f'{{"time":{_json_str(time)},"event":{_json_str(event)}'


def _head_caller(caller: str, request_id: str) -> str:
    """The caller's keys of a head (see :func:`_head`), after :func:`_head_start`."""
    return f',"caller":{_json_str(caller)},"request_id":{_json_str(request_id)}'


def _json_str(value: object) -> str:
    """``json.dumps(value)``; a str goes straight to the ASCII escaper that ``json.dumps``
    calls for it (without the encoder's set-up, most of the cost on a short string)."""
    if type(value) is str:
        return _escape_ascii(value)
    return json.dumps(value)


_escape_ascii: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _lines(
    head: str | Sequence[str],
    usernames: Sequence[str],
    device_ids: npt.NDArray[np.uint64],
    outcomes: npt.NDArray[np.uint8],
) -> bytes:
    """The lines of a batch: ``head`` for every line, or one head per item."""
    return audit_lines(
        head,
        usernames,
        device_ids,
        outcomes,
        outcome_names=_OUTCOME_NAMES,
        # not a valid name: maybe a password typed into the wrong field
        blank_username_outcome=_INVALID_USERNAME,
    )


def _write_all(fd: int, *parts: bytes) -> None:
    """Appends ``parts`` in one system call when it can (``writev``: no copy)."""
    views = [memoryview(p) for p in parts if p]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _chained(prev: str, digest: str) -> str:
    """The chain's hash after a block whose SHA-256 hex digest is ``digest``."""
    return hashlib.sha256((prev + digest).encode()).hexdigest()


def _seal_line(prev: str, chained: str, lines: int, *, recovered: bool) -> bytes:
    """The seal of a block: what ``json.dumps({...}, separators=(",", ":"))`` writes, built
    directly (every value is a number, a fixed word or a hex digest: nothing to escape),
    since a seal follows every write."""
    extra = ',"recovered":true' if recovered else ""
    return (
        f'{{"time":"{_now_iso()}","event":"{SEAL_EVENT}","lines":{int(lines)},'
        f'"prev":"{prev}","hash":"{chained}"{extra}}}\n'
    ).encode()


def _last_seal(rfd: int, size: int) -> tuple[str, bytes]:
    """The hash of the file's last seal (genesis if none) and the bytes after it."""
    end, tail, chunk = size, b"", _TAIL_CHUNK
    while end > 0:
        start = max(0, end - chunk)
        tail = os.pread(rfd, end - start, start) + tail
        end, chunk = start, chunk * 2  # doubling: a long torn write is read in few steps
        # The last complete seal line: it follows a newline (or starts the file).
        at = tail.rfind(_SEAL_MARK)
        while at >= 0:
            line_start = tail.rfind(b"\n", 0, at) + 1
            line_end = tail.find(b"\n", at)
            if line_end >= 0 and (line_start > 0 or end == 0):
                seal = _parse_seal(tail[line_start:line_end])
                if seal is not None:
                    return seal[1], tail[line_end + 1 :]
            at = tail.rfind(_SEAL_MARK, 0, at)
    return _GENESIS, tail


@dataclass(frozen=True)
class TrailCheck:
    """What :func:`verify_trail` found: ``ok``, how many records and seals, and for a
    broken trail the 1-based line of the first record that no longer matches its seal."""

    ok: bool
    records: int
    seals: int
    first_broken_line: int | None = None
    reason: str = ""


def verify_trail(path: str | os.PathLike[str]) -> TrailCheck:
    """Checks every seal of the trail at ``path``: each must chain to the one before and
    hash exactly the lines since. Unsealed lines at the end (a writer at work, or a crash
    the next writer will seal) are reported, not accepted."""
    prev, block_start, records, seals = _GENESIS, 1, 0, 0
    # The block's digest is kept running, line by line: joining its lines first made a
    # block of n lines cost O(n^2) (a 100k-item batch's block took minutes to verify).
    block, block_lines = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            seal = _parse_seal(line) if _SEAL_MARK in line and line.endswith(b"\n") else None
            if seal is None:
                # A record, or what a crash left (sealed as recovered by the next writer).
                block.update(line)
                block_lines += 1
                records += 1
                continue
            claimed_prev, claimed = seal
            if claimed_prev != prev:
                return TrailCheck(
                    False, records, seals, block_start, "the chain breaks: a seal is missing"
                )
            if _chained(prev, block.hexdigest()) != claimed:
                return TrailCheck(
                    False, records, seals, block_start, "a record was changed, added or removed"
                )
            prev, block_start, seals = claimed, number + 1, seals + 1
            block, block_lines = hashlib.sha256(), 0
    if block_lines:
        return TrailCheck(
            False, records, seals, block_start, "unsealed lines at the end (a write cut short)"
        )
    return TrailCheck(True, records, seals)


def read_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The trail's records, parsed, without the seals. A block sealed as recovered was
    cut short (a crash, a full disk): the verdicts it holds were never committed, since
    a verdict's lines are written before its transaction commits, so it is skipped."""
    block: list[bytes] = []
    with open(path, "rb") as f:
        for line in f:
            seal = _parse_seal(line) if _SEAL_MARK in line and line.endswith(b"\n") else None
            if seal is None:
                block.append(line)
                continue
            if not json.loads(line).get("recovered"):
                yield from _records(block)
            block = []
    yield from _records(block)  # lines still unsealed: a writer at work


def _records(lines: list[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError:
                continue


def _parse_seal(line: bytes) -> tuple[str, str] | None:
    """(prev, hash) of a seal line, or None if the line is no complete seal."""
    try:
        seal = json.loads(line)
        if isinstance(seal, dict) and seal.get("event") == SEAL_EVENT:
            return str(seal["prev"]), str(seal["hash"])
    except (ValueError, KeyError, TypeError):
        pass
    return None
