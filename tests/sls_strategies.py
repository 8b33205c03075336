"""Hypothesis strategies and small reference helpers shared by the test modules.

Nothing here calls sls_core: the helpers are independent references (what a well-formed
code looks like, how a suite string is spelled) so tests can compare the package to them.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

HASHES = ("SHA1", "SHA256", "SHA512")
DIGEST_SIZES = {"SHA1": 20, "SHA256": 32, "SHA512": 64}
TIME_UNITS = {"S": (59, 1), "M": (59, 60), "H": (48, 3600)}
# The largest dynamic-truncation value (RFC 4226 section 5.3): 31 bits.
MAX_TRUNCATED = 2**31 - 1

PRINTABLE_NO_SPACE = "".join(chr(c) for c in range(0x21, 0x7F))
ALNUM_ASCII = string.ascii_letters + string.digits
HEX_DIGITS = "0123456789abcdefABCDEF"


@dataclass(frozen=True)
class SuiteSpec:
    """The parts of an OCRA suite (RFC 6287 section 6), spelled by :attr:`text`."""

    hash: str
    digits: int
    counter: bool
    question_format: str
    question_length: int
    pin: str | None
    session: int | None
    time: tuple[int, str] | None

    @property
    def text(self) -> str:
        data = ["C"] if self.counter else []
        data.append(f"Q{self.question_format}{self.question_length:02d}")
        if self.pin:
            data.append(f"P{self.pin}")
        if self.session:
            data.append(f"S{self.session:03d}")
        if self.time:
            data.append(f"T{self.time[0]}{self.time[1]}")
        return f"OCRA-1:HOTP-{self.hash}-{self.digits}:{'-'.join(data)}"

    @property
    def algorithm(self) -> str:
        return self.hash.lower()

    @property
    def step_seconds(self) -> int | None:
        if self.time is None:
            return None
        number, unit = self.time
        return number * TIME_UNITS[unit][1]

    def pin_hash(self, pin: str | bytes) -> bytes:
        assert self.pin is not None
        data = pin.encode("utf-8") if isinstance(pin, str) else pin
        return hashlib.new(self.pin.lower(), data).digest()

    def __repr__(self) -> str:
        return f"SuiteSpec({self.text!r})"


@st.composite
def time_steps(draw: st.DrawFn) -> tuple[int, str]:
    unit = draw(st.sampled_from(sorted(TIME_UNITS)))
    return draw(st.integers(1, TIME_UNITS[unit][0])), unit


def suite_specs(
    digits: st.SearchStrategy[int] | None = None,
    max_session: int = 80,
) -> st.SearchStrategy[SuiteSpec]:
    """Random valid suites: every hash, optional C/P/S/T, QA/QN/QH with lengths 04-64."""
    return st.builds(
        SuiteSpec,
        hash=st.sampled_from(HASHES),
        digits=digits if digits is not None else st.integers(4, 10),
        counter=st.booleans(),
        question_format=st.sampled_from("ANH"),
        question_length=st.integers(4, 64),
        pin=st.none() | st.sampled_from(HASHES),
        session=st.none() | st.integers(1, max_session),
        time=st.none() | time_steps(),
    )


def questions(spec: SuiteSpec, *, oath_compatible: bool = False) -> st.SearchStrategy[str]:
    """Valid challenge questions for ``spec``.

    With ``oath_compatible`` the question stays within what the ``oath`` package accepts
    (at most ``xx`` characters, alphanumeric QA, an even number of QH digits); otherwise it
    may be up to twice ``xx`` (mutual mode, RFC 6287 section 7.3), printable-ASCII QA and
    odd-length QH.
    """
    longest = spec.question_length if oath_compatible else min(2 * spec.question_length, 128)
    if spec.question_format == "N":
        return st.text(alphabet=string.digits, min_size=4, max_size=longest)
    if spec.question_format == "A":
        alphabet = ALNUM_ASCII if oath_compatible else PRINTABLE_NO_SPACE
        return st.text(alphabet=alphabet, min_size=4, max_size=longest)
    if oath_compatible:
        return st.integers(2, longest // 2).flatmap(
            lambda pairs: st.text(alphabet=HEX_DIGITS, min_size=2 * pairs, max_size=2 * pairs)
        )
    return st.text(alphabet=HEX_DIGITS, min_size=4, max_size=longest)


pins = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12) | st.binary(
    min_size=1, max_size=12
)

keys = st.binary(min_size=1, max_size=150)


@st.composite
def ocra_inputs(
    draw: st.DrawFn, spec: SuiteSpec, *, oath_compatible: bool = False
) -> dict[str, Any]:
    """Valid keyword inputs for ``ocra.compute(spec.text, key, **inputs)``, plus ``key``."""
    inputs: dict[str, Any] = {
        "key": draw(keys),
        "question": draw(questions(spec, oath_compatible=oath_compatible)),
    }
    if spec.counter:
        inputs["counter"] = draw(st.integers(0, 2**64 - 1))
    if spec.pin:
        inputs["pin"] = draw(pins)
    if spec.session:
        inputs["session"] = draw(st.binary(min_size=spec.session, max_size=spec.session))
    if spec.time:
        # Below 2**40 s, oath's float division T / step is still exact enough.
        inputs["timestamp"] = draw(st.integers(0, 2**40))
    return inputs


def psha1(data: bytes) -> bytes:
    """RFC 6287's PSHA1 PIN hash: SHA-1 is what the suites under test mandate."""
    return hashlib.sha1(data).digest()  # noqa: S324


