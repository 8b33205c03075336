"""Every refusal: the exception class, ``.field``, the rule in the message, and that no
message (``str``, ``repr``, ``args``, chained exceptions) ever carries the key, the PIN,
the PIN hash or the response.

Distinctive secret values are passed wherever a call takes them, so a leak would show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sls_core import (
    InvalidInputError,
    InvalidInputTypeError,
    InvalidSuiteError,
    KeyTable,
    Outcome,
    SlsError,
    hotp,
    ocra,
    totp,
)
from sls_strategies import psha1

SECRET_KEY = b"KEY-9f3Zq-SECRET-77c1"
# Deliberately fake, distinctive "secrets": tests assert they never reach a message.
SECRET_PIN = "PIN-5e8R-SECRET"  # noqa: S105
SECRET_RESPONSE = "97531864"  # noqa: S105
SECRET_SESSION = b"SESSION-4kP2-SECRET-" + b"s" * 44  # 64 bytes
SECRET_PIN_HASH = psha1(SECRET_PIN.encode())

SUITE = "OCRA-1:HOTP-SHA1-8:QN06"
SUITE_PIN = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
SUITE_C = "OCRA-1:HOTP-SHA1-8:C-QN06"
SUITE_S = "OCRA-1:HOTP-SHA1-8:QN06-S064"
SUITE_T = "OCRA-1:HOTP-SHA1-8:QN06-T1M"
SUITE_ALL = "OCRA-1:HOTP-SHA1-8:C-QN06-PSHA1-S064-T1M"
QUESTION = "123456"


def _secret_forms() -> list[str]:
    forms = [SECRET_RESPONSE, SECRET_PIN, SECRET_PIN.encode().hex(), SECRET_PIN_HASH.hex()]
    for blob in (SECRET_KEY, SECRET_SESSION, SECRET_PIN_HASH):
        forms += [blob.hex(), repr(blob), blob.decode("latin-1")]
    forms += ["9f3Zq", "5e8R", "4kP2"]  # the distinctive cores, in any encoding
    return forms


SECRET_FORMS = _secret_forms()


def exception_texts(exc: BaseException) -> str:
    """str, repr and args of the exception and of everything chained to it."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), *(repr(arg) for arg in current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


def assert_no_secret(exc: BaseException) -> None:
    text = exception_texts(exc)
    for form in SECRET_FORMS:
        assert form not in text, f"{form!r} leaked into {text!r}"


def check(
    call: Callable[[], Any],
    field: str,
    rule: str,
    cls: type[InvalidInputError] = InvalidInputError,
) -> InvalidInputError:
    """``call()`` raises ``cls`` naming ``field``, with ``rule`` in the rule and message."""
    with pytest.raises(cls) as excinfo:
        call()
    exc = excinfo.value
    assert isinstance(exc, SlsError)
    assert isinstance(exc, ValueError)
    assert exc.field == field
    assert rule in exc.rule, exc.rule
    assert str(exc) == f"{field}: {exc.rule}"
    assert_no_secret(exc)
    return exc


# --------------------------------------------------------------------------------------
# Suites: one case per rule of RFC 6287 section 6, through every entry point.
# --------------------------------------------------------------------------------------

THREE_PARTS = "must have three ':'-separated parts"
VERSION = "version must be OCRA-1"
FUNCTION = "crypto function must be HOTP-SHA1-t, HOTP-SHA256-t or HOTP-SHA512-t"
HASH = "crypto function hash must be SHA1, SHA256 or SHA512"
TRUNCATION = "truncation length t must be 0 or 4 to 10"
NEEDS_QUESTION = "data input must contain a question QFxx"
Q_FORMAT = "question format must be A, N or H"
Q_LENGTH = "question length xx must be two digits from 04 to 64"
PIN_HASH = "PIN hash must be PSHA1, PSHA256 or PSHA512"
SESSION = "session length must be three digits, S001 to S999"
TIME = "time step must be 1-59S, 1-59M or 1-48H"
ORDER = "the order is [C]-QFxx-[PH]-[Snnn]-[TG], each at most once"

BAD_SUITES = [
    ("", THREE_PARTS, "empty"),
    ("OCRA-1:HOTP-SHA1-6", THREE_PARTS, "two-parts"),
    ("OCRA-1:HOTP-SHA1-6:QN08:C", THREE_PARTS, "four-parts"),
    ("OCRA-2:HOTP-SHA1-6:QN08", VERSION, "version-2"),
    ("ocra-1:hotp-sha1-6:qn08", VERSION, "lower-case"),
    (" OCRA-1:HOTP-SHA1-6:QN08", VERSION, "leading-space"),
    ("OCRA-1:TOTP-SHA1-6:QN08", FUNCTION, "not-hotp"),
    ("OCRA-1:HOTP-SHA1:QN08", FUNCTION, "no-digits"),
    ("OCRA-1:HOTP-SHA1-6-X:QN08", FUNCTION, "extra-function-part"),
    ("OCRA-1:HOTP-MD5-6:QN08", HASH, "md5"),
    ("OCRA-1:HOTP-sha1-6:QN08", HASH, "lower-case-hash"),
    ("OCRA-1:HOTP-SHA1-3:QN08", TRUNCATION, "digits-3"),
    ("OCRA-1:HOTP-SHA1-11:QN08", TRUNCATION, "digits-11"),
    ("OCRA-1:HOTP-SHA1-06:QN08", TRUNCATION, "digits-leading-zero"),
    ("OCRA-1:HOTP-SHA1-+6:QN08", TRUNCATION, "digits-sign"),
    ("OCRA-1:HOTP-SHA1-٦:QN08", TRUNCATION, "digits-arabic-indic"),
    ("OCRA-1:HOTP-SHA1-6:C", NEEDS_QUESTION, "counter-only"),
    ("OCRA-1:HOTP-SHA1-6:PSHA1", NEEDS_QUESTION, "pin-only"),
    ("OCRA-1:HOTP-SHA1-6:QN8", NEEDS_QUESTION, "question-one-digit-length"),
    ("OCRA-1:HOTP-SHA1-6:QX08", Q_FORMAT, "question-format-x"),
    ("OCRA-1:HOTP-SHA1-6:Qn08", Q_FORMAT, "question-format-lower-case"),
    ("OCRA-1:HOTP-SHA1-6:QN03", Q_LENGTH, "question-length-03"),
    ("OCRA-1:HOTP-SHA1-6:QN65", Q_LENGTH, "question-length-65"),
    ("OCRA-1:HOTP-SHA1-6:QN00", Q_LENGTH, "question-length-00"),
    ("OCRA-1:HOTP-SHA1-6:QN0x", Q_LENGTH, "question-length-hex"),
    ("OCRA-1:HOTP-SHA1-6:QN08-PMD5", PIN_HASH, "pin-md5"),
    ("OCRA-1:HOTP-SHA1-6:QN08-P", PIN_HASH, "pin-no-hash"),
    ("OCRA-1:HOTP-SHA1-6:QN08-S64", SESSION, "session-two-digits"),
    ("OCRA-1:HOTP-SHA1-6:QN08-S000", SESSION, "session-zero"),
    ("OCRA-1:HOTP-SHA1-6:QN08-S1000", SESSION, "session-four-digits"),
    ("OCRA-1:HOTP-SHA1-6:QN08-S", SESSION, "session-no-length"),
    ("OCRA-1:HOTP-SHA1-6:QN08-T0H", TIME, "time-0H"),
    ("OCRA-1:HOTP-SHA1-6:QN08-T49H", TIME, "time-49H"),
    ("OCRA-1:HOTP-SHA1-6:QN08-T60M", TIME, "time-60M"),
    ("OCRA-1:HOTP-SHA1-6:QN08-T60S", TIME, "time-60S"),
    ("OCRA-1:HOTP-SHA1-6:QN08-T1D", TIME, "time-day-unit"),
    ("OCRA-1:HOTP-SHA1-6:QN08-T01M", TIME, "time-leading-zero"),
    ("OCRA-1:HOTP-SHA1-6:QN08-T", TIME, "time-empty"),
    ("OCRA-1:HOTP-SHA1-6:QN08-T1m", TIME, "time-lower-case-unit"),
    ("OCRA-1:HOTP-SHA1-6:QN08-T1M-PSHA1", ORDER, "order-T-before-P"),
    ("OCRA-1:HOTP-SHA1-6:QN08-C", ORDER, "order-C-after-Q"),
    ("OCRA-1:HOTP-SHA1-6:QN08-PSHA1-PSHA1", ORDER, "duplicate-P"),
    ("OCRA-1:HOTP-SHA1-6:QN08-QA08", ORDER, "two-questions"),
    ("OCRA-1:HOTP-SHA1-6:QN08-", ORDER, "trailing-dash"),
]

