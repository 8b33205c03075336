"""Signed challenge tokens, and the username index the login batches resolve users with.

- :class:`TokenKeys` holds the server's token keys (``{key_id: secret}``, ids 0-255, one
  of them active): ``seal`` binds a challenge to its purpose, user, device and expiry
  (HMAC-SHA256) as a URL-safe string, ``open``/``open_batch`` check tokens without the
  server remembering what it issued, and ``status_name`` names a verdict.
- :class:`NameIndex` maps usernames to user ids for a whole list in one call (-1 for an
  unknown name or an item that is not a str).

Token keys never leave a :class:`TokenKeys`: no getter, no pickle, a redacted repr. This
module never logs, and no error message carries a key or a code.
"""

from __future__ import annotations

import enum

from sls_core._native import NameIndex, TokenKeys

__all__ = ["NameIndex", "TokenKeys", "TokenStatus"]


class TokenStatus(enum.IntEnum):
    """A token's verdict: the values of ``open_batch``'s ``status`` column."""

    VALID = 0
    MALFORMED = 1
    UNSUPPORTED_VERSION = 2
    UNKNOWN_KEY_ID = 3
    BAD_SIGNATURE = 4
    EXPIRED = 5
    NOT_YET_VALID = 6
