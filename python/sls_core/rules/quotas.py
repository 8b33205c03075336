"""Abuse limits: how often one user may be sent what costs money or creates state.

SLS-RULES gives no numbers here: these are our choices, in configuration. An SMS costs
money and can be used to flood a phone; an activation offer creates state and a QR code an
attacker could phish with. Each is counted per user over a sliding window, in the store (so
every process sharing it counts together), and refused past the limit with how long to wait.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sls_core.clock import HOUR, MINUTE
from sls_core.errors import SlsError

__all__ = ["DEFAULT_LIMITS", "Limit", "Metered", "QuotaExceededError", "retry_after"]


class Metered(enum.StrEnum):
    """What is counted per user."""

    SMS = "sms"
    ACTIVATION_OFFER = "activation_offer"


@dataclass(frozen=True)
class Limit:
    count: int
    window: float  # seconds


#: Our choice: 5 texts in 15 minutes (a login, a retry, an activation code, and some
#: slack), 5 activation offers an hour.
DEFAULT_LIMITS = {
    Metered.SMS: Limit(5, 15 * MINUTE),
    Metered.ACTIVATION_OFFER: Limit(5, HOUR),
}


class QuotaExceededError(SlsError):
    """Too many of ``what`` for this user in the window; ``retry_after`` seconds to wait."""

    def __init__(self, what: Metered, limit: Limit, retry_after: float) -> None:
        minutes = max(1, round(limit.window / MINUTE))
        super().__init__(
            f"{what.value}: at most {limit.count} per user in {minutes} minutes;"
            f" retry in {max(1, round(retry_after))} s"
        )
        self.what = what
        self.limit = limit
        self.retry_after = retry_after


def retry_after(times: list[float], limit: Limit, now: float) -> float | None:
    """None if one more is allowed now, given the ``times`` (sorted) in the window; else
    the seconds until the oldest of them leaves it."""
    recent = [t for t in times if t > now - limit.window]
    if len(recent) < limit.count:
        return None
    return recent[-limit.count] + limit.window - now
