"""A private PostgreSQL for the test session (``scripts/pg_local.py``), and a fresh schema
per test, so every store test can run against SQLite and PostgreSQL alike.

``pg_cluster`` starts the cluster once (initdb in a temporary directory, loopback, a free
port, fsync off: nothing here is worth keeping); ``pg_url`` gives each test the URL of an
empty schema of its own (``search_path`` in the URL's ``options``). ``store_url`` is
parametrized over both backends: None (SQLite in the test's data dir) and a PostgreSQL URL.
"""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
_schemas = itertools.count(1)


def pg_local() -> ModuleType:
    """scripts/pg_local.py, imported by path (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location("pg_local", ROOT / "scripts" / "pg_local.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class PgCluster:
    url: str
    directory: Path

    def schema_url(self, schema: str) -> str:
        options = urllib.parse.quote(f"-csearch_path={schema}")
        return f"{self.url}?options={options}"

    def restart(self) -> None:
        pg_local().restart(self.directory, fast=True)

    def stop(self) -> None:
        pg_local().stop(self.directory)

    def start(self) -> None:
        pg_local().start(self.directory, fast=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    # Not under pytest's tmp_path: its folders are 0700 and owned by the test runner,
    # and the server runs as the postgres user when the tests run as root.
    directory = Path(tempfile.mkdtemp(prefix="sls-pg-"))
    local = pg_local()
    url = local.start(directory, fast=True)
    try:
        yield PgCluster(url, directory)
    finally:
        local.stop(directory, mode="immediate")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """The URL of a new, empty schema: one test's PostgreSQL store."""
    import psycopg

    schema = f"t{next(_schemas)}"
    with psycopg.connect(pg_cluster.url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    return pg_cluster.schema_url(schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """Each store-backed test runs on both backends: None is SQLite in the data dir."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))