SUITE_ENTRY_POINTS: dict[str, Callable[[str], Any]] = {
    "parse_suite": ocra.parse_suite,
    "compute": lambda suite: ocra.compute(suite, SECRET_KEY, question=QUESTION),
    "verify": lambda suite: ocra.verify(suite, SECRET_KEY, SECRET_RESPONSE, question=QUESTION),
    "verify_batch": lambda suite: ocra.verify_batch(
        suite, [SECRET_KEY], [QUESTION], [SECRET_RESPONSE]
    ),
    "compute_batch": lambda suite: ocra.compute_batch(suite, [SECRET_KEY], [QUESTION]),
}


@pytest.mark.parametrize("entry", list(SUITE_ENTRY_POINTS), ids=list(SUITE_ENTRY_POINTS))
@pytest.mark.parametrize(
    ("suite", "rule"), [c[:2] for c in BAD_SUITES], ids=[c[2] for c in BAD_SUITES]
)
def test_bad_suite_raises_invalid_suite_error_with_the_rule(
    entry: str, suite: str, rule: str
) -> None:
    exc = check(lambda: SUITE_ENTRY_POINTS[entry](suite), "suite", rule, InvalidSuiteError)
    # The (public) suite is quoted so the operator sees which configuration is wrong.
    assert exc.rule.startswith('"' + suite[:10])


def test_bad_suite_error_pickles_with_field_and_rule() -> None:
    import pickle

    with pytest.raises(InvalidSuiteError) as excinfo:
        ocra.parse_suite("OCRA-1:HOTP-SHA1-6:QN03")
    clone = pickle.loads(pickle.dumps(excinfo.value))  # noqa: S301 (our own object)
    assert type(clone) is InvalidSuiteError
    assert (clone.field, clone.rule, str(clone)) == (
        excinfo.value.field,
        excinfo.value.rule,
        str(excinfo.value),
    )


def test_suite_echo_in_a_message_is_capped_at_48_characters() -> None:
    """The suite is echoed, but never more than 48 characters of it."""
    head = "OCRA-1:HOTP-SHA1-6:QN08:"  # a fourth ':' part, 24 characters in
    suite = head + "A" * 24 + "SECRET-TAIL-9f3Zq"
    exc = check(lambda: ocra.parse_suite(suite), "suite", THREE_PARTS, InvalidSuiteError)
    assert (head + "A" * 24) in exc.rule
    assert "SECRET-TAIL" not in str(exc)


def test_suite_echo_cap_also_holds_for_an_unexpected_data_input() -> None:
    suite = "OCRA-1:HOTP-SHA1-6:QN08-" + "A" * 24 + "SECRETTAIL"
    assert len(suite) > 48
    assert suite.index("SECRETTAIL") >= 48
    with pytest.raises(InvalidSuiteError) as excinfo:
        ocra.parse_suite(suite)
    assert "SECRETTAIL" not in str(excinfo.value)


NON_ASCII_TIME_SUITES = [
    ("OCRA-1:HOTP-SHA1-6:QN08-T1é", "T1-e-acute"),
    ("OCRA-1:HOTP-SHA1-6:QN08-Té", "T-e-acute"),
    ("OCRA-1:HOTP-SHA1-6:QN08-T1M€", "T1M-euro-sign"),
]


@pytest.mark.parametrize("entry", ["parse_suite", "compute", "verify_batch"])
@pytest.mark.parametrize(
    "suite", [s for s, _ in NON_ASCII_TIME_SUITES], ids=[i for _, i in NON_ASCII_TIME_SUITES]
)
def test_suite_with_non_ascii_time_step_is_an_invalid_suite_error(entry: str, suite: str) -> None:
    error: InvalidSuiteError | None = None
    try:
        SUITE_ENTRY_POINTS[entry](suite)
    except InvalidSuiteError as exc:
        error = exc
    except BaseException as exc:  # PanicException derives from BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        pytest.fail(f"{type(exc).__module__}.{type(exc).__name__} instead of InvalidSuiteError")
    assert error is not None, "no exception for an invalid suite"
    assert error.field == "suite"
    assert TIME in error.rule


# --------------------------------------------------------------------------------------
# Questions: length and format per QA / QN / QH.
# --------------------------------------------------------------------------------------

LENGTH = "must be 4 to 128 characters long"
QN_RULE = "QN format accepts ASCII digits 0-9 only"
QA_RULE = "QA format accepts printable ASCII without spaces only"
QH_RULE = "QH format accepts hexadecimal digits 0-9, A-F only"

BAD_QUESTIONS = [
    ("N", "123", LENGTH, "QN-too-short"),
    ("N", "", LENGTH, "QN-empty"),
    ("N", "1" * 129, LENGTH, "QN-too-long"),
    ("N", "12345a", QN_RULE, "QN-letter"),
    ("N", "12 456", QN_RULE, "QN-space"),
    ("N", "-12345", QN_RULE, "QN-sign"),
    ("N", "12345\x00", QN_RULE, "QN-nul"),
    ("N", "\uff11\uff12\uff13\uff14\uff15\uff16", QN_RULE, "QN-fullwidth"),
    ("N", "١٢٣٤٥٦", QN_RULE, "QN-arabic-indic"),
    ("N", "0x1234", QN_RULE, "QN-hex-prefix"),
    ("A", "abc", LENGTH, "QA-too-short"),
    ("A", "a" * 129, LENGTH, "QA-too-long"),
    ("A", "abc def", QA_RULE, "QA-space"),
    ("A", "abc\tdef", QA_RULE, "QA-tab"),
    ("A", "abc\x00def", QA_RULE, "QA-nul"),
    ("A", "abcdéfgh", QA_RULE, "QA-non-ascii"),
    ("A", "abc\x7fdef", QA_RULE, "QA-delete"),
    ("H", "abc", LENGTH, "QH-too-short"),
    ("H", "f" * 129, LENGTH, "QH-too-long"),
    ("H", "abcdefg0", QH_RULE, "QH-g"),
    ("H", "0x123456", QH_RULE, "QH-prefix"),
    ("H", "1234 5678", QH_RULE, "QH-space"),
    ("H", "\uff11\uff12\uff13\uff14", QH_RULE, "QH-fullwidth"),
]


