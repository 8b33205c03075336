"""Every published test vector of RFC 4226 (HOTP), RFC 6238 (TOTP) and RFC 6287 (OCRA),
through the scalar entry points and through the batch entry points with every supported
input layout: lists, numpy ``S``/``U``/object arrays, a ``(N, key_len)`` uint8 key matrix
and a :class:`sls_core.KeyTable` with and without ``key_index``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

import sls_core
from sls_core import KeyTable, Outcome, hotp, ocra, totp
from sls_strategies import change_digit, psha1
from vector_data import RFC6287_FILE, load, ocra_id

# --------------------------------------------------------------------------------------
# Input layouts for the batch entry points.
# --------------------------------------------------------------------------------------

KEY_LAYOUTS = ["list", "numpy-S", "object-array", "uint8-matrix", "keytable", "keytable-index"]
TEXT_LAYOUTS = ["list-str", "list-bytes", "numpy-S", "numpy-U", "object-array"]
DECOY_KEY = b"decoy key that no RFC vector uses"


def key_column(layout: str, keys: list[bytes], algorithm: str) -> tuple[Any, Any]:
    """``keys`` in ``layout``; returns ``(keys_argument, key_index_argument)``."""
    if layout == "list":
        return list(keys), None
    if layout == "numpy-S":
        return np.array(keys, dtype=f"S{max(map(len, keys))}"), None
    if layout == "object-array":
        return np.array(keys, dtype=object), None
    if layout == "uint8-matrix":
        matrix = np.array([np.frombuffer(k, dtype=np.uint8) for k in keys], dtype=np.uint8)
        assert matrix.ndim == 2
        return matrix, None
    if layout == "keytable":
        return KeyTable(keys, algorithm=algorithm), None
    if layout == "keytable-index":
        # Row 0 is a decoy and the distinct keys follow, so every index is non-trivial.
        distinct = sorted(set(keys))
        table = KeyTable([DECOY_KEY, *distinct], algorithm=algorithm)
        index = np.array([1 + distinct.index(k) for k in keys], dtype=np.uint32)
        return table, index
    raise AssertionError(layout)


def text_column(layout: str, values: list[str]) -> Any:
    if layout == "list-str":
        return list(values)
    if layout == "list-bytes":
        return [v.encode("ascii") for v in values]
    if layout == "numpy-S":
        return np.array([v.encode("ascii") for v in values], dtype="S")
    if layout == "numpy-U":
        return np.array(values, dtype="U")
    if layout == "object-array":
        return np.array(values, dtype=object)
    raise AssertionError(layout)


def int_column(layout: str, values: list[int]) -> Any:
    """Integer columns follow the text layout: lists stay lists, numpy layouts vary dtype."""
    if layout.startswith("list"):
        return list(values)
    if layout == "numpy-S":
        return np.array(values, dtype=np.uint64)
    if layout == "numpy-U":
        return np.array(values, dtype=np.int64)
    return np.array(values, dtype=np.uint32) if max(values) < 2**32 else np.array(values)


def as_strings(array: np.ndarray) -> list[str]:
    return [item.decode("ascii") for item in array.tolist()]


# --------------------------------------------------------------------------------------
# RFC 4226 Appendix D: HOTP.
# --------------------------------------------------------------------------------------


def test_rfc4226_hotp_compute_gives_the_published_code(
    hotp_vector: dict[str, Any], rfc4226: dict[str, Any]
) -> None:
    key = bytes.fromhex(rfc4226["secret_hex"])
    assert key == rfc4226["secret_ascii"].encode()
    assert hotp.compute(key, hotp_vector["counter"]) == hotp_vector["hotp"]
    assert (
        hotp.compute(key, hotp_vector["counter"], digits=6, algorithm="sha1")
        == (hotp_vector["hotp"])
    )


def test_rfc4226_hotp_ten_digits_is_the_whole_truncated_value(
    hotp_vector: dict[str, Any], rfc4226: dict[str, Any]
) -> None:
    """Table 2's 31-bit dynamic-truncation value, zero-padded to 10 digits."""
    key = bytes.fromhex(rfc4226["secret_hex"])
    expected = f"{hotp_vector['truncated_decimal']:010d}"
    assert int(hotp_vector["truncated_hex"], 16) == hotp_vector["truncated_decimal"]
    assert hotp.compute(key, hotp_vector["counter"], digits=10) == expected
    for digits in range(6, 10):
        assert hotp.compute(key, hotp_vector["counter"], digits=digits) == expected[-digits:]


