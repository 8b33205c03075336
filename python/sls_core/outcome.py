"""Per-item verdicts of batch verification, as stored in the ``uint8`` result arrays."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Outcome"]


class Outcome(IntEnum):
    """What a batch says about one item.

    ``MALFORMED`` is not a wrong guess: the response (or another per-item input) does not
    have the shape the suite requires, so nothing was compared.
    """

    OK = 0
    WRONG = 1
    MALFORMED = 2
