"""What both store backends do about the master key ring: follow the key file through a
live rotation, say in ``key_holders`` which key each open store seals with, and tell
``--retire`` which stores are still alive and which key ids the records use."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from sls_core.sealing import MasterKeyRing
from sls_core.store.base import WriterBusyError

__all__ = [
    "CONSUMED_MASKS",
    "COUNTED_TABLES",
    "SEALED_VALUES",
    "KeyFollower",
    "count_consumed",
    "count_key_ids",
    "live_holders",
]

#: Every sealed value of the schema, one per row (what ``--retire`` must not orphan).
SEALED_VALUES: Final = (
    "SELECT secret FROM devices UNION ALL SELECT pin_hash FROM devices"
    " UNION ALL SELECT sealed FROM server_secrets"
    " UNION ALL SELECT server_private FROM activations"
)
#: The tables an operator asks about first (``sls-core-admin status``), counted by row;
#: consumed challenges are counted by :func:`count_consumed`.
COUNTED_TABLES: Final = ("users", "devices", "failures")
#: The masks of consumed challenges, 64 ids a row (see ``store.base.consumed_blocks``).
CONSUMED_MASKS: Final = "SELECT mask FROM consumed_blocks"
#: How often (seconds) an open store refreshes its ``key_holders`` row while it writes.
ADVERTISE_EVERY: Final = 60.0
#: A holder on another host not seen for this long (seconds) is taken for gone.
_REMOTE_HOLDER_TTL: Final = 3600.0


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


def live_holders(rows: Iterable[Any]) -> list[tuple[str, str, int, str, float]]:
    """(holder, host, pid, key id, last seen) of the ``key_holders`` rows that may still
    seal: on this host, the processes still alive; elsewhere, those seen in the last hour."""
    here, now, live = socket.gethostname(), time.time(), []
    for holder, host, pid, key_id, seen_at in rows:
        if host == here:
            if not _process_alive(int(pid)):
                continue
        elif now - float(seen_at) > _REMOTE_HOLDER_TTL:
            continue
        live.append((str(holder), str(host), int(pid), str(key_id), float(seen_at)))
    return live


def count_key_ids(blobs: Iterable[Any]) -> dict[str, int]:
    """How many of the sealed values (``None`` skipped) each master key id seals."""
    counts: dict[str, int] = {}
    for (blob,) in blobs:
        if blob is not None:
            key_id = MasterKeyRing.key_id_of(bytes(blob))
            counts[key_id] = counts.get(key_id, 0) + 1
    return counts


class KeyFollower:
    """Mixed into a store: ``_keyring`` follows ``_key_file`` when it changes (a stat per
    transaction), and ``_advertisement()`` says when the store's ``key_holders`` row is due.
    The store provides ``write(wait=...)`` and sets the attributes below."""

    _keyring: MasterKeyRing
    _key_file: Path | None
    _key_file_seen: tuple[int, int, int] | None
    _advertised: tuple[str, float] | None
    holder: str

    def write(self, *, wait: bool = True) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    @property
    def active_key_id(self) -> str:
        """The master key id new values are sealed under (operators' status)."""
        return self._keyring.active_key_id

    def _key_file_stamp(self) -> tuple[int, int, int] | None:
        if self._key_file is None:
            return None
        try:
            st = self._key_file.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _follow_key_file(self) -> None:
        """Re-reads the key file if it changed: a rotation's new active key is used for
        everything sealed from now on."""
        stamp = self._key_file_stamp()
        if stamp is not None and stamp != self._key_file_seen:
            assert self._key_file is not None
            self._keyring = MasterKeyRing.from_file(self._key_file)
            self._key_file_seen = stamp

    def follow_keys(self) -> bool:
        """Moves to a rotated key file now, without waiting for the next write: when the
        key file changed, an empty write transaction re-reads it and records the new key in
        ``key_holders``. A server calls this every second, so ``--retire`` need not wait for
        traffic to reach an idle process. Returns whether it moved; skips (False) while
        another writer holds the lock (the next tick tries again)."""
        stamp = self._key_file_stamp()
        if stamp is None or stamp == self._key_file_seen:
            return False
        try:
            with self.write(wait=False):
                pass
        except WriterBusyError:
            return False
        return True

    def _advertisement(self) -> tuple[str, str, int, str, float] | None:
        """The ``key_holders`` row to write in this write transaction (the key changed, or
        a minute passed: ``--retire`` waits for every live holder), else None. Noted as
        written: a rollback must reset ``_advertised`` so that it is written again."""
        key_id, now = self._keyring.active_key_id, time.time()
        if self._advertised is not None:
            last_key, last_time = self._advertised
            if last_key == key_id and now - last_time < ADVERTISE_EVERY:
                return None
        self._advertised = (key_id, now)
        return (self.holder, socket.gethostname(), os.getpid(), key_id, now)


def count_consumed(masks: Iterable[tuple[int]]) -> int:
    """How many challenges the ``consumed_blocks`` masks mark consumed (their set bits)."""
    return sum((int(mask) & 0xFFFF_FFFF_FFFF_FFFF).bit_count() for (mask,) in masks)
