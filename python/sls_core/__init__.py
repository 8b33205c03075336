"""sls_core: the verification core of a Secure Login System.

The Rust kernel computes and verifies second-factor codes: OCRA challenge/response
(RFC 6287, :mod:`sls_core.ocra`), HOTP (RFC 4226, :mod:`sls_core.hotp`) and TOTP
(RFC 6238, :mod:`sls_core.totp`), one at a time or in batches over numpy arrays on every
core. Its other pieces have a face each: code cards (:mod:`sls_core.card`), IB Key
activation (:mod:`sls_core.activation`), push approvals (:mod:`sls_core.push`), challenge
tokens and the username index (:mod:`sls_core.challenge`) and the audit trail's lines
(:mod:`sls_core.auditfmt`). This package and those modules are the only importers of
``sls_core._native``: import from them, never from it. Nothing here logs a secret or a code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sls_core import errors
from sls_core.errors import InvalidInputError, InvalidInputTypeError, InvalidSuiteError, SlsError
from sls_core.outcome import Outcome

if TYPE_CHECKING:
    from sls_core import hotp, ocra, totp
    from sls_core._native import KeyTable, __version__, default_threads

__all__ = [
    "InvalidInputError",
    "InvalidInputTypeError",
    "InvalidSuiteError",
    "KeyTable",
    "Outcome",
    "SlsError",
    "__version__",
    "default_threads",
    "errors",
    "hotp",
    "ocra",
    "totp",
]

#: Loaded on first use (PEP 562), so that importing a light module of the package (the
#: gateway client, the value types) does not load the Rust extension.
_KERNEL_MODULES = frozenset({"hotp", "ocra", "totp"})
_NATIVE_NAMES = frozenset({"KeyTable", "__version__", "default_threads"})


def __getattr__(name: str) -> Any:
    if name in _KERNEL_MODULES:
        return importlib.import_module(f"sls_core.{name}")
    if name in _NATIVE_NAMES:
        return getattr(importlib.import_module("sls_core._native"), name)
    raise AttributeError(f"module 'sls_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _KERNEL_MODULES | _NATIVE_NAMES)
