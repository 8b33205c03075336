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
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sls_core.auditfmt import audit_lines
from sls_core.outcome import LoginOutcome

__all__ = ["AuditTrail"]

_INVALID_USERNAME = int(LoginOutcome.INVALID_USERNAME)
# The name of each outcome value, by value (a gap in the values would raise here).
_OUTCOME_NAMES = tuple(LoginOutcome(value).name for value in range(len(LoginOutcome)))


def _now_iso() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditTrail:
    """Appends audit lines to ``path`` (created 0600). ``path=None`` keeps no trail."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._fd: int | None = None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def __repr__(self) -> str:
        return f"AuditTrail({str(self.path) if self.path else None!r})"

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            return
        with self._lock:
            fd = self._fd
            if fd is None:
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

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
        now = _now_iso()
        heads = [_head(now, event, who, rid) for who, rid in callers]
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
        os.close(old if old is not None else fresh)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _head(time: str, event: str, caller: str, request_id: str) -> str:
    """The JSON text a call's lines start with: their first keys, the object left open.

    The same text as ``json.dumps({...}, separators=(",", ":"))[:-1]``, four times faster:
    ``json.dumps`` of a lone str takes its C fast path (coalesced calls need one head each).
    """
    dumps = json.dumps
    return (
        f'{{"time":{dumps(time)},"event":{dumps(event)},'
        f'"caller":{dumps(caller)},"request_id":{dumps(request_id)}'
    )


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
