"""SLS-RULES "Usernames": case-sensitive, lower-case letters and digits only.

Anything else is the "invalid characters" error, raised before any lookup or secret is
touched; the right letters in the wrong case are simply an unknown username ("invalid
username/password combination"), a different answer.
"""

from __future__ import annotations

import re

from sls_core.errors import InvalidInputError, InvalidInputTypeError
from sls_core.outcome import LoginOutcome

__all__ = ["USERNAME_PATTERN", "unknown_username_outcome", "validate_username"]

USERNAME_PATTERN = re.compile(r"[a-z0-9]{1,64}")


def validate_username(username: object) -> str:
    """The username itself, or :class:`InvalidInputError` ("invalid characters")."""
    if not isinstance(username, str):
        raise InvalidInputTypeError("username", "must be a str")
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidInputError(
            "username", "invalid characters: only lower-case letters and digits (1-64)"
        )
    return username


def unknown_username_outcome(username: object) -> LoginOutcome:
    """The outcome for a username no user has: INVALID_USERNAME when its characters are
    wrong (upper case included), else UNKNOWN_USER ("invalid username/password
    combination")."""
    ok = isinstance(username, str) and USERNAME_PATTERN.fullmatch(username) is not None
    return LoginOutcome.UNKNOWN_USER if ok else LoginOutcome.INVALID_USERNAME
