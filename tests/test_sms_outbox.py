"""The default SMS sender: an outbox file a person can read, safe across processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from sls_core.errors import InvalidInputError
from sls_core.sms import OutboxSender, read_outbox


def test_messages_are_appended_as_json_lines_in_order(tmp_path: Path) -> None:
    outbox = tmp_path / "deep" / "outbox.jsonl"
    sender = OutboxSender(outbox)
    sender.send("+41791234567", "Your login code is 987650.")
    sender.send("+41797654321", "Your login code is 654321.")
    messages = read_outbox(outbox)
    assert [m.to for m in messages] == ["+41791234567", "+41797654321"]
    assert messages[0].text.endswith("987650.")
    assert messages[0].sent_at.endswith("+00:00")
    assert "987650" not in repr(messages[0])
    assert outbox.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("phone", ["41791234567", "+4179", "+41 79 123 45 67", "+" + "1" * 16])
def test_a_phone_number_must_be_e164(tmp_path: Path, phone: str) -> None:
    with pytest.raises(InvalidInputError, match=r"E\.164") as info:
        OutboxSender(tmp_path / "o.jsonl").send(phone, "code 1")
    assert info.value.field == "phone"
    assert not (tmp_path / "o.jsonl").exists()


def test_an_absent_outbox_is_empty(tmp_path: Path) -> None:
    assert read_outbox(tmp_path / "none.jsonl") == []


def _send_many(path: str, worker: int) -> None:
    sender = OutboxSender(path)
    for i in range(200):
        sender.send(f"+4179{worker:03d}{i:04d}", f"worker {worker} message {i} " + "x" * 300)


def test_four_processes_appending_at_once_leave_every_line_intact(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_send_many, args=(str(outbox), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    messages = read_outbox(outbox)  # every line parses as JSON
    assert len(messages) == 800
    for w in range(4):
        mine = [m.text.split()[3] for m in messages if m.text.startswith(f"worker {w} ")]
        assert mine == [str(i) for i in range(200)]
