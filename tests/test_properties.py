"""Property tests (hypothesis) over random suites and inputs.

- OCRA: compute -> verify round trips for every kind of suite; every single changed digit
  is rejected; malformed responses are never accepted and are ``MALFORMED`` in batches;
  a batch says exactly what the scalar calls say, item by item.
- HOTP/TOTP: round trips, and the window semantics: the matched counter/step is returned,
  HOTP only looks ahead, TOTP looks ``(behind, ahead)``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sls_core import InvalidInputError, KeyTable, Outcome, hotp, ocra, totp
from sls_strategies import (
    APPENDED_NUL,
    MALFORMATIONS,
    MAX_TRUNCATED,
    SuiteSpec,
    change_digit,
    keys,
    ocra_inputs,
    suite_specs,
    well_formed,
)

ALGORITHMS = st.sampled_from(["sha1", "sha256", "sha512"])
OTP_DIGITS = st.integers(6, 10)
MALFORMATION_NAMES = [name for name, _ in MALFORMATIONS]


def without_key(inputs: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in inputs.items() if name != "key"}


# --------------------------------------------------------------------------------------
# OCRA round trips.
# --------------------------------------------------------------------------------------


@given(data=st.data(), spec=suite_specs())
def test_ocra_compute_then_verify_round_trips_for_any_suite(
    data: st.DataObject, spec: SuiteSpec
) -> None:
    inputs = data.draw(ocra_inputs(spec))
    key = inputs.pop("key")
    response = ocra.compute(spec.text, key, **inputs)
    assert isinstance(response, str)
    assert len(response) == spec.digits
    assert response.isascii()
    assert response.isdigit()
    assert ocra.verify(spec.text, key, response, **inputs) is True
    assert ocra.verify(spec.text, key, response.encode(), **inputs) is True
    # Deterministic: the same inputs give the same response.
    assert ocra.compute(spec.text, key, **inputs) == response


@given(data=st.data(), spec=suite_specs(digits=st.just(0)))
def test_ocra_untruncated_suite_response_is_canonical_decimal(
    data: st.DataObject, spec: SuiteSpec
) -> None:
    """t = 0 (RFC 6287 section 5.1): the whole 31-bit value, no padding, no leading zero."""
    inputs = data.draw(ocra_inputs(spec))
    key = inputs.pop("key")
    response = ocra.compute(spec.text, key, **inputs)
    assert well_formed(response, 0)
    assert 0 <= int(response) <= MAX_TRUNCATED
    assert str(int(response)) == response
    assert ocra.verify(spec.text, key, response, **inputs) is True
    assert ocra.verify(spec.text, key, "0" + response, **inputs) is False


@given(data=st.data(), spec=suite_specs())
def test_ocra_pin_hash_bytes_or_hex_equals_pin(data: st.DataObject, spec: SuiteSpec) -> None:
    assume(spec.pin is not None)
    inputs = data.draw(ocra_inputs(spec))
    key = inputs.pop("key")
    digest = spec.pin_hash(inputs.pop("pin"))
    expected = ocra.compute(spec.text, key, pin_hash=digest, **inputs)
    for pin_hash in (digest.hex(), digest.hex().upper(), bytearray(digest), memoryview(digest)):
        assert ocra.compute(spec.text, key, pin_hash=pin_hash, **inputs) == expected
        assert ocra.verify(spec.text, key, expected, pin_hash=pin_hash, **inputs) is True


@given(data=st.data(), spec=suite_specs(digits=st.integers(4, 10)))
def test_ocra_any_single_changed_digit_is_rejected(data: st.DataObject, spec: SuiteSpec) -> None:
    inputs = data.draw(ocra_inputs(spec))
    key = inputs.pop("key")
    response = ocra.compute(spec.text, key, **inputs)
    position = data.draw(st.integers(0, len(response) - 1), label="position")
    offset = data.draw(st.integers(1, 9), label="offset")
    wrong = change_digit(response, position, offset)
    assert wrong != response
    assert ocra.verify(spec.text, key, wrong, **inputs) is False


@given(data=st.data(), spec=suite_specs(digits=st.integers(8, 10)))
def test_ocra_each_data_input_changes_the_response(data: st.DataObject, spec: SuiteSpec) -> None:
    """With 8+ digits a collision is a 1e-8 event: changing any input changes the code."""
    inputs = data.draw(ocra_inputs(spec))
    key = inputs.pop("key")
    response = ocra.compute(spec.text, key, **inputs)
    changed: list[dict[str, Any]] = []
    if "counter" in inputs:
        changed.append({**inputs, "counter": (inputs["counter"] + 1) % 2**64})
    if "pin" in inputs:
        pin = inputs["pin"]
        changed.append({**inputs, "pin": pin + (b"x" if isinstance(pin, bytes) else "x")})
    if "session" in inputs:
        session = inputs["session"]
        changed.append({**inputs, "session": bytes([session[0] ^ 1]) + session[1:]})
    if "timestamp" in inputs:
        step = spec.step_seconds
        assert step is not None
        changed.append({**inputs, "timestamp": inputs["timestamp"] + step})
    for other in changed:
        assert ocra.compute(spec.text, key, **other) != response
    assert ocra.compute(spec.text, key + b"x", **inputs) != response


@given(data=st.data(), spec=suite_specs())
def test_ocra_timestamps_in_the_same_step_give_the_same_response(
    data: st.DataObject, spec: SuiteSpec
) -> None:
    assume(spec.time is not None)
    step = spec.step_seconds
    assert step is not None
    inputs = data.draw(ocra_inputs(spec))
    key = inputs.pop("key")
    start = inputs["timestamp"] - inputs["timestamp"] % step
    later = data.draw(st.integers(start, start + step - 1), label="later")
    fraction = data.draw(st.floats(0, 0.999), label="fraction")
    first = ocra.compute(spec.text, key, **{**inputs, "timestamp": start})
    assert ocra.compute(spec.text, key, **{**inputs, "timestamp": later}) == first
    assert ocra.compute(spec.text, key, **{**inputs, "timestamp": later + fraction}) == first


# --------------------------------------------------------------------------------------
# OCRA malformed responses.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "malform"),
    [*MALFORMATIONS, APPENDED_NUL],
    ids=[*MALFORMATION_NAMES, APPENDED_NUL[0]],
)
@given(data=st.data(), spec=suite_specs(digits=st.integers(4, 10)))
def test_ocra_malformed_response_is_never_ok_and_malformed_in_batches(
    name: str, malform: Any, data: st.DataObject, spec: SuiteSpec
) -> None:
    inputs = data.draw(ocra_inputs(spec))
    key = inputs.pop("key")
    response = ocra.compute(spec.text, key, **inputs)
    bad = malform(response)
    assert not well_formed(bad, spec.digits), name
    assert ocra.verify(spec.text, key, bad, **inputs) is False
    assert ocra.verify(spec.text, key, bad.encode("utf-8"), **inputs) is False

    columns = batch_columns(spec, [key], [inputs], "lists")
    for responses in ([bad], [bad.encode("utf-8")], np.array([bad], dtype=object)):
        outcomes = ocra.verify_batch(spec.text, responses=responses, **columns)
        assert outcomes.tolist() == [Outcome.MALFORMED]
    if name != APPENDED_NUL[0]:
        # numpy S and U arrays (a trailing NUL appended to a right code is numpy padding).
        for responses in (np.array([bad.encode("utf-8")], dtype="S"), np.array([bad], "U")):
            outcomes = ocra.verify_batch(spec.text, responses=responses, **columns)
            assert outcomes.tolist() == [Outcome.MALFORMED]


# --------------------------------------------------------------------------------------
# OCRA batches agree with the scalar calls.
# --------------------------------------------------------------------------------------

ITEM_KINDS = [
    "right",
    "wrong",
    "malformed",
    "bad-question",
    "empty-key",
    "bad-pin-hash",
    "bad-session",
    "appended-nul",
]


def bad_question(spec: SuiteSpec, question: str, choice: int) -> str:
    """A question that breaks its format's rule or the 4-128 length rule."""
    options = ["abc", "9" * 129, question[:-1] + " ", question[:-1] + "\u0663"]
    if spec.question_format == "N":
        options.append(question[:-1] + "a")
    if spec.question_format == "H":
        options.append(question[:-1] + "g")
    return options[choice % len(options)]


