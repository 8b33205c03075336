"""Paths and a cached loader for the RFC vector files in ``tests/vectors/``."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
RFC4226_FILE = VECTORS_DIR / "rfc4226-appendix-d.json"
RFC6238_FILE = VECTORS_DIR / "rfc6238-appendix-b.json"
RFC6287_FILE = VECTORS_DIR / "rfc6287-appendix-c.json"


@cache
def load(path: Path) -> dict[str, Any]:
    """The parsed JSON document (cached: callers must not mutate it)."""
    with path.open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def hotp_id(vector: dict[str, Any]) -> str:
    return f"counter{vector['counter']}"


def totp_id(vector: dict[str, Any]) -> str:
    return f"{vector['algorithm']}-t{vector['unix_time']}"


def ocra_id(vector: dict[str, Any]) -> str:
    """A readable, unique test id such as ``C.1-HOTP-SHA256-8:C-QN08-PSHA1-C3-Q12345678``."""
    parts = [vector["section"], vector["suite"].removeprefix("OCRA-1:")]
    if vector.get("role"):
        parts.append(vector["role"])
    if vector["counter"] is not None:
        parts.append(f"C{vector['counter']}")
    parts.append(f"Q{vector['question']}")
    return "-".join(parts)