@pytest.mark.parametrize(
    ("q_format", "question", "rule"),
    [c[:3] for c in BAD_QUESTIONS],
    ids=[c[3] for c in BAD_QUESTIONS],
)
def test_bad_question_is_refused_with_its_format_rule(
    q_format: str, question: str, rule: str
) -> None:
    suite = f"OCRA-1:HOTP-SHA1-8:Q{q_format}08"
    check(lambda: ocra.compute(suite, SECRET_KEY, question=question), "question", rule)
    check(lambda: ocra.compute(suite, SECRET_KEY, question=question.encode()), "question", rule)
    check(
        lambda: ocra.verify(suite, SECRET_KEY, SECRET_RESPONSE, question=question),
        "question",
        rule,
    )
    # compute_batch names the row; verify_batch makes only that item MALFORMED.
    good = {"N": "12345678", "A": "abcdefgh", "H": "abcdef01"}[q_format]
    exc = check(
        lambda: ocra.compute_batch(suite, [SECRET_KEY] * 2, [good, question]), "question", rule
    )
    assert exc.rule == f"row 1: {rule}"
    right = ocra.compute(suite, SECRET_KEY, question=good)
    outcomes = ocra.verify_batch(suite, [SECRET_KEY] * 2, [good, question], [right, right])
    assert outcomes.tolist() == [Outcome.OK, Outcome.MALFORMED]


@pytest.mark.parametrize(
    ("q_format", "question"),
    [
        ("N", "1234"),
        ("N", "9" * 128),
        ("A", "~" * 128),
        ("H", "F" * 128),
        ("A", "a" * 20),
        ("H", "abcd"),
    ],
    ids=["QN-4", "QN-128", "QA-128", "QH-128", "QA-longer-than-xx", "QH-4"],
)
def test_question_lengths_from_4_to_128_are_accepted_whatever_xx(
    q_format: str, question: str
) -> None:
    """xx is nominal: mutual mode (RFC 6287 section 7.3) sends two questions joined."""
    response = ocra.compute(f"OCRA-1:HOTP-SHA1-8:Q{q_format}08", SECRET_KEY, question=question)
    assert len(response) == 8


# --------------------------------------------------------------------------------------
# Missing, unexpected and out-of-range scalar inputs.
# --------------------------------------------------------------------------------------

SCALAR_CASES: list[Any] = [
    pytest.param(
        lambda: ocra.compute(SUITE_C, SECRET_KEY, question=QUESTION),
        "counter",
        "required: the suite has a C data input",
        id="counter-missing",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE, SECRET_KEY, question=QUESTION, counter=1),
        "counter",
        "not allowed: the suite has no C data input",
        id="counter-unexpected",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_C, SECRET_KEY, question=QUESTION, counter=-1),
        "counter",
        "must be an integer from 0 to 2**64-1",
        id="counter-negative",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_C, SECRET_KEY, question=QUESTION, counter=2**64),
        "counter",
        "must be an integer from 0 to 2**64-1",
        id="counter-too-large",
    ),
    pytest.param(
        lambda: ocra.verify(
            SUITE_C, SECRET_KEY, SECRET_RESPONSE, question=QUESTION, counter=2**100
        ),
        "counter",
        "must be an integer from 0 to 2**64-1",
        id="counter-huge-verify",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_PIN, SECRET_KEY, question=QUESTION),
        "pin",
        "required: the suite has a P data input (give pin or pin_hash)",
        id="pin-missing",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE, SECRET_KEY, question=QUESTION, pin=SECRET_PIN),
        "pin",
        "the suite has no P (PIN) data input",
        id="pin-unexpected",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE, SECRET_KEY, question=QUESTION, pin_hash=SECRET_PIN_HASH),
        "pin",
        "not allowed: the suite has no P data input",
        id="pin-hash-unexpected",
    ),
    pytest.param(
        lambda: ocra.compute(
            SUITE_PIN, SECRET_KEY, question=QUESTION, pin=SECRET_PIN, pin_hash=SECRET_PIN_HASH
        ),
        "pin",
        "give pin or pin_hash, not both",
        id="pin-and-pin-hash",
    ),
    pytest.param(
        lambda: ocra.verify(
            SUITE_PIN,
            SECRET_KEY,
            SECRET_RESPONSE,
            question=QUESTION,
            pin=SECRET_PIN,
            pin_hash=SECRET_PIN_HASH.hex(),
        ),
        "pin",
        "give pin or pin_hash, not both",
        id="pin-and-pin-hash-hex-verify",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_PIN, SECRET_KEY, question=QUESTION, pin=""),
        "pin",
        "must not be empty",
        id="pin-empty",
    ),
    pytest.param(
        lambda: ocra.compute(
            SUITE_PIN, SECRET_KEY, question=QUESTION, pin_hash=SECRET_PIN_HASH[:-1]
        ),
        "pin_hash",
        "must be 20 bytes, the PSHA1 digest of the PIN",
        id="pin-hash-19-bytes",
    ),
    pytest.param(
        lambda: ocra.compute(
            SUITE_PIN, SECRET_KEY, question=QUESTION, pin_hash=SECRET_PIN_HASH + b"\x00"
        ),
        "pin_hash",
        "must be 20 bytes, the PSHA1 digest of the PIN",
        id="pin-hash-21-bytes",
    ),
    pytest.param(
        lambda: ocra.compute(
            "OCRA-1:HOTP-SHA1-8:QN06-PSHA256",
            SECRET_KEY,
            question=QUESTION,
            pin_hash=SECRET_PIN_HASH,
        ),
        "pin_hash",
        "must be 32 bytes, the PSHA256 digest of the PIN",
        id="pin-hash-sha256",
    ),
    pytest.param(
        lambda: ocra.compute(
            "OCRA-1:HOTP-SHA1-8:QN06-PSHA512",
            SECRET_KEY,
            question=QUESTION,
            pin_hash=SECRET_PIN_HASH.hex() * 2,
        ),
        "pin_hash",
        "must be 64 bytes, the PSHA512 digest of the PIN",
        id="pin-hash-sha512-hex",
    ),
    pytest.param(
        lambda: ocra.compute(
            SUITE_PIN, SECRET_KEY, question=QUESTION, pin_hash=SECRET_PIN_HASH.hex()[:-1]
        ),
        "pin_hash",
        "hex text must have an even number of hex digits 0-9, a-f",
        id="pin-hash-hex-odd",
    ),
    pytest.param(
        lambda: ocra.compute(
            SUITE_PIN, SECRET_KEY, question=QUESTION, pin_hash=SECRET_PIN_HASH.hex()[:-2] + "zz"
        ),
        "pin_hash",
        "hex text must have an even number of hex digits 0-9, a-f",
        id="pin-hash-hex-not-hex",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_PIN, SECRET_KEY, question=QUESTION, pin_hash="é" * 20),
        "pin_hash",
        "hex text must have an even number of hex digits 0-9, a-f",
        id="pin-hash-hex-non-ascii",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_S, SECRET_KEY, question=QUESTION),
        "session",
        "required: the suite has an S data input",
        id="session-missing",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE, SECRET_KEY, question=QUESTION, session=SECRET_SESSION),
        "session",
        "not allowed: the suite has no S data input",
        id="session-unexpected",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_S, SECRET_KEY, question=QUESTION, session=SECRET_SESSION[:-1]),
        "session",
        "must be exactly 64 bytes (S064)",
        id="session-63-bytes",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_S, SECRET_KEY, question=QUESTION, session=SECRET_SESSION + b"x"),
        "session",
        "must be exactly 64 bytes (S064)",
        id="session-65-bytes",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_T, SECRET_KEY, question=QUESTION),
        "timestamp",
        "required: the suite has a T data input",
        id="timestamp-missing",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE, SECRET_KEY, question=QUESTION, timestamp=0),
        "timestamp",
        "not allowed: the suite has no T data input",
        id="timestamp-unexpected",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_T, SECRET_KEY, question=QUESTION, timestamp=-1),
        "timestamp",
        "must be a non-negative Unix time in seconds",
        id="timestamp-negative",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_T, SECRET_KEY, question=QUESTION, timestamp=2**64),
        "timestamp",
        "must be a non-negative Unix time in seconds",
        id="timestamp-too-large",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_T, SECRET_KEY, question=QUESTION, timestamp=-0.5),
        "timestamp",
        "must be a finite, non-negative Unix time in seconds",
        id="timestamp-negative-float",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_T, SECRET_KEY, question=QUESTION, timestamp=float("nan")),
        "timestamp",
        "must be a finite, non-negative Unix time in seconds",
        id="timestamp-nan",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_T, SECRET_KEY, question=QUESTION, timestamp=float("inf")),
        "timestamp",
        "must be a finite, non-negative Unix time in seconds",
        id="timestamp-inf",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE, b"", question=QUESTION),
        "key",
        "must not be empty",
        id="ocra-key-empty",
    ),
    pytest.param(
        lambda: ocra.verify(SUITE, b"", SECRET_RESPONSE, question=QUESTION),
        "key",
        "must not be empty",
        id="ocra-verify-key-empty",
    ),
    pytest.param(
        lambda: hotp.compute(b"", 0),
        "key",
        "must not be empty",
        id="hotp-key-empty",
    ),
    pytest.param(
        lambda: totp.verify(b"", SECRET_RESPONSE, 0),
        "key",
        "must not be empty",
        id="totp-key-empty",
    ),
    pytest.param(
        lambda: hotp.compute(SECRET_KEY, -1),
        "counter",
        "must be an integer from 0 to 2**64-1",
        id="hotp-counter-negative",
    ),
    pytest.param(
        lambda: hotp.verify(SECRET_KEY, SECRET_RESPONSE, 2**64, digits=8),
        "counter",
        "must be an integer from 0 to 2**64-1",
        id="hotp-counter-too-large",
    ),
    pytest.param(
        lambda: hotp.compute(SECRET_KEY, 0, digits=5),
        "digits",
        "must be from 6 to 10 (RFC 4226 section 5.3)",
        id="hotp-digits-5",
    ),
    pytest.param(
        lambda: totp.compute(SECRET_KEY, 0, digits=11),
        "digits",
        "must be from 6 to 10 (RFC 4226 section 5.3)",
        id="totp-digits-11",
    ),
    pytest.param(
        lambda: hotp.compute(SECRET_KEY, 0, algorithm="md5"),
        "algorithm",
        'must be one of "sha1", "sha256", "sha512"',
        id="hotp-algorithm-md5",
    ),
    pytest.param(
        lambda: hotp.verify(SECRET_KEY, SECRET_RESPONSE, 0, window=1001, digits=8),
        "window",
        "must be at most 1000",
        id="hotp-window-1001",
    ),
    pytest.param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, 0, window=1001, digits=8),
        "window",
        "must be at most 1000 steps each side",
        id="totp-window-1001",
    ),
    pytest.param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, 0, window=(0, 1001), digits=8),
        "window",
        "must be at most 1000 steps each side",
        id="totp-window-ahead-1001",
    ),
    pytest.param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, 0, window=-1, digits=8),
        "window",
        "must be an integer from 0 to 2**64-1",
        id="totp-window-negative",
    ),
    pytest.param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, 0, window=(1, 2, 3), digits=8),
        "window",
        "a tuple window must be (look_behind, look_ahead)",
        id="totp-window-3-tuple",
    ),
    pytest.param(
        lambda: totp.compute(SECRET_KEY, 0, step=0),
        "step",
        "must be at least 1 second",
        id="totp-step-0",
    ),
    pytest.param(
        lambda: totp.compute(SECRET_KEY, 99, t0=100),
        "unix_time",
        "must not be before t0",
        id="totp-before-t0",
    ),
    pytest.param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, -1, digits=8),
        "unix_time",
        "must be a non-negative Unix time in seconds",
        id="totp-time-negative",
    ),
    pytest.param(
        lambda: totp.compute(SECRET_KEY, float("-inf")),
        "unix_time",
        "must be a finite, non-negative Unix time in seconds",
        id="totp-time-inf",
    ),
]


