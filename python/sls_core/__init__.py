"""sls_core: the verification core of a Secure Login System.

The Rust kernel computes and verifies second-factor codes: OCRA challenge/response
(RFC 6287, :mod:`sls_core.ocra`), HOTP (RFC 4226, :mod:`sls_core.hotp`) and TOTP
(RFC 6238, :mod:`sls_core.totp`), one at a time or in batches over numpy arrays on every
core. Import from here or from those modules, never from ``sls_core._native``.
"""

from __future__ import annotations

from sls_core import errors, hotp, ocra, totp
from sls_core._native import KeyTable, __version__, default_threads
from sls_core.errors import InvalidInputError, InvalidInputTypeError, InvalidSuiteError, SlsError
from sls_core.outcome import Outcome

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
