"""A store's full load, what a process's directory starts from (:mod:`sls_core.login.
directory`): every user, device and link at one moment, as columns and raw rows rather than
a Python object per row, with the sealed secrets opened in one native pass each.

Both backends build it the same way (:func:`directory_load`): the columns that a login
storm's paths need, read at once; the users and links beside the device fetch on a
connection of their own (:class:`BesideLoad`); and the columns that never change once
written left to first use (:class:`LoadDetails`, :class:`LoadedUserRow`,
:class:`LoadedDeviceRow`).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from sls_core.store.base import DeviceRow, UserRow

if TYPE_CHECKING:
    from sls_core.sealing import OpenedColumn

__all__ = [
    "DEVICE_DETAILS",
    "LOADED_DEVICE_COLUMNS",
    "USER_DETAILS",
    "BesideLoad",
    "DirectoryLoad",
    "LoadDetails",
    "LoadedDevice",
    "LoadedDeviceRow",
    "LoadedUserRow",
    "ReadsDetails",
    "UserColumns",
    "directory_load",
    "fetch_beside",
    "links_by_slices",
    "users_by_slices",
]

_T = TypeVar("_T")
_D = TypeVar("_D")

#: The columns a full load reads of every device, in the order of :class:`LoadedDevice`.
#: The others (:data:`DEVICE_DETAILS`) never change once written, so they are read on
#: first use: a third of a million-device fetch, for values few paths ever look at.
LOADED_DEVICE_COLUMNS: Final = (
    "id, type, state, suite, shipped_at, activated_at, expires_at, replaces,"
    " secret, pin_hash, push_public, recovery_hash"
)
#: A device's columns that no UPDATE touches, read by :meth:`LoadDetails.device_details`.
DEVICE_DETAILS: Final = "serial, issued_at, phone"
#: A user's columns that no UPDATE touches, read by :meth:`LoadDetails.user_details`.
USER_DETAILS: Final = "identity, created_at"


class LoadedDevice:
    """Positions of :data:`LOADED_DEVICE_COLUMNS` in a loaded device row."""

    ID, TYPE, STATE, SUITE, SHIPPED_AT, ACTIVATED_AT, EXPIRES_AT, REPLACES = range(8)
    SECRET, PIN_HASH, PUSH_PUBLIC, RECOVERY_HASH = range(8, 12)


class LoadDetails(Protocol):
    """What a full load leaves to first use: the columns of a loaded row that never
    change once written (no UPDATE touches them, and rows are never deleted), so reading
    them later, from any snapshot that holds the row, gives the load's values. Callable
    from any thread, inside or outside its transactions."""

    def user_details(self, user_id: int) -> tuple[str, float]:
        """``identity`` (its JSON text) and ``created_at`` of a stored user."""
        ...

    def device_details(self, device_id: int) -> tuple[str, float, str | None]:
        """``serial``, ``issued_at`` and ``phone`` of a stored device."""
        ...


class ReadsDetails:
    """:class:`LoadDetails` for a store, over its one read of a row's details by id
    (``_read_details``: the row's :data:`USER_DETAILS` of ``users`` or
    :data:`DEVICE_DETAILS` of ``devices``, None when the row is not there)."""

    def _read_details(self, table: str, row_id: int) -> Sequence[Any] | None:
        raise NotImplementedError

    def _details(self, table: str, row_id: int) -> tuple[Any, ...]:
        row = self._read_details(table, row_id)
        if row is None:  # never: a loaded row is never deleted
            raise RuntimeError(f"{table[:-1]} {row_id} of a full load is not in the store")
        return tuple(row)

    def user_details(self, user_id: int) -> tuple[str, float]:
        identity, created_at = self._details("users", user_id)
        return identity, created_at

    def device_details(self, device_id: int) -> tuple[str, float, str | None]:
        serial, issued_at, phone = self._details("devices", device_id)
        return serial, issued_at, phone


@dataclass(frozen=True, eq=False)
class UserColumns:
    """Every user's columns a full load reads, as columns, position for position."""

    ids: npt.NDArray[np.int64]
    usernames: list[str]
    opted_out: npt.NDArray[np.bool_]
    closed: npt.NDArray[np.bool_]
    #: ``preferred_device``, -1 where there is none (device ids are positive).
    preferred_device: npt.NDArray[np.int64]

    @classmethod
    def parse(
        cls, count: int, ids: str, usernames: str, opted_out: str, closed: str, preferred: str
    ) -> UserColumns:
        """From one aggregate SELECT's texts: comma-separated integers (NULL preferred
        devices as -1) and the usernames as a JSON array, ``count`` of each."""
        columns = cls(
            _int_column(ids),
            json.loads(usernames),
            _int_column(opted_out).astype(bool),
            _int_column(closed).astype(bool),
            _int_column(preferred),
        )
        if (
            any(
                len(c) != count
                for c in (columns.ids, columns.usernames, columns.opted_out, columns.closed)
            )
            or len(columns.preferred_device) != count
        ):  # never: SQL gave one cell per row
            raise RuntimeError("users: a full load parsed its columns wrongly")
        return columns

    @classmethod
    def concatenate(cls, parts: Sequence[UserColumns]) -> UserColumns:
        if len(parts) == 1:
            return parts[0]
        if not parts:
            empty = np.zeros(0, np.int64)
            return cls(empty, [], empty.astype(bool), empty.astype(bool), empty)
        return cls(
            np.concatenate([p.ids for p in parts]),
            [name for p in parts for name in p.usernames],
            np.concatenate([p.opted_out for p in parts]),
            np.concatenate([p.closed for p in parts]),
            np.concatenate([p.preferred_device for p in parts]),
        )


