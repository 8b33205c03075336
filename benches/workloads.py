"""Inputs and contenders shared by the pytest benchmarks and ``benches/report.py``.

Every workload is deterministic (numpy ``default_rng`` with a fixed seed) and built in
bulk with numpy and sls_core's own batch *compute*, so a million items take well under a
second to set up. One item in :data:`WRONG_EVERY` carries a wrong answer (last digit
changed), so each benchmark checks that wrong answers are refused as well as right ones
accepted.

The peers (``oath`` for OCRA; ``pyotp`` and ``cryptography`` for HOTP/TOTP) are plain
per-item loops over Python objects, built from the same inputs before timing. A peer
object is made inside the loop for each item, as a server verifying a different user at
each request would; sls_core's scalar calls also take the key at each call.

Two choices keep the contenders doing the same work:

* ``oath`` 1.4.5 cannot take a PIN hash: ``P_digest`` reads ``hashlib.sha1.digest_size``,
  which the constructor does not have (``AttributeError``). So oath gets the PIN and hashes
  it per item (one extra SHA-1 over a 4-byte PIN), while sls_core batches get the stored
  ``SHA1(PIN)``, as a server keeps it.
* TOTP is verified with a window of 0 (the exact time step, one HMAC per item) everywhere:
  ``cryptography``'s TOTP has no window and pyotp's default ``valid_window`` is 0.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import oath
import pyotp
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.hotp import HOTP
from cryptography.hazmat.primitives.twofactor.totp import TOTP

import sls_core
from sls_core import hotp, ocra, totp

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
"""DSC+ card with PIN: 6-digit numeric challenge, 8-digit response, SHA-1 of the PIN."""

SEED = 6287
KEY_BYTES = 20
WRONG_EVERY = 64
"""Item ``i`` has a wrong answer when ``i % WRONG_EVERY == WRONG_EVERY - 1``."""

OATH_SAMPLE = 2_000
"""Items a peer loop runs at most for OCRA; larger batches are timed on this prefix."""
OTP_PEER_SAMPLE = 20_000
"""Items a peer loop runs at most for HOTP/TOTP."""

OTP_DIGITS = 6
TOTP_STEP = 30
TOTP_EPOCH_RANGE = (1_600_000_000, 1_900_000_000)

BATCH_SIZES = {"1": 1, "1k": 1_000, "100k": 100_000, "1M": 1_000_000}
"""Batch sizes by label (the pytest ids: ``-k 1k`` selects one size)."""

THREADS = {"1thread": 1, "allthreads": None}
"""``threads`` arguments by label; ``None`` is every core (:data:`ALL_THREADS`)."""

ALL_THREADS = sls_core.default_threads()
"""What ``threads=None`` means in this process (``SLS_CORE_THREADS`` or every core)."""

OATH_SUITE = oath.str2ocrasuite(SUITE)
_SHA1 = SHA1()  # noqa: S303 -- HOTP/TOTP in these benchmarks are HMAC-SHA-1 by RFC


def digit_strings(rng: np.random.Generator, n: int, width: int) -> npt.NDArray[np.bytes_]:
    """``n`` random ASCII digit strings of ``width`` characters as an ``S{width}`` array."""
    matrix = rng.integers(ord("0"), ord("9") + 1, size=(n, width), dtype=np.uint8)
    return matrix.view(f"S{width}").reshape(n)


def expected_outcomes(n: int) -> npt.NDArray[np.uint8]:
    """0 (OK) for right answers, 1 (WRONG) on every :data:`WRONG_EVERY`-th item."""
    outcomes = np.zeros(n, dtype=np.uint8)
    outcomes[WRONG_EVERY - 1 :: WRONG_EVERY] = sls_core.Outcome.WRONG
    return outcomes


def spoil(codes: npt.NDArray[np.bytes_], outcomes: npt.NDArray[np.uint8]) -> npt.NDArray[np.bytes_]:
    """A copy of ``codes`` with the last digit changed where ``outcomes`` says WRONG."""
    n, width = len(codes), codes.dtype.itemsize
    matrix = codes.view(np.uint8).reshape(n, width).copy()
    wrong = outcomes == sls_core.Outcome.WRONG
    matrix[wrong, -1] = (matrix[wrong, -1] - ord("0") + 1) % 10 + ord("0")
    return matrix.view(f"S{width}").reshape(n)


def _texts(column: npt.NDArray[np.bytes_]) -> list[str]:
    return [item.decode("ascii") for item in column.tolist()]


def _rows(matrix: npt.NDArray[np.uint8]) -> list[bytes]:
    return [row.tobytes() for row in matrix]


@dataclass
class OcraWorkload:
    """``n`` OCRA verifications under :data:`SUITE`, one device key per item.

    ``keys[i]`` is the key of item ``i`` (fresh-key layout). The same keys also sit in a
    prepared :class:`sls_core.KeyTable` in another order: item ``i`` uses row
    ``key_index[i]`` of ``table``, as a server holding every device key would.
    ``pins`` are the 4-digit PINs as numbers; ``pin_hashes`` their SHA-1, one row per item.
    """

    n: int
    keys: npt.NDArray[np.uint8]
    questions: npt.NDArray[np.bytes_]
    responses: npt.NDArray[np.bytes_]
    pins: npt.NDArray[np.int64]
    pin_hashes: npt.NDArray[np.uint8]
    table: sls_core.KeyTable
    key_index: npt.NDArray[np.uint64]
    expected: npt.NDArray[np.uint8]

    def verify_fresh(self, threads: int | None) -> npt.NDArray[np.uint8]:
        return ocra.verify_batch(
            SUITE,
            self.keys,
            self.questions,
            self.responses,
            pin_hashes=self.pin_hashes,
            threads=threads,
        )

    def verify_prepared(self, threads: int | None) -> npt.NDArray[np.uint8]:
        return ocra.verify_batch(
            SUITE,
            self.table,
            self.questions,
            self.responses,
            pin_hashes=self.pin_hashes,
            key_index=self.key_index,
            threads=threads,
        )

    def sample(self, items: int) -> OcraSample:
        """The first ``items`` items as Python objects, for the per-item loops."""
        m = min(items, self.n)
        return OcraSample(
            keys=_rows(self.keys[:m]),
            questions=_texts(self.questions[:m]),
            responses=_texts(self.responses[:m]),
            pins=[f"{pin:04d}" for pin in self.pins[:m].tolist()],
            pin_hashes=_rows(self.pin_hashes[:m]),
            accepted=(self.expected[:m] == sls_core.Outcome.OK).tolist(),
        )


@dataclass
class OcraSample:
    """A prefix of an :class:`OcraWorkload` as lists of ``bytes``/``str``."""

    keys: list[bytes]
    questions: list[str]
    responses: list[str]
    pins: list[str]
    pin_hashes: list[bytes]
    accepted: list[bool]

    def __len__(self) -> int:
        return len(self.keys)

    def sls_core_pin_hash(self) -> list[bool]:
        """sls_core scalar ``verify`` per item, with the stored PIN hash."""
        verify = ocra.verify
        return [
            verify(SUITE, key, response, question=question, pin_hash=pin_hash)
            for key, question, response, pin_hash in zip(
                self.keys, self.questions, self.responses, self.pin_hashes, strict=True
            )
        ]

    def sls_core_pin(self) -> list[bool]:
        """sls_core scalar ``verify`` per item, hashing the PIN (same work as oath)."""
        verify = ocra.verify
        return [
            verify(SUITE, key, response, question=question, pin=pin)
            for key, question, response, pin in zip(
                self.keys, self.questions, self.responses, self.pins, strict=True
            )
        ]

    def oath(self) -> list[bool]:
        """oath's ``OcraSuite.accept`` per item (it hashes the PIN itself)."""
        accept = OATH_SUITE.accept
        return [
            accept(response, key, Q=question, P=pin)
            for key, question, response, pin in zip(
                self.keys, self.questions, self.responses, self.pins, strict=True
            )
        ]


