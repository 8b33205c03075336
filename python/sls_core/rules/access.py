"""SLS-RULES "One rule for every way in" and "Opt-out and closed accounts".

Every way a user gets in or changes their second factor is refused when the user is
locked, the account is closed, or the device is not in the state the purpose needs at the
moment of the answer. :func:`refusal` is that rule; the decision pipeline calls it for
every attempt of every kind, and the issuing paths call :func:`issue_refusal` before they
make anything for a user (no device, activation, passcode or push for a closed account).
"""

from __future__ import annotations

from sls_core.devices import DeviceState
from sls_core.errors import InvalidInputError
from sls_core.outcome import LoginOutcome
from sls_core.values import Access

__all__ = ["device_refusal", "issue_refusal", "refusal", "second_factor_required"]


def device_refusal(
    state: DeviceState, wanted: DeviceState, expires_at: float | None, now: float
) -> LoginOutcome | None:
    """The device is not in the state this answer needs, or its validity has ended."""
    if state is not wanted:
        return LoginOutcome.DEVICE_NOT_ACTIVE
    if expires_at is not None and now >= expires_at:
        return LoginOutcome.EXPIRED
    return None


def refusal(*, closed: bool, locked: bool) -> LoginOutcome | None:
    """The account-level refusal for any attempt: closed first (it never opens again),
    then locked (whatever the answer: a correct one does not end a lock)."""
    if closed:
        return LoginOutcome.ACCOUNT_CLOSED
    if locked:
        return LoginOutcome.LOCKED
    return None


def issue_refusal(*, closed: bool, locked: bool, what: str) -> None:
    """Raises when nothing may be issued to this user now (``what`` names it)."""
    outcome = refusal(closed=closed, locked=locked)
    if outcome is LoginOutcome.ACCOUNT_CLOSED:
        raise InvalidInputError("username", f"the account is closed: no {what} is issued")
    if outcome is LoginOutcome.LOCKED:
        raise InvalidInputError("username", f"the user is locked: no {what} is issued")


def second_factor_required(*, closed: bool, opted_out: bool, access: str) -> bool:
    """Whether a login for ``access`` needs the second factor. A closed account has no
    trading access at all: asking for it raises (never "free to trade"); its portal login
    needs username and password only. Opted-out users trade without one."""
    if closed:
        if access == Access.TRADING:
            raise InvalidInputError("access", "the account is closed: no trading access")
        return False
    return not (opted_out and access == Access.TRADING)
