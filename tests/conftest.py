"""Shared fixtures: the RFC test-vector files and the hypothesis profiles.

The vector files live in ``tests/vectors/`` and are loaded relative to this file, so the
suite runs from any working directory. Tests that take one of the fixtures
``hotp_vector``, ``totp_vector`` or ``ocra_vector`` are parametrized over every row of
the matching RFC table (see :func:`pytest_generate_tests`).

Hypothesis profiles: ``default`` (200 examples, no deadline), ``ci`` (more examples,
derandomized so a CI run is reproducible) and ``quick`` (for local iteration). Pick one
with ``HYPOTHESIS_PROFILE=ci``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from vector_data import RFC4226_FILE, RFC6238_FILE, RFC6287_FILE, hotp_id, ocra_id, totp_id
from vector_data import load as _load

settings.register_profile(
    "default",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=400,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("quick", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def rfc4226() -> dict[str, Any]:
    """RFC 4226 Appendix D: HOTP-SHA1, the ASCII secret "12345678901234567890"."""
    return _load(RFC4226_FILE)


@pytest.fixture(scope="session")
def rfc6238() -> dict[str, Any]:
    """RFC 6238 Appendix B: TOTP with SHA1/SHA256/SHA512 seeds of 20/32/64 bytes."""
    return _load(RFC6238_FILE)


@pytest.fixture(scope="session")
def rfc6287() -> dict[str, Any]:
    """RFC 6287 Appendix C: 70 OCRA vectors (one-way, mutual, signature)."""
    return _load(RFC6287_FILE)


def _explicitly_parametrized(metafunc: pytest.Metafunc) -> set[str]:
    names: set[str] = set()
    for marker in metafunc.definition.iter_markers("parametrize"):
        argnames = marker.args[0]
        if isinstance(argnames, str):
            argnames = argnames.split(",")
        names.update(name.strip() for name in argnames)
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrizes ``hotp_vector``/``totp_vector``/``ocra_vector`` over every RFC row,
    unless the test parametrizes that argument itself (e.g. over a filtered subset)."""
    tables = {
        "hotp_vector": (RFC4226_FILE, hotp_id),
        "totp_vector": (RFC6238_FILE, totp_id),
        "ocra_vector": (RFC6287_FILE, ocra_id),
    }
    explicit = _explicitly_parametrized(metafunc)
    for name, (path, make_id) in tables.items():
        if name in metafunc.fixturenames and name not in explicit:
            rows = _load(path)["vectors"]
            metafunc.parametrize(name, rows, ids=[make_id(row) for row in rows])
