"""Exceptions raised by sls_core.

Every bad-input error names the field and the rule it breaks, and never quotes a key, PIN,
PIN hash or code. The Rust kernel raises these same classes (through PyO3), so callers
catch one hierarchy whichever layer found the problem.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "InvalidInputError",
    "InvalidInputTypeError",
    "InvalidSuiteError",
    "NoSuchItemError",
    "SlsError",
]


class SlsError(Exception):
    """Base class of every sls_core error."""


class InvalidInputError(SlsError, ValueError):
    """An input breaks a rule. ``field`` names the input, ``rule`` says what it must be."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule

    def __reduce__(self) -> tuple[type[InvalidInputError], tuple[str, ...]]:
        return (type(self), (self.field, self.rule))


class InvalidInputTypeError(InvalidInputError, TypeError):
    """An input has the wrong Python type (for example an ``int`` code, which loses its
    leading zeros)."""


class InvalidSuiteError(InvalidInputError):
    """The OCRA suite string does not follow RFC 6287 section 6."""


class NoSuchItemError(InvalidInputError):
    """The input names something that does not exist ("username: no such user"): NOT_FOUND
    over gRPC. ``reason`` is the stable machine name ("USER_NOT_FOUND")."""

    def __init__(self, field: str, rule: str, reason: str = "NOT_FOUND") -> None:
        super().__init__(field, rule)
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidInputError], tuple[str, ...]]:
        return (type(self), (self.field, self.rule, self.reason))


class AlreadyExistsError(InvalidInputError):
    """The input names something that must be new but exists ("username: already taken"):
    ALREADY_EXISTS over gRPC. ``reason`` is the stable machine name ("USERNAME_TAKEN")."""

    def __init__(self, field: str, rule: str, reason: str = "ALREADY_EXISTS") -> None:
        super().__init__(field, rule)
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidInputError], tuple[str, ...]]:
        return (type(self), (self.field, self.rule, self.reason))
