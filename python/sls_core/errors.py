"""Exceptions raised by sls_core.

Every bad-input error names the field and the rule it breaks, and never quotes a key, PIN,
PIN hash or code. The Rust kernel raises these same classes (through PyO3), so callers
catch one hierarchy whichever layer found the problem.
"""

from __future__ import annotations

__all__ = ["InvalidInputError", "InvalidInputTypeError", "InvalidSuiteError", "SlsError"]


class SlsError(Exception):
    """Base class of every sls_core error."""


class InvalidInputError(SlsError, ValueError):
    """An input breaks a rule. ``field`` names the input, ``rule`` says what it must be."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule

    def __reduce__(self) -> tuple[type[InvalidInputError], tuple[str, str]]:
        return (type(self), (self.field, self.rule))


class InvalidInputTypeError(InvalidInputError, TypeError):
    """An input has the wrong Python type (for example an ``int`` code, which loses its
    leading zeros)."""


class InvalidSuiteError(InvalidInputError):
    """The OCRA suite string does not follow RFC 6287 section 6."""
