"""Each process's in-memory directory of users and devices, kept exact by the store's
change feed.

The directory is a cache of the store, never a source of truth: every write transaction
first reloads what other processes changed (:meth:`Directory.refresh`). It holds sealed
secrets opened for the kernel (keys, PIN hashes); it never logs or prints them.

A full load (a process's start, or a bulk change) takes the store's rows as columns
(:class:`~sls_core.store.DirectoryLoad`: raw rows, id columns, secrets opened in one
native pass) and builds only what every lookup needs at once: the username index, the
batch path's numpy :class:`Columns`, the closed accounts and the replacements. A user's or
device's Python objects are made from the loaded rows the first time they are asked for
(:class:`UserMap`, :class:`DeviceMap`, :class:`DeviceSets`): the same values, read at the
same moment, so the directory is exactly as if it had built them all up front.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from sls_core.challenge import NameIndex
from sls_core.devices import DeviceState, DeviceType
from sls_core.store import DeviceRow, DirectoryLoad, StoreTx, UserRow
from sls_core.store.load import LoadedDevice

__all__ = ["Columns", "DeviceEntry", "DeviceMap", "DeviceSets", "Directory", "UserMap"]

_T = TypeVar("_T")


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

    def load(self, load: DirectoryLoad, replaced_by: dict[int, set[int]]) -> None:
        """Every loaded device at once (into new, empty columns), column by column: the
        same cells :meth:`update` gives each entry, from the loaded rows without an entry
        per device."""
        ids = load.device_ids
        n = len(ids)
        if n == 0:
            return
        top = int(ids.max())
        size = max(top + 1, 1024)  # one allocation (growing would copy every column)
        self.owner = np.full(size, -1, dtype=np.int64)
        self.suite = np.full(size, -1, dtype=np.int16)
        self.keys = np.zeros((size, self.KEY_WIDTH), dtype=np.uint8)
        self.pins = np.zeros((size, self.PIN_WIDTH), dtype=np.uint8)
        rows = load.device_rows
        link_devices = load.link_devices
        # Owners per device, and the one owner of a device that has exactly one.
        width = max(top, int(link_devices.max()) if len(link_devices) else 0) + 1
        owner_count = np.bincount(link_devices, minlength=width)
        single = np.full(width, -1, np.int64)
        one = owner_count[link_devices] == 1
        single[link_devices[one]] = load.link_users[one]
        self.owner[ids] = single[ids]
        # plain_active and an OCRA device (see DeviceEntry and Directory.set_flags), with
        # its suite's code, in one pass over the rows (-1: not on the fast path). The
        # cells may be coded (DirectoryLoad.device_codes): compared as they are, decoded
        # once per distinct value.
        text = load.device_text
        c = LoadedDevice
        TYPE, STATE, SUITE, EXPIRES_AT = c.TYPE, c.STATE, c.SUITE, c.EXPIRES_AT  # noqa: N806
        kinds = {(r[TYPE], r[SUITE]) for r in rows}
        fast_types = {
            t
            for t in {t for t, _ in kinds}
            if DeviceType(text(TYPE, t)).method == "ocra"
            and DeviceType(text(TYPE, t)) is not DeviceType.TEMPORARY_PASSCODE
        }
        code_of: dict[Any, int] = {}
        for t, suite in sorted(kinds, key=lambda k: (text(TYPE, k[0]), text(SUITE, k[1]) or "")):
            suite_text = text(SUITE, suite) or ""
            if t in fast_types and suite not in code_of:
                if suite_text not in self.suites:
                    self.suites.append(suite_text)
                code_of[suite] = self.suites.index(suite_text)
        active = load.device_cell(STATE, DeviceState.ACTIVE.value)
        codes = np.fromiter(
            (
                code_of[r[SUITE]]
                if r[STATE] == active and r[EXPIRES_AT] is None and r[TYPE] in fast_types
                else -1
                for r in rows
            ),
            np.int16,
            n,
        )
        fast = codes >= 0
        if replaced_by:
            fast &= ~np.isin(ids, np.fromiter(replaced_by, np.int64, len(replaced_by)))
        secret_lengths, pin_lengths = load.secrets.lengths, load.pin_hashes.lengths
        fast &= (owner_count[ids] == 1) & (secret_lengths >= 0)
        fast &= (secret_lengths <= self.KEY_WIDTH) & (pin_lengths <= self.PIN_WIDTH)
        self.suite[ids] = np.where(fast, codes, -1)
        assert load.secrets.padded is not None
        assert load.pin_hashes.padded is not None
        # Ids 1..n with none missing (a store that never deleted a device) fill a slice:
        # one block copy, where an index array copies row by row.
        rows_at = slice(int(ids[0]), top + 1) if _consecutive(ids) else ids
        self.keys[rows_at] = load.secrets.padded
        self.pins[rows_at] = load.pin_hashes.padded

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


def _consecutive(ids: npt.NDArray[np.int64]) -> bool:
    """Whether ``ids`` counts up by one from its first."""
    return (
        len(ids) > 0
        and int(ids[-1]) - int(ids[0]) == len(ids) - 1
        and bool((np.diff(ids) == 1).all())
    )


def _positions(ids: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
    """(ids sorted, where each sorted id is in ``ids``): a lookup table for :func:`_find`."""
    order = np.argsort(ids, kind="stable")
    return ids[order], order


def _find(table: tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]], key: int) -> int:
    """The position of ``key`` in the loaded ids, -1 if it is not there."""
    ids, order = table
    i = int(np.searchsorted(ids, key))
    if i < len(ids) and int(ids[i]) == key:
        return int(order[i])
    return -1


class _LoadedMap(dict[int, _T]):
    """A dict of what changed since the full load, in front of what the load held: a key
    it does not have is made from the loaded rows on first use and kept. Only keys are
    ever added or replaced (users and devices are never deleted)."""

    def __init__(self, ids: npt.NDArray[np.int64] | None = None) -> None:
        super().__init__()
        empty = np.zeros(0, np.int64)
        self._table = _positions(ids if ids is not None else empty)

    def _make(self, position: int) -> _T:
        raise NotImplementedError

    def _loaded(self, key: object) -> int:
        if not isinstance(key, int | np.integer) or isinstance(key, bool):
            return -1
        return _find(self._table, int(key))

    def __missing__(self, key: int) -> _T:
        position = self._loaded(key)
        if position < 0:
            raise KeyError(key)
        value = self._make(position)
        dict.__setitem__(self, key, value)
        return value

    def get(self, key: int, default: _T | None = None) -> _T | None:  # type: ignore[override]
        if dict.__contains__(self, key):
            return super().__getitem__(key)
        return self[key] if self._loaded(key) >= 0 else default

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or self._loaded(key) >= 0

    def _all_keys(self) -> list[int]:
        loaded: list[int] = self._table[0].tolist()
        return loaded + [k for k in dict.keys(self) if self._loaded(k) < 0]

    def __len__(self) -> int:
        return len(self._all_keys())

    def __iter__(self) -> Iterator[int]:
        return iter(self._all_keys())

    def keys(self) -> list[int]:  # type: ignore[override]
        return self._all_keys()

    def values(self) -> list[_T]:  # type: ignore[override]
        return [self[k] for k in self._all_keys()]

    def items(self) -> list[tuple[int, _T]]:  # type: ignore[override]
        return [(k, self[k]) for k in self._all_keys()]


class UserMap(_LoadedMap[UserRow]):
    """User id -> :class:`UserRow`."""

    def __init__(self, load: DirectoryLoad | None = None) -> None:
        super().__init__(None if load is None else load.user_ids)
        self._load = load

    def _make(self, position: int) -> UserRow:
        assert self._load is not None
        return self._load.user(position)


class DeviceMap(_LoadedMap[DeviceEntry]):
    """Device id -> :class:`DeviceEntry`; a loaded device's entry is made with its owners
    from the loaded links and its flags from the directory as it is then (a device whose
    flags could have changed since the load was touched by a refresh, so made already)."""

    def __init__(self, directory: Directory, load: DirectoryLoad | None = None) -> None:
        super().__init__(None if load is None else load.device_ids)
        self._directory = directory
        self._load = load
        self._owners: DeviceSets | None = None
        if load is not None:
            self._owners = DeviceSets(load.link_devices, load.link_users)

    def _make(self, position: int) -> DeviceEntry:
        assert self._load is not None
        assert self._owners is not None
        row = self._load.device(position)
        entry = DeviceEntry(row, DeviceType(row.type), set(self._owners.loaded(row.id)))
        self._directory.set_flags(entry)
        return entry

    def with_push_public(self, push_public: bytes) -> list[DeviceEntry]:
        """The devices (IB Keys) holding ``push_public``, by id: a scan of the loaded rows'
        push keys, making entries only for the devices that match."""
        found = {k: e for k, e in dict.items(self) if e.row.push_public == push_public}
        if self._load is not None:
            key, at = LoadedDevice.PUSH_PUBLIC, LoadedDevice.ID
            for r in self._load.device_rows:
                if r[key] is not None and bytes(r[key]) == push_public:
                    device_id = int(r[at])
                    if device_id not in found and not dict.__contains__(self, device_id):
                        found[device_id] = self[device_id]
        return [found[k] for k in sorted(found)]


class DeviceSets(dict[int, set[int]]):
    """Id -> set of ids (a user's devices, a device's owners), the sets of the full load
    made on first use from two link columns, sorted once. ``pop`` of a loaded key leaves
    it gone, not reloaded."""

    def __init__(
        self,
        keys: npt.NDArray[np.int64] | None = None,
        values: npt.NDArray[np.int64] | None = None,
    ) -> None:
        super().__init__()
        if keys is None or values is None:
            keys = values = np.zeros(0, np.int64)
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._values = values[order]
        self._gone: set[int] = set()

    def loaded(self, key: int) -> list[int]:
        """The values the load linked to ``key``."""
        lo = int(np.searchsorted(self._keys, key, "left"))
        hi = int(np.searchsorted(self._keys, key, "right"))
        found: list[int] = self._values[lo:hi].tolist()
        return found

    def _take(self, key: object) -> set[int] | None:
        if not isinstance(key, int | np.integer) or isinstance(key, bool):
            return None
        key = int(key)
        if dict.__contains__(self, key):
            return super().__getitem__(key)
        if key in self._gone:
            return None
        found = self.loaded(key)
        if not found:
            return None
        value = set(found)
        dict.__setitem__(self, key, value)
        return value

    def __missing__(self, key: int) -> set[int]:
        value = self._take(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: int, default: Any = None) -> Any:
        value = self._take(key)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return self._take(key) is not None

    def setdefault(self, key: int, default: set[int] | None = None) -> set[int]:
        value = self._take(key)
        if value is None:
            value = set() if default is None else default
            self[key] = value
        return value

    def __setitem__(self, key: int, value: set[int]) -> None:
        self._gone.discard(key)
        dict.__setitem__(self, key, value)

    def pop(self, key: int, default: Any = None) -> Any:
        value = self._take(key)
        dict.pop(self, key, None)
        self._gone.add(key)
        return default if value is None else value


class _UsersByName:
    """Username -> :class:`UserRow`, through the directory's name index."""

    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    def get(self, name: object, default: UserRow | None = None) -> UserRow | None:
        if not isinstance(name, str):
            return default
        user_id = int(self._directory.names.lookup([name])[0])
        if user_id < 0:
            return default
        return self._directory.user_by_id.get(user_id, default)

    def __getitem__(self, name: str) -> UserRow:
        user = self.get(name)
        if user is None:
            raise KeyError(name)
        return user

    def __contains__(self, name: object) -> bool:
        return self.get(name) is not None


