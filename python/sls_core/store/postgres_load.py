"""The shared store's full load (:class:`~sls_core.store.load.DirectoryLoad`): the SQL of
it, in one transaction's snapshot.

Device rows come in binary (ids and times as numbers, bytea as bytes: no text parsing per
cell, faster than the text protocol at a million rows); users and links come as a few
texts per slice, no tuple per row, read on a pooled connection of their own while the
devices are fetched (:class:`~sls_core.store.load.BesideLoad`, through the store's
``_users_and_links_beside``). What never changes once written is left to first use
(``LOADED_DEVICE_COLUMNS``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from sls_core.store.load import (
    LOADED_DEVICE_COLUMNS,
    DirectoryLoad,
    LoadDetails,
    UserColumns,
    directory_load,
    fetch_beside,
    links_by_slices,
    users_by_slices,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import psycopg

    from sls_core.sealing import MasterKeyRing

__all__ = ["Links", "link_columns", "load_directory", "user_columns"]

#: Users or links per SELECT of a full load: each of its texts stays far below
#: PostgreSQL's largest value (a gigabyte).
_ROWS_PER_SELECT: Final = 1 << 20
#: One slice of users for a full load: count, ids, usernames (a JSON array), opted_out,
#: closed and preferred devices (-1 for none), after id ``%s``, ``%s`` at most.
_USER_SLICE: Final = (
    "SELECT count(*), string_agg(id::text, ','), json_agg(username)::text,"
    " string_agg(opted_out::text, ','), string_agg(closed::text, ','),"
    " string_agg(coalesce(preferred_device, -1)::text, ',') FROM"
    " (SELECT id, username, opted_out, closed, preferred_device FROM users WHERE id > %s"
    " ORDER BY id LIMIT %s) AS slice"
)
#: One slice of links for a full load: count, user ids, device ids, after the key
#: ``(%s, %s)`` in key order (the primary key's), ``%s`` at most.
_LINK_SLICE: Final = (
    "SELECT count(*), string_agg(user_id::text, ','), string_agg(device_id::text, ',') FROM"
    " (SELECT user_id, device_id FROM user_devices WHERE (user_id, device_id) > (%s, %s)"
    " ORDER BY user_id, device_id LIMIT %s) AS slice"
)

Links = tuple["npt.NDArray[np.int64]", "npt.NDArray[np.int64]"]


def load_directory(
    conn: psycopg.Connection[Any],
    keyring: MasterKeyRing,
    details: LoadDetails,
    beside: Callable[[], tuple[UserColumns, Links] | None],
    quiet: tuple[type[BaseException], ...],
    *,
    secret_width: int | None,
    pin_width: int | None,
) -> DirectoryLoad:
    """The full load in ``conn``'s transaction; ``beside``: the users and links from a
    second connection (None when it has not this snapshot), its errors of ``quiet``
    types leaving them to this one."""
    binary = conn.cursor(binary=True)
    devices, (users, links) = fetch_beside(
        lambda: binary.execute(f"SELECT {LOADED_DEVICE_COLUMNS} FROM devices").fetchall(),  # noqa: S608
        beside,
        quiet=quiet,
        here=lambda: (user_columns(conn), link_columns(conn)),
    )
    return directory_load(
        keyring,
        users,
        devices,
        links,
        details=details,
        secret_width=secret_width,
        pin_width=pin_width,
    )


def user_columns(conn: psycopg.Connection[Any]) -> UserColumns:
    """Every user's loaded columns, in slices (:func:`users_by_slices`)."""
    return users_by_slices(
        lambda last, limit: _one(conn, _USER_SLICE, (last, limit)), _ROWS_PER_SELECT
    )


def link_columns(conn: psycopg.Connection[Any]) -> Links:
    """``user_devices`` as two id arrays, in slices (:func:`links_by_slices`)."""
    return links_by_slices(
        lambda last, limit: _one(conn, _LINK_SLICE, (*last, limit)), _ROWS_PER_SELECT
    )


def _one(conn: psycopg.Connection[Any], query: str, params: Sequence[Any]) -> Sequence[Any]:
    row: Sequence[Any] | None = conn.execute(query, params).fetchone()
    assert row is not None  # an aggregate without GROUP BY gives one row
    return row
