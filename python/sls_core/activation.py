"""IB Key activation: the signed payload in the portal's QR code, the manual string under
it, and the X25519 + HKDF key agreement that gives the app its OCRA secret.

- :class:`ActivationSigner` (server) signs a payload under the active Ed25519 key;
  :class:`ActivationVerifier` (app) checks one payload or a batch, and
  :func:`payload_status_name` names a verdict ("expired", "bad signature", ...).
- :func:`manual_code` is the typed form of a session id (``XXXX-XXXX-XXXX-XX``, with a
  check character); :func:`parse_manual_code` reads one back to the id's first 8 bytes.
- :func:`x25519_keypair`, :func:`x25519_public_key` and :func:`derive_ocra_secret` run the
  key agreement on both sides.

Seeds, private keys and derived secrets stay in the objects and values the caller holds:
this module never logs, and no error message, repr or pickle carries one of them.
"""

from __future__ import annotations

import enum

from sls_core._native import (
    ActivationSigner,
    ActivationVerifier,
    derive_ocra_secret,
    manual_code,
    parse_manual_code,
    payload_status_name,
    x25519_keypair,
    x25519_public_key,
)

__all__ = [
    "ActivationSigner",
    "ActivationVerifier",
    "PayloadStatus",
    "derive_ocra_secret",
    "manual_code",
    "parse_manual_code",
    "payload_status_name",
    "x25519_keypair",
    "x25519_public_key",
]


class PayloadStatus(enum.IntEnum):
    """An activation payload's verdict (``ActivationVerifier.verify``'s first value)."""

    VALID = 0
    MALFORMED = 1
    UNSUPPORTED_VERSION = 2
    UNKNOWN_KEY_ID = 3
    BAD_SIGNATURE = 4
    EXPIRED = 5
    NOT_YET_VALID = 6
