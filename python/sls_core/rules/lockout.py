"""SLS-RULES "Lockout": 10 consecutive failed attempts within 24 hours lock the user until
24 hours after the last one; any success ends the run of failures.

Every way in (challenge/response, code card, passcode, SMS, push, recovery PIN, password
failures reported by gateways) records its failures and successes through these functions,
called from one place: the settle step of :mod:`sls_core.login.pipeline`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from sls_core.clock import HOUR
from sls_core.outcome import LoginOutcome

__all__ = [
    "LOCKOUT_FAILURES",
    "LOCKOUT_PERIOD",
    "counts_as_failure",
    "ends_failure_run",
    "is_locked",
    "locked_until",
    "with_failure",
]

#: Consecutive failures that lock a user (SLS-RULES: "10 consecutive failed login attempts").
LOCKOUT_FAILURES = 10
#: ... within this period, and the lock lasts this long after the last failure.
LOCKOUT_PERIOD = 24 * HOUR


def counts_as_failure(outcome: LoginOutcome) -> bool:
    """A wrong answer of any kind is a guess (a wrong second factor, a bad push signature,
    a wrong recovery PIN, a wrong password reported by a gateway). Malformed input,
    replays, refusals and a declined push are not."""
    return outcome is LoginOutcome.WRONG


def ends_failure_run(outcome: LoginOutcome) -> bool:
    """A success by any factor (a push approval included) ends the run of failures. A
    passcode past its full-access days still proves the holder: it ends the run too."""
    return outcome in (LoginOutcome.OK, LoginOutcome.SCOPE_LIMITED)


def locked_until(failures: Sequence[float]) -> float | None:
    """When the lock from these consecutive failure times (sorted) ends, or None if not
    locked: the last 10 fall within 24 hours, and the lock lasts 24 hours from the last."""
    if len(failures) < LOCKOUT_FAILURES:
        return None
    window = failures[-LOCKOUT_FAILURES:]
    if window[-1] - window[0] > LOCKOUT_PERIOD:
        return None
    return window[-1] + LOCKOUT_PERIOD


def is_locked(failures: Sequence[float], now: float) -> bool:
    """Locked now, whatever the answer: a correct one does not end a lock."""
    until = locked_until(failures)
    return until is not None and now < until


def with_failure(failures: Sequence[float], now: float) -> list[float]:
    """The run after one more failure at ``now``: kept sorted (another process may have
    recorded one a moment "later") and only as long as the rule needs."""
    run = list(failures)
    bisect.insort(run, now)
    return run[-LOCKOUT_FAILURES:]