def users_by_slices(fetch: Callable[[int, int], Sequence[Any]], per_select: int) -> UserColumns:
    """Every user's loaded columns, by slices of ``per_select`` users in id order, each one
    aggregate row ``fetch(after_id, limit)``: count, ids, usernames (a JSON array),
    opted_out, closed, preferred devices (-1 for none), as texts. The aggregates of one
    SELECT take the rows in the same order, so the columns line up position for position;
    SQL promises no order across the rows, so the next slice starts after the greatest id
    found. In the caller's transaction: one snapshot."""
    parts: list[UserColumns] = []
    last = -(1 << 63)
    while True:
        count, *texts = fetch(last, per_select)
        if not count:
            break
        parts.append(UserColumns.parse(count, *texts))
        last = int(parts[-1].ids.max())
        if count < per_select:
            break
    return UserColumns.concatenate(parts)


def links_by_slices(
    fetch: Callable[[tuple[int, int], int], Sequence[Any]], per_select: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``user_devices`` as two id arrays, row for row (the directory needs no order), by
    slices of ``per_select`` links in key order, each one aggregate row ``fetch(after_key,
    limit)``: count, user ids, device ids, as comma-separated texts."""
    users, devices = [], []
    last = (-(1 << 63), -(1 << 63))
    while True:
        count, user_text, device_text = fetch(last, per_select)
        if not count:
            break
        users.append(_int_column(user_text))
        devices.append(_int_column(device_text))
        if len(users[-1]) != count or len(devices[-1]) != count:  # never: ids are integers
            raise RuntimeError("user_devices: a full load parsed a slice of links wrongly")
        # The slice's greatest key, found rather than taken from the texts' ends (SQL
        # promises no order to an aggregate): the next slice starts after it.
        top_user = int(users[-1].max())
        last = (top_user, int(devices[-1][users[-1] == top_user].max()))
        if count < per_select:
            break
    if not users:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(users), np.concatenate(devices)


def _int_column(text: str | None) -> npt.NDArray[np.int64]:
    if not text:
        return np.zeros(0, np.int64)
    return np.fromstring(text, dtype=np.int64, sep=",")


@dataclass(frozen=True, eq=False)
class DirectoryLoad:
    """Every user, device and link of the store at one moment, for a directory's full
    load: what ``users()``, ``devices()`` and ``links()`` return, but as columns and the
    raw device rows the database gave (no Python object per row), with every device's
    secret and PIN hash opened in one native pass each. A row becomes a :class:`UserRow`
    or :class:`DeviceRow` only when it is asked for (:meth:`user`, :meth:`device`), with
    its details read then (:class:`LoadDetails`). Holds secrets: never printed."""

    users: UserColumns = field(repr=False)
    #: Raw device rows, :data:`LOADED_DEVICE_COLUMNS` in order (secrets still sealed).
    device_rows: list[Any] = field(repr=False)
    device_ids: npt.NDArray[np.int64] = field(repr=False)
    #: The devices' secrets and PIN hashes, opened, row for row.
    secrets: OpenedColumn = field(repr=False)
    pin_hashes: OpenedColumn = field(repr=False)
    #: ``user_devices``, as two columns.
    link_users: npt.NDArray[np.int64] = field(repr=False)
    link_devices: npt.NDArray[np.int64] = field(repr=False)
    #: Where the loaded rows' other columns are read, on first use.
    details: LoadDetails = field(repr=False)
    #: Device columns a backend fetched coded (``type``, ``state``, ``suite``): column
    #: position (:class:`LoadedDevice`) -> the texts, a cell holding an int being the
    #: text at that index (any other cell is the text itself). An int is one shared
    #: object where a text is a new one per row: a million rows fetch faster. Read the
    #: cells with :meth:`device_text`.
    device_codes: dict[int, tuple[str, ...]] = field(default_factory=dict, repr=False)

    @property
    def user_ids(self) -> npt.NDArray[np.int64]:
        return self.users.ids

    def device_text(self, column: int, cell: Any) -> Any:
        """Cell ``cell`` of device column ``column`` as the store holds it (decoded)."""
        if type(cell) is int and column in self.device_codes:
            return self.device_codes[column][cell]
        return cell

    def device_cell(self, column: int, text: Any) -> Any:
        """What a cell of device column ``column`` holds for value ``text`` (coded where
        the column is coded and the text has a code)."""
        names = self.device_codes.get(column)
        if names is not None and text in names:
            return names.index(text)
        return text

    def user(self, i: int) -> UserRow:
        """User ``i`` of the load as a :class:`UserRow` (its details read on first use)."""
        users = self.users
        preferred = int(users.preferred_device[i])
        return LoadedUserRow(
            self.details,
            id=int(users.ids[i]),
            username=users.usernames[i],
            opted_out=bool(users.opted_out[i]),
            closed=bool(users.closed[i]),
            preferred_device=None if preferred < 0 else preferred,
        )

    def device(self, i: int) -> DeviceRow:
        """Row ``i`` of ``device_rows`` as a :class:`DeviceRow`, its secrets opened (its
        details read on first use)."""
        r = self.device_rows[i]
        c = LoadedDevice
        return LoadedDeviceRow(
            self.details,
            id=int(r[c.ID]),
            type=self.device_text(c.TYPE, r[c.TYPE]),
            state=self.device_text(c.STATE, r[c.STATE]),
            suite=self.device_text(c.SUITE, r[c.SUITE]),
            shipped_at=r[c.SHIPPED_AT],
            activated_at=r[c.ACTIVATED_AT],
            expires_at=r[c.EXPIRES_AT],
            replaces=None if r[c.REPLACES] is None else int(r[c.REPLACES]),
            secret=self.secrets.value(i),
            pin_hash=self.pin_hashes.value(i),
            push_public=None if r[c.PUSH_PUBLIC] is None else bytes(r[c.PUSH_PUBLIC]),
            recovery_hash=None if r[c.RECOVERY_HASH] is None else bytes(r[c.RECOVERY_HASH]),
        )


class _Detail:
    """A field of a loaded row read on first use (:class:`LoadDetails`), all of the row's
    details in one read, then kept. A data descriptor: it shadows the dataclass field of
    the same name, and refuses assignment as the frozen row does."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, row: Any, owner: type | None = None) -> Any:
        if row is None:
            return self
        values = row.__dict__
        if self.name not in values:
            values.update(row._read_details())
        return values[self.name]

    def __set__(self, row: Any, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {self.name!r}")


class _LoadedRow:
    """What :class:`LoadedUserRow` and :class:`LoadedDeviceRow` share: made from loaded
    values without the dataclass's ``__init__`` (which would need the details), equal to
    the plain row with the same values (so a directory's rows compare with the store's)."""

    _row: type

    def __init__(self, details: LoadDetails | None = None, **loaded: Any) -> None:
        # Without ``details``, every field is given (``dataclasses.replace`` of a loaded
        # row): nothing is left to read.
        self.__dict__.update(loaded, _details=details)

    def _read_details(self) -> dict[str, Any]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, self._row):
            return NotImplemented
        return all(
            getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(self._row)
        )

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self._row)))

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        # Pickled or deep-copied as the plain row, details read: the store stays behind.
        return self._row, tuple(getattr(self, f.name) for f in dataclasses.fields(self._row))