@pytest.mark.parametrize(("call", "field", "rule"), SCALAR_CASES)
def test_bad_scalar_input_names_field_and_rule_without_secrets(
    call: Callable[[], Any], field: str, rule: str
) -> None:
    check(call, field, rule)


# --------------------------------------------------------------------------------------
# Wrong Python types.
# --------------------------------------------------------------------------------------

TYPE_CASES: list[Any] = [
    pytest.param(
        lambda: ocra.verify(SUITE, SECRET_KEY, 97531864, question=QUESTION),
        "response",
        "expected str or bytes, got int",
        id="response-int",
    ),
    pytest.param(
        lambda: ocra.verify(SUITE, SECRET_KEY, None, question=QUESTION),
        "response",
        "expected str or bytes, got NoneType",
        id="response-none",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE, SECRET_KEY.decode(), question=QUESTION),
        "key",
        "expected bytes, got str",
        id="key-str",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE, None, question=QUESTION),
        "key",
        "expected bytes, got NoneType",
        id="key-none",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE, list(SECRET_KEY), question=QUESTION),
        "key",
        "expected bytes, got list",
        id="key-list",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE, SECRET_KEY, question=None),
        "question",
        "expected str or bytes, got NoneType",
        id="question-none",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE, SECRET_KEY, question=123456),
        "question",
        "expected str or bytes, got int",
        id="question-int",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_PIN, SECRET_KEY, question=QUESTION, pin=5816),
        "pin",
        "expected str or bytes, got int",
        id="pin-int",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_PIN, SECRET_KEY, question=QUESTION, pin_hash=12345),
        "pin_hash",
        "expected bytes, got int",
        id="pin-hash-int",
    ),
    pytest.param(
        lambda: ocra.compute(
            SUITE_S, SECRET_KEY, question=QUESTION, session=SECRET_SESSION.decode()
        ),
        "session",
        "expected bytes, got str",
        id="session-str",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_C, SECRET_KEY, question=QUESTION, counter=1.0),
        "counter",
        "expected int, got float",
        id="counter-float",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_C, SECRET_KEY, question=QUESTION, counter="1"),
        "counter",
        "expected int, got str",
        id="counter-str",
    ),
    pytest.param(
        lambda: ocra.compute(SUITE_T, SECRET_KEY, question=QUESTION, timestamp="0"),
        "timestamp",
        "expected int, got str",
        id="timestamp-str",
    ),
    pytest.param(
        lambda: hotp.verify(SECRET_KEY, 97531864, 0, digits=8),
        "code",
        "expected str or bytes, got int",
        id="hotp-code-int",
    ),
    pytest.param(
        lambda: hotp.compute(SECRET_KEY, "0"),
        "counter",
        "expected int, got str",
        id="hotp-counter-str",
    ),
    pytest.param(
        lambda: totp.compute(SECRET_KEY, "0"),
        "unix_time",
        "expected int, got str",
        id="totp-time-str",
    ),
    pytest.param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, 0, window=[1, 1]),
        "window",
        "expected int or (look_behind, look_ahead), got list",
        id="totp-window-list",
    ),
    pytest.param(
        lambda: hotp.verify_batch([SECRET_KEY], [SECRET_RESPONSE], [0], window=(1, 1)),
        "window",
        "expected int, got tuple",
        id="hotp-batch-window-tuple",
    ),
]


@pytest.mark.parametrize(("call", "field", "rule"), TYPE_CASES)
def test_wrong_python_type_is_invalid_input_type_error(
    call: Callable[[], Any], field: str, rule: str
) -> None:
    exc = check(call, field, rule, InvalidInputTypeError)
    assert isinstance(exc, TypeError)


# Parameters the bindings once converted with PyO3's own u8/u64/usize/&str extraction,
# which raised a plain OverflowError or TypeError: each now raises the sls_core error that
# names the field and the rule.
FULL_RANGE = "must be an integer from 0 to 2**64-1"
OTP_DIGITS = "must be from 6 to 10 (RFC 4226 section 5.3)"
STEP_RANGE = "must be at least 1 second and at most 2**64-1"
_BATCH_ARGS = ([SECRET_KEY], [SECRET_RESPONSE], [0])