def test_rfc4226_hotp_verify_returns_the_matched_counter(
    hotp_vector: dict[str, Any], rfc4226: dict[str, Any]
) -> None:
    key = bytes.fromhex(rfc4226["secret_hex"])
    counter, code = hotp_vector["counter"], hotp_vector["hotp"]
    assert hotp.verify(key, code, counter) == counter
    assert hotp.verify(key, code.encode(), counter) == counter
    # Look-ahead finds it from any earlier counter within the window...
    assert hotp.verify(key, code, 0, window=9) == counter
    # ...but a window never looks behind the stored counter.
    assert hotp.verify(key, code, counter + 1, window=20) is None
    assert hotp.verify(key, change_digit(code, 0, 5), counter) is None


@pytest.mark.parametrize("key_layout", KEY_LAYOUTS)
@pytest.mark.parametrize("text_layout", TEXT_LAYOUTS)
def test_rfc4226_hotp_batches_match_the_table(
    rfc4226: dict[str, Any], key_layout: str, text_layout: str
) -> None:
    rows = rfc4226["vectors"]
    key = bytes.fromhex(rfc4226["secret_hex"])
    keys, key_index = key_column(key_layout, [key] * len(rows), "sha1")
    counters = int_column(text_layout, [row["counter"] for row in rows])
    codes = [row["hotp"] for row in rows]

    computed = hotp.compute_batch(keys, counters, key_index=key_index)
    assert computed.dtype == np.dtype("S6")
    assert as_strings(computed) == codes

    result = hotp.verify_batch(keys, text_column(text_layout, codes), counters, key_index=key_index)
    assert result.outcomes.dtype == np.uint8
    assert result.matched.dtype == np.uint64
    assert result.outcomes.tolist() == [Outcome.OK] * len(rows)
    assert result.matched.tolist() == [row["counter"] for row in rows]

    # Each code checked one counter late (window 0) is wrong, and matched is 0 there.
    late = int_column(text_layout, [row["counter"] + 1 for row in rows])
    result = hotp.verify_batch(keys, text_column(text_layout, codes), late, key_index=key_index)
    assert result.outcomes.tolist() == [Outcome.WRONG] * len(rows)
    assert result.matched.tolist() == [0] * len(rows)


# --------------------------------------------------------------------------------------
# RFC 6238 Appendix B: TOTP.
# --------------------------------------------------------------------------------------


def test_rfc6238_totp_compute_gives_the_published_code(totp_vector: dict[str, Any]) -> None:
    key = bytes.fromhex(totp_vector["secret_hex"])
    code = totp.compute(
        key,
        totp_vector["unix_time"],
        step=totp_vector["step"],
        digits=totp_vector["digits"],
        algorithm=totp_vector["algorithm"],
        t0=totp_vector["t0"],
    )
    assert code == totp_vector["totp"]


def test_rfc6238_totp_seed_length_matches_the_hash(
    totp_vector: dict[str, Any], rfc6238: dict[str, Any]
) -> None:
    """The Appendix A seeds (20/32/64 bytes) are the ones the table needs (erratum)."""
    secret = rfc6238["secrets"][totp_vector["algorithm"]]
    assert totp_vector["secret_hex"] == secret["hex"]
    assert bytes.fromhex(secret["hex"]) == secret["ascii"].encode()


def test_rfc6238_totp_verify_returns_the_time_step(totp_vector: dict[str, Any]) -> None:
    key = bytes.fromhex(totp_vector["secret_hex"])
    step = int(totp_vector["step_hex"], 16)
    options = {"digits": 8, "algorithm": totp_vector["algorithm"], "step": 30}
    t = totp_vector["unix_time"]
    code = totp_vector["totp"]
    assert totp.verify(key, code, t, window=0, **options) == step
    assert totp.verify(key, code, t, **options) == step
    assert totp.verify(key, code, float(t) + 0.5, window=0, **options) == step
    # One step of clock drift either way is inside the default window of 1...
    assert totp.verify(key, code, t + 30, **options) == step
    assert totp.verify(key, code, t - 30, **options) == step
    # ...two steps are not, and (0, 0) accepts only the current step.
    assert totp.verify(key, code, t + 60, **options) is None
    assert totp.verify(key, code, t + 30, window=(1, 0), **options) == step
    assert totp.verify(key, code, t + 30, window=(0, 1), **options) is None


