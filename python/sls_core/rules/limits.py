"""SLS-RULES "What the strength of the device allows" and the devices that are issued.

The withdrawal-limits table, the trading-session length after IB Key, and which device
types are still newly enrolled (legacy ones verify for their holders but arrive only by
import). Security levels themselves are :attr:`DeviceType.security_level`.
"""

from __future__ import annotations

from collections.abc import Iterable

from sls_core.clock import HOUR
from sls_core.devices import DeviceType
from sls_core.errors import InvalidInputError
from sls_core.values import WithdrawalLimits

__all__ = [
    "WITHDRAWAL_LIMITS",
    "check_issuable",
    "trading_session_length",
    "withdrawal_limits",
]

#: USD per day and per 5 business days by the strongest active device; None: unlimited.
#: The ``None`` row also applies to every opted-out user.
WITHDRAWAL_LIMITS: dict[DeviceType | None, tuple[int | None, int | None]] = {
    None: (50_000, 100_000),
    DeviceType.SMS: (200_000, 600_000),
    DeviceType.IB_KEY: (1_000_000, 1_000_000),
    DeviceType.SECURITY_CODE_CARD: (200_000, 600_000),
    DeviceType.DIGITAL_SECURITY_CARD: (1_000_000, 1_500_000),
    DeviceType.DSC_PLUS: (None, None),
    DeviceType.PLATINUM: (None, None),
    DeviceType.GOLD: (None, None),
    # Alpine is not in the SLS-RULES table: our choice, ranked and limited as the DSC.
    DeviceType.ALPINE: (1_000_000, 1_500_000),
}


def _rank(limits: WithdrawalLimits) -> tuple[float, float]:
    def value(x: int | None) -> float:
        return float("inf") if x is None else float(x)

    return (value(limits.per_day), value(limits.per_five_days))


def withdrawal_limits(
    active_types: Iterable[DeviceType], *, opted_out: bool = False
) -> WithdrawalLimits:
    """Limits set by the strongest active device; temporary passcodes and online cards
    count as no device, and an opted-out user gets the "none" limits whatever they hold."""
    best = WithdrawalLimits(None, *WITHDRAWAL_LIMITS[None])
    if opted_out:
        return best
    for device_type in active_types:
        if device_type not in WITHDRAWAL_LIMITS:
            continue
        candidate = WithdrawalLimits(device_type, *WITHDRAWAL_LIMITS[device_type])
        if _rank(candidate) > _rank(best):
            best = candidate
    return best


def trading_session_length(unlock: str) -> float:
    """Seconds a trading session lasts after IB Key authentication: 12 hours when
    unlocked with a PIN or passcode, 30 hours with fingerprint or face recognition."""
    if unlock in ("pin", "passcode"):
        return 12 * HOUR
    if unlock in ("fingerprint", "face", "biometric"):
        return 30 * HOUR
    raise InvalidInputError("unlock", "must be pin, passcode, fingerprint, face or biometric")


def check_issuable(device_type: DeviceType) -> None:
    """Legacy devices (code card, Digital Security Card, Platinum, Gold, Alpine) are no
    longer issued: new enrollment is refused; existing ones arrive by import."""
    if device_type.is_legacy:
        raise InvalidInputError(
            "device_type",
            f"{device_type.label} is no longer issued: import existing ones instead",
        )