def _param(
    call: Callable[[], Any],
    field: str,
    rule: str,
    case_id: str,
    cls: type[InvalidInputError] = InvalidInputError,
) -> Any:
    return pytest.param(call, field, rule, cls, id=case_id)


NOT_SLS_ERROR_CASES: list[Any] = [
    # digits: negative, beyond u8, beyond any machine integer; float, numpy scalar.
    _param(
        lambda: hotp.compute(SECRET_KEY, 0, digits=-1), "digits", OTP_DIGITS, "hotp-digits-negative"
    ),
    _param(
        lambda: hotp.compute(SECRET_KEY, 0, digits=300), "digits", OTP_DIGITS, "hotp-digits-300"
    ),
    _param(
        lambda: hotp.verify(SECRET_KEY, SECRET_RESPONSE, 0, digits=2**200),
        "digits",
        OTP_DIGITS,
        "hotp-verify-digits-2**200",
    ),
    _param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, 0, digits=-(2**200)),
        "digits",
        OTP_DIGITS,
        "totp-verify-digits-minus-2**200",
    ),
    _param(
        lambda: hotp.verify_batch(*_BATCH_ARGS, digits=-1),
        "digits",
        OTP_DIGITS,
        "hotp-batch-digits-negative",
    ),
    _param(
        lambda: totp.compute_batch([SECRET_KEY], [0], digits=256),
        "digits",
        OTP_DIGITS,
        "totp-compute-batch-digits-256",
    ),
    _param(
        lambda: hotp.compute(SECRET_KEY, 0, digits=8.0),
        "digits",
        "expected int, got float",
        "hotp-digits-float",
        InvalidInputTypeError,
    ),
    _param(
        lambda: hotp.compute(SECRET_KEY, 0, digits=np.int64(8)),
        "digits",
        "expected int, got int64",  # as for counters: Python int only
        "hotp-digits-numpy-scalar",
        InvalidInputTypeError,
    ),
    # step and t0.
    _param(lambda: totp.compute(SECRET_KEY, 0, step=-30), "step", STEP_RANGE, "totp-step-negative"),
    _param(lambda: totp.compute(SECRET_KEY, 0, step=2**64), "step", STEP_RANGE, "totp-step-2**64"),
    _param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, 0, step=-1),
        "step",
        STEP_RANGE,
        "totp-verify-step-negative",
    ),
    _param(
        lambda: totp.verify_batch(*_BATCH_ARGS, step=-30),
        "step",
        STEP_RANGE,
        "totp-batch-step-negative",
    ),
    _param(
        lambda: totp.compute(SECRET_KEY, 0, step="30"),
        "step",
        "expected int, got str",
        "totp-step-str",
        InvalidInputTypeError,
    ),
    _param(lambda: totp.compute(SECRET_KEY, 0, t0=-1), "t0", FULL_RANGE, "totp-t0-negative"),
    _param(lambda: totp.compute(SECRET_KEY, 0, t0=2**64), "t0", FULL_RANGE, "totp-t0-2**64"),
    _param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, 0, t0=-1),
        "t0",
        FULL_RANGE,
        "totp-verify-t0-negative",
    ),
    _param(
        lambda: totp.compute_batch([SECRET_KEY], [0], t0=-1),
        "t0",
        FULL_RANGE,
        "totp-compute-batch-t0-negative",
    ),
    _param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, 0, t0=None),
        "t0",
        "expected int, got NoneType",
        "totp-t0-none",
        InvalidInputTypeError,
    ),
    # window: HOTP's int, TOTP's int or tuple, scalar and batch.
    _param(
        lambda: hotp.verify(SECRET_KEY, SECRET_RESPONSE, 0, window=-1),
        "window",
        FULL_RANGE,
        "hotp-window-negative",
    ),
    _param(
        lambda: hotp.verify(SECRET_KEY, SECRET_RESPONSE, 0, window=2**64),
        "window",
        FULL_RANGE,
        "hotp-window-2**64",
    ),
    _param(
        lambda: hotp.verify(SECRET_KEY, SECRET_RESPONSE, 0, window=1.5),
        "window",
        "expected int, got float",
        "hotp-window-float",
        InvalidInputTypeError,
    ),
    _param(
        lambda: hotp.verify_batch(*_BATCH_ARGS, window=2**64),
        "window",
        FULL_RANGE,
        "hotp-batch-window-2**64",
    ),
    _param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, 0, window=(-1, 1)),
        "window",
        FULL_RANGE,
        "totp-window-tuple-negative",
    ),
    _param(
        lambda: totp.verify_batch(*_BATCH_ARGS, window=(0, 2**64)),
        "window",
        FULL_RANGE,
        "totp-batch-window-tuple-2**64",
    ),
    # threads, on every batch entry point and KeyTable.
    _param(
        lambda: ocra.verify_batch(SUITE, [SECRET_KEY], [QUESTION], [SECRET_RESPONSE], threads=-1),
        "threads",
        "must be at least 1",
        "threads-negative",
    ),
    _param(
        lambda: ocra.compute_batch(SUITE, [SECRET_KEY], [QUESTION], threads=2**70),
        "threads",
        "must be at most 1024",
        "compute-batch-threads-2**70",
    ),
    _param(
        lambda: hotp.verify_batch(*_BATCH_ARGS, threads=-(2**70)),
        "threads",
        "must be at least 1",
        "hotp-batch-threads-minus-2**70",
    ),
    _param(
        lambda: totp.compute_batch([SECRET_KEY], [0], threads=-1),
        "threads",
        "must be at least 1",
        "totp-compute-batch-threads-negative",
    ),
    _param(
        lambda: KeyTable([SECRET_KEY], threads=-1),
        "threads",
        "must be at least 1",
        "keytable-threads-negative",
    ),
    _param(
        lambda: ocra.verify_batch(SUITE, [SECRET_KEY], [QUESTION], [SECRET_RESPONSE], threads=2.0),
        "threads",
        "expected int, got float",
        "threads-float",
        InvalidInputTypeError,
    ),
    # suite: every entry point that takes one.
    _param(
        lambda: ocra.compute(12345, SECRET_KEY, question=QUESTION),
        "suite",
        "expected str, got int",
        "suite-int",
        InvalidInputTypeError,
    ),
    _param(
        lambda: ocra.verify(SUITE.encode(), SECRET_KEY, SECRET_RESPONSE, question=QUESTION),
        "suite",
        "expected str, got bytes",
        "verify-suite-bytes",
        InvalidInputTypeError,
    ),
    _param(
        lambda: ocra.verify_batch(None, [SECRET_KEY], [QUESTION], [SECRET_RESPONSE]),
        "suite",
        "expected str, got NoneType",
        "verify-batch-suite-none",
        InvalidInputTypeError,
    ),
    _param(
        lambda: ocra.compute_batch(1, [SECRET_KEY], [QUESTION]),
        "suite",
        "expected str, got int",
        "compute-batch-suite-int",
        InvalidInputTypeError,
    ),
    _param(
        lambda: ocra.parse_suite(12345),
        "suite",
        "expected str, got int",
        "parse-suite-int",
        InvalidInputTypeError,
    ),
    _param(
        lambda: ocra.verify(SUITE + "\ud800", SECRET_KEY, SECRET_RESPONSE, question=QUESTION),
        "suite",
        "must be text without lone surrogates",
        "suite-lone-surrogate",
        InvalidSuiteError,
    ),
    # algorithm: scalar, batch and KeyTable.
    _param(
        lambda: hotp.compute(SECRET_KEY, 0, algorithm=None),
        "algorithm",
        "expected str, got NoneType",
        "algorithm-none",
        InvalidInputTypeError,
    ),
    _param(
        lambda: totp.verify(SECRET_KEY, SECRET_RESPONSE, 0, algorithm=b"sha1"),
        "algorithm",
        "expected str, got bytes",
        "totp-algorithm-bytes",
        InvalidInputTypeError,
    ),
    _param(
        lambda: hotp.verify_batch(*_BATCH_ARGS, algorithm=1),
        "algorithm",
        "expected str, got int",
        "hotp-batch-algorithm-int",
        InvalidInputTypeError,
    ),
    _param(
        lambda: KeyTable([SECRET_KEY], algorithm=None),
        "algorithm",
        "expected str, got NoneType",
        "keytable-algorithm-none",
        InvalidInputTypeError,
    ),
]


