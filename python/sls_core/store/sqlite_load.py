"""The embedded store's full load (:class:`~sls_core.store.load.DirectoryLoad`): the SQL of
it, in one transaction's snapshot.

The device rows come as tuples, but with type, state and suite coded as small ints (shared
objects: a new text per cell was a fifth of the fetch); users and links come as a few
texts per slice that numpy and json parse, no tuple per row, read on a second connection
while the devices are fetched (:class:`~sls_core.store.load.BesideLoad`). What never
changes once written is left to first use (``LOADED_DEVICE_COLUMNS``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sls_core.store.load import (
    LOADED_DEVICE_COLUMNS,
    DirectoryLoad,
    LoadDetails,
    LoadedDevice,
    UserColumns,
    directory_load,
    fetch_beside,
    links_by_slices,
    users_by_slices,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from sls_core.sealing import MasterKeyRing

__all__ = ["load_directory"]

#: The suites most devices have (the ones enrollment gives), coded in a full load; any
#: other suite is fetched as its text.
_COMMON_SUITES: Final = ("OCRA-1:HOTP-SHA1-8:QN06-PSHA1", "OCRA-1:HOTP-SHA1-8:QN06")
#: Users or links per SELECT of a full load: each of its texts stays far below SQLite's
#: largest string (a billion bytes).
_ROWS_PER_SELECT: Final = 1 << 20
#: One slice of users for a full load: count, ids, usernames (a JSON array), opted_out,
#: closed and preferred devices (-1 for none), after id ``?``, ``?`` at most.
_USER_SLICE: Final = (
    "SELECT count(*), group_concat(id), json_group_array(username), group_concat(opted_out),"
    " group_concat(closed), group_concat(ifnull(preferred_device, -1)) FROM"
    " (SELECT id, username, opted_out, closed, preferred_device FROM users WHERE id > ?"
    " ORDER BY id LIMIT ?)"
)
#: One slice of links for a full load: count, user ids, device ids, after the key
#: ``(?, ?)`` in key order (the primary key's), ``?`` at most.
_LINK_SLICE: Final = (
    "SELECT count(*), group_concat(user_id), group_concat(device_id) FROM"
    " (SELECT user_id, device_id FROM user_devices WHERE (user_id, device_id) > (?, ?)"
    " ORDER BY user_id, device_id LIMIT ?)"
)

_Links = tuple["npt.NDArray[np.int64]", "npt.NDArray[np.int64]"]


def load_directory(
    conn: sqlite3.Connection,
    generation: int,
    path: Path,
    keyring: MasterKeyRing,
    details: LoadDetails,
    *,
    secret_width: int | None,
    pin_width: int | None,
) -> DirectoryLoad:
    """The full load in ``conn``'s transaction, whose change-feed generation is
    ``generation``; ``path``: the database, for the second connection."""
    codes = _device_codes()
    columns = ", ".join(
        _coded(name, codes[i]) if i in codes else name
        for i, name in enumerate(LOADED_DEVICE_COLUMNS.split(", "))
    )
    params = [text for i in sorted(codes) for text in codes[i]]
    devices, (users, links) = fetch_beside(
        lambda: conn.execute(f"SELECT {columns} FROM devices", params).fetchall(),  # noqa: S608
        lambda: _users_and_links_beside(path, generation),
        quiet=(sqlite3.Error,),
        here=lambda: (_user_columns(conn), _link_columns(conn)),
    )
    return directory_load(
        keyring,
        users,
        devices,
        links,
        details=details,
        secret_width=secret_width,
        pin_width=pin_width,
        device_codes=codes,
    )


def _device_codes() -> dict[int, tuple[str, ...]]:
    """Loaded device column (:class:`LoadedDevice`) -> the texts a full load codes."""
    from sls_core.devices import DeviceState, DeviceType

    return {
        LoadedDevice.TYPE: tuple(t.value for t in DeviceType),
        LoadedDevice.STATE: tuple(s.value for s in DeviceState),
        LoadedDevice.SUITE: _COMMON_SUITES,
    }


def _coded(column: str, texts: Sequence[str]) -> str:
    """SQL: ``column``'s code (its text's index in ``texts``), else its text."""
    branches = " ".join(f"WHEN ? THEN {i}" for i in range(len(texts)))
    return f"CASE {column} {branches} ELSE {column} END"


def _users_and_links_beside(path: Path, generation: int) -> tuple[UserColumns, _Links] | None:
    """A full load's users and links on a connection of its own (see
    :class:`~sls_core.store.load.BesideLoad`); None unless its snapshot has ``generation``."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        if _snapshot(conn) != generation:
            return None
        return _user_columns(conn), _link_columns(conn)
    finally:
        conn.close()


def _snapshot(conn: sqlite3.Connection) -> int:
    """The change-feed generation of ``conn``'s snapshot (taken by this first read)."""
    return int(conn.execute("SELECT max(generation) FROM changes").fetchone()[0] or 0)


def _user_columns(conn: sqlite3.Connection) -> UserColumns:
    """Every user's loaded columns, in slices (:func:`users_by_slices`)."""
    return users_by_slices(
        lambda last, limit: conn.execute(_USER_SLICE, (last, limit)).fetchone(), _ROWS_PER_SELECT
    )


def _link_columns(conn: sqlite3.Connection) -> _Links:
    """``user_devices`` as two id arrays, in slices (:func:`links_by_slices`)."""
    return links_by_slices(
        lambda last, limit: conn.execute(_LINK_SLICE, (*last, limit)).fetchone(),
        _ROWS_PER_SELECT,
    )