def make_ocra(n: int, *, seed: int = SEED) -> OcraWorkload:
    """Builds ``n`` OCRA items: random keys, challenges and 4-digit PINs, right answers
    from ``ocra.compute_batch`` and one wrong answer in :data:`WRONG_EVERY`."""
    rng = np.random.default_rng(seed)
    device_keys = rng.integers(0, 256, size=(n, KEY_BYTES), dtype=np.uint8)
    key_index = rng.permutation(n).astype(np.uint64)
    keys = np.ascontiguousarray(device_keys[key_index])
    questions = digit_strings(rng, n, 6)
    pin_numbers = rng.integers(0, 10_000, size=n)
    pins_digest = b"".join(
        hashlib.sha1(b"%04d" % pin).digest()  # noqa: S324 -- PSHA1 is SHA-1 by RFC 6287
        for pin in range(10_000)
    )
    pin_table = np.frombuffer(pins_digest, dtype=np.uint8).reshape(10_000, 20)
    pin_hashes = pin_table[pin_numbers]
    right = ocra.compute_batch(SUITE, keys, questions, pin_hashes=pin_hashes)
    expected = expected_outcomes(n)
    table = sls_core.KeyTable(device_keys, algorithm="sha1")
    return OcraWorkload(
        n=n,
        keys=keys,
        questions=questions,
        responses=spoil(right, expected),
        pins=pin_numbers,
        pin_hashes=pin_hashes,
        table=table,
        key_index=key_index,
        expected=expected,
    )