def _totp_groups(rfc6238: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rfc6238["vectors"]:
        groups[row["algorithm"]].append(row)
    return groups


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("key_layout", KEY_LAYOUTS)
@pytest.mark.parametrize("text_layout", TEXT_LAYOUTS)
def test_rfc6238_totp_batches_match_the_table(
    rfc6238: dict[str, Any], algorithm: str, key_layout: str, text_layout: str
) -> None:
    rows = _totp_groups(rfc6238)[algorithm]
    assert len(rows) == 6
    keys, key_index = key_column(
        key_layout, [bytes.fromhex(r["secret_hex"]) for r in rows], algorithm
    )
    times = int_column(text_layout, [r["unix_time"] for r in rows])
    codes = [r["totp"] for r in rows]
    options = {"digits": 8, "algorithm": algorithm, "step": 30, "key_index": key_index}

    computed = totp.compute_batch(keys, times, **options)
    assert computed.dtype == np.dtype("S8")
    assert as_strings(computed) == codes

    result = totp.verify_batch(keys, text_column(text_layout, codes), times, window=0, **options)
    assert result.outcomes.tolist() == [Outcome.OK] * len(rows)
    assert result.matched.tolist() == [int(r["step_hex"], 16) for r in rows]


# --------------------------------------------------------------------------------------
# RFC 6287 Appendix C: OCRA.
# --------------------------------------------------------------------------------------


def ocra_inputs(vector: dict[str, Any]) -> dict[str, Any]:
    """The keyword inputs of one RFC 6287 vector (the suite hashes the PIN)."""
    inputs: dict[str, Any] = {"question": vector["question"]}
    if vector["counter"] is not None:
        inputs["counter"] = vector["counter"]
    if vector["pin"] is not None:
        inputs["pin"] = vector["pin"]
    if vector["timestamp_unix"] is not None:
        inputs["timestamp"] = vector["timestamp_unix"]
    return inputs


def test_rfc6287_ocra_compute_gives_the_published_response(ocra_vector: dict[str, Any]) -> None:
    key = bytes.fromhex(ocra_vector["key_hex"])
    response = ocra.compute(ocra_vector["suite"], key, **ocra_inputs(ocra_vector))
    assert response == ocra_vector["response"]


def test_rfc6287_ocra_verify_accepts_the_published_response(
    ocra_vector: dict[str, Any],
) -> None:
    key = bytes.fromhex(ocra_vector["key_hex"])
    inputs = ocra_inputs(ocra_vector)
    suite, response = ocra_vector["suite"], ocra_vector["response"]
    assert ocra.verify(suite, key, response, **inputs) is True
    assert ocra.verify(suite, key, response.encode("ascii"), **inputs) is True
    assert ocra.verify(suite, bytearray(key), bytearray(response.encode()), **inputs) is True
    assert ocra.verify(suite, memoryview(key), response, **inputs) is True


def test_rfc6287_ocra_verify_rejects_each_changed_digit(ocra_vector: dict[str, Any]) -> None:
    key = bytes.fromhex(ocra_vector["key_hex"])
    inputs = ocra_inputs(ocra_vector)
    response = ocra_vector["response"]
    for position in range(len(response)):
        wrong = change_digit(response, position, 1 + position % 9)
        assert ocra.verify(ocra_vector["suite"], key, wrong, **inputs) is False


OCRA_ROWS = load(RFC6287_FILE)["vectors"]
WITH_PIN = [row for row in OCRA_ROWS if row["pin"] is not None]
WITH_TIMESTAMP = [row for row in OCRA_ROWS if row["timestamp_unix"] is not None]
WITH_COUNTER = [row for row in OCRA_ROWS if row["counter"] is not None]


@pytest.mark.parametrize("ocra_vector", WITH_PIN, ids=ocra_id)
def test_rfc6287_ocra_pin_hash_equals_pin(
    ocra_vector: dict[str, Any], rfc6287: dict[str, Any]
) -> None:
    """``pin_hash`` as raw digest, lower- or upper-case hex gives the same response."""
    key = bytes.fromhex(ocra_vector["key_hex"])
    inputs = ocra_inputs(ocra_vector)
    del inputs["pin"]
    digest = psha1(ocra_vector["pin"].encode())
    assert digest.hex() == ocra_vector["pin_hash_sha1_hex"] == rfc6287["pin_hash_sha1_hex"]
    for pin_hash in (digest, digest.hex(), digest.hex().upper(), bytearray(digest)):
        assert (
            ocra.compute(ocra_vector["suite"], key, pin_hash=pin_hash, **inputs)
            == (ocra_vector["response"])
        )
        assert ocra.verify(
            ocra_vector["suite"], key, ocra_vector["response"], pin_hash=pin_hash, **inputs
        )


@pytest.mark.parametrize("ocra_vector", WITH_PIN, ids=ocra_id)
def test_rfc6287_ocra_pin_as_bytes_equals_pin_as_text(ocra_vector: dict[str, Any]) -> None:
    key = bytes.fromhex(ocra_vector["key_hex"])
    inputs = ocra_inputs(ocra_vector)
    inputs["pin"] = inputs["pin"].encode()
    assert ocra.compute(ocra_vector["suite"], key, **inputs) == ocra_vector["response"]
    inputs["pin"] = "1235"
    assert ocra.verify(ocra_vector["suite"], key, ocra_vector["response"], **inputs) is False


@pytest.mark.parametrize("ocra_vector", WITH_TIMESTAMP, ids=ocra_id)
def test_rfc6287_ocra_timestamp_is_divided_by_the_suite_step(
    ocra_vector: dict[str, Any],
) -> None:
    """T1M: every second of the same minute gives the vector's response, the next minute
    and the previous one do not."""
    assert int(ocra_vector["timestamp_hex"], 16) * 60 == ocra_vector["timestamp_unix"]
    key = bytes.fromhex(ocra_vector["key_hex"])
    inputs = ocra_inputs(ocra_vector)
    start = ocra_vector["timestamp_unix"]
    suite, response = ocra_vector["suite"], ocra_vector["response"]
    for timestamp in (start, start + 1, start + 59, float(start) + 59.999):
        assert ocra.compute(suite, key, **{**inputs, "timestamp": timestamp}) == response
    for timestamp in (start - 1, start + 60):
        assert ocra.verify(suite, key, response, **{**inputs, "timestamp": timestamp}) is False


@pytest.mark.parametrize("ocra_vector", WITH_COUNTER, ids=ocra_id)
def test_rfc6287_ocra_counter_enters_the_mac(ocra_vector: dict[str, Any]) -> None:
    key = bytes.fromhex(ocra_vector["key_hex"])
    inputs = ocra_inputs(ocra_vector)
    inputs["counter"] += 1
    assert ocra.verify(ocra_vector["suite"], key, ocra_vector["response"], **inputs) is False


RFC_SUITES = {
    "OCRA-1:HOTP-SHA1-6:QN08": ("sha1", 6, False, "N", 8, None, None),
    "OCRA-1:HOTP-SHA256-8:C-QN08-PSHA1": ("sha256", 8, True, "N", 8, "sha1", None),
    "OCRA-1:HOTP-SHA256-8:QN08-PSHA1": ("sha256", 8, False, "N", 8, "sha1", None),
    "OCRA-1:HOTP-SHA512-8:C-QN08": ("sha512", 8, True, "N", 8, None, None),
    "OCRA-1:HOTP-SHA512-8:QN08-T1M": ("sha512", 8, False, "N", 8, None, 60),
    "OCRA-1:HOTP-SHA256-8:QA08": ("sha256", 8, False, "A", 8, None, None),
    "OCRA-1:HOTP-SHA512-8:QA08": ("sha512", 8, False, "A", 8, None, None),
    "OCRA-1:HOTP-SHA512-8:QA08-PSHA1": ("sha512", 8, False, "A", 8, "sha1", None),
    "OCRA-1:HOTP-SHA512-8:QA10-T1M": ("sha512", 8, False, "A", 10, None, 60),
}


@pytest.mark.parametrize("suite", sorted(RFC_SUITES))
def test_rfc6287_suites_parse_to_their_declared_parts(suite: str) -> None:
    algorithm, digits, counter, q_format, q_length, pin, step = RFC_SUITES[suite]
    assert ocra.parse_suite(suite) == ocra.Suite(
        suite=suite,
        algorithm=algorithm,
        digits=digits,
        counter=counter,
        question_format=q_format,
        question_length=q_length,
        pin_algorithm=pin,
        session_length=None,
        time_step=step,
    )


def test_rfc6287_every_vector_suite_is_listed(rfc6287: dict[str, Any]) -> None:
    assert {row["suite"] for row in rfc6287["vectors"]} == set(RFC_SUITES)
    assert len(rfc6287["vectors"]) == 70


def _ocra_groups() -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in OCRA_ROWS:
        groups[row["suite"]].append(row)
    return groups


OCRA_GROUPS = _ocra_groups()


def ocra_batch_columns(
    suite: str, rows: list[dict[str, Any]], key_layout: str, text_layout: str
) -> dict[str, Any]:
    """verify_batch/compute_batch keyword columns for ``rows`` of one suite."""
    info = ocra.parse_suite(suite)
    keys, key_index = key_column(
        key_layout, [bytes.fromhex(r["key_hex"]) for r in rows], info.algorithm
    )
    columns: dict[str, Any] = {
        "keys": keys,
        "questions": text_column(text_layout, [r["question"] for r in rows]),
        "key_index": key_index,
    }
    if info.counter:
        columns["counters"] = int_column(text_layout, [r["counter"] for r in rows])
    if info.time_step:
        columns["timestamps"] = int_column(text_layout, [r["timestamp_unix"] for r in rows])
    if info.pin_algorithm:
        digests = [psha1(r["pin"].encode()) for r in rows]
        if text_layout.startswith("list"):
            columns["pin_hashes"] = digests
        elif text_layout == "object-array":
            columns["pin_hashes"] = np.array(digests, dtype=object)
        elif text_layout == "numpy-S":
            columns["pin_hashes"] = np.array(digests, dtype="S20")
        else:
            columns["pin_hashes"] = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 20)
    return columns


