"""Each process's in-memory directory of users and devices, kept exact by the store's
change feed.

The directory is a cache of the store, never a source of truth: every write transaction
first reloads what other processes changed (:meth:`Directory.refresh`). It holds sealed
secrets opened for the kernel (keys, PIN hashes); it never logs or prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sls_core.challenge import NameIndex
from sls_core.devices import DeviceState, DeviceType
from sls_core.store import DeviceRow, StoreTx, UserRow

__all__ = ["Columns", "DeviceEntry", "Directory"]


@dataclass
class DeviceEntry:
    row: DeviceRow
    type: DeviceType
    owners: set[int]
    #: Active with no timed rule to apply (not shipped-pending, no expiry, not replaced,
    #: answers challenges): the batch path skips the state rules for these.
    plain_active: bool = False
    #: Items with the same group go to the kernel in one batch call.
    group: tuple[str, str | None] = ("", None)


class Columns:
    """The batch fast path's view of devices, as numpy arrays indexed by device id, so a
    batch of a million attempts resolves and gathers keys without a Python object per
    item. A device is on the fast path when it is a plain active OCRA device with one
    owner, a key of at most :data:`KEY_WIDTH` bytes (HMAC zero-pads shorter keys, so a
    zero-padded row is the same key) and a PIN hash of at most :data:`PIN_WIDTH`; every
    other device takes the per-item path."""

    KEY_WIDTH = 32
    PIN_WIDTH = 64

    def __init__(self) -> None:
        self.owner = np.full(1, -1, dtype=np.int64)  # id 0 is never a device
        self.suite = np.full(1, -1, dtype=np.int16)
        self.keys = np.zeros((1, self.KEY_WIDTH), dtype=np.uint8)
        self.pins = np.zeros((1, self.PIN_WIDTH), dtype=np.uint8)
        self.suites: list[str] = []

    def _grow(self, top: int) -> None:
        size = len(self.owner)
        if top < size:
            return
        new = max(top + 1, 2 * size, 1024)
        self.owner = np.concatenate([self.owner, np.full(new - size, -1, np.int64)])
        self.suite = np.concatenate([self.suite, np.full(new - size, -1, np.int16)])
        self.keys = np.concatenate([self.keys, np.zeros((new - size, self.KEY_WIDTH), np.uint8)])
        self.pins = np.concatenate([self.pins, np.zeros((new - size, self.PIN_WIDTH), np.uint8)])

    def update(self, entries: Sequence[DeviceEntry]) -> None:
        if not entries:
            return
        self._grow(max(e.row.id for e in entries))
        ids = np.fromiter((e.row.id for e in entries), np.intp, len(entries))
        fast = [
            e.plain_active
            and e.type.method == "ocra"
            and len(e.owners) == 1
            and e.row.secret is not None
            and len(e.row.secret) <= self.KEY_WIDTH
            and len(e.row.pin_hash or b"") <= self.PIN_WIDTH
            for e in entries
        ]
        suites = []
        for e, on in zip(entries, fast, strict=True):
            if not on:
                suites.append(-1)
                continue
            suite = e.row.suite or ""
            if suite not in self.suites:
                self.suites.append(suite)
            suites.append(self.suites.index(suite))
        self.suite[ids] = suites
        self.owner[ids] = [next(iter(e.owners)) if len(e.owners) == 1 else -1 for e in entries]
        keys = b"".join(
            (e.row.secret or b"").ljust(self.KEY_WIDTH, b"\0")[: self.KEY_WIDTH] for e in entries
        )
        self.keys[ids] = np.frombuffer(keys, np.uint8).reshape(-1, self.KEY_WIDTH)
        pins = b"".join(
            (e.row.pin_hash or b"").ljust(self.PIN_WIDTH, b"\0")[: self.PIN_WIDTH] for e in entries
        )
        self.pins[ids] = np.frombuffer(pins, np.uint8).reshape(-1, self.PIN_WIDTH)


class Directory:
    """Each process's view of users and devices, kept exact by the store's change feed:
    every write transaction first reloads what other processes changed."""

    def __init__(self) -> None:
        self.generation = -1
        self.user_by_name: dict[str, UserRow] = {}
        self.user_by_id: dict[int, UserRow] = {}
        self.names = NameIndex()
        self.closed: set[int] = set()
        self.devices: dict[int, DeviceEntry] = {}
        self.devices_of: dict[int, set[int]] = {}
        #: old device id -> ids of devices enrolled to replace it
        self.replaced_by: dict[int, set[int]] = {}
        self.columns = Columns()

    def live_temporary(
        self,
        user_id: int,
        types: tuple[DeviceType, ...] = (DeviceType.TEMPORARY_PASSCODE, DeviceType.ONLINE_CARD),
    ) -> list[int]:
        """The user's temporary passcodes and online cards that are not yet ended."""
        live = (DeviceState.ACTIVE.value, DeviceState.PENDING.value)
        return [
            device_id
            for device_id in sorted(self.devices_of.get(user_id, ()))
            if self.devices[device_id].type in types and self.devices[device_id].row.state in live
        ]

    #: Changed rows past which a refresh counts as slow (see ``slow_to_refresh``).
    SLOW_REFRESH_ROWS = 256

    def slow_to_refresh(self, tx: StoreTx) -> bool:
        """Whether bringing the directory up to date means a full reload, or more than
        ``SLOW_REFRESH_ROWS`` changed rows."""
        if tx.generation() == self.generation:
            return False
        if self.generation < 0:
            return True
        changed = tx.changes_since(self.generation)
        return changed is None or len(changed[0]) + len(changed[1]) > self.SLOW_REFRESH_ROWS

    def refresh(self, tx: StoreTx) -> None:
        generation = tx.generation()
        if generation == self.generation:
            return
        changed = None if self.generation < 0 else tx.changes_since(self.generation)
        unlinked: set[int] = set()
        if changed is None:
            users, devices, links = tx.users(), tx.devices(), tx.links()
            self.user_by_name.clear()
            self.user_by_id.clear()
            self.names.clear()
            self.closed.clear()
            self.devices.clear()
            self.devices_of.clear()
            self.replaced_by.clear()
            self.columns = Columns()
        else:
            user_ids, device_ids = changed
            users, devices = tx.users(user_ids), tx.devices(device_ids)
            links = tx.links(user_ids)
            # A changed user's links are reloaded whole: a link may have gone (a sharing
            # request cancelled), and the devices it left need their owners recounted.
            for user_id in user_ids:
                for device_id in self.devices_of.pop(user_id, set()):
                    entry = self.devices.get(device_id)
                    if entry is not None:
                        entry.owners.discard(user_id)
                        unlinked.add(device_id)
        for u in users:
            old = self.user_by_id.get(u.id)
            if old is not None:
                self.user_by_name.pop(old.username, None)
                self.names.remove(old.username)
            self.user_by_id[u.id] = u
            self.user_by_name[u.username] = u
            self.names.insert(u.username, u.id)
            if u.closed:
                self.closed.add(u.id)
            else:
                self.closed.discard(u.id)
        for d in devices:
            entry = self.devices.get(d.id)
            owners = entry.owners if entry is not None else set()
            self.devices[d.id] = DeviceEntry(d, DeviceType(d.type), owners)
            if d.replaces is not None:
                self.replaced_by.setdefault(d.replaces, set()).add(d.id)
        for user_id, device_id in links:
            self.devices[device_id].owners.add(user_id)
            self.devices_of.setdefault(user_id, set()).add(device_id)
        touched = {d.id for d in devices}
        touched.update(d.replaces for d in devices if d.replaces is not None)
        touched.update(device_id for _, device_id in links)
        touched.update(unlinked)
        for device_id in touched:
            entry = self.devices[device_id]
            entry.plain_active = (
                entry.row.state == DeviceState.ACTIVE.value
                and entry.row.expires_at is None
                and device_id not in self.replaced_by
                and entry.type is not DeviceType.TEMPORARY_PASSCODE
            )
            entry.group = (entry.type.method, entry.row.suite)
        self.columns.update([self.devices[i] for i in sorted(touched)])
        self.generation = generation