@dataclass
class OtpWorkload:
    """``n`` HOTP or TOTP verifications (6 digits, SHA-1, window 0), one key per item.

    ``factors`` are counters (HOTP) or Unix times in seconds (TOTP).
    """

    kind: str
    n: int
    keys: npt.NDArray[np.uint8]
    factors: npt.NDArray[np.uint64]
    codes: npt.NDArray[np.bytes_]
    expected: npt.NDArray[np.uint8]

    @cached_property
    def matched(self) -> npt.NDArray[np.uint64]:
        """What ``verify_batch`` reports as matched: the counter or time step, 0 if wrong."""
        steps = self.factors if self.kind == "hotp" else self.factors // np.uint64(TOTP_STEP)
        return np.where(self.expected == sls_core.Outcome.OK, steps, np.uint64(0))

    def verify(self, threads: int | None) -> sls_core.hotp.OtpBatchResult:
        if self.kind == "hotp":
            return hotp.verify_batch(self.keys, self.codes, self.factors, threads=threads)
        return totp.verify_batch(
            self.keys, self.codes, self.factors, step=TOTP_STEP, window=0, threads=threads
        )

    def sample(self, items: int) -> OtpSample:
        """The first ``items`` items as Python objects, for the per-item loops."""
        m = min(items, self.n)
        keys = _rows(self.keys[:m])
        return OtpSample(
            kind=self.kind,
            keys=keys,
            secrets=[base64.b32encode(key).decode("ascii") for key in keys],
            codes=_texts(self.codes[:m]),
            code_bytes=self.codes[:m].tolist(),
            factors=self.factors[:m].tolist(),
            accepted=(self.expected[:m] == sls_core.Outcome.OK).tolist(),
        )


