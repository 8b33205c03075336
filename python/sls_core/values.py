"""The value types shared by the domain, the server and the gateway client.

Plain data and typed vocabularies only: importing this module loads neither the Rust
extension nor the store, PIL or reportlab, so the light client (:mod:`sls_core.client`)
can depend on it. The rules that use these types live in :mod:`sls_core.rules`. Nothing
here holds a secret: an :class:`Identity`'s document number and SSN stay out of ``repr``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from sls_core.devices import Device, DeviceState, DeviceType
from sls_core.errors import SlsError
from sls_core.outcome import LoginOutcome, Outcome

__all__ = [
    "APPROVE",
    "DECLINE",
    "Access",
    "Activated",
    "ActivationError",
    "BatchResult",
    "Challenge",
    "Device",
    "DeviceState",
    "DeviceType",
    "Identity",
    "LockoutStatus",
    "LoginOutcome",
    "Outcome",
    "Purpose",
    "PushChallenge",
    "PushDecision",
    "PushStatus",
    "SharingError",
    "SharingRequest",
    "SharingState",
    "User",
    "Verdict",
    "WithdrawalLimits",
]


class Purpose(enum.IntEnum):
    """What a challenge's answer is for (the signed token's purpose byte). An answer is
    valid only for the purpose it was issued for: a login answer never stands in for a
    step-up answer, nor the reverse (SLS-RULES "Step-up verification")."""

    LOGIN = 1
    #: Activates a PENDING device (shipped card, online card) by answering with it.
    ACTIVATION = 2
    #: Reactivates the user's SUSPENDED permanent device by answering with it.
    REACTIVATION = 3
    #: A Client Portal task asks for the device again; the challenge names the task.
    STEP_UP = 4
    #: The owner proves possession of the device another username asks to share.
    SHARING = 5


class Access(enum.StrEnum):
    """What a login is for: the temporary passcode's second period allows only the portal's
    online-card page; a closed account has no trading access."""

    TRADING = "trading"
    PORTAL = "portal"
    ONLINE_CARD = "online_card"


class PushDecision(enum.IntEnum):
    """What the IB Key app signs: approve or decline this push."""

    APPROVE = 1
    DECLINE = 2


APPROVE, DECLINE = PushDecision.APPROVE, PushDecision.DECLINE


class PushStatus(enum.StrEnum):
    """A push as the gateway sees it while it waits."""

    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"
    EXPIRED = "expired"


class SharingState(enum.StrEnum):
    """A sharing request's life: pending (compliance approval), active, cancelled."""

    PENDING = "pending"
    ACTIVE = "active"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SharingRequest:
    """One username asking to answer with another's physical device. ``set_aside`` are the
    requester's own devices suspended meanwhile (reactivated if the request is cancelled)."""

    id: int
    owner: str
    requester: str
    device_id: int
    state: SharingState
    set_aside: tuple[int, ...]


class SharingError(SlsError, ValueError):
    """Device sharing refused; ``reason`` is one of the SLS-RULES errors."""

    LESS_SECURE = "less secure device"
    DIFFERENT_IDENTITY = "different identification information"
    TEMPORARY_DEVICE = "a temporary device is assigned"
    NOT_SHAREABLE = "this device type is not shared"
    NOT_PENDING = "no such pending sharing request"
    NO_PROOF = "the owner did not prove possession of the device"
    ALREADY_REQUESTED = "a request to share this device with this user is already open"

    def __init__(self, reason: str) -> None:
        super().__init__(f"device sharing refused: {reason}")
        self.reason = reason


class ActivationError(SlsError, ValueError):
    """Activation refused; ``reason`` is what the app shows."""

    USED_OR_EXPIRED = "already used or expired"
    WRONG_RECOVERY_PIN = "wrong recovery PIN"
    LOCKED = "locked after too many failed attempts"
    ACCOUNT_CLOSED = "the account is closed"
    NO_RECOVERY = "no IB Key with a recovery PIN"
    ALREADY_ENROLLED = "already enrolled"
    UNKNOWN = "no such activation"
    INVALID = "not a valid activation code"

    def __init__(self, reason: str) -> None:
        super().__init__(f"activation refused: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    """Identification information (SLS-RULES "Sharing"); compared by
    :func:`sls_core.rules.sharing.same_holder`."""

    date_of_birth: str = ""
    citizenship: str = ""
    residence: str = ""
    id_type: str = ""
    id_number: str = field(default="", repr=False)
    ssn: str = field(default="", repr=False)

    def as_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class User:
    id: int
    username: str
    opted_out: bool
    closed: bool
    preferred_device: int | None


@dataclass(frozen=True)
class Challenge:
    """What the gateway shows and carries back. ``token`` is opaque and signed."""

    token: str
    device_id: int
    device_type: DeviceType
    purpose: Purpose
    expires_at: float
    #: The 6 digits to show, for challenge/response devices.
    challenge: str | None = None
    #: The two index numbers to show, for code cards.
    card_indices: tuple[int, int] | None = None
    #: The Client Portal task a step-up challenge is for (its answer is valid for no other).
    task: str | None = None


@dataclass(frozen=True)
class Verdict:
    outcome: LoginOutcome
    device_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is LoginOutcome.OK

    @property
    def message(self) -> str:
        return self.outcome.message


@dataclass(frozen=True)
class BatchResult:
    """Per-item outcomes in input order (``LoginOutcome`` values) and the answering device
    (0 where none)."""

    outcomes: npt.NDArray[np.uint8]
    device_ids: npt.NDArray[np.uint64]

    def __len__(self) -> int:
        return len(self.outcomes)

    def __getitem__(self, i: int) -> LoginOutcome:
        return LoginOutcome(int(self.outcomes[i]))


@dataclass(frozen=True)
class LockoutStatus:
    consecutive_failures: int
    locked_until: float | None

    @property
    def locked(self) -> bool:
        return self.locked_until is not None


@dataclass(frozen=True)
class WithdrawalLimits:
    """USD per day and per 5 business days; ``None`` means unlimited."""

    device: DeviceType | None
    per_day: int | None
    per_five_days: int | None


@dataclass(frozen=True)
class PushChallenge:
    challenge_id: int
    user_id: int
    device_id: int
    expires_at: int

    def message(self, decision: int) -> bytes:
        """The bytes the app signs to approve (1) or decline (2) this push (computed by the
        kernel: only the app side calls this, so the client never loads it on import)."""
        from sls_core import push

        return bytes(
            push.approval_message(
                self.challenge_id, self.user_id, self.device_id, self.expires_at, decision
            )
        )


@dataclass(frozen=True)
class Activated:
    """What the app needs to derive the same OCRA secret: the server's X25519 public key
    and the session id (the app already has them when it scanned the QR code)."""

    device: Device
    username: str
    server_public: bytes
    session_id: bytes = field(repr=False)
    suite: str