@pytest.mark.parametrize(("call", "field", "rule", "cls"), NOT_SLS_ERROR_CASES)
def test_out_of_range_or_ill_typed_parameter_raises_an_sls_error(
    call: Callable[[], Any], field: str, rule: str, cls: type[InvalidInputError]
) -> None:
    exc = check(call, field, rule, cls)
    # Raised directly, not on top of a PyO3 OverflowError/TypeError.
    assert exc.__cause__ is None
    assert exc.__context__ is None


def test_pin_hash_hex_text_with_plus_signs_is_refused() -> None:
    check(
        lambda: ocra.compute(SUITE_PIN, SECRET_KEY, question=QUESTION, pin_hash="+1" * 20),
        "pin_hash",
        "hex text must have an even number of hex digits 0-9, a-f",
    )


def test_response_with_lone_surrogate_is_malformed_not_an_error() -> None:
    assert ocra.verify(SUITE, SECRET_KEY, "9753186\ud800", question=QUESTION) is False


@pytest.mark.parametrize("column", ["questions", "responses"])
def test_lone_surrogate_in_one_row_is_malformed_for_that_row_only(column: str) -> None:
    right = ocra.compute(SUITE, SECRET_KEY, question=QUESTION)
    columns = {"questions": [QUESTION, QUESTION], "responses": [right, right]}
    columns[column][0] = columns[column][0][:-1] + "\ud800"
    outcomes = ocra.verify_batch(SUITE, [SECRET_KEY] * 2, **columns)
    assert outcomes.tolist() == [Outcome.MALFORMED, Outcome.OK]


def test_numpy_u_column_with_lone_surrogate_is_not_a_raw_unicode_error() -> None:
    right = ocra.compute(SUITE, SECRET_KEY, question=QUESTION)
    responses = np.array([right[:-1] + "\ud800", right])
    try:
        outcomes = ocra.verify_batch(SUITE, [SECRET_KEY] * 2, [QUESTION] * 2, responses)
    except SlsError:
        return
    assert outcomes.tolist() == [Outcome.MALFORMED, Outcome.OK]


# --------------------------------------------------------------------------------------
# Batch columns.
# --------------------------------------------------------------------------------------


def _verify(suite: str = SUITE, n: int = 2, **overrides: Any) -> Any:
    """verify_batch with n valid-shaped rows, some columns overridden."""
    columns: dict[str, Any] = {
        "keys": [SECRET_KEY] * n,
        "questions": [QUESTION] * n,
        "responses": [SECRET_RESPONSE] * n,
    }
    columns.update(overrides)
    return ocra.verify_batch(suite, **columns)


TABLE = KeyTable([SECRET_KEY, SECRET_KEY + b"2"])

