"""Code cards: the 3-digit codes of a card's index numbers, and the check of a typed answer.

A card's grid is derived from its secret (``code(i)`` is HMAC-SHA256 of the index under
the secret, truncated to three digits), so the server keeps the secret and never the grid.
At login the user is shown two index numbers and types both codes concatenated, no space:
six ASCII digits.

- :func:`card_codes` gives the codes of index numbers 1..count, to print the card.
- :func:`verify` checks one answer: an :class:`~sls_core.Outcome` value (0 OK, 1 WRONG,
  2 MALFORMED).
- :func:`verify_batch` checks N answers (per-item secrets, packed index pairs
  ``first << 16 | second`` as uint32, responses) into a uint8 array of outcomes, on every
  core.

This module never logs, and no error message carries a card secret or a code; a caller
must never log the codes :func:`card_codes` returns either.
"""

from __future__ import annotations

from sls_core._native import card_codes
from sls_core._native import card_verify as verify
from sls_core._native import card_verify_batch as verify_batch

__all__ = ["card_codes", "verify", "verify_batch"]