class LoadedUserRow(_LoadedRow, UserRow):
    """A :class:`UserRow` of a full load: ``identity`` and ``created_at`` are read on first
    use. The paths of a login storm never ask for them, so a restarted node's first logins
    cost no read per user."""

    _row = UserRow
    identity = _Detail()
    created_at = _Detail()

    def _read_details(self) -> dict[str, Any]:
        identity, created_at = self.__dict__["_details"].user_details(self.id)
        return {"identity": json.loads(identity), "created_at": created_at}


class LoadedDeviceRow(_LoadedRow, DeviceRow):
    """A :class:`DeviceRow` of a full load: ``serial``, ``issued_at`` and ``phone`` are read
    on first use (only some device types' rules ask for them: cards, passcodes, SMS)."""

    _row = DeviceRow
    serial = _Detail()
    issued_at = _Detail()
    phone = _Detail()

    def _read_details(self) -> dict[str, Any]:
        serial, issued_at, phone = self.__dict__["_details"].device_details(self.id)
        return {"serial": serial, "issued_at": issued_at, "phone": phone}


class BesideLoad(threading.Thread, Generic[_T]):
    """Part of a full load read on a connection of its own while the caller fetches the
    device rows: the database computes it (SQLite's aggregates run with the GIL released,
    PostgreSQL's in its own process), so the two overlap on two cores. ``read`` returns
    None when its snapshot does not have the caller's change-feed generation (a user,
    device or link changed between the two); an error of ``quiet`` types (the database's)
    gives None too. On None the caller reads that part in its own transaction. Any other
    error is raised in the caller, not lost in the thread."""

    def __init__(
        self, read: Callable[[], _T | None], quiet: tuple[type[BaseException], ...]
    ) -> None:
        super().__init__(name="sls-load-beside", daemon=True)
        self._read = read
        self._quiet = quiet
        self._result: _T | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._result = self._read()
        except self._quiet:
            pass  # the caller reads it itself
        except BaseException as e:
            self._error = e

    def result(self) -> _T | None:
        self.join()
        if self._error is not None:
            raise self._error
        return self._result

    def __enter__(self) -> BesideLoad[_T]:
        return self

    def __exit__(self, *exc: object) -> None:
        # The caller's part failed or not: this one ends before the caller goes on (on
        # PostgreSQL it holds a pooled connection and a snapshot meanwhile).
        self.join()


