"""SLS-RULES "Usernames": case-sensitive, lower-case letters and digits only.

Anything else is the "invalid characters" error, raised before any lookup or secret is
touched; the right letters in the wrong case are simply an unknown username ("invalid
username/password combination"), a different answer.
"""

from __future__ import annotations

import re

from sls_core.errors import InvalidInputError, InvalidInputTypeError
from sls_core.outcome import LoginOutcome

__all__ = [
    "USERNAME_PATTERN",
    "unknown_username_outcome",
    "validate_new_username",
    "validate_username",
]

#: What a username may hold at all: letters and digits (ASCII), 1 to 64 of them.
_CHARACTERS = re.compile(r"[A-Za-z0-9]{1,64}")
#: How usernames are created: lower case.
USERNAME_PATTERN = re.compile(r"[a-z0-9]{1,64}")


def validate_username(username: object) -> str:
    """A username to look up, or :class:`InvalidInputError` ("invalid characters") when it
    holds anything but letters and digits. Upper-case letters pass: no user has them, so
    the lookup answers "invalid username/password combination"."""
    if not isinstance(username, str):
        raise InvalidInputTypeError("username", "must be a str")
    if not _CHARACTERS.fullmatch(username):
        raise InvalidInputError("username", "invalid characters: only letters and digits (1-64)")
    return username


def validate_new_username(username: object) -> str:
    """A username to create: lower-case letters and digits only."""
    if not isinstance(username, str):
        raise InvalidInputTypeError("username", "must be a str")
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidInputError(
            "username", "invalid characters: only lower-case letters and digits (1-64)"
        )
    return username


def unknown_username_outcome(username: object) -> LoginOutcome:
    """The outcome for a username no user has: INVALID_USERNAME when it holds anything but
    letters and digits, else UNKNOWN_USER ("invalid username/password combination"), the
    right letters in the wrong case included."""
    ok = isinstance(username, str) and _CHARACTERS.fullmatch(username) is not None
    return LoginOutcome.UNKNOWN_USER if ok else LoginOutcome.INVALID_USERNAME