def batch_columns(
    spec: SuiteSpec, item_keys: list[bytes], items: list[dict[str, Any]], layout: str
) -> dict[str, Any]:
    """verify_batch/compute_batch columns; PINs become pin hashes (batches take hashes)."""

    def pin_hash(item: dict[str, Any]) -> bytes:
        if "pin_hash" in item:
            return bytes(item["pin_hash"])
        return spec.pin_hash(item["pin"])

    numpy = layout != "lists"
    questions = [item["question"] for item in items]
    columns: dict[str, Any] = {
        "keys": np.array(item_keys, dtype=object) if numpy else item_keys,
        "questions": np.array([q.encode() for q in questions], dtype="S") if numpy else questions,
    }
    if layout == "keytable":
        distinct = sorted(set(item_keys))
        columns["keys"] = KeyTable(distinct[::-1], algorithm=spec.algorithm)
        columns["key_index"] = np.array(
            [len(distinct) - 1 - distinct.index(k) for k in item_keys], dtype=np.int64
        )
    if spec.counter:
        counters = [item["counter"] for item in items]
        columns["counters"] = np.array(counters, dtype=np.uint64) if numpy else counters
    if spec.time:
        stamps = [item["timestamp"] for item in items]
        columns["timestamps"] = np.array(stamps, dtype=np.int64) if numpy else stamps
    if spec.pin:
        hashes = [pin_hash(item) for item in items]
        columns["pin_hashes"] = np.array(hashes, dtype=object) if numpy else hashes
    if spec.session:
        sessions = [item["session"] for item in items]
        columns["sessions"] = np.array(sessions, dtype=object) if numpy else sessions
    return columns


