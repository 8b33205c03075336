"""SLS-RULES "Device life cycle": device states, temporary passcodes, online cards,
replacements, auto-activation and reactivation.

Pure functions of stored facts and "now"; the directory (:mod:`sls_core.login.directory`)
calls :func:`effective_state` for every state it reports or checks, and the services ask
the other functions before they issue or end a temporary credential.
"""

from __future__ import annotations

import re

from sls_core.clock import DAY
from sls_core.devices import DeviceState, DeviceType
from sls_core.errors import InvalidInputError
from sls_core.values import Access, Purpose

__all__ = [
    "AUTO_ACTIVATION_DELAY",
    "CARD_INDICES",
    "ONLINE_CARD_VALIDITY",
    "PASSCODE_ALPHABET",
    "PASSCODE_FULL_ACCESS",
    "PASSCODE_LENGTH",
    "PASSCODE_PORTAL_ACCESS",
    "auto_activated",
    "effective_state",
    "online_card_window_open",
    "passcode_scope_limited",
    "passcode_shape_ok",
    "state_answering",
]

#: Temporary passcode: full access (portal and trading) for 2 days ...
PASSCODE_FULL_ACCESS = 2 * DAY
#: ... then portal access, only to get an Online Security Code Card, to 12 days after issue.
PASSCODE_PORTAL_ACCESS = 12 * DAY
#: An Online Security Code Card gives full access for up to 21 days from issue.
ONLINE_CARD_VALIDITY = 21 * DAY
#: A shipped replacement activates itself this long after shipment if the holder has not:
#: 2 to 3 weeks by region (SLS-RULES), set per deployment; three weeks by default.
AUTO_ACTIVATION_DELAY = 21 * DAY
AUTO_ACTIVATION_DAYS_RANGE = (14, 21)
#: Index numbers on a code card.
CARD_INDICES = 100
#: Characters of a temporary passcode: upper case and digits without look-alikes
#: (no 0/O, 1/I/L), 31 symbols; 12 of them carry 59 bits. Case-sensitive when checked.
PASSCODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PASSCODE_LENGTH = 12
_PASSCODE_SHAPE = re.compile(rf"[A-Za-z0-9]{{{PASSCODE_LENGTH}}}")


def passcode_shape_ok(text: str) -> bool:
    """A passcode answer has the right shape (else MALFORMED, not a guess). Lower case
    passes the shape and then fails the case-sensitive comparison: a wrong answer."""
    return _PASSCODE_SHAPE.fullmatch(text) is not None


def passcode_scope_limited(issued_at: float, now: float, access: str) -> bool:
    """Past its 2 full days a passcode only opens the portal's online-card page."""
    return now >= issued_at + PASSCODE_FULL_ACCESS and access != Access.ONLINE_CARD


def online_card_window_open(passcode_issued_at: float, now: float) -> bool:
    """An online card is obtainable only while the passcode's portal window lasts."""
    return passcode_issued_at <= now < passcode_issued_at + PASSCODE_PORTAL_ACCESS


def auto_activated(
    shipped_at: float | None, now: float, delay: float = AUTO_ACTIVATION_DELAY
) -> bool:
    """A shipped device that the holder has not activated is active ``delay`` after
    shipment (2 to 3 weeks by region)."""
    return shipped_at is not None and now >= shipped_at + delay


def check_auto_activation_delay(delay: object) -> float:
    """The region's auto-activation delay in seconds: 2 to 3 weeks."""
    low, high = AUTO_ACTIVATION_DAYS_RANGE
    if not isinstance(delay, int | float) or isinstance(delay, bool):
        raise InvalidInputError("auto_activation_delay", "must be a number of seconds")
    if not low * DAY <= delay <= high * DAY:
        raise InvalidInputError("auto_activation_delay", f"must be {low} to {high} days")
    return float(delay)


def effective_state(
    stored: DeviceState,
    shipped_at: float | None,
    now: float,
    replaced_by_active: bool,
    delay: float = AUTO_ACTIVATION_DELAY,
) -> DeviceState:
    """The stored state with the timed rules applied: a shipped device auto-activates; an
    active device whose replacement is active is REPLACED."""
    state = stored
    if state is DeviceState.PENDING and auto_activated(shipped_at, now, delay):
        state = DeviceState.ACTIVE
    if state is DeviceState.ACTIVE and replaced_by_active:
        return DeviceState.REPLACED
    return state


def state_answering(purpose: Purpose) -> DeviceState:
    """The state a device must be in, at the moment of the answer, to answer for
    ``purpose``: a login or step-up needs an active device, an activation a pending one,
    a reactivation a suspended one."""
    if purpose is Purpose.ACTIVATION:
        return DeviceState.PENDING
    if purpose is Purpose.REACTIVATION:
        return DeviceState.SUSPENDED
    return DeviceState.ACTIVE


def ends_temporary(device_type: DeviceType) -> bool:
    """Activating (or reactivating, or auto-activating) a permanent device ends the user's
    temporary passcode and online card."""
    return not device_type.is_temporary
