"""The audit trail's lines, formatted natively (``sls_core.auditfmt.audit_lines``), against a plain
Python reference: one ``json.dumps`` per line with the keys in the trail's order.

Valid usernames are lower-case letters and digits, but whatever text reaches the trail must
still make one valid JSON line, byte-identical to ``json.dumps`` (ASCII only, ``\\uXXXX``
escapes with surrogate pairs), and a username that failed validation is written as ``""``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sls_core import InvalidInputError, InvalidInputTypeError
from sls_core.api.v1 import verification_pb2
from sls_core.auditfmt import audit_lines
from sls_core.outcome import LoginOutcome
from sls_core.server.audit import AuditTrail, _head, read_records, verify_trail

NAMES = [LoginOutcome(value).name for value in range(len(LoginOutcome))]
INVALID = int(LoginOutcome.INVALID_USERNAME)
MAX_U64 = 2**64 - 1
TIME = "2026-01-02T03:04:05.678Z"

HOSTILE = [
    "",
    'quo"te',
    "back\\slash",
    "new\nline",
    "nul\x00byte",
    "tab\tcr\rff\fbs\b",
    "del\x7f and \x1f",
    "caf\u00e9",
    "\u2028\u2029",
    "emoji \U0001f600",
    "\U0010ffff",
    "lone \ud800 surrogate",
    "\udfff\ud83d",
    "</script>",
]

# Any text, lone surrogates included (hypothesis leaves them out unless asked).
any_text = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=12)


def head_of(caller: str, request_id: str, event: str = "verify") -> str:
    """What the trail passes as a line's head: its first keys, the object left open."""
    fields = {"time": TIME, "event": event, "caller": caller, "request_id": request_id}
    return json.dumps(fields, separators=(",", ":"))[:-1]


def reference(
    callers: Sequence[tuple[str, str]],
    usernames: Sequence[Any],
    device_ids: Sequence[int],
    outcomes: Sequence[int],
    event: str = "verify",
) -> bytes:
    lines = []
    for (caller, request_id), name, device_id, outcome in zip(
        callers, usernames, device_ids, outcomes, strict=True
    ):
        line = {
            "time": TIME,
            "event": event,
            "caller": caller,
            "request_id": request_id,
            "username": "" if outcome == INVALID else name,
            "device_id": int(device_id),
            "outcome": NAMES[outcome],
        }
        lines.append(json.dumps(line, separators=(",", ":")) + "\n")
    return "".join(lines).encode()


def native(head: Any, usernames: Any, device_ids: Any, outcomes: Any, **overrides: Any) -> bytes:
    options: dict[str, Any] = {"outcome_names": NAMES, "blank_username_outcome": INVALID}
    options.update(overrides)
    return audit_lines(head, usernames, device_ids, outcomes, **options)


def ids(values: Sequence[int]) -> npt.NDArray[np.uint64]:
    return np.array(values, dtype=np.uint64)


def verdicts(values: Sequence[int]) -> npt.NDArray[np.uint8]:
    return np.array(values, dtype=np.uint8)


def test_an_ordinary_batch_is_one_json_line_per_item() -> None:
    n = 5000  # above the size that releases the GIL
    usernames = [f"gw{i}" for i in range(n)]
    device_ids = ids([(i * 7919) % 100_000 for i in range(n)])
    outcomes = verdicts([i % len(NAMES) for i in range(n)])
    who = ("cn=gateway-1", "7f3a-1")
    out = native(head_of(*who), usernames, device_ids, outcomes)
    assert out == reference([who] * n, usernames, device_ids.tolist(), outcomes.tolist())
    assert out.count(b"\n") == n


def test_an_empty_batch_has_no_lines() -> None:
    assert native(head_of("c", "r"), [], ids([]), verdicts([])) == b""
    assert native([], [], ids([]), verdicts([])) == b""


def test_every_outcome_value_is_named() -> None:
    outcomes = [int(o) for o in LoginOutcome]
    usernames = [f"user{v}" for v in outcomes]
    device_ids = list(range(len(outcomes)))
    out = native(head_of("c", "r"), usernames, ids(device_ids), verdicts(outcomes))
    assert out == reference([("c", "r")] * len(outcomes), usernames, device_ids, outcomes)
    assert [json.loads(line)["outcome"] for line in out.splitlines()] == [
        o.name for o in LoginOutcome
    ]


