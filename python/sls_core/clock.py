"""Time for the domain rules, injectable so tests move time instead of sleeping.

Every rule with a duration (lockout, passcode days, card validity, auto-activation,
challenge expiry) asks a :class:`Clock` for "now", in Unix seconds.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["DAY", "HOUR", "MINUTE", "Clock", "ManualClock", "SystemClock"]

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR


class Clock(Protocol):
    def now(self) -> float:
        """Unix time in seconds."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that only moves when told to; safe to share between threads."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0.0, *, hours: float = 0.0, days: float = 0.0) -> float:
        """Moves forward (never back) and returns the new time."""
        step = seconds + hours * HOUR + days * DAY
        if step < 0:
            raise ValueError("a ManualClock only moves forward")
        with self._lock:
            self._now += step
            return self._now

    def __repr__(self) -> str:
        return f"ManualClock({self.now()!r})"
