"""OCRA challenge/response (RFC 6287): compute and verify, one at a time or in batches.

``compute`` and ``verify`` call straight into the Rust kernel. A suite such as
``OCRA-1:HOTP-SHA1-8:QN06-PSHA1`` says which inputs are required; passing an input the
suite does not use, or omitting one it needs, raises :class:`InvalidInputError` naming it.

``timestamp`` is Unix time in seconds; the suite's ``T`` step divides it. A response is
only ever ASCII digits of the suite's length: anything else is malformed (``verify``
returns ``False``; batches report ``Outcome.MALFORMED``). Nothing here logs, and no error
message carries a key, PIN or code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sls_core import _native
from sls_core._batch import codes_as_strings

__all__ = ["Suite", "compute", "compute_batch", "parse_suite", "verify", "verify_batch"]

compute = _native.ocra_compute
verify = _native.ocra_verify
verify_batch = _native.ocra_verify_batch


@dataclass(frozen=True)
class Suite:
    """What an OCRA suite string declares (RFC 6287 section 6)."""

    suite: str
    algorithm: str
    digits: int
    counter: bool
    question_format: str
    question_length: int
    pin_algorithm: str | None
    session_length: int | None
    time_step: int | None


def parse_suite(suite: str) -> Suite:
    """Parses and validates a suite string; raises :class:`InvalidSuiteError` with the rule."""
    if not isinstance(suite, str):
        return _parse_suite(suite)  # the kernel names the bad type; never cached
    return _parsed_suite(suite)


def _parse_suite(suite: str) -> Suite:
    return Suite(**_native.ocra_suite_info(suite))


#: A verification batch asks for its suites' parameters every time; a store holds few
#: suites. Bounded all the same (a refused suite raises, so it is never kept).
_parsed_suite = functools.lru_cache(maxsize=256)(_parse_suite)


def compute_batch(
    suite: str,
    keys: Any,
    questions: Any,
    *,
    pin_hashes: Any = None,
    counters: Any = None,
    timestamps: Any = None,
    sessions: Any = None,
    key_index: Any = None,
    threads: int | None = None,
) -> npt.NDArray[np.bytes_]:
    """Computes N responses; returns a 1-D ``S{digits}`` numpy array (no per-item objects).

    An item whose inputs break a rule raises :class:`InvalidInputError` naming its row.
    """
    matrix = _native.ocra_compute_batch(
        suite,
        keys,
        questions,
        pin_hashes=pin_hashes,
        counters=counters,
        timestamps=timestamps,
        sessions=sessions,
        key_index=key_index,
        threads=threads,
    )
    return codes_as_strings(matrix)