def test_an_invalid_username_is_written_blank_and_never_read() -> None:
    password = "Hunter2-typed-in-the-wrong-field"  # noqa: S105
    usernames: list[Any] = ["alice", password, None, "bob"]
    outcomes = [0, INVALID, INVALID, 1]
    out = native(head_of("c", "r"), usernames, ids([1, 2, 3, 4]), verdicts(outcomes))
    assert password.encode() not in out
    assert [json.loads(line)["username"] for line in out.splitlines()] == ["alice", "", "", "bob"]


def test_the_largest_device_id() -> None:
    out = native(head_of("c", "r"), ["a", "b"], ids([MAX_U64, 0]), verdicts([0, 0]))
    assert out == reference([("c", "r")] * 2, ["a", "b"], [MAX_U64, 0], [0, 0])
    assert json.loads(out.splitlines()[0])["device_id"] == MAX_U64


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_usernames_and_callers_are_escaped_like_json_dumps(text: str) -> None:
    who = (text, text + "-id")
    out = native(head_of(*who), [text], ids([9]), verdicts([0]))
    assert out == reference([who], [text], [9], [0])
    assert out.isascii()
    assert json.loads(out)["username"] == text


@given(
    callers=st.lists(st.tuples(any_text, any_text), min_size=1, max_size=4),
    items=st.lists(
        st.tuples(any_text, st.integers(0, MAX_U64), st.sampled_from(list(LoginOutcome))),
        max_size=20,
    ),
)
def test_any_text_matches_json_dumps(
    callers: list[tuple[str, str]], items: list[tuple[str, int, LoginOutcome]]
) -> None:
    usernames = [name for name, _, _ in items]
    device_ids = [device_id for _, device_id, _ in items]
    outcomes = [int(outcome) for _, _, outcome in items]
    # One head for the batch (VerifyBatch) ...
    out = native(head_of(*callers[0]), usernames, ids(device_ids), verdicts(outcomes))
    assert out == reference([callers[0]] * len(items), usernames, device_ids, outcomes)
    # ... or one per item (single Verify calls verified together).
    per_item = [callers[i % len(callers)] for i in range(len(items))]
    heads = [head_of(*who) for who in per_item]
    out = native(heads, usernames, ids(device_ids), verdicts(outcomes))
    assert out == reference(per_item, usernames, device_ids, outcomes)


def test_usernames_may_be_any_sequence_of_str() -> None:
    request = verification_pb2.VerifyBatchRequest(usernames=["gw1", "gw2", "gw3"])
    expected = reference([("c", "r")] * 3, ["gw1", "gw2", "gw3"], [1, 2, 3], [0, 1, 2])
    for usernames in (request.usernames, list(request.usernames), tuple(request.usernames)):
        assert native(head_of("c", "r"), usernames, ids([1, 2, 3]), verdicts([0, 1, 2])) == expected


def test_strided_arrays_are_read_by_position() -> None:
    device_ids = ids(range(10))[::3]
    outcomes = verdicts([0, 9, 1, 9, 2, 9, 3, 9])[::2]
    out = native(head_of("c", "r"), list("abcd"), device_ids, outcomes)
    assert out == reference([("c", "r")] * 4, list("abcd"), [0, 3, 6, 9], [0, 1, 2, 3])


def refusal(
    error: type[InvalidInputError], field: str, rule: str, *args: Any, **options: Any
) -> None:
    with pytest.raises(error) as raised:
        native(*args, **options)
    assert raised.value.field == field
    assert rule in raised.value.rule


HEAD = head_of("c", "r")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((HEAD, ["a"], ids([1, 2]), verdicts([0, 0])), "usernames"),
        ((HEAD, ["a", "b", "c"], ids([1, 2]), verdicts([0, 0])), "usernames"),
        ((HEAD, ["a", "b"], ids([1]), verdicts([0, 0])), "device_ids"),
        (([HEAD], ["a", "b"], ids([1, 2]), verdicts([0, 0])), "head"),
    ],
)
def test_mismatched_lengths_name_the_field(args: tuple[Any, ...], field: str) -> None:
    refusal(InvalidInputError, field, "one item per outcome", *args)


