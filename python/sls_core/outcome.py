"""Per-item verdicts of batch verification, as stored in the ``uint8`` result arrays."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["LoginOutcome", "Outcome"]


class Outcome(IntEnum):
    """What a batch says about one item.

    ``MALFORMED`` is not a wrong guess: the response (or another per-item input) does not
    have the shape the suite requires, so nothing was compared.
    """

    OK = 0
    WRONG = 1
    MALFORMED = 2


class LoginOutcome(IntEnum):
    """The answer to "is this second factor right for this user, now?".

    Each has a human :attr:`message` for the gateway to show; none carries a secret or code.
    The numbers are stable: they are the values of batch result arrays and of the gRPC enum.
    """

    OK = 0
    WRONG = 1
    MALFORMED = 2
    EXPIRED = 3
    REPLAYED = 4
    LOCKED = 5
    UNKNOWN_USER = 6
    NO_SUCH_DEVICE = 7
    DEVICE_NOT_ACTIVE = 8
    SCOPE_LIMITED = 9
    INVALID_USERNAME = 10
    CHALLENGE_INVALID = 11
    ACCOUNT_CLOSED = 12
    DECLINED = 13

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    LoginOutcome.OK: "The second factor is correct.",
    LoginOutcome.WRONG: "The response is not correct.",
    LoginOutcome.MALFORMED: (
        "The response is not in the expected format (digits only, no spaces, right length)."
    ),
    LoginOutcome.EXPIRED: "The challenge or temporary credential has expired; start again.",
    LoginOutcome.REPLAYED: "This challenge was already used; request a new one.",
    LoginOutcome.LOCKED: (
        # The numbers of the rule live in sls_core.rules.lockout; LockoutStatus says until when.
        "Too many failed attempts: the account is locked for now (client services can unlock it)."
    ),
    LoginOutcome.UNKNOWN_USER: "Invalid username/password combination.",
    LoginOutcome.NO_SUCH_DEVICE: "The user has no such device.",
    LoginOutcome.DEVICE_NOT_ACTIVE: "The device is not active.",
    LoginOutcome.SCOPE_LIMITED: (
        "The temporary passcode now only allows portal access to get an Online Security Code Card."
    ),
    LoginOutcome.INVALID_USERNAME: "The username has invalid characters.",
    LoginOutcome.CHALLENGE_INVALID: "The challenge is not valid for this user and device.",
    LoginOutcome.DECLINED: "The login was declined on the IB Key app.",
    LoginOutcome.ACCOUNT_CLOSED: (
        "The account is closed: portal access with username and password, statements only."
    ),
}
