"""What a new challenge or device is made of: the default OCRA suites, PIN hashes,
serials, challenge values, and the purpose and task a challenge is for.

Used by :mod:`sls_core.login.service` when it issues; the rules these follow live in
:mod:`sls_core.rules`. Never returns or logs a PIN, only its hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from sls_core import ocra
from sls_core.devices import DeviceType
from sls_core.errors import InvalidInputError, InvalidInputTypeError
from sls_core.login.directory import DeviceEntry
from sls_core.rules import lifecycle
from sls_core.values import Challenge, Purpose

__all__ = [
    "OCRA_SUITES",
    "challenge_value",
    "check_login_suite",
    "check_purpose",
    "check_task",
    "hash_pin",
    "new_challenge",
    "new_serial",
]

OCRA_SUITES = {
    # DSC+ and Android IB Key put the device PIN in the computation.
    DeviceType.DSC_PLUS: "OCRA-1:HOTP-SHA1-8:QN06-PSHA1",
    DeviceType.IB_KEY: "OCRA-1:HOTP-SHA1-8:QN06-PSHA1",
    DeviceType.PLATINUM: "OCRA-1:HOTP-SHA1-8:QN06",
    DeviceType.GOLD: "OCRA-1:HOTP-SHA1-8:QN06",
    DeviceType.DIGITAL_SECURITY_CARD: "OCRA-1:HOTP-SHA1-8:QN06",
    DeviceType.ALPINE: "OCRA-1:HOTP-SHA1-8:QN06",
}


def check_purpose(value: object) -> Purpose:
    if type(value) is Purpose:
        return value  # the usual call: no enum lookup
    try:
        return Purpose(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise InvalidInputError("purpose", "must be a Purpose") from None


#: A step-up task name: what the portal asks the device again for (e.g. "withdrawal").
_TASK = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def check_task(purpose: Purpose, task: object) -> str | None:
    """Step-up answers are for one named task; no other purpose takes a task."""
    if purpose is not Purpose.STEP_UP:
        if task is not None:
            raise InvalidInputError("task", "only a step-up challenge names a task")
        return None
    if not isinstance(task, str) or not _TASK.fullmatch(task):
        raise InvalidInputError(
            "task", "a step-up names its task: lower-case letters, digits, _ . - (1-64)"
        )
    return task


def new_challenge(
    token: str, entry: DeviceEntry, purpose: Purpose, expires: int, value: int, task: str | None
) -> Challenge:
    method = entry.type.method
    return Challenge(
        token=token,
        device_id=entry.row.id,
        device_type=entry.type,
        purpose=purpose,
        expires_at=float(expires),
        challenge=f"{value:06d}" if method == "ocra" else None,
        card_indices=(value >> 16, value & 0xFFFF) if method == "card" else None,
        task=task,
    )


def challenge_value(method: str) -> int:
    """What a token carries as its challenge: six random digits (OCRA, SMS), or two
    different card index numbers from 1 to CARD_INDICES (``first << 16 | second``)."""
    if method == "card":
        first = secrets.randbelow(lifecycle.CARD_INDICES) + 1
        second = secrets.randbelow(lifecycle.CARD_INDICES - 1) + 1
        second += second >= first  # two different index numbers
        return (first << 16) | second
    return secrets.randbelow(1_000_000)


def hash_pin(device_type: DeviceType, pin: str | None, algorithm: str) -> bytes:
    if pin is None:
        raise InvalidInputError("pin", "required by this device's suite")
    if not isinstance(pin, str):
        raise InvalidInputTypeError("pin", "must be a str")
    if device_type is DeviceType.DSC_PLUS:
        if not re.fullmatch(r"[0-9]{4}", pin):
            raise InvalidInputError("pin", "a DSC+ PIN is exactly 4 digits")
    elif not re.fullmatch(r"[\x21-\x7e]{4,6}", pin):
        raise InvalidInputError(
            "pin", "an IB Key PIN is 4 to 6 letters, digits or special characters"
        )
    return hashlib.new(algorithm, pin.encode()).digest()


def new_serial(device_type: DeviceType) -> str:
    prefix = {
        DeviceType.ONLINE_CARD: "OC",
        DeviceType.TEMPORARY_PASSCODE: "TP",
        DeviceType.SMS: "SM",
    }.get(device_type, device_type.value[:2].upper())
    return f"{prefix}-{''.join(secrets.choice(lifecycle.PASSCODE_ALPHABET) for _ in range(8))}"


def check_login_suite(suite: str) -> ocra.Suite:
    """A device's OCRA suite, if logins can verify it: the login path supplies the 6-digit
    challenge and the PIN hash, nothing else (SLS-RULES "Challenge / response"), so a
    suite that needs a counter, a session or a timestamp, or a question other than at
    least 6 decimal digits, is refused at enrollment with the reason."""
    info = ocra.parse_suite(suite)
    if info.counter or info.session_length is not None or info.time_step is not None:
        raise InvalidInputError(
            "suite", "a login suite takes no counter (C), session (S) or timestamp (T) input"
        )
    if info.question_format != "N" or info.question_length < 6:
        raise InvalidInputError(
            "suite", "a login suite's question is numeric (QN) and holds the 6-digit challenge"
        )
    return info