def scalar_outcome(spec: SuiteSpec, key: bytes, response: str, inputs: dict[str, Any]) -> int:
    """What the scalar API says about one item, as an Outcome."""
    try:
        accepted = ocra.verify(spec.text, key, response, **inputs)
    except InvalidInputError:
        return Outcome.MALFORMED
    if accepted:
        return Outcome.OK
    return Outcome.WRONG if well_formed(response, spec.digits) else Outcome.MALFORMED


@given(
    data=st.data(),
    spec=suite_specs(digits=st.integers(4, 10), max_session=24),
    layout=st.sampled_from(["lists", "numpy", "keytable"]),
)
def test_ocra_batch_outcome_equals_scalar_verdict_item_by_item(
    data: st.DataObject, spec: SuiteSpec, layout: str
) -> None:
    kinds = [k for k in ITEM_KINDS if not (layout == "keytable" and k == "empty-key")]
    kinds = [k for k in kinds if not (k == "bad-pin-hash" and not spec.pin)]
    kinds = [k for k in kinds if not (k == "bad-session" and not spec.session)]
    if layout != "lists":
        kinds.remove("appended-nul")
    n = data.draw(st.integers(1, 10), label="n")
    item_keys: list[bytes] = []
    items: list[dict[str, Any]] = []
    responses: list[str] = []
    expected: list[int] = []
    for _ in range(n):
        kind = data.draw(st.sampled_from(kinds), label="kind")
        inputs = data.draw(ocra_inputs(spec))
        key = inputs.pop("key")
        right = ocra.compute(spec.text, key, **inputs)
        response = right
        if spec.pin:
            inputs["pin_hash"] = spec.pin_hash(inputs.pop("pin"))
        if kind == "wrong":
            response = change_digit(right, data.draw(st.integers(0, len(right) - 1)), 5)
        elif kind == "malformed":
            response = data.draw(st.sampled_from(MALFORMATIONS))[1](right)
        elif kind == "appended-nul":
            response = APPENDED_NUL[1](right)
        elif kind == "bad-question":
            inputs["question"] = bad_question(
                spec, inputs["question"], data.draw(st.integers(0, 5))
            )
        elif kind == "empty-key":
            key = b""
        elif kind == "bad-pin-hash":
            inputs["pin_hash"] = inputs["pin_hash"] + b"\x01"
        elif kind == "bad-session":
            inputs["session"] = inputs["session"] + b"\x01"
        item_keys.append(key)
        items.append(inputs)
        responses.append(response)
        expected.append(scalar_outcome(spec, key, response, inputs))
        if kind == "right":
            assert expected[-1] == Outcome.OK
        elif kind == "wrong":
            assert expected[-1] == Outcome.WRONG
        else:
            assert expected[-1] == Outcome.MALFORMED

    columns = batch_columns(spec, item_keys, items, layout)
    if layout == "lists":
        column: Any = responses
    else:
        column = np.array([r.encode("utf-8") for r in responses], dtype="S")
    outcomes = ocra.verify_batch(spec.text, responses=column, **columns)
    assert outcomes.dtype == np.uint8
    assert outcomes.shape == (n,)
    assert outcomes.tolist() == expected