BATCH_CASES: list[Any] = [
    pytest.param(lambda: _verify(threads=0), "threads", "must be at least 1", id="threads-0"),
    pytest.param(
        lambda: _verify(threads=1025), "threads", "must be at most 1024", id="threads-1025"
    ),
    pytest.param(
        lambda: ocra.compute_batch(SUITE, [SECRET_KEY], [QUESTION], threads=0),
        "threads",
        "must be at least 1",
        id="compute-batch-threads-0",
    ),
    pytest.param(
        lambda: hotp.verify_batch([SECRET_KEY], [SECRET_RESPONSE], [0], threads=0),
        "threads",
        "must be at least 1",
        id="hotp-batch-threads-0",
    ),
    pytest.param(
        lambda: KeyTable([SECRET_KEY], threads=0),
        "threads",
        "must be at least 1",
        id="keytable-threads-0",
    ),
    pytest.param(
        lambda: _verify(key_index=[0, 0]),
        "key_index",
        "only allowed when keys is a KeyTable",
        id="key-index-without-table",
    ),
    pytest.param(
        lambda: hotp.verify_batch([SECRET_KEY], [SECRET_RESPONSE], [0], key_index=[0]),
        "key_index",
        "only allowed when keys is a KeyTable",
        id="hotp-key-index-without-table",
    ),
    pytest.param(
        lambda: _verify(keys=TABLE, key_index=[0, 2]),
        "key_index",
        "row 1: 2 is out of range for 2 prepared keys",
        id="key-index-out-of-range",
    ),
    pytest.param(
        lambda: _verify(keys=TABLE, key_index=np.array([0, 2**40], dtype=np.uint64)),
        "key_index",
        "row 1: 1099511627776 is out of range for 2 prepared keys",
        id="key-index-far-out-of-range",
    ),
    pytest.param(
        lambda: _verify(keys=TABLE, key_index=np.array([0, -1])),
        "key_index",
        "must not contain negative values",
        id="key-index-negative-numpy",
    ),
    pytest.param(
        lambda: _verify(keys=TABLE, key_index=[0, -1]),
        "key_index",
        "row 1: must be an integer from 0 to 2**64-1",
        id="key-index-negative-list",
    ),
    pytest.param(
        lambda: _verify(keys=TABLE, key_index=np.array([0.0, 1.0])),
        "key_index",
        "a numpy column of integers must be a 1-D integer array",
        id="key-index-float",
    ),
    pytest.param(
        lambda: _verify(keys=TABLE, key_index=[0, 1, 0]),
        "keys",
        "has 3 rows but the batch has 2",
        id="key-index-length",
    ),
    pytest.param(
        lambda: _verify(keys=KeyTable([SECRET_KEY] * 3)),
        "keys",
        "has 3 rows but the batch has 2",
        id="keytable-length",
    ),
    pytest.param(
        lambda: _verify(suite="OCRA-1:HOTP-SHA256-8:QN06", keys=TABLE),
        "keys",
        "prepared for sha1 but the computation uses sha256",
        id="keytable-algorithm",
    ),
    pytest.param(
        lambda: hotp.verify_batch(TABLE, [SECRET_RESPONSE] * 2, [0, 0], algorithm="sha512"),
        "keys",
        "prepared for sha1 but the computation uses sha512",
        id="hotp-keytable-algorithm",
    ),
    pytest.param(
        lambda: KeyTable([SECRET_KEY, b""]),
        "keys",
        "row 1: must not be empty",
        id="keytable-empty-key",
    ),
    pytest.param(
        lambda: KeyTable([SECRET_KEY], algorithm="md5"),
        "algorithm",
        'must be one of "sha1", "sha256", "sha512"',
        id="keytable-algorithm-md5",
    ),
    pytest.param(
        lambda: ocra.compute_batch(SUITE, [SECRET_KEY, b""], [QUESTION] * 2),
        "keys",
        "row 1: must not be empty",
        id="compute-batch-empty-key",
    ),
    pytest.param(
        lambda: hotp.compute_batch([SECRET_KEY, b""], [0, 0]),
        "keys",
        "row 1: must not be empty",
        id="hotp-compute-batch-empty-key",
    ),
    pytest.param(
        lambda: totp.compute_batch([SECRET_KEY] * 2, [100, 5], t0=50),
        "unix_time",
        "row 1: must not be before t0",
        id="totp-compute-batch-before-t0",
    ),
    pytest.param(
        lambda: ocra.compute_batch(
            SUITE_PIN, [SECRET_KEY], [QUESTION], pin_hashes=[SECRET_PIN_HASH[:-1]]
        ),
        "pin_hash",
        "row 0: must be 20 bytes, the PSHA1 digest of the PIN",
        id="compute-batch-pin-hash-length",
    ),
    # Column lengths.
    pytest.param(
        lambda: _verify(keys=[SECRET_KEY] * 3),
        "keys",
        "has 3 rows but the batch has 2",
        id="keys-length",
    ),
    pytest.param(
        lambda: _verify(responses=[SECRET_RESPONSE]),
        "responses",
        "has 1 rows but the batch has 2",
        id="responses-length",
    ),
    pytest.param(
        lambda: _verify(SUITE_C, counters=[0, 1, 2]),
        "counters",
        "has 3 rows but the batch has 2",
        id="counters-length",
    ),
    pytest.param(
        lambda: _verify(SUITE_PIN, pin_hashes=[SECRET_PIN_HASH]),
        "pin_hashes",
        "has 1 rows but the batch has 2",
        id="pin-hashes-length",
    ),
    pytest.param(
        lambda: _verify(SUITE_T, timestamps=np.zeros(5, np.int64)),
        "timestamps",
        "has 5 rows but the batch has 2",
        id="timestamps-length",
    ),
    pytest.param(
        lambda: _verify(SUITE_S, sessions=[SECRET_SESSION] * 3),
        "sessions",
        "has 3 rows but the batch has 2",
        id="sessions-length",
    ),
    pytest.param(
        lambda: hotp.verify_batch([SECRET_KEY], [SECRET_RESPONSE] * 2, [0]),
        "codes",
        "has 2 rows but the batch has 1",
        id="hotp-codes-length",
    ),
    pytest.param(
        lambda: totp.verify_batch([SECRET_KEY] * 2, [SECRET_RESPONSE], [0]),
        "keys",
        "has 2 rows but the batch has 1",
        id="totp-keys-length",
    ),
    pytest.param(
        lambda: hotp.compute_batch([SECRET_KEY] * 2, [0]),
        "keys",
        "has 2 rows but the batch has 1",
        id="hotp-compute-keys-length",
    ),
    # Columns missing or not used by the suite.
    pytest.param(
        lambda: _verify(SUITE_C), "counters", "required by the suite", id="counters-missing"
    ),
    pytest.param(
        lambda: _verify(counters=[0, 0]),
        "counters",
        "not allowed: the suite does not use it",
        id="counters-unexpected",
    ),
    pytest.param(
        lambda: _verify(SUITE_PIN), "pin_hashes", "required by the suite", id="pin-hashes-missing"
    ),
    pytest.param(
        lambda: _verify(pin_hashes=[SECRET_PIN_HASH] * 2),
        "pin_hashes",
        "not allowed: the suite does not use it",
        id="pin-hashes-unexpected",
    ),
    pytest.param(
        lambda: _verify(SUITE_S), "sessions", "required by the suite", id="sessions-missing"
    ),
    pytest.param(
        lambda: _verify(sessions=[SECRET_SESSION] * 2),
        "sessions",
        "not allowed: the suite does not use it",
        id="sessions-unexpected",
    ),
    pytest.param(
        lambda: _verify(SUITE_T), "timestamps", "required by the suite", id="timestamps-missing"
    ),
    pytest.param(
        lambda: _verify(timestamps=[0, 0]),
        "timestamps",
        "not allowed: the suite does not use it",
        id="timestamps-unexpected",
    ),
    pytest.param(
        lambda: ocra.compute_batch(
            SUITE_ALL,
            [SECRET_KEY],
            [QUESTION],
            counters=[0],
            pin_hashes=[SECRET_PIN_HASH],
            timestamps=[0],
        ),
        "sessions",
        "required by the suite",
        id="compute-batch-sessions-missing",
    ),
    # Integer columns.
    pytest.param(
        lambda: _verify(SUITE_C, counters=np.array([0, -1])),
        "counters",
        "must not contain negative values",
        id="counters-negative-int64",
    ),
    pytest.param(
        lambda: _verify(SUITE_C, counters=[0, -1]),
        "counters",
        "row 1: must be an integer from 0 to 2**64-1",
        id="counters-negative-list",
    ),
    pytest.param(
        lambda: _verify(SUITE_C, counters=[0, 2**64]),
        "counters",
        "row 1: must be an integer from 0 to 2**64-1",
        id="counters-too-large-list",
    ),
    pytest.param(
        lambda: _verify(SUITE_C, counters=np.array([0.0, 1.0])),
        "counters",
        "a numpy column of integers must be a 1-D integer array",
        id="counters-float",
    ),
    pytest.param(
        lambda: _verify(SUITE_C, counters=np.array([True, False])),
        "counters",
        "a numpy column of integers must be a 1-D integer array",
        id="counters-bool",
    ),
    pytest.param(
        lambda: _verify(SUITE_C, counters=np.zeros((2, 1), np.uint64)),
        "counters",
        "a numpy column of integers must be a 1-D integer array",
        id="counters-2d",
    ),
    pytest.param(
        lambda: _verify(SUITE_T, timestamps=np.array([0, -60])),
        "timestamps",
        "must not contain negative values",
        id="timestamps-negative",
    ),
    pytest.param(
        lambda: _verify(SUITE_T, timestamps=np.array([0.5, 1.5])),
        "timestamps",
        "a numpy column of integers must be a 1-D integer array",
        id="timestamps-float",
    ),
    pytest.param(
        lambda: hotp.verify_batch([SECRET_KEY], [SECRET_RESPONSE], np.array([-1])),
        "counters",
        "must not contain negative values",
        id="hotp-counters-negative",
    ),
    pytest.param(
        lambda: totp.verify_batch([SECRET_KEY], [SECRET_RESPONSE], np.array([-1])),
        "unix_times",
        "must not contain negative values",
        id="totp-times-negative",
    ),
    pytest.param(
        lambda: hotp.verify_batch([SECRET_KEY], [SECRET_RESPONSE], [0], window=1001),
        "window",
        "must be at most 1000",
        id="hotp-batch-window-1001",
    ),
    pytest.param(
        lambda: hotp.verify_batch([SECRET_KEY], [SECRET_RESPONSE], [0], window=-1),
        "window",
        "must be an integer from 0 to 2**64-1",
        id="hotp-batch-window-negative",
    ),
    pytest.param(
        lambda: totp.verify_batch([SECRET_KEY], [SECRET_RESPONSE], [0], window=(1001, 0)),
        "window",
        "must be at most 1000 steps each side",
        id="totp-batch-window-1001",
    ),
    pytest.param(
        lambda: hotp.verify_batch([SECRET_KEY], [SECRET_RESPONSE], [0], digits=5),
        "digits",
        "must be from 6 to 10",
        id="hotp-batch-digits-5",
    ),
    pytest.param(
        lambda: totp.compute_batch([SECRET_KEY], [0], step=0),
        "step",
        "must be at least 1 second",
        id="totp-batch-step-0",
    ),
    # numpy arrays of the wrong shape or dtype.
    pytest.param(
        lambda: _verify(keys=np.zeros((2, 20), np.int64)),
        "keys",
        "a numpy column must be 1-D (S or U dtype) or a 2-D uint8 matrix",
        id="keys-2d-int64",
    ),
    pytest.param(
        lambda: _verify(keys=np.zeros((2, 20), np.int8)),
        "keys",
        "a numpy column must be 1-D (S or U dtype) or a 2-D uint8 matrix",
        id="keys-2d-int8",
    ),
    pytest.param(
        lambda: _verify(keys=np.zeros((2, 10), np.uint16)),
        "keys",
        "a numpy column must be 1-D (S or U dtype) or a 2-D uint8 matrix",
        id="keys-2d-uint16",
    ),
    pytest.param(
        lambda: _verify(keys=np.zeros((2, 20), np.float64)),
        "keys",
        "a numpy column must be 1-D (S or U dtype) or a 2-D uint8 matrix",
        id="keys-2d-float",
    ),
    pytest.param(
        lambda: _verify(keys=np.array([[SECRET_KEY], [SECRET_KEY]])),
        "keys",
        "a numpy column must be 1-D (S or U dtype) or a 2-D uint8 matrix",
        id="keys-2d-S",
    ),
    pytest.param(
        lambda: _verify(keys=np.zeros((2, 1, 20), np.uint8)),
        "keys",
        "a numpy column must be 1-D (S or U dtype) or a 2-D uint8 matrix",
        id="keys-3d-uint8",
    ),
    pytest.param(
        lambda: _verify(responses=np.zeros((2, 8), np.int64)),
        "responses",
        "a numpy column must be 1-D (S or U dtype) or a 2-D uint8 matrix",
        id="responses-2d-int64",
    ),
    pytest.param(
        lambda: _verify(questions=np.array([[QUESTION], [QUESTION]])),
        "questions",
        "a numpy column must be 1-D (S or U dtype) or a 2-D uint8 matrix",
        id="questions-2d-U",
    ),
    pytest.param(
        lambda: _verify(keys=np.zeros(2)),
        "keys",
        "expected a numpy S array or 2-D uint8 matrix, got dtype kind 'f'",
        id="keys-1d-float",
    ),
    pytest.param(
        lambda: _verify(keys=np.array([SECRET_KEY.decode()] * 2)),
        "keys",
        "expected a numpy S array or 2-D uint8 matrix, got dtype kind 'U'",
        id="keys-1d-U",
    ),
    pytest.param(
        lambda: _verify(questions=np.array([123456, 123456])),
        "questions",
        "expected a numpy S or U array, got dtype kind 'i'",
        id="questions-1d-int",
    ),
    pytest.param(
        lambda: _verify(responses=np.array([97531864, 97531864])),
        "responses",
        "expected a numpy S or U array, got dtype kind 'i'",
        id="responses-1d-int",
    ),
    pytest.param(
        lambda: _verify(SUITE_PIN, pin_hashes=np.array([SECRET_PIN_HASH.hex()] * 2)),
        "pin_hashes",
        "expected a numpy S array or 2-D uint8 matrix, got dtype kind 'U'",
        id="pin-hashes-1d-U",
    ),
]