def well_formed(code: str | bytes, digits: int) -> bool:
    """Reference syntax of a typed code: exactly ``digits`` ASCII digits; for ``digits ==
    0`` (untruncated OCRA) the canonical decimal of a 31-bit value."""
    raw = code.encode("utf-8", "surrogatepass") if isinstance(code, str) else bytes(code)
    if not raw or any(b not in b"0123456789" for b in raw):
        return False
    if digits == 0:
        return len(raw) <= 10 and (raw == b"0" or raw[:1] != b"0") and int(raw) <= MAX_TRUNCATED
    return len(raw) == digits


def change_digit(code: str, position: int, offset: int) -> str:
    """``code`` with the digit at ``position`` replaced by a different digit."""
    new = (int(code[position]) + offset) % 10
    assert 1 <= offset <= 9
    return code[:position] + str(new) + code[position + 1 :]


# Malformations of a well-formed code, as (name, function). None of them can be a code of
# the same suite: each adds a non-digit character or changes the length.
MALFORMATIONS: list[tuple[str, Any]] = [
    ("space-inside", lambda c: c[:1] + " " + c[1:]),
    ("leading-space", lambda c: " " + c),
    ("trailing-space", lambda c: c + " "),
    ("plus-sign", lambda c: "+" + c[1:]),
    ("minus-sign", lambda c: "-" + c[1:]),
    ("nul-inside", lambda c: c[:2] + "\x00" + c[3:]),
    ("leading-nul", lambda c: "\x00" + c[1:]),
    ("fullwidth-digit", lambda c: c[:-1] + chr(0xFF10 + int(c[-1]))),
    ("arabic-indic-digit", lambda c: c[:-1] + chr(0x0660 + int(c[-1]))),
    ("too-short", lambda c: c[:-1]),
    ("too-long", lambda c: c + "0"),
    ("letter", lambda c: c[:-1] + "a"),
    ("all-letters", lambda c: "x" * len(c)),
    ("tab", lambda c: c[:-1] + "\t"),
    ("empty", lambda c: ""),
    ("hex-prefix", lambda c: "0x" + c[2:]),
    ("decimal-point", lambda c: c[:-1] + "."),
    ("trailing-nul", lambda c: c[:-1] + "\x00"),
]
# A NUL appended to a right code. numpy S/U arrays treat trailing NULs as padding (their
# own items read back without it), so this one is only malformed in lists and scalars.
APPENDED_NUL: tuple[str, Any] = ("appended-nul", lambda c: c + "\x00")