@given(
    data=st.data(),
    spec=suite_specs(max_session=24),
    layout=st.sampled_from(["lists", "numpy", "keytable"]),
)
def test_ocra_compute_batch_equals_scalar_compute(
    data: st.DataObject, spec: SuiteSpec, layout: str
) -> None:
    items = data.draw(st.lists(ocra_inputs(spec), min_size=1, max_size=8))
    item_keys = [item.pop("key") for item in items]
    expected = [
        ocra.compute(spec.text, k, **item) for k, item in zip(item_keys, items, strict=True)
    ]
    computed = ocra.compute_batch(spec.text, **batch_columns(spec, item_keys, items, layout))
    assert computed.dtype == np.dtype(f"S{spec.digits}")
    assert [c.decode() for c in computed.tolist()] == expected


# --------------------------------------------------------------------------------------
# HOTP.
# --------------------------------------------------------------------------------------


@given(key=keys, counter=st.integers(0, 2**64 - 1), digits=OTP_DIGITS, algorithm=ALGORITHMS)
def test_hotp_compute_then_verify_returns_the_counter(
    key: bytes, counter: int, digits: int, algorithm: str
) -> None:
    code = hotp.compute(key, counter, digits=digits, algorithm=algorithm)
    assert len(code) == digits
    assert code.isascii()
    assert code.isdigit()
    assert hotp.verify(key, code, counter, digits=digits, algorithm=algorithm) == counter


def first_hotp_match(
    key: bytes, code: str, first: int, last: int, digits: int, algorithm: str
) -> int | None:
    for counter in range(first, min(last, 2**64 - 1) + 1):
        if hotp.compute(key, counter, digits=digits, algorithm=algorithm) == code:
            return counter
    return None


@given(
    key=keys,
    counter=st.integers(0, 2**40),
    digits=OTP_DIGITS,
    algorithm=ALGORITHMS,
    behind=st.integers(0, 6),
    window=st.integers(0, 6),
)
def test_hotp_window_looks_ahead_and_returns_the_first_matching_counter(
    key: bytes, counter: int, digits: int, algorithm: str, behind: int, window: int
) -> None:
    """Stored counter ``counter - behind``; the device is at ``counter``."""
    code = hotp.compute(key, counter, digits=digits, algorithm=algorithm)
    stored = max(counter - behind, 0)
    result = hotp.verify(key, code, stored, window=window, digits=digits, algorithm=algorithm)
    assert result == first_hotp_match(key, code, stored, stored + window, digits, algorithm)
    if counter - stored <= window:
        assert result is not None
        assert stored <= result <= counter


@given(
    key=keys,
    counter=st.integers(0, 2**40),
    digits=OTP_DIGITS,
    algorithm=ALGORITHMS,
    ahead=st.integers(1, 6),
    window=st.integers(0, 20),
)
def test_hotp_window_never_looks_behind_the_stored_counter(
    key: bytes, counter: int, digits: int, algorithm: str, ahead: int, window: int
) -> None:
    """A code of a counter already used (below the stored counter) is never accepted there."""
    code = hotp.compute(key, counter, digits=digits, algorithm=algorithm)
    stored = counter + ahead
    result = hotp.verify(key, code, stored, window=window, digits=digits, algorithm=algorithm)
    assert result != counter
    assert result == first_hotp_match(key, code, stored, stored + window, digits, algorithm)