def test_an_outcome_without_a_name_is_refused() -> None:
    outcomes = verdicts([0, len(NAMES)])
    refusal(InvalidInputError, "outcomes", "row 1", HEAD, ["a", "b"], ids([1, 2]), outcomes)
    refusal(
        InvalidInputError,
        "outcomes",
        "no name in outcome_names",
        HEAD,
        ["a"],
        ids([1]),
        verdicts([2]),
        outcome_names=NAMES[:2],
    )


@pytest.mark.parametrize(
    ("device_ids", "outcomes", "field"),
    [
        (np.array([1], dtype=np.int64), verdicts([0]), "device_ids"),
        (np.array([1], dtype=np.uint32), verdicts([0]), "device_ids"),
        (ids([1]).reshape(1, 1), verdicts([0]), "device_ids"),
        (ids([1]), np.array([0], dtype=np.int64), "outcomes"),
        (ids([1]), np.array([0.0]), "outcomes"),
    ],
)
def test_a_wrong_dtype_is_refused(device_ids: Any, outcomes: Any, field: str) -> None:
    refusal(InvalidInputError, field, "must be a 1-D numpy", HEAD, ["a"], device_ids, outcomes)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((HEAD, ["a"], [1], verdicts([0])), "device_ids"),
        ((HEAD, ["a"], ids([1]), [0]), "outcomes"),
        ((HEAD, "a", ids([1]), verdicts([0])), "usernames"),
        ((HEAD, [b"a"], ids([1]), verdicts([0])), "usernames"),
        ((None, ["a"], ids([1]), verdicts([0])), "head"),
    ],
)
def test_a_wrong_type_is_refused(args: tuple[Any, ...], field: str) -> None:
    refusal(InvalidInputTypeError, field, "expected", *args)


@given(time=any_text, event=any_text, caller=any_text, request_id=any_text)
def test_the_trails_head_is_the_json_of_its_first_keys(
    time: str, event: str, caller: str, request_id: str
) -> None:
    fields = {"time": time, "event": event, "caller": caller, "request_id": request_id}
    assert _head(time, event, caller, request_id) == json.dumps(fields, separators=(",", ":"))[:-1]


def test_the_trail_writes_a_batch_and_coalesced_calls(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(path)
    try:
        usernames = ["gw1", "pass word", 'x"y']
        device_ids, outcomes = ids([5, 0, MAX_U64]), verdicts([0, INVALID, 1])
        trail.verdicts("verify", "cn=gw", "r1", usernames, device_ids, outcomes)
        callers = [("cn=a", "r2"), ("cn=b", "r3"), ("cn=c\n", "r4")]
        trail.verdicts_of_calls("activate", callers, usernames, device_ids, outcomes)
    finally:
        trail.close()
    records = list(read_records(path))  # the records, without the chain's seals
    assert len(records) == 6
    assert verify_trail(path).ok
    assert [list(r) for r in records] == [
        ["time", "event", "caller", "request_id", "username", "device_id", "outcome"]
    ] * 6
    assert [(r["event"], r["caller"], r["request_id"]) for r in records] == [
        ("verify", "cn=gw", "r1"),
        ("verify", "cn=gw", "r1"),
        ("verify", "cn=gw", "r1"),
        ("activate", "cn=a", "r2"),
        ("activate", "cn=b", "r3"),
        ("activate", "cn=c\n", "r4"),
    ]
    assert [r["username"] for r in records] == ["gw1", "", 'x"y'] * 2
    assert [r["device_id"] for r in records] == [5, 0, MAX_U64] * 2
    assert [r["outcome"] for r in records] == ["OK", "INVALID_USERNAME", "WRONG"] * 2


# -- the chain: tamper-evident, self-delimiting, recovered after a crash (issue 11, 6) ----


def _write_some(path: Path, *events: str) -> None:
    trail = AuditTrail(path)
    try:
        for event in events:
            trail.verdicts(event, "cn=gw", "r", ["alice", "bob"], ids([1, 2]), verdicts([0, 1]))
    finally:
        trail.close()


def test_every_write_is_sealed_and_chained_and_the_trail_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_some(path, "verify", "activate")
    _write_some(path, "verify")  # another process (a new trail object) chains on
    check = verify_trail(path)
    assert (check.ok, check.records, check.seals) == (True, 6, 3)


def test_a_changed_line_is_named_by_the_verification(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_some(path, "verify", "activate", "verify")
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace('"outcome":"OK"', '"outcome":"WRONG"')  # the 2nd block
    path.write_text("".join(lines))
    check = verify_trail(path)
    assert not check.ok
    assert check.first_broken_line == 4
    assert "changed" in check.reason


def test_a_removed_block_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_some(path, "verify", "activate", "verify")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3] + lines[6:]))  # the middle block and its seal
    check = verify_trail(path)
    assert (check.ok, check.first_broken_line) == (False, 4)


