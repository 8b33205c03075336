"""Batch entry points: thread counts, numpy layouts and dtypes, result arrays, empty
batches, fork safety and the KeyTable's secrecy.

Large batches use 20,000 items, well past the 2048-item threshold below which a batch runs
on the calling thread, so ``threads=2`` really runs on a pool.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from sls_core import KeyTable, Outcome, hotp, ocra, totp
from sls_strategies import psha1

N = 20_000
SUITE = "OCRA-1:HOTP-SHA1-8:C-QN06-PSHA1"  # a DSC+-like card with a counter
FORK_TIMEOUT = 60.0


@dataclass(frozen=True)
class Batch:
    """A large OCRA batch: one third right, one third wrong, one third malformed."""

    keys: np.ndarray  # (N, 20) uint8, no zero byte (safe in numpy S arrays)
    questions: np.ndarray  # S6
    counters: np.ndarray  # uint64
    pin_hashes: np.ndarray  # (N, 20) uint8
    right: np.ndarray  # S8, computed on one thread
    responses: np.ndarray  # S8
    expected: np.ndarray  # uint8 outcomes

    def columns(self, **overrides: Any) -> dict[str, Any]:
        columns = {
            "keys": self.keys,
            "questions": self.questions,
            "counters": self.counters,
            "pin_hashes": self.pin_hashes,
        }
        columns.update(overrides)
        return columns


def make_batch(n: int, seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    keys = rng.integers(1, 256, size=(n, 20), dtype=np.uint8)
    questions = np.array([f"{q:06d}".encode() for q in rng.integers(0, 10**6, n)], dtype="S6")
    counters = rng.integers(0, 2**63, n, dtype=np.uint64)
    pins = rng.integers(0, 10**4, n)
    pin_hashes = np.frombuffer(
        b"".join(psha1(f"{p:04d}".encode()) for p in pins), dtype=np.uint8
    ).reshape(n, 20)
    right = ocra.compute_batch(
        SUITE, keys, questions, counters=counters, pin_hashes=pin_hashes, threads=1
    )
    responses = []
    expected = []
    for i, code in enumerate(right.tolist()):
        if i % 3 == 0:
            responses.append(code)
            expected.append(Outcome.OK)
        elif i % 3 == 1:
            digit = (code[i % 8] - 48 + 1 + i % 9) % 10
            responses.append(code[: i % 8] + bytes([48 + digit]) + code[i % 8 + 1 :])
            expected.append(Outcome.WRONG)
        else:
            responses.append(code[:4] + b" " + code[5:])
            expected.append(Outcome.MALFORMED)
    return Batch(
        keys=keys,
        questions=questions,
        counters=counters,
        pin_hashes=pin_hashes,
        right=right,
        responses=np.array(responses, dtype="S8"),
        expected=np.array(expected, dtype=np.uint8),
    )


@pytest.fixture(scope="module")
def batch() -> Batch:
    return make_batch(N, seed=20240611)


# --------------------------------------------------------------------------------------
# Thread counts.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "threads", [1, 2, 3, None], ids=["threads1", "threads2", "threads3", "default"]
)
def test_large_ocra_verify_batch_is_the_same_on_any_thread_count(
    batch: Batch, threads: int | None
) -> None:
    outcomes = ocra.verify_batch(
        SUITE, responses=batch.responses, threads=threads, **batch.columns()
    )
    assert outcomes.dtype == np.uint8
    assert outcomes.shape == (N,)
    assert np.array_equal(outcomes, batch.expected)


@pytest.mark.parametrize("threads", [2, 3, None], ids=["threads2", "threads3", "default"])
def test_large_ocra_compute_batch_is_the_same_on_any_thread_count(
    batch: Batch, threads: int | None
) -> None:
    computed = ocra.compute_batch(SUITE, threads=threads, **batch.columns())
    assert computed.dtype == np.dtype("S8")
    assert computed.shape == (N,)
    assert np.array_equal(computed, batch.right)


def test_large_batch_agrees_with_scalar_verify_on_a_sample(batch: Batch) -> None:
    outcomes = ocra.verify_batch(SUITE, responses=batch.responses, threads=2, **batch.columns())
    for i in range(0, N, 97):
        ok = ocra.verify(
            SUITE,
            batch.keys[i].tobytes(),
            batch.responses[i],
            question=batch.questions[i],
            counter=int(batch.counters[i]),
            pin_hash=batch.pin_hashes[i].tobytes(),
        )
        assert ok == (outcomes[i] == Outcome.OK)
        assert (
            ocra.compute(
                SUITE,
                batch.keys[i].tobytes(),
                question=batch.questions[i].decode(),
                counter=int(batch.counters[i]),
                pin_hash=batch.pin_hashes[i].tobytes(),
            )
            == batch.right[i].decode()
        )


@pytest.mark.parametrize(
    "layout", ["keytable", "keytable-index", "keytable-shuffled", "numpy-S", "object", "lists"]
)
def test_large_batch_gives_the_same_outcomes_in_every_key_layout(batch: Batch, layout: str) -> None:
    keys: Any
    key_index = None
    if layout == "keytable":
        keys = KeyTable(batch.keys, threads=2)
        assert len(keys) == N
    elif layout == "keytable-index":
        # The table holds the keys in reverse order; the index maps each item back.
        keys = KeyTable(batch.keys[::-1], algorithm="sha1", threads=2)
        key_index = np.arange(N - 1, -1, -1, dtype=np.int64)
    elif layout == "keytable-shuffled":
        # Rows in random order, as a server's table indexed by device id: the kernel warms
        # each chunk's keys out of order, and the verdicts must stay in input order.
        shuffled = np.random.default_rng(3).permutation(N)
        keys = KeyTable(batch.keys[shuffled], algorithm="sha1", threads=2)
        key_index = np.argsort(shuffled).astype(np.uint64)
    elif layout == "numpy-S":
        keys = batch.keys.view("S20").reshape(N)
    elif layout == "object":
        keys = np.array([k.tobytes() for k in batch.keys], dtype=object)
    else:
        keys = [k.tobytes() for k in batch.keys]
    questions = batch.questions if layout != "lists" else batch.questions.tolist()
    responses = (
        batch.responses if layout != "lists" else [r.decode() for r in batch.responses.tolist()]
    )
    outcomes = ocra.verify_batch(
        SUITE,
        responses=responses,
        threads=2,
        key_index=key_index,
        **batch.columns(keys=keys, questions=questions),
    )
    assert np.array_equal(outcomes, batch.expected)


def test_keytable_built_on_a_pool_equals_one_built_on_one_thread(batch: Batch) -> None:
    one = KeyTable(batch.keys, threads=1)
    two = KeyTable(batch.keys, threads=2)
    a = ocra.verify_batch(SUITE, responses=batch.responses, threads=2, **batch.columns(keys=one))
    b = ocra.verify_batch(SUITE, responses=batch.responses, threads=1, **batch.columns(keys=two))
    assert np.array_equal(a, b)
    assert np.array_equal(a, batch.expected)


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_large_hotp_batch_is_the_same_on_one_and_two_threads(algorithm: str) -> None:
    rng = np.random.default_rng(7)
    keys = rng.integers(1, 256, size=(N, 32), dtype=np.uint8)
    counters = rng.integers(0, 2**40, N, dtype=np.int64)
    device = counters + rng.integers(-1, 4, N)  # some behind (wrong), most ahead (in window)
    device = np.maximum(device, 0)
    codes = hotp.compute_batch(keys, device, algorithm=algorithm, threads=1)
    results = [
        hotp.verify_batch(keys, codes, counters, window=3, algorithm=algorithm, threads=t)
        for t in (1, 2)
    ]
    assert np.array_equal(results[0].outcomes, results[1].outcomes)
    assert np.array_equal(results[0].matched, results[1].matched)
    assert np.array_equal(hotp.compute_batch(keys, device, algorithm=algorithm, threads=2), codes)
    ok = results[0].outcomes == Outcome.OK
    # Every code whose counter lies in the window matched, at its own counter or earlier.
    in_window = (device >= counters) & (device <= counters + 3)
    assert np.all(ok[in_window])
    assert np.all(results[0].matched[ok] <= device[ok].astype(np.uint64))
    assert np.all(results[0].matched[~ok] == 0)
    for i in range(0, N, 499):
        assert hotp.verify(
            keys[i].tobytes(), codes[i], int(counters[i]), window=3, algorithm=algorithm
        ) == (int(results[0].matched[i]) if ok[i] else None)


def test_large_totp_batch_is_the_same_on_one_and_two_threads() -> None:
    rng = np.random.default_rng(11)
    keys = KeyTable(rng.integers(1, 256, size=(N, 20), dtype=np.uint8))
    times = rng.integers(0, 2**34, N, dtype=np.uint64)
    codes = totp.compute_batch(keys, times, threads=1)
    skewed = times + rng.integers(0, 90, N).astype(np.uint64)  # at most 3 steps later
    results = [totp.verify_batch(keys, codes, skewed, window=(3, 0), threads=t) for t in (1, 2)]
    assert np.array_equal(results[0].outcomes, results[1].outcomes)
    assert np.array_equal(results[0].matched, results[1].matched)
    assert np.all(results[0].outcomes == Outcome.OK)  # at most 4 steps behind
    assert np.array_equal(results[0].matched, times // 30)


# --------------------------------------------------------------------------------------
# numpy layouts and dtypes.
# --------------------------------------------------------------------------------------

SMALL = make_batch(700, seed=5)  # still above the parallel threshold


@pytest.mark.parametrize(
    "dtype",
    [np.uint64, np.int64, np.uint32, np.int32, np.uint16, np.uint8, ">u8", ">i8"],
    ids=[
        "uint64",
        "int64",
        "uint32",
        "int32",
        "uint16",
        "uint8",
        "big-endian-uint64",
        "big-endian-int64",
    ],
)
def test_integer_columns_accept_every_integer_dtype(dtype: Any) -> None:
    counters = np.arange(700) % 200  # fits every dtype above
    keys = SMALL.keys
    codes = hotp.compute_batch(keys, counters.tolist(), threads=2)
    as_dtype = counters.astype(dtype)
    assert np.array_equal(hotp.compute_batch(keys, as_dtype, threads=2), codes)
    result = hotp.verify_batch(keys, codes, as_dtype, threads=2)
    assert np.all(result.outcomes == Outcome.OK)
    assert np.array_equal(result.matched, counters.astype(np.uint64))


def test_negative_int64_counters_are_refused_before_any_work() -> None:
    counters = np.arange(700, dtype=np.int64)
    counters[650] = -1
    with pytest.raises(ValueError, match="counters: must not contain negative values"):
        hotp.verify_batch(SMALL.keys, SMALL.responses, counters, threads=2)
    with pytest.raises(ValueError, match="counters: must not contain negative values"):
        ocra.verify_batch(SUITE, responses=SMALL.responses, **SMALL.columns(counters=counters))


TEXT_LAYOUTS = {
    "numpy-S": lambda a: a,
    "numpy-U": lambda a: a.astype("U"),
    "object-str": lambda a: np.array([x.decode() for x in a.tolist()], dtype=object),
    "object-bytes": lambda a: a.astype(object),
    "list-str": lambda a: [x.decode() for x in a.tolist()],
    "list-bytes": lambda a: a.tolist(),
    "uint8-matrix": lambda a: a.view(np.uint8).reshape(len(a), -1),
    "strided-S": lambda a: np.repeat(a, 2)[::2],
    "wider-S": lambda a: a.astype("S16"),
}


@pytest.mark.parametrize("layout", list(TEXT_LAYOUTS))
def test_question_and_response_columns_in_every_layout(layout: str) -> None:
    convert = TEXT_LAYOUTS[layout]
    outcomes = ocra.verify_batch(
        SUITE,
        responses=convert(SMALL.responses),
        threads=2,
        **SMALL.columns(questions=convert(SMALL.questions)),
    )
    assert np.array_equal(outcomes, SMALL.expected)


KEY_LAYOUTS = {
    "uint8-matrix": lambda m: m,
    "fortran-matrix": np.asfortranarray,
    "strided-matrix": lambda m: np.repeat(m, 2, axis=0)[::2],
    "read-only-matrix": lambda m: _read_only(m.copy()),
    "numpy-S": lambda m: m.view("S20").reshape(len(m)),
    "object": lambda m: np.array([k.tobytes() for k in m], dtype=object),
    "bytearray-list": lambda m: [bytearray(k.tobytes()) for k in m],
    "memoryview-list": lambda m: [memoryview(k.tobytes()) for k in m],
}


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@pytest.mark.parametrize("layout", list(KEY_LAYOUTS))
def test_key_and_pin_hash_columns_in_every_layout(layout: str) -> None:
    convert = KEY_LAYOUTS[layout]
    columns = SMALL.columns(keys=convert(SMALL.keys))
    # Binary columns keep a trailing 0x00 even in an S array (see
    # test_binary_values_ending_in_nul_survive_a_numpy_s_column).
    columns["pin_hashes"] = convert(SMALL.pin_hashes)
    outcomes = ocra.verify_batch(SUITE, responses=SMALL.responses, threads=2, **columns)
    assert np.array_equal(outcomes, SMALL.expected)
    assert np.array_equal(ocra.compute_batch(SUITE, threads=2, **columns), SMALL.right)


def test_uint8_matrix_cells_are_used_as_is_but_s_cells_drop_nul_padding() -> None:
    """A uint8 matrix row is the value, NULs included; an S cell ends at its padding."""
    suite, key = "OCRA-1:HOTP-SHA1-6:QN08", b"12345678901234567890"
    padded = np.frombuffer(b"237653\x00\x00", dtype=np.uint8).reshape(1, 8)
    assert ocra.verify_batch(suite, [key], ["00000000"], padded).tolist() == [Outcome.MALFORMED]
    exact = np.frombuffer(b"237653", dtype=np.uint8).reshape(1, 6)
    assert ocra.verify_batch(suite, [key], ["00000000"], exact).tolist() == [Outcome.OK]
    as_s = np.array([b"237653"], dtype="S8")
    assert ocra.verify_batch(suite, [key], ["00000000"], as_s).tolist() == [Outcome.OK]


RFC_SUITE, RFC_KEY, RFC_QUESTION = "OCRA-1:HOTP-SHA1-6:QN08", b"12345678901234567890", "00000000"
RFC_RESPONSE = "237653"  # RFC 6287 Appendix C, one-way challenge/response


def test_trailing_nul_in_a_numpy_s_or_u_column_is_padding_as_numpy_itself_reads_it() -> None:
    r"""Rule: numpy's fixed-width S and U dtypes cannot hold a trailing NUL (numpy reads
    ``np.array([b"237653\0"], "S7")[0]`` back as ``b"237653"``), so a response or code in
    such a column reads as numpy reads it, and verifies. Lists, scalars and object arrays
    keep the NUL, and there it is malformed."""
    with_nul = RFC_RESPONSE + "\x00"
    s_column = np.array([with_nul.encode()], dtype="S7")
    u_column = np.array([with_nul], dtype="U7")
    assert s_column[0] == RFC_RESPONSE.encode()  # numpy's own semantics
    assert u_column[0] == RFC_RESPONSE
    for responses in (s_column, u_column):
        outcomes = ocra.verify_batch(RFC_SUITE, [RFC_KEY], [RFC_QUESTION], responses)
        assert outcomes.tolist() == [Outcome.OK]
    hotp_codes = np.array([b"755224\x00"], dtype="S7")  # RFC 4226 Appendix D, counter 0
    result = hotp.verify_batch([RFC_KEY], hotp_codes, [0])
    assert result.outcomes.tolist() == [Outcome.OK]

    for responses in ([with_nul], [with_nul.encode()], np.array([with_nul], dtype=object)):
        outcomes = ocra.verify_batch(RFC_SUITE, [RFC_KEY], [RFC_QUESTION], responses)
        assert outcomes.tolist() == [Outcome.MALFORMED]
    assert ocra.verify(RFC_SUITE, RFC_KEY, with_nul, question=RFC_QUESTION) is False


@pytest.mark.parametrize(
    "response",
    [b"237\x00653", b"23\x00653", b"\x00237653"],
    ids=["inserted", "replacing-a-digit", "leading"],
)
def test_nul_before_the_end_of_a_numpy_s_or_u_cell_is_still_malformed(response: bytes) -> None:
    """Only trailing NULs are numpy padding: one with a digit after it is part of the value."""
    for responses in (np.array([response], dtype="S"), np.array([response.decode()], dtype="U")):
        assert responses[0] == (response if responses.dtype.kind == "S" else response.decode())
        outcomes = ocra.verify_batch(RFC_SUITE, [RFC_KEY], [RFC_QUESTION], responses)
        assert outcomes.tolist() == [Outcome.MALFORMED]


def test_nul_inside_an_8_digit_totp_code_in_a_numpy_column_is_malformed() -> None:
    right = "94287082"  # RFC 6238 Appendix B, SHA-1 at 59 s
    cases = {right[:4] + "\x00" + right[4:]: Outcome.MALFORMED, right + "\x00": Outcome.OK}
    for code, expected in cases.items():
        for codes in (np.array([code.encode()], dtype="S"), np.array([code], dtype="U")):
            result = totp.verify_batch([RFC_KEY], codes, [59], digits=8, window=0)
            assert result.outcomes.tolist() == [expected], (code, codes.dtype)


NUL_ENDING_PIN = b"25"  # SHA-1 of it ends in 0x00: ...640400
NUL_ENDING_SESSION = b"session\x00"
LONG_NUL_ENDING_KEY = b"k" * 100 + b"\x00"  # longer than a SHA-1 block: hashed first


@pytest.mark.parametrize("column", ["pin_hashes", "sessions", "keys"])
def test_binary_values_ending_in_nul_survive_a_numpy_s_column(column: str) -> None:
    suite = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1-S008"
    pin_hash = psha1(NUL_ENDING_PIN)
    assert pin_hash[-1] == 0
    inputs = {"question": "123456", "pin_hash": pin_hash, "session": NUL_ENDING_SESSION}
    right = ocra.compute(suite, LONG_NUL_ENDING_KEY, **inputs)
    as_lists = {
        "keys": [LONG_NUL_ENDING_KEY],
        "pin_hashes": [pin_hash],
        "sessions": [NUL_ENDING_SESSION],
    }
    assert ocra.verify_batch(
        suite, questions=["123456"], responses=[right], **as_lists
    ).tolist() == [Outcome.OK]
    as_numpy = dict(as_lists)
    as_numpy[column] = np.array(as_lists[column], dtype="S")
    outcomes = ocra.verify_batch(suite, questions=["123456"], responses=[right], **as_numpy)
    assert outcomes.tolist() == [Outcome.OK]


# --------------------------------------------------------------------------------------
# Result arrays and empty batches.
# --------------------------------------------------------------------------------------


def test_result_arrays_have_the_documented_dtype_and_shape() -> None:
    outcomes = ocra.verify_batch(SUITE, responses=SMALL.responses, **SMALL.columns())
    assert outcomes.dtype == np.uint8
    assert outcomes.shape == (700,)
    assert outcomes.ndim == 1
    assert {Outcome(int(o)) for o in outcomes} == {Outcome.OK, Outcome.WRONG, Outcome.MALFORMED}
    computed = ocra.compute_batch(SUITE, **SMALL.columns())
    assert computed.dtype == np.dtype("S8")
    assert computed.shape == (700,)
    result = hotp.verify_batch(SMALL.keys, SMALL.responses, SMALL.counters, digits=8)
    assert result.outcomes.dtype == np.uint8
    assert result.matched.dtype == np.uint64
    assert result.outcomes.shape == result.matched.shape == (700,)
    assert result == (result.outcomes, result.matched)  # a NamedTuple
    assert hotp.compute_batch(SMALL.keys, SMALL.counters, digits=10).dtype == np.dtype("S10")


def test_untruncated_suite_batch_is_s10_without_padding_digits() -> None:
    suite = "OCRA-1:HOTP-SHA1-0:QN08"
    keys = [b"12345678901234567890"] * 3
    questions = ["00000000", "11111111", "22222222"]
    computed = ocra.compute_batch(suite, keys, questions)
    assert computed.dtype == np.dtype("S10")
    expected = [ocra.compute(suite, keys[0], question=q) for q in questions]
    assert [c.decode() for c in computed.tolist()] == expected
    assert ocra.verify_batch(suite, keys, questions, computed).tolist() == [Outcome.OK] * 3


EMPTY_CASES: list[Any] = [
    pytest.param(
        lambda: ocra.verify_batch(SUITE, [], [], [], counters=[], pin_hashes=[]),
        np.uint8,
        id="ocra-verify-lists",
    ),
    pytest.param(
        lambda: ocra.verify_batch(
            SUITE,
            np.empty((0, 20), np.uint8),
            np.array([], dtype="S6"),
            np.array([], dtype="U8"),
            counters=np.array([], dtype=np.int64),
            pin_hashes=np.empty((0, 20), np.uint8),
        ),
        np.uint8,
        id="ocra-verify-numpy",
    ),
    pytest.param(
        lambda: ocra.verify_batch(SUITE, KeyTable([]), [], [], counters=[], pin_hashes=[]),
        np.uint8,
        id="ocra-verify-keytable",
    ),
    pytest.param(
        lambda: ocra.compute_batch(SUITE, [], [], counters=[], pin_hashes=[]),
        np.dtype("S8"),
        id="ocra-compute",
    ),
    pytest.param(lambda: hotp.compute_batch([], []), np.dtype("S6"), id="hotp-compute"),
    pytest.param(lambda: totp.compute_batch([], [], digits=8), np.dtype("S8"), id="totp-compute"),
    pytest.param(lambda: hotp.verify_batch([], [], []).outcomes, np.uint8, id="hotp-verify"),
    pytest.param(
        lambda: totp.verify_batch([], [], np.array([], np.uint64)).matched,
        np.uint64,
        id="totp-verify",
    ),
]


@pytest.mark.parametrize(("call", "dtype"), EMPTY_CASES)
def test_empty_batch_returns_an_empty_array(call: Any, dtype: Any) -> None:
    result = call()
    assert isinstance(result, np.ndarray)
    assert result.shape == (0,)
    assert result.dtype == dtype


@pytest.mark.parametrize("threads", [1, 2])
def test_small_batch_below_the_parallel_threshold_still_validates_threads(threads: int) -> None:
    outcomes = ocra.verify_batch(
        SUITE,
        responses=SMALL.responses[:5],
        threads=threads,
        **{k: v[:5] for k, v in SMALL.columns().items()},
    )
    assert np.array_equal(outcomes, SMALL.expected[:5])
    with pytest.raises(ValueError, match="threads: must be at least 1"):
        ocra.verify_batch(
            SUITE,
            responses=SMALL.responses[:5],
            threads=0,
            **{k: v[:5] for k, v in SMALL.columns().items()},
        )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3), (" 2 ", 2), ("0", None), ("-1", None), ("many", None), ("", None), (None, None)],
    ids=["3", "spaces", "zero", "negative", "word", "empty", "unset"],
)
def test_default_threads_follows_sls_core_threads_read_once_per_process(
    value: str | None, expected: int | None
) -> None:
    # The value is read once per process (finding the core count costs ~30 µs), so each
    # setting is checked in a fresh interpreter.
    env = {k: v for k, v in os.environ.items() if k != "SLS_CORE_THREADS"}
    if value is not None:
        env["SLS_CORE_THREADS"] = value
    out = subprocess.run(
        [sys.executable, "-c", "import sls_core; print(sls_core.default_threads())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    cores = len(os.sched_getaffinity(0))
    assert int(out.stdout) == (expected if expected is not None else cores)


# --------------------------------------------------------------------------------------
# Fork safety.
# --------------------------------------------------------------------------------------


def _child_batch_ok(table: KeyTable) -> bool:
    """Runs parallel batches (>= 2000 items) and checks them against the parent's answers."""
    outcomes = ocra.verify_batch(
        SUITE, responses=FORK_BATCH.responses, threads=2, **FORK_BATCH.columns()
    )
    on_table = ocra.verify_batch(
        SUITE, responses=FORK_BATCH.responses, threads=2, **FORK_BATCH.columns(keys=table)
    )
    computed = ocra.compute_batch(SUITE, threads=None, **FORK_BATCH.columns())
    fresh = KeyTable(FORK_BATCH.keys, threads=2)
    return (
        np.array_equal(outcomes, FORK_BATCH.expected)
        and np.array_equal(on_table, FORK_BATCH.expected)
        and np.array_equal(computed, FORK_BATCH.right)
        and len(fresh) == len(FORK_BATCH.keys)
    )