@given(key=keys, window=st.integers(0, 10))
def test_hotp_window_saturates_at_the_top_of_the_counter_space(key: bytes, window: int) -> None:
    top = 2**64 - 1
    code = hotp.compute(key, top)
    assert hotp.verify(key, code, top, window=window) == top
    assert hotp.verify(key, code, top - window, window=window) == first_hotp_match(
        key, code, top - window, top, 6, "sha1"
    )


def otp_scalar_outcome(result: int | None, code: str, digits: int) -> tuple[int, int]:
    if result is not None:
        return Outcome.OK, result
    return (Outcome.WRONG if well_formed(code, digits) else Outcome.MALFORMED), 0


@given(
    data=st.data(),
    digits=OTP_DIGITS,
    algorithm=ALGORITHMS,
    window=st.integers(0, 4),
    use_table=st.booleans(),
)
def test_hotp_batch_equals_scalar_verify(
    data: st.DataObject, digits: int, algorithm: str, window: int, use_table: bool
) -> None:
    n = data.draw(st.integers(1, 10), label="n")
    item_keys = data.draw(st.lists(keys, min_size=n, max_size=n), label="keys")
    counters = data.draw(st.lists(st.integers(0, 2**63), min_size=n, max_size=n))
    codes = []
    for key, counter in zip(item_keys, counters, strict=True):
        shift = data.draw(st.integers(-2, 6), label="shift")
        right = hotp.compute(key, max(counter + shift, 0), digits=digits, algorithm=algorithm)
        kind = data.draw(st.sampled_from(["right", "wrong", "malformed"]), label="kind")
        if kind == "wrong":
            right = change_digit(right, 0, 3)
        elif kind == "malformed":
            right = data.draw(st.sampled_from(MALFORMATIONS))[1](right)
        codes.append(right)
    expected = [
        otp_scalar_outcome(
            hotp.verify(k, c, m, window=window, digits=digits, algorithm=algorithm), c, digits
        )
        for k, c, m in zip(item_keys, codes, counters, strict=True)
    ]
    batch_keys: Any = KeyTable(item_keys, algorithm=algorithm) if use_table else item_keys
    result = hotp.verify_batch(
        batch_keys,
        codes,
        np.array(counters, dtype=np.uint64),
        window=window,
        digits=digits,
        algorithm=algorithm,
    )
    assert list(zip(result.outcomes.tolist(), result.matched.tolist(), strict=True)) == expected
    computed = hotp.compute_batch(batch_keys, counters, digits=digits, algorithm=algorithm)
    assert [c.decode() for c in computed.tolist()] == [
        hotp.compute(k, m, digits=digits, algorithm=algorithm)
        for k, m in zip(item_keys, counters, strict=True)
    ]


# --------------------------------------------------------------------------------------
# TOTP.
# --------------------------------------------------------------------------------------

STEPS = st.integers(1, 300)
TIMES = st.integers(0, 2**40)


@given(
    key=keys, t=TIMES, step=STEPS, t0=st.integers(0, 10**6), digits=OTP_DIGITS, algorithm=ALGORITHMS
)
def test_totp_is_hotp_of_the_time_step(
    key: bytes, t: int, step: int, t0: int, digits: int, algorithm: str
) -> None:
    """RFC 6238 section 4.2: T = floor((unix_time - T0) / X)."""
    t = t + t0
    code = totp.compute(key, t, step=step, digits=digits, algorithm=algorithm, t0=t0)
    time_step = (t - t0) // step
    assert code == hotp.compute(key, time_step, digits=digits, algorithm=algorithm)
    assert (
        totp.verify(key, code, t, step=step, window=0, digits=digits, algorithm=algorithm, t0=t0)
        == time_step
    )


def first_totp_match(
    key: bytes, code: str, first: int, last: int, digits: int, algorithm: str
) -> int | None:
    return first_hotp_match(key, code, first, last, digits, algorithm)


