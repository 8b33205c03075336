"""Second-factor devices: their kinds, security levels and life cycle (SLS-RULES)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Device",
    "DeviceState",
    "DeviceType",
]


class DeviceType(enum.Enum):
    """Every kind of second factor. ``security_level``: 1 is the strongest."""

    DSC_PLUS = "dsc_plus"
    IB_KEY = "ib_key"
    PLATINUM = "platinum"
    GOLD = "gold"
    DIGITAL_SECURITY_CARD = "digital_security_card"
    SECURITY_CODE_CARD = "security_code_card"
    SMS = "sms"
    TEMPORARY_PASSCODE = "temporary_passcode"
    ONLINE_CARD = "online_card"
    ALPINE = "alpine"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def security_level(self) -> int:
        """1 (highest) to 5 (temporary devices)."""
        return _LEVELS[self]

    @property
    def is_temporary(self) -> bool:
        return self in _TEMPORARY

    @property
    def is_legacy(self) -> bool:
        """Still verifies, no longer issued."""
        return self in _LEGACY

    @property
    def is_physical(self) -> bool:
        """Shipped to the holder, so it can be shared and auto-activates."""
        return self in _PHYSICAL

    @property
    def method(self) -> str:
        """How it answers: "ocra", "card", "sms" or "passcode"."""
        return _METHODS[self]


_LABELS = {
    DeviceType.DSC_PLUS: "Digital Security Card+",
    DeviceType.IB_KEY: "IB Key",
    DeviceType.PLATINUM: "Platinum (legacy)",
    DeviceType.GOLD: "Gold (legacy)",
    DeviceType.DIGITAL_SECURITY_CARD: "Digital Security Card (legacy)",
    DeviceType.ALPINE: "Alpine (legacy)",
    DeviceType.SECURITY_CODE_CARD: "Security Code Card (legacy)",
    DeviceType.SMS: "SMS",
    DeviceType.TEMPORARY_PASSCODE: "Temporary passcode",
    DeviceType.ONLINE_CARD: "Online Security Code Card",
}
# SLS-RULES orders DSC+ (1) above IB Key (2) above the printed card (lowest permanent);
# Platinum and Gold rank with DSC+ (unlimited withdrawals), the legacy DSC (and Alpine, which
# the limits table does not name: our choice, with the DSC's limits) between IB Key
# and the printed card; temporary devices rank last.
_LEVELS = {
    DeviceType.DSC_PLUS: 1,
    DeviceType.PLATINUM: 1,
    DeviceType.GOLD: 1,
    DeviceType.IB_KEY: 2,
    DeviceType.DIGITAL_SECURITY_CARD: 3,
    DeviceType.ALPINE: 3,
    DeviceType.SECURITY_CODE_CARD: 4,
    DeviceType.SMS: 5,
    DeviceType.TEMPORARY_PASSCODE: 5,
    DeviceType.ONLINE_CARD: 5,
}
_TEMPORARY = frozenset({DeviceType.SMS, DeviceType.TEMPORARY_PASSCODE, DeviceType.ONLINE_CARD})
_LEGACY = frozenset(
    {
        DeviceType.PLATINUM,
        DeviceType.GOLD,
        DeviceType.DIGITAL_SECURITY_CARD,
        DeviceType.ALPINE,
        DeviceType.SECURITY_CODE_CARD,
    }
)
_PHYSICAL = frozenset(
    {
        DeviceType.DSC_PLUS,
        DeviceType.PLATINUM,
        DeviceType.GOLD,
        DeviceType.DIGITAL_SECURITY_CARD,
        DeviceType.ALPINE,
        DeviceType.SECURITY_CODE_CARD,
    }
)
_METHODS = {
    DeviceType.DSC_PLUS: "ocra",
    DeviceType.IB_KEY: "ocra",
    DeviceType.PLATINUM: "ocra",
    DeviceType.GOLD: "ocra",
    DeviceType.DIGITAL_SECURITY_CARD: "ocra",
    DeviceType.ALPINE: "ocra",
    DeviceType.SECURITY_CODE_CARD: "card",
    DeviceType.ONLINE_CARD: "card",
    DeviceType.SMS: "sms",
    DeviceType.TEMPORARY_PASSCODE: "passcode",
}


class DeviceState(enum.Enum):
    """Life cycle: PENDING (issued/shipped) → ACTIVE ⇄ SUSPENDED (the holder cannot use
    it: lost, forgotten, broken) → REVOKED or REPLACED."""

    PENDING = "pending"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    REPLACED = "replaced"


@dataclass(frozen=True)
class Device:
    """A device as the domain sees it: no secret, PIN or PIN hash is ever held here."""

    id: int
    type: DeviceType
    state: DeviceState
    serial: str
    suite: str | None = None
    issued_at: float = 0.0
    shipped_at: float | None = None
    activated_at: float | None = None
    expires_at: float | None = None
    replaces: int | None = None
    phone: str | None = field(default=None, repr=False)

    @property
    def security_level(self) -> int:
        return self.type.security_level
