"""Shared helpers for the batch entry points (internal)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt


class OtpBatchResult(NamedTuple):
    """Outcomes of an HOTP/TOTP batch: ``outcomes[i]`` is an :class:`~sls_core.Outcome`
    value; ``matched[i]`` is the counter (HOTP) or time step (TOTP) that matched, and 0
    where ``outcomes[i]`` is not ``OK``."""

    outcomes: npt.NDArray[np.uint8]
    matched: npt.NDArray[np.uint64]


def codes_as_strings(matrix: npt.NDArray[np.uint8]) -> npt.NDArray[np.bytes_]:
    """An (N, width) matrix of ASCII digits as a 1-D ``S{width}`` array, without copying."""
    rows, width = matrix.shape
    return matrix.view(f"S{width}").reshape(rows)