class Directory:
    """Each process's view of users and devices, kept exact by the store's change feed:
    every write transaction first reloads what other processes changed."""

    def __init__(self) -> None:
        self.generation = -1
        self.user_by_id: UserMap = UserMap()
        self.user_by_name = _UsersByName(self)
        self.names = NameIndex()
        self.closed: set[int] = set()
        self.devices: DeviceMap = DeviceMap(self)
        self.devices_of: DeviceSets = DeviceSets()
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

    def set_flags(self, entry: DeviceEntry) -> None:
        """``plain_active`` and ``group`` from the entry's row and the replacements."""
        entry.plain_active = (
            entry.row.state == DeviceState.ACTIVE.value
            and entry.row.expires_at is None
            and entry.row.id not in self.replaced_by
            and entry.type is not DeviceType.TEMPORARY_PASSCODE
        )
        entry.group = (entry.type.method, entry.row.suite)

    def refresh(self, tx: StoreTx) -> None:
        generation = tx.generation()
        if generation == self.generation:
            return
        changed = None if self.generation < 0 else tx.changes_since(self.generation)
        if changed is None:
            self._load(tx)
            self.generation = generation
            return
        unlinked: set[int] = set()
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
                self.names.remove(old.username)
            self.user_by_id[u.id] = u
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
            self.set_flags(self.devices[device_id])
        self.columns.update([self.devices[i] for i in sorted(touched)])
        self.generation = generation

    def _load(self, tx: StoreTx) -> None:
        """The full load: every row as columns, the per-row objects left to first use."""
        load = tx.load_directory(secret_width=Columns.KEY_WIDTH, pin_width=Columns.PIN_WIDTH)
        names = NameIndex()
        names.extend(load.users.usernames, load.user_ids)
        closed = load.users.closed
        at, old = LoadedDevice.ID, LoadedDevice.REPLACES
        replaces = [(int(r[old]), int(r[at])) for r in load.device_rows if r[old] is not None]
        replaced_by: dict[int, set[int]] = {}
        for old, new in replaces:
            replaced_by.setdefault(old, set()).add(new)
        columns = Columns()
        columns.load(load, replaced_by)
        # Swapped in only once all of it is built: a failure leaves the old directory.
        self.names = names
        self.user_by_id = UserMap(load)
        self.closed = set(load.user_ids[closed].tolist())
        self.replaced_by = replaced_by
        self.devices = DeviceMap(self, load)
        self.devices_of = DeviceSets(load.link_users, load.link_devices)
        self.columns = columns
