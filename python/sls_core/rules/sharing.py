"""SLS-RULES "Several devices and sharing": when one physical device may serve several
usernames.

All must hold: the users are the same person or entity; none holds a temporary device
(temporary passcode or online card: an SMS device does not block); the device shared is
the most secure among their physical devices (equal levels: any). Only physical devices
are compared; IB Key does not use device sharing (users are added inside the app).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from sls_core.devices import DeviceType
from sls_core.values import Identity, SharingError

__all__ = ["BLOCKS_SHARING", "check_sharing", "same_holder"]

#: Only these temporary devices block sharing (SLS-RULES).
BLOCKS_SHARING = frozenset({DeviceType.TEMPORARY_PASSCODE, DeviceType.ONLINE_CARD})
_DOCUMENT = ("date_of_birth", "citizenship", "residence", "id_type", "id_number")


def same_holder(a: Identity, b: Identity) -> bool:
    """Same SSN, or the same date of birth, citizenship, residence, ID type and number."""
    if a.ssn and b.ssn:
        return hmac.compare_digest(a.ssn, b.ssn)
    mine = tuple(getattr(a, k) for k in _DOCUMENT)
    return all(mine) and mine == tuple(getattr(b, k) for k in _DOCUMENT)


def check_sharing(
    shared: DeviceType,
    owner: Identity,
    requester: Identity,
    live_devices: Iterable[DeviceType],
) -> None:
    """Raises :class:`SharingError` unless ``shared`` may serve both users; ``live_devices``
    are the types of both users' active or pending devices."""
    if not shared.is_physical:
        raise SharingError(SharingError.NOT_SHAREABLE)
    if not same_holder(owner, requester):
        raise SharingError(SharingError.DIFFERENT_IDENTITY)
    for other in live_devices:
        if other in BLOCKS_SHARING:
            raise SharingError(SharingError.TEMPORARY_DEVICE)
        if other.is_physical and other.security_level < shared.security_level:
            raise SharingError(SharingError.LESS_SECURE)
