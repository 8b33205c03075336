"""Push approvals: the IB Key app signs "approve" or "decline" for one login challenge with
its Ed25519 key, and the server checks the signature.

- :func:`push_keypair` makes the app's key pair, :func:`push_public_key` recomputes the
  public half from the seed.
- :func:`approval_message` is the exact byte string an approval signs: it names the
  challenge, user, device, expiry and decision (1 approve, 2 decline), so a signature
  verifies for nothing else.
- :func:`sign_approval` signs it (the app); :func:`verify_approval` checks one signature
  (strict Ed25519) and :func:`verify_approvals_batch` checks N into a uint8 array of
  :class:`~sls_core.Outcome` values, every item with its own verdict.

This module never logs, and no error message carries a seed.
"""

from __future__ import annotations

from sls_core._native import (
    approval_message,
    push_keypair,
    push_public_key,
    sign_approval,
    verify_approval,
    verify_approvals_batch,
)

__all__ = [
    "approval_message",
    "push_keypair",
    "push_public_key",
    "sign_approval",
    "verify_approval",
    "verify_approvals_batch",
]