@dataclass
class OtpSample:
    """A prefix of an :class:`OtpWorkload` as lists; ``secrets`` are base32 for pyotp."""

    kind: str
    keys: list[bytes]
    secrets: list[str]
    codes: list[str]
    code_bytes: list[bytes]
    factors: list[int]
    accepted: list[bool]

    def __len__(self) -> int:
        return len(self.keys)

    def sls_core(self) -> list[bool]:
        """sls_core scalar ``hotp.verify`` / ``totp.verify`` per item."""
        if self.kind == "hotp":
            verify_hotp = hotp.verify
            return [
                verify_hotp(key, code, counter) is not None
                for key, code, counter in zip(self.keys, self.codes, self.factors, strict=True)
            ]
        verify_totp = totp.verify
        return [
            verify_totp(key, code, when, step=TOTP_STEP, window=0) is not None
            for key, code, when in zip(self.keys, self.codes, self.factors, strict=True)
        ]

    def pyotp(self) -> list[bool]:
        """pyotp's ``HOTP(secret).verify`` / ``TOTP(secret).verify`` per item."""
        check = pyotp_hotp if self.kind == "hotp" else pyotp_totp
        return [
            check(secret, code, factor)
            for secret, code, factor in zip(self.secrets, self.codes, self.factors, strict=True)
        ]

    def cryptography(self) -> list[bool]:
        """cryptography's ``HOTP.verify`` / ``TOTP.verify`` per item (InvalidToken = no)."""
        check = cryptography_hotp if self.kind == "hotp" else cryptography_totp
        return [
            check(key, code, factor)
            for key, code, factor in zip(self.keys, self.code_bytes, self.factors, strict=True)
        ]

    def peer_call(
        self, peer: str, i: int
    ) -> tuple[Callable[[Any, Any, int], bool], tuple[Any, ...]]:
        """The function and arguments the ``peer`` loop calls for item ``i``."""
        if peer == "pyotp":
            check = pyotp_hotp if self.kind == "hotp" else pyotp_totp
            return check, (self.secrets[i], self.codes[i], self.factors[i])
        if peer == "cryptography":
            check = cryptography_hotp if self.kind == "hotp" else cryptography_totp
            return check, (self.keys[i], self.code_bytes[i], self.factors[i])
        raise ValueError(f"unknown peer {peer!r}")


def pyotp_hotp(secret: str, code: str, counter: int) -> bool:
    return pyotp.HOTP(secret, digits=OTP_DIGITS).verify(code, counter)


def pyotp_totp(secret: str, code: str, when: int) -> bool:
    return pyotp.TOTP(secret, digits=OTP_DIGITS, interval=TOTP_STEP).verify(code, for_time=when)


def cryptography_hotp(key: bytes, code: bytes, counter: int) -> bool:
    try:
        HOTP(key, OTP_DIGITS, _SHA1).verify(code, counter)
    except InvalidToken:
        return False
    return True


def cryptography_totp(key: bytes, code: bytes, when: int) -> bool:
    try:
        TOTP(key, OTP_DIGITS, _SHA1, TOTP_STEP).verify(code, when)
    except InvalidToken:
        return False
    return True


def make_otp(kind: str, n: int, *, seed: int = SEED) -> OtpWorkload:
    """Builds ``n`` HOTP (``kind="hotp"``) or TOTP items with one wrong code in
    :data:`WRONG_EVERY`; right codes come from ``compute_batch``."""
    rng = np.random.default_rng(seed + (1 if kind == "hotp" else 2))
    keys = rng.integers(0, 256, size=(n, KEY_BYTES), dtype=np.uint8)
    if kind == "hotp":
        factors = rng.integers(0, 2**32, size=n, dtype=np.uint64)
        right = hotp.compute_batch(keys, factors, digits=OTP_DIGITS)
    elif kind == "totp":
        low, high = TOTP_EPOCH_RANGE
        factors = rng.integers(low, high, size=n, dtype=np.uint64)
        right = totp.compute_batch(keys, factors, step=TOTP_STEP, digits=OTP_DIGITS)
    else:
        raise ValueError(f"kind must be 'hotp' or 'totp', not {kind!r}")
    expected = expected_outcomes(n)
    return OtpWorkload(
        kind=kind,
        n=n,
        keys=keys,
        factors=factors,
        codes=spoil(right, expected),
        expected=expected,
    )