FORK_BATCH = make_batch(3000, seed=99)


def _warm_parent_pools() -> KeyTable:
    """Starts the 2-thread and the default pools in the parent before forking."""
    table = KeyTable(FORK_BATCH.keys, threads=2)
    for threads in (2, None):
        outcomes = ocra.verify_batch(
            SUITE, responses=FORK_BATCH.responses, threads=threads, **FORK_BATCH.columns()
        )
        assert np.array_equal(outcomes, FORK_BATCH.expected)
    return table


def _wait(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None (after killing it) if it did not finish in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_parallel_batch_in_a_forked_child_finishes() -> None:
    table = _warm_parent_pools()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            code = 0 if _child_batch_ok(table) else 3
        finally:
            os._exit(code)
    status = _wait(pid, FORK_TIMEOUT)
    assert status is not None, "the forked child hung in a parallel batch"
    assert os.WIFEXITED(status), f"child died: status {status}"
    assert os.WEXITSTATUS(status) == 0, "the child's batch results were wrong"
    # The parent's pools still work after the fork.
    outcomes = ocra.verify_batch(
        SUITE, responses=FORK_BATCH.responses, threads=2, **FORK_BATCH.columns(keys=table)
    )
    assert np.array_equal(outcomes, FORK_BATCH.expected)


def _mp_child(table: KeyTable) -> None:
    if not _child_batch_ok(table):
        raise SystemExit(3)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_parallel_batch_in_a_multiprocessing_fork_child_finishes() -> None:
    table = _warm_parent_pools()
    process = multiprocessing.get_context("fork").Process(target=_mp_child, args=(table,))
    process.start()
    process.join(FORK_TIMEOUT)
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail("the fork-started child hung in a parallel batch")
    assert process.exitcode == 0


# --------------------------------------------------------------------------------------
# KeyTable secrecy.
# --------------------------------------------------------------------------------------

TABLE_SECRET = b"TABLE-KEY-3x7Wq-SECRET"


def test_keytable_repr_shows_algorithm_and_count_only() -> None:
    table = KeyTable([TABLE_SECRET, TABLE_SECRET + b"2"], algorithm="SHA-256")
    assert repr(table) == 'KeyTable(algorithm="sha256", keys=2)'
    for text in (repr(table), str(table), format(table)):
        assert "3x7Wq" not in text
        assert TABLE_SECRET.hex() not in text
    assert len(table) == 2
    assert table.algorithm == "sha256"
    assert [name for name in dir(table) if not name.startswith("_")] == ["algorithm"]


@pytest.mark.parametrize(
    "copier",
    [pickle.dumps, lambda t: pickle.dumps(t, protocol=0), copy.copy, copy.deepcopy],
    ids=["pickle", "pickle-protocol-0", "copy", "deepcopy"],
)
def test_keytable_cannot_be_pickled_or_copied(copier: Any) -> None:
    table = KeyTable([TABLE_SECRET])
    with pytest.raises(TypeError, match="KeyTable cannot be pickled: it holds key material") as ei:
        copier(table)
    assert "3x7Wq" not in str(ei.value)
    assert "3x7Wq" not in repr(ei.value)


def test_keytable_is_frozen() -> None:
    table = KeyTable([TABLE_SECRET])
    with pytest.raises(AttributeError):
        table.algorithm = "sha512"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        table.keys = [b"x"]  # type: ignore[attr-defined]
