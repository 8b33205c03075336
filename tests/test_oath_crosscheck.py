"""Cross-checks against independent implementations.

- OCRA: the ``oath`` package (1.4.5, ``oath.str2ocrasuite``), the reference library the
  untruncated (t = 0) response format follows, on random suites and inputs. Inputs stay
  within what oath accepts (alphanumeric QA, even-length QH, at most ``xx`` characters).
- oath's Unicode-digit bug: ``str.isdigit`` accepts non-ASCII decimal digits such as
  ARABIC-INDIC DIGIT ONE (U+0661), so oath silently computes a response for a QN question
  the user did not type in ASCII. sls_core must refuse those questions; that divergence is
  tested explicitly.
- HOTP/TOTP: ``pyotp``, ``cryptography.hazmat.primitives.twofactor`` and ``oath``.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import oath
import pyotp
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.twofactor import hotp as crypto_hotp
from cryptography.hazmat.primitives.twofactor import totp as crypto_totp
from hypothesis import assume, given
from hypothesis import strategies as st

from sls_core import InvalidInputError, Outcome, hotp, ocra, totp
from sls_strategies import SuiteSpec, ocra_inputs, psha1, suite_specs

HASHLIB = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
CRYPTOGRAPHY_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha512": hashes.SHA512}
ALGORITHMS = st.sampled_from(sorted(HASHLIB))
OATH_DIGITS = st.sampled_from([0, 4, 5, 6, 7, 8, 9, 10])


def oath_kwargs(spec: SuiteSpec, inputs: dict[str, Any]) -> dict[str, Any]:
    """sls_core keyword inputs as oath's OcraSuite keyword inputs (C, Q, P, S, T).

    The time goes in as oath's ``T_precomputed`` (the step count): oath's own ``T`` path
    calls ``int(None)`` on the missing precomputed value, which raises TypeError, and
    divides with floats.
    """
    names = {"counter": "C", "question": "Q", "pin": "P", "session": "S"}
    kwargs = {names[name]: value for name, value in inputs.items() if name in names}
    if "timestamp" in inputs:
        step = spec.step_seconds
        assert step is not None
        kwargs["T_precomputed"] = inputs["timestamp"] // step
    return kwargs


# --------------------------------------------------------------------------------------
# OCRA against oath.
# --------------------------------------------------------------------------------------


@given(data=st.data(), spec=suite_specs(digits=OATH_DIGITS))
def test_ocra_compute_equals_oath_on_random_suites(data: st.DataObject, spec: SuiteSpec) -> None:
    inputs = data.draw(ocra_inputs(spec, oath_compatible=True))
    key = inputs.pop("key")
    expected = oath.str2ocrasuite(spec.text)(key, **oath_kwargs(spec, inputs))
    assert ocra.compute(spec.text, key, **inputs) == expected
    assert ocra.verify(spec.text, key, expected, **inputs) is True


@given(data=st.data(), spec=suite_specs(digits=OATH_DIGITS))
def test_ocra_pin_hash_equals_oath_hashing_the_pin(data: st.DataObject, spec: SuiteSpec) -> None:
    """sls_core's ``pin_hash`` (digest or hex) against oath's ``P`` (oath hashes it).

    oath's own ``P_digest`` path cannot be used: it reads ``digest_size`` off the hashlib
    constructor and raises AttributeError.
    """
    assume(spec.pin is not None)
    inputs = data.draw(ocra_inputs(spec, oath_compatible=True))
    key = inputs.pop("key")
    expected = oath.str2ocrasuite(spec.text)(key, **oath_kwargs(spec, inputs))
    digest = spec.pin_hash(inputs.pop("pin"))
    assert ocra.compute(spec.text, key, pin_hash=digest, **inputs) == expected
    assert ocra.compute(spec.text, key, pin_hash=digest.hex(), **inputs) == expected


@given(data=st.data(), spec=suite_specs(digits=OATH_DIGITS, max_session=24))
def test_ocra_compute_batch_equals_oath(data: st.DataObject, spec: SuiteSpec) -> None:
    items = data.draw(st.lists(ocra_inputs(spec, oath_compatible=True), min_size=1, max_size=6))
    suite = oath.str2ocrasuite(spec.text)
    expected = [
        suite(item["key"], **oath_kwargs(spec, {k: v for k, v in item.items() if k != "key"}))
        for item in items
    ]
    columns: dict[str, Any] = {
        "keys": [item["key"] for item in items],
        "questions": [item["question"] for item in items],
    }
    if spec.counter:
        columns["counters"] = [item["counter"] for item in items]
    if spec.pin:
        columns["pin_hashes"] = [spec.pin_hash(item["pin"]) for item in items]
    if spec.session:
        columns["sessions"] = [item["session"] for item in items]
    if spec.time:
        columns["timestamps"] = [item["timestamp"] for item in items]
    computed = ocra.compute_batch(spec.text, **columns)
    assert [c.decode() for c in computed.tolist()] == expected
    outcomes = ocra.verify_batch(spec.text, responses=expected, **columns)
    assert outcomes.tolist() == [Outcome.OK] * len(items)


@given(
    data=st.data(),
    spec=suite_specs(digits=OATH_DIGITS).filter(lambda s: s.question_format == "A"),
)
def test_ocra_mutual_mode_question_equals_oath_qsc(data: st.DataObject, spec: SuiteSpec) -> None:
    """RFC 6287 section 7.3: the two challenges concatenated, up to twice ``xx``."""
    inputs = data.draw(ocra_inputs(spec, oath_compatible=True))
    other = data.draw(ocra_inputs(spec, oath_compatible=True))["question"]
    key = inputs.pop("key")
    inputs["question"] = inputs["question"] + other
    kwargs = oath_kwargs(spec, inputs)
    qsc = kwargs.pop("Q")
    expected = oath.str2ocrasuite(spec.text)(key, Qsc=qsc, **kwargs)
    assert ocra.compute(spec.text, key, **inputs) == expected


# --------------------------------------------------------------------------------------
# oath's Unicode-digit bug: sls_core must not share it.
# --------------------------------------------------------------------------------------

NON_ASCII_DIGIT_QUESTIONS = {
    "arabic-indic": "١٢٣٤٥٦٧٨",
    "extended-arabic-indic": "۱۲۳۴۵۶۷۸",
    "devanagari": "१२३४५६७८",
    "fullwidth": "\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18",
    "one-arabic-indic-digit": "1234567٨",
    "bengali": "১২৩৪৫৬৭৮",
}


@pytest.mark.parametrize(
    "question", list(NON_ASCII_DIGIT_QUESTIONS.values()), ids=list(NON_ASCII_DIGIT_QUESTIONS)
)
def test_ocra_non_ascii_digit_question_oath_accepts_but_sls_refuses(question: str) -> None:
    suite = "OCRA-1:HOTP-SHA1-8:QN08-PSHA1"
    key = b"12345678901234567890"
    # The bug being documented: oath treats the question as the ASCII digits 12345678.
    assert question.isdigit()
    assert not question.isascii()
    ascii_response = oath.str2ocrasuite(suite)(key, Q="12345678", P="1234")
    assert oath.str2ocrasuite(suite)(key, Q=question, P="1234") == ascii_response
    assert ocra.compute(suite, key, question="12345678", pin="1234") == ascii_response

    # sls_core refuses the question itself, naming the field and the rule.
    for call in (
        lambda: ocra.compute(suite, key, question=question, pin="1234"),
        lambda: ocra.verify(suite, key, ascii_response, question=question, pin="1234"),
        lambda: ocra.compute(suite, key, question=question.encode(), pin="1234"),
    ):
        with pytest.raises(InvalidInputError) as excinfo:
            call()
        assert excinfo.value.field == "question"
        assert excinfo.value.rule == "QN format accepts ASCII digits 0-9 only"

    # In a batch the item is MALFORMED, never OK, and its neighbour is unaffected.
    pin_hash = psha1(b"1234")
    outcomes = ocra.verify_batch(
        suite, [key, key], [question, "12345678"], [ascii_response] * 2, pin_hashes=[pin_hash] * 2
    )
    assert outcomes.tolist() == [Outcome.MALFORMED, Outcome.OK]


@given(
    question=st.text(st.characters(categories=["Nd"]), min_size=4, max_size=8).filter(
        lambda q: not q.isascii()
    )
)
def test_ocra_any_non_ascii_decimal_question_is_refused(question: str) -> None:
    suite = "OCRA-1:HOTP-SHA1-6:QN08"
    key = b"12345678901234567890"
    with pytest.raises(InvalidInputError) as excinfo:
        ocra.compute(suite, key, question=question)
    assert excinfo.value.field == "question"
    assert "ASCII digits 0-9 only" in excinfo.value.rule


@pytest.mark.parametrize(
    "response",
    ["٢٣٧٦٥٣", "\uff12\uff13\uff17\uff16\uff15\uff13", "23765٣"],
    ids=["arabic", "fullwidth", "mixed"],
)
def test_ocra_non_ascii_digit_response_is_malformed_not_ok(response: str) -> None:
    """RFC 6287 C.1 row 0 is 237653; the same digits in another script are not a response."""
    suite, key = "OCRA-1:HOTP-SHA1-6:QN08", b"12345678901234567890"
    assert ocra.verify(suite, key, "237653", question="00000000") is True
    assert ocra.verify(suite, key, response, question="00000000") is False
    outcomes = ocra.verify_batch(suite, [key], ["00000000"], [response])
    assert outcomes.tolist() == [Outcome.MALFORMED]


# --------------------------------------------------------------------------------------
# HOTP/TOTP against pyotp, cryptography and oath.
# --------------------------------------------------------------------------------------

KEYS_14 = st.binary(min_size=14, max_size=100)  # pyotp wants at least 112 bits


def b32(key: bytes) -> str:
    return base64.b32encode(key).decode("ascii")


@given(
    key=KEYS_14, counter=st.integers(0, 2**64 - 1), digits=st.integers(6, 10), algorithm=ALGORITHMS
)
def test_hotp_equals_pyotp(key: bytes, counter: int, digits: int, algorithm: str) -> None:
    expected = pyotp.HOTP(b32(key), digits=digits, digest=HASHLIB[algorithm]).at(counter)
    assert hotp.compute(key, counter, digits=digits, algorithm=algorithm) == expected
    assert hotp.verify(key, expected, counter, digits=digits, algorithm=algorithm) == counter


@given(
    key=st.binary(min_size=1, max_size=100),
    counter=st.integers(0, 2**64 - 1),
    digits=st.integers(6, 8),
    algorithm=ALGORITHMS,
)
def test_hotp_equals_cryptography(key: bytes, counter: int, digits: int, algorithm: str) -> None:
    reference = crypto_hotp.HOTP(
        key, digits, CRYPTOGRAPHY_HASHES[algorithm](), enforce_key_length=False
    )
    expected = reference.generate(counter)
    assert hotp.compute(key, counter, digits=digits, algorithm=algorithm).encode() == expected
    assert hotp.verify(key, expected, counter, digits=digits, algorithm=algorithm) == counter
    computed = hotp.compute_batch([key], [counter], digits=digits, algorithm=algorithm)
    assert computed.tolist() == [expected]


@given(
    key=st.binary(min_size=1, max_size=100),
    counter=st.integers(0, 2**64 - 1),
    digits=st.integers(6, 8),
    algorithm=ALGORITHMS,
)
def test_hotp_equals_oath(key: bytes, counter: int, digits: int, algorithm: str) -> None:
    expected = oath.hotp(key.hex(), counter, format=f"dec{digits}", hash=HASHLIB[algorithm])
    assert hotp.compute(key, counter, digits=digits, algorithm=algorithm) == expected


TIMES = st.integers(0, 253402300799)  # pyotp stops before year 10000


@given(
    key=KEYS_14, t=TIMES, step=st.integers(1, 120), digits=st.integers(6, 10), algorithm=ALGORITHMS
)
def test_totp_equals_pyotp(key: bytes, t: int, step: int, digits: int, algorithm: str) -> None:
    reference = pyotp.TOTP(b32(key), digits=digits, digest=HASHLIB[algorithm], interval=step)
    expected = reference.at(t)
    assert totp.compute(key, t, step=step, digits=digits, algorithm=algorithm) == expected
    assert (
        totp.verify(key, expected, t, step=step, window=0, digits=digits, algorithm=algorithm)
        == t // step
    )


@given(
    key=st.binary(min_size=1, max_size=100),
    t=TIMES,
    step=st.integers(1, 3600),
    digits=st.integers(6, 8),
    algorithm=ALGORITHMS,
)
def test_totp_equals_cryptography(
    key: bytes, t: int, step: int, digits: int, algorithm: str
) -> None:
    reference = crypto_totp.TOTP(
        key, digits, CRYPTOGRAPHY_HASHES[algorithm](), step, enforce_key_length=False
    )
    expected = reference.generate(t)
    assert totp.compute(key, t, step=step, digits=digits, algorithm=algorithm).encode() == expected
    result = totp.verify_batch(
        [key], [expected], [t], step=step, window=0, digits=digits, algorithm=algorithm
    )
    assert result.outcomes.tolist() == [Outcome.OK]
    assert result.matched.tolist() == [t // step]


@given(
    key=st.binary(min_size=1, max_size=100),
    t=TIMES,
    step=st.integers(1, 3600),
    digits=st.integers(6, 8),
    algorithm=ALGORITHMS,
)
def test_totp_equals_oath(key: bytes, t: int, step: int, digits: int, algorithm: str) -> None:
    expected = oath.totp(
        key.hex(), format=f"dec{digits}", period=step, t=t, hash=HASHLIB[algorithm]
    )
    assert totp.compute(key, t, step=step, digits=digits, algorithm=algorithm) == expected