def test_a_write_cut_short_never_swallows_the_next_record(tmp_path: Path) -> None:
    """kill -9 in the middle of a large write leaves a torn line: the next writer ends
    it and seals what is there as recovered, then writes its own records intact."""
    path = tmp_path / "audit.jsonl"
    _write_some(path, "verify")
    with path.open("ab") as f:
        f.write(b'{"time":"2026-12-04T00:00:00Z","event":"verify","caller":"cn=gw","req')
    _write_some(path, "activate")
    records = list(read_records(path))
    assert [r["event"] for r in records[-2:]] == ["activate", "activate"]
    check = verify_trail(path)
    assert check.ok
    seals = [json.loads(line) for line in path.read_text().splitlines() if "audit.seal" in line]
    assert [s.get("recovered", False) for s in seals] == [False, True, False]


def test_the_verify_command_names_the_first_broken_line(tmp_path: Path) -> None:
    from sls_core.admin import main as admin_main

    path = tmp_path / "audit.jsonl"
    _write_some(path, "verify", "verify")
    assert admin_main(["verify-audit", str(path)]) == 0
    text = path.read_text().replace('"username":"bob"', '"username":"eve"', 1)
    path.write_text(text)
    assert admin_main(["verify-audit", str(path)]) == 1


def test_a_write_cut_inside_its_seal_still_verifies_after_recovery(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_some(path, "verify")
    text = path.read_bytes()
    *_, seal = text.splitlines(keepends=True)
    path.write_bytes(text + text[: len(text) - len(seal)] + seal[:-1])  # seal without "\n"
    _write_some(path, "activate")
    assert verify_trail(path).ok
    path.write_bytes(path.read_bytes() + b"x" * 3 + seal[:40])  # and one cut mid-seal
    _write_some(path, "verify")
    assert verify_trail(path).ok


def test_lines_of_a_block_cut_short_are_not_read_as_records(tmp_path: Path) -> None:
    """A verdict's lines are written before its transaction commits: a block cut short
    (sealed as recovered) holds verdicts that were never applied."""
    path = tmp_path / "audit.jsonl"
    _write_some(path, "verify")
    record = path.read_bytes().splitlines(keepends=True)[0]
    with path.open("ab") as f:
        f.write(record.replace(b'"verify"', b'"rolled_back"'))  # complete line, no seal
    _write_some(path, "activate")
    assert verify_trail(path).ok
    events = [r["event"] for r in read_records(path)]
    assert "rolled_back" not in events
    assert events == ["verify", "verify", "activate", "activate"]


def test_after_a_rotation_every_process_chains_the_new_file_from_its_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    first, second = AuditTrail(path), AuditTrail(path)
    try:
        first.verdicts("verify", "cn=gw", "r", ["alice"], ids([1]), verdicts([0]))
        path.rename(tmp_path / "audit.jsonl.1")  # logrotate, then SIGHUP to each process
        second.reopen()
        second.verdicts("verify", "cn=gw", "r", ["alice"], ids([1]), verdicts([0]))
        first.reopen()
        first.verdicts("verify", "cn=gw", "r", ["alice"], ids([1]), verdicts([0]))
    finally:
        first.close()
        second.close()
    assert verify_trail(tmp_path / "audit.jsonl.1").ok
    assert verify_trail(path).ok