@given(
    key=keys,
    t=TIMES,
    step=STEPS,
    digits=OTP_DIGITS,
    algorithm=ALGORITHMS,
    drift=st.integers(-5, 5),
    window=st.integers(0, 4) | st.tuples(st.integers(0, 4), st.integers(0, 4)),
)
def test_totp_window_returns_the_first_matching_step_within_behind_and_ahead(
    key: bytes,
    t: int,
    step: int,
    digits: int,
    algorithm: str,
    drift: int,
    window: int | tuple[int, int],
) -> None:
    """The device clock is ``drift`` steps off the server's."""
    code = totp.compute(key, t, step=step, digits=digits, algorithm=algorithm)
    device_step = t // step
    server_time = max(t + drift * step, 0)
    now = server_time // step
    behind, ahead = window if isinstance(window, tuple) else (window, window)
    result = totp.verify(
        key, code, server_time, step=step, window=window, digits=digits, algorithm=algorithm
    )
    expected = first_totp_match(key, code, max(now - behind, 0), now + ahead, digits, algorithm)
    assert result == expected
    if now - behind <= device_step <= now + ahead:
        assert result is not None
        assert result <= device_step


@given(
    data=st.data(),
    step=STEPS,
    t0=st.integers(0, 1000),
    digits=OTP_DIGITS,
    algorithm=ALGORITHMS,
    window=st.integers(0, 3) | st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_totp_batch_equals_scalar_verify(
    data: st.DataObject,
    step: int,
    t0: int,
    digits: int,
    algorithm: str,
    window: int | tuple[int, int],
) -> None:
    n = data.draw(st.integers(1, 10), label="n")
    item_keys = data.draw(st.lists(keys, min_size=n, max_size=n), label="keys")
    times = data.draw(st.lists(st.integers(0, 2**36), min_size=n, max_size=n), label="times")
    codes = []
    expected = []
    for key, t in zip(item_keys, times, strict=True):
        device_time = max(t + data.draw(st.integers(-3, 3)) * step, t0)
        code = totp.compute(key, device_time, step=step, digits=digits, algorithm=algorithm, t0=t0)
        kind = data.draw(st.sampled_from(["right", "wrong", "malformed"]), label="kind")
        if kind == "wrong":
            code = change_digit(code, 1, 7)
        elif kind == "malformed":
            code = data.draw(st.sampled_from(MALFORMATIONS))[1](code)
        codes.append(code)
        try:
            result = totp.verify(
                key, code, t, step=step, window=window, digits=digits, algorithm=algorithm, t0=t0
            )
        except InvalidInputError:  # a time before t0 is a per-item input error
            expected.append((Outcome.MALFORMED, 0))
        else:
            expected.append(otp_scalar_outcome(result, code, digits))
    result = totp.verify_batch(
        item_keys,
        np.array(codes),
        np.array(times, dtype=np.int64),
        step=step,
        window=window,
        digits=digits,
        algorithm=algorithm,
        t0=t0,
    )
    assert list(zip(result.outcomes.tolist(), result.matched.tolist(), strict=True)) == expected


@given(key=keys, t=TIMES, step=STEPS)
def test_totp_float_time_is_rounded_down(key: bytes, t: int, step: int) -> None:
    assert totp.compute(key, t + 0.75, step=step) == totp.compute(key, t, step=step)


def test_hotp_code_digest_matches_a_plain_hmac_reference() -> None:
    """A direct HMAC + dynamic truncation reference, for each algorithm and length."""
    import hmac

    key = b"reference key, 32 bytes long...."
    for algorithm in ("sha1", "sha256", "sha512"):
        for counter in (0, 1, 255, 2**32, 2**64 - 1):
            mac = hmac.new(key, counter.to_bytes(8, "big"), getattr(hashlib, algorithm)).digest()
            offset = mac[-1] & 0x0F
            value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
            for digits in range(6, 11):
                expected = f"{value % 10**digits:0{digits}d}"
                assert hotp.compute(key, counter, digits=digits, algorithm=algorithm) == expected
