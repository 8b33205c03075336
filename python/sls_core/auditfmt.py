"""The audit trail's JSON lines, formatted natively for a whole batch of decisions.

:func:`audit_lines` takes the head of the lines (JSON text of their first keys, the object
left open: one for every line, or one per line) and, per item, a username, a device id
(uint64) and an outcome (uint8, named through ``outcome_names``); it returns the UTF-8
bytes of the lines, ready for one ``write``. Usernames are escaped as ``json.dumps`` does
(ASCII only). :mod:`sls_core.server.audit` is its caller.

It only ever writes what it is given, and a username whose outcome is
``blank_username_outcome`` is written as ``""`` without being read (it may be a password
typed into the wrong field). Callers must never pass a secret, a code, a PIN or a token.
"""

from __future__ import annotations

from sls_core._native import audit_lines

__all__ = ["audit_lines"]