@pytest.mark.parametrize("suite", sorted(OCRA_GROUPS))
@pytest.mark.parametrize("key_layout", KEY_LAYOUTS)
@pytest.mark.parametrize("text_layout", TEXT_LAYOUTS)
def test_rfc6287_ocra_batches_match_the_table(
    suite: str, key_layout: str, text_layout: str
) -> None:
    rows = OCRA_GROUPS[suite]
    columns = ocra_batch_columns(suite, rows, key_layout, text_layout)
    responses = [r["response"] for r in rows]

    computed = ocra.compute_batch(suite, **columns)
    assert computed.dtype == np.dtype(f"S{ocra.parse_suite(suite).digits}")
    assert computed.shape == (len(rows),)
    assert as_strings(computed) == responses

    outcomes = ocra.verify_batch(suite, responses=text_column(text_layout, responses), **columns)
    assert outcomes.dtype == np.uint8
    assert outcomes.shape == (len(rows),)
    assert outcomes.tolist() == [Outcome.OK] * len(rows)

    wrong = [change_digit(r, 0, 1) for r in responses]
    outcomes = ocra.verify_batch(suite, responses=text_column(text_layout, wrong), **columns)
    assert outcomes.tolist() == [Outcome.WRONG] * len(rows)


@pytest.mark.parametrize("suite", sorted(OCRA_GROUPS))
@pytest.mark.parametrize("threads", [1, 2])
def test_rfc6287_ocra_vectors_in_a_parallel_sized_batch(suite: str, threads: int) -> None:
    """Repeated past the parallel threshold (512 items), on one thread and on a pool."""
    rows = OCRA_GROUPS[suite]
    repeat = math.ceil(1500 / len(rows))
    rows = rows * repeat
    columns = ocra_batch_columns(suite, rows, "keytable-index", "numpy-S")
    responses = np.array([r["response"].encode() for r in rows], dtype="S")
    outcomes = ocra.verify_batch(suite, responses=responses, threads=threads, **columns)
    assert outcomes.tolist() == [Outcome.OK] * len(rows)
    computed = ocra.compute_batch(suite, threads=threads, **columns)
    assert np.array_equal(computed, responses)


def test_package_exports_the_documented_names() -> None:
    for name in ("InvalidInputError", "InvalidSuiteError", "InvalidInputTypeError", "KeyTable"):
        assert hasattr(sls_core, name)
    assert [int(o) for o in Outcome] == [0, 1, 2]
    assert [o.name for o in Outcome] == ["OK", "WRONG", "MALFORMED"]
    assert isinstance(sls_core.__version__, str)
