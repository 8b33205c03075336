"""The SLS domain: users, devices, challenges, lockout and temporary credentials.

:class:`SecureLogin` (:mod:`~sls_core.login.service`) is the service API;
:mod:`~sls_core.login.pipeline` is the one decision point every attempt goes through;
:mod:`~sls_core.login.directory` is each process's view of users and devices and
:mod:`~sls_core.login.context` what the services share. The rules and their numbers live
in :mod:`sls_core.rules`, the value types in :mod:`sls_core.values`; both are re-exported
here so that ``from sls_core.login import ...`` keeps working.
"""

from __future__ import annotations

from sls_core.login.service import (
    DEFAULT_CHALLENGE_TTL,
    OCRA_SUITES,
    PRECHECK_MAX_AGE,
    PRECHECK_MIN_ITEMS,
    PURGE_INTERVAL,
    PURGE_MARGIN,
    SecureLogin,
)
from sls_core.rules.lifecycle import (
    CARD_INDICES,
    ONLINE_CARD_VALIDITY,
    PASSCODE_ALPHABET,
    PASSCODE_FULL_ACCESS,
    PASSCODE_LENGTH,
    PASSCODE_PORTAL_ACCESS,
)
from sls_core.rules.lockout import LOCKOUT_FAILURES, LOCKOUT_PERIOD, locked_until
from sls_core.rules.usernames import validate_username
from sls_core.values import (
    Access,
    BatchResult,
    Challenge,
    Identity,
    LockoutStatus,
    Purpose,
    SharingError,
    User,
    Verdict,
    WithdrawalLimits,
)

__all__ = [
    "CARD_INDICES",
    "DEFAULT_CHALLENGE_TTL",
    "LOCKOUT_FAILURES",
    "LOCKOUT_PERIOD",
    "OCRA_SUITES",
    "ONLINE_CARD_VALIDITY",
    "PASSCODE_ALPHABET",
    "PASSCODE_FULL_ACCESS",
    "PASSCODE_LENGTH",
    "PASSCODE_PORTAL_ACCESS",
    "PRECHECK_MAX_AGE",
    "PRECHECK_MIN_ITEMS",
    "PURGE_INTERVAL",
    "PURGE_MARGIN",
    "Access",
    "BatchResult",
    "Challenge",
    "Identity",
    "LockoutStatus",
    "Purpose",
    "SecureLogin",
    "SharingError",
    "User",
    "Verdict",
    "WithdrawalLimits",
    "locked_until",
    "validate_username",
]
