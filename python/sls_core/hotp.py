"""HOTP (RFC 4226): counter-based one-time codes.

``verify`` checks ``counter`` and up to ``window`` counters after it (never before: an
older counter's code is already used) and returns the counter that matched, so the caller
stores ``matched + 1`` and a code cannot be accepted twice. Every candidate is computed and
compared in constant time. A malformed code (not exactly ``digits`` ASCII digits) gives
``None``, like a wrong one; batches tell the two apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from sls_core import _native
from sls_core._batch import OtpBatchResult, codes_as_strings

__all__ = ["OtpBatchResult", "compute", "compute_batch", "verify", "verify_batch"]

compute = _native.hotp_compute
verify = _native.hotp_verify


def verify_batch(
    keys: Any,
    codes: Any,
    counters: Any,
    *,
    window: int = 0,
    digits: int = 6,
    algorithm: str = "sha1",
    key_index: Any = None,
    threads: int | None = None,
) -> OtpBatchResult:
    """Verifies N codes; ``window`` counters of look-ahead per item."""
    outcomes, matched = _native.otp_verify_batch(
        "hotp",
        keys,
        codes,
        counters,
        window=window,
        digits=digits,
        algorithm=algorithm,
        key_index=key_index,
        threads=threads,
    )
    return OtpBatchResult(outcomes, matched)


def compute_batch(
    keys: Any,
    counters: Any,
    *,
    digits: int = 6,
    algorithm: str = "sha1",
    key_index: Any = None,
    threads: int | None = None,
) -> npt.NDArray[np.bytes_]:
    """Computes N codes; returns a 1-D ``S{digits}`` numpy array."""
    matrix = _native.otp_compute_batch(
        "hotp",
        keys,
        counters,
        digits=digits,
        algorithm=algorithm,
        key_index=key_index,
        threads=threads,
    )
    return codes_as_strings(matrix)
