"""The durable store: SQLite embedded by default, PostgreSQL when several nodes share state.

One module per backend (:mod:`~sls_core.store.sqlite`, :mod:`~sls_core.store.postgres`)
behind one interface (:mod:`~sls_core.store.base`), the schema of both in
:mod:`~sls_core.store.schema`; no SQL outside this package.
"""

from __future__ import annotations

from sls_core.store.base import (
    ActivationRow,
    DeviceRow,
    PushRow,
    SharingRow,
    Store,
    StoreTx,
    StoreUnavailableError,
    UserRow,
    WriterBusyError,
)
from sls_core.store.load import (
    DirectoryLoad,
)
from sls_core.store.schema import SCHEMA_VERSION
from sls_core.store.sqlite import SqliteStore

__all__ = [
    "SCHEMA_VERSION",
    "ActivationRow",
    "DeviceRow",
    "DirectoryLoad",
    "PushRow",
    "SharingRow",
    "SqliteStore",
    "Store",
    "StoreTx",
    "StoreUnavailableError",
    "UserRow",
    "WriterBusyError",
]