@pytest.mark.parametrize(("call", "field", "rule"), BATCH_CASES)
def test_bad_batch_argument_names_the_column_and_rule_without_secrets(
    call: Callable[[], Any], field: str, rule: str
) -> None:
    check(call, field, rule)


BATCH_TYPE_CASES: list[Any] = [
    pytest.param(
        lambda: _verify(keys=SECRET_KEY),
        "keys",
        "expected a sequence of byte strings, one per item, got bytes",
        id="keys-bytes-not-a-column",
    ),
    pytest.param(
        lambda: _verify(keys=SECRET_KEY.decode()),
        "keys",
        "expected a sequence of byte strings, one per item, got str",
        id="keys-str-not-a-column",
    ),
    pytest.param(
        lambda: _verify(keys=12345),
        "keys",
        "expected a sequence or numpy array, got int",
        id="keys-int",
    ),
    pytest.param(
        lambda: _verify(keys=[SECRET_KEY, SECRET_KEY.decode()]),
        "keys",
        "row 1: expected bytes, got str",
        id="keys-row-str",
    ),
    pytest.param(
        lambda: _verify(responses=[SECRET_RESPONSE, 97531864]),
        "responses",
        "row 1: expected str or bytes, got int",
        id="responses-row-int",
    ),
    pytest.param(
        lambda: _verify(responses=SECRET_RESPONSE),
        "responses",
        "expected a sequence of byte strings, one per item, got str",
        id="responses-str-not-a-column",
    ),
    pytest.param(
        lambda: _verify(questions=[QUESTION, None]),
        "questions",
        "row 1: expected str or bytes, got NoneType",
        id="questions-row-none",
    ),
    pytest.param(
        lambda: _verify(SUITE_PIN, pin_hashes=[SECRET_PIN_HASH.hex()] * 2),
        "pin_hashes",
        "row 0: expected bytes, got str",
        id="pin-hashes-row-str",
    ),
    pytest.param(
        lambda: _verify(SUITE_C, counters=[0, 1.0]),
        "counters",
        "expected int at row 1, got float",
        id="counters-row-float",
    ),
    pytest.param(
        lambda: _verify(SUITE_C, counters=[0, np.int64(1)]),
        "counters",
        "expected int at row 1, got int64",
        id="counters-row-numpy-scalar",
    ),
    pytest.param(
        lambda: _verify(SUITE_C, counters="01"),
        "counters",
        "expected a sequence of integers, one per item, got str",
        id="counters-str",
    ),
    pytest.param(
        lambda: _verify(SUITE_C, counters=7),
        "counters",
        "expected a sequence of integers, one per item, got int",
        id="counters-int",
    ),
    pytest.param(
        lambda: hotp.verify_batch([SECRET_KEY], [SECRET_RESPONSE], None),
        "counters",
        "expected a sequence or numpy array of integers, got NoneType",
        id="hotp-counters-none",
    ),
]


@pytest.mark.parametrize(("call", "field", "rule"), BATCH_TYPE_CASES)
def test_wrong_batch_column_type_is_invalid_input_type_error(
    call: Callable[[], Any], field: str, rule: str
) -> None:
    check(call, field, rule, InvalidInputTypeError)


# --------------------------------------------------------------------------------------
# Per-item problems in verify_batch: MALFORMED for that item, the others untouched.
# --------------------------------------------------------------------------------------


def test_per_item_bad_inputs_are_malformed_for_that_item_only() -> None:
    suite = SUITE_ALL
    pin_hash = psha1(b"2468")
    inputs = {
        "question": QUESTION,
        "counter": 7,
        "pin_hash": pin_hash,
        "session": SECRET_SESSION,
        "timestamp": 1_700_000_000,
    }
    right = ocra.compute(suite, SECRET_KEY, **inputs)
    rows = 6
    keys = [SECRET_KEY] * rows
    questions = [QUESTION] * rows
    pin_hashes = [pin_hash] * rows
    sessions = [SECRET_SESSION] * rows
    keys[1] = b""  # empty key
    questions[2] = "12345x"  # bad question
    pin_hashes[3] = pin_hash[:-1]  # wrong pin-hash length
    sessions[4] = SECRET_SESSION[:-1]  # wrong session length
    outcomes = ocra.verify_batch(
        suite,
        keys,
        questions,
        [right] * (rows - 1) + [SECRET_RESPONSE],
        counters=[7] * rows,
        pin_hashes=pin_hashes,
        sessions=sessions,
        timestamps=[1_700_000_000] * rows,
    )
    assert outcomes.tolist() == [
        Outcome.OK,
        Outcome.MALFORMED,
        Outcome.MALFORMED,
        Outcome.MALFORMED,
        Outcome.MALFORMED,
        Outcome.WRONG,
    ]


def test_totp_batch_item_before_t0_is_malformed_for_that_item_only() -> None:
    code = totp.compute(SECRET_KEY, 130, t0=50)
    result = totp.verify_batch([SECRET_KEY] * 2, [code, code], [130, 10], t0=50)
    assert result.outcomes.tolist() == [Outcome.OK, Outcome.MALFORMED]
    assert result.matched.tolist() == [(130 - 50) // 30, 0]


def test_error_classes_form_one_hierarchy() -> None:
    assert issubclass(InvalidInputError, SlsError)
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(InvalidSuiteError, InvalidInputError)
    assert issubclass(InvalidInputTypeError, InvalidInputError)
    assert issubclass(InvalidInputTypeError, TypeError)
    exc = InvalidInputError("key", "must not be empty")
    assert (exc.field, exc.rule, str(exc)) == ("key", "must not be empty", "key: must not be empty")
