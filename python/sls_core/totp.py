"""TOTP (RFC 6238): time-based one-time codes.

``unix_time`` is seconds since the epoch (an ``int``, or a ``float`` rounded down). The
time step is ``(unix_time - t0) // step``. ``window`` is the number of steps accepted on
each side (default 1, the RFC's allowance for clock drift and network delay), or a
``(look_behind, look_ahead)`` tuple. ``verify`` returns the matched time step so the caller
can refuse a second use of the same code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from sls_core import _native
from sls_core._batch import OtpBatchResult, codes_as_strings

__all__ = ["OtpBatchResult", "compute", "compute_batch", "verify", "verify_batch"]

compute = _native.totp_compute
verify = _native.totp_verify


def verify_batch(
    keys: Any,
    codes: Any,
    unix_times: Any,
    *,
    step: int = 30,
    window: int | tuple[int, int] = 1,
    digits: int = 6,
    algorithm: str = "sha1",
    t0: int = 0,
    key_index: Any = None,
    threads: int | None = None,
) -> OtpBatchResult:
    """Verifies N codes at their own Unix times (integers, seconds)."""
    outcomes, matched = _native.otp_verify_batch(
        "totp",
        keys,
        codes,
        unix_times,
        window=window,
        digits=digits,
        algorithm=algorithm,
        step=step,
        t0=t0,
        key_index=key_index,
        threads=threads,
    )
    return OtpBatchResult(outcomes, matched)


def compute_batch(
    keys: Any,
    unix_times: Any,
    *,
    step: int = 30,
    digits: int = 6,
    algorithm: str = "sha1",
    t0: int = 0,
    key_index: Any = None,
    threads: int | None = None,
) -> npt.NDArray[np.bytes_]:
    """Computes N codes at their own Unix times; returns a 1-D ``S{digits}`` numpy array."""
    matrix = _native.otp_compute_batch(
        "totp",
        keys,
        unix_times,
        digits=digits,
        algorithm=algorithm,
        step=step,
        t0=t0,
        key_index=key_index,
        threads=threads,
    )
    return codes_as_strings(matrix)