def fetch_beside(
    fetch: Callable[[], _D],
    beside: Callable[[], _T | None],
    *,
    quiet: tuple[type[BaseException], ...],
    here: Callable[[], _T],
) -> tuple[_D, _T]:
    """``fetch()`` on the caller's connection while ``beside()`` runs on another
    (:class:`BesideLoad`, joined even when the fetch fails), or ``here()`` after the fetch
    when that gives None (its snapshot was not the caller's)."""
    with BesideLoad(beside, quiet=quiet) as other:
        fetched = fetch()
    got = other.result()
    return fetched, (here() if got is None else got)


def directory_load(
    keyring: Any,
    users: UserColumns,
    device_rows: list[Any],
    links: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    *,
    details: LoadDetails,
    secret_width: int | None = None,
    pin_width: int | None = None,
    device_codes: dict[int, tuple[str, ...]] | None = None,
) -> DirectoryLoad:
    """A :class:`DirectoryLoad` from what a backend fetched in one snapshot (the users'
    columns, ``SELECT LOADED_DEVICE_COLUMNS``, the links as user and device id columns),
    the sealed secrets and PIN hashes opened by ``keyring`` (a ``MasterKeyRing``) column
    by column. ``secret_width`` / ``pin_width``: also each opened value zero-padded to
    that width; ``details``: the store, for what the load leaves to first use;
    ``device_codes``: see :attr:`DirectoryLoad.device_codes`.

    The opening runs after the fetches, not beside them in a thread: sqlite3 gives up
    the GIL at every row, and a thread taking it each time made the fetch slower than
    the overlap saved (a million devices: 7 s against 5.5 s)."""
    c = LoadedDevice
    device_ids = np.fromiter((r[0] for r in device_rows), np.int64, len(device_rows))
    secrets = keyring.open_device_column(
        device_ids, [r[c.SECRET] for r in device_rows], "secret", width=secret_width
    )
    pin_hashes = keyring.open_device_column(
        device_ids, [r[c.PIN_HASH] for r in device_rows], "pin_hash", width=pin_width
    )
    link_users, link_devices = links
    return DirectoryLoad(
        users=users,
        device_rows=device_rows,
        device_ids=device_ids,
        secrets=secrets,
        pin_hashes=pin_hashes,
        link_users=link_users,
        link_devices=link_devices,
        details=details,
        device_codes=device_codes or {},
    )
