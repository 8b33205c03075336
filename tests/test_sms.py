"""The SMS channel beyond the outbox basics in ``test_sms_outbox.py``: the line format a
person reads with ``tail -f``, a reader that never sees half a message, and errors that
never quote the number or the text."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import threading
from pathlib import Path

import pytest

from sls_core.errors import InvalidInputError, InvalidInputTypeError
from sls_core.sms import OutboxSender, SmsSender, check_phone, read_outbox

PHONE = "+41791234567"
TEXT = "Your login code is 482913."


def test_each_message_is_one_json_line_with_to_text_and_a_utc_timestamp(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.jsonl"
    OutboxSender(outbox).send(PHONE, TEXT)
    (line,) = outbox.read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert set(record) == {"to", "text", "sent_at"}
    assert (record["to"], record["text"]) == (PHONE, TEXT)
    sent_at = datetime.datetime.fromisoformat(record["sent_at"])
    assert sent_at.utcoffset() == datetime.timedelta(0)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs(now - sent_at) < datetime.timedelta(minutes=1)


def test_the_outbox_sender_is_an_sms_sender(tmp_path: Path) -> None:
    sender: SmsSender = OutboxSender(tmp_path / "o.jsonl")  # mypy checks the Protocol here
    sender.send(PHONE, TEXT)
    assert [m.text for m in read_outbox(tmp_path / "o.jsonl")] == [TEXT]


def test_a_reader_waits_for_a_message_being_written(tmp_path: Path) -> None:
    """A writer holding the lock mid-line: the reader blocks, then sees the whole line."""
    outbox = tmp_path / "outbox.jsonl"
    line = json.dumps({"to": PHONE, "text": TEXT, "sent_at": "2026-01-02T03:04:05+00:00"})
    fd = os.open(outbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line[:20].encode())
        seen: list[list[str]] = []
        reader = threading.Thread(target=lambda: seen.append([m.to for m in read_outbox(outbox)]))
        reader.start()
        reader.join(timeout=0.3)
        assert reader.is_alive()  # blocked on the lock, not parsing half a line
        os.write(fd, (line[20:] + "\n").encode())
    finally:
        os.close(fd)
    reader.join(timeout=10)
    assert seen == [[PHONE]]


@pytest.mark.parametrize(
    ("phone", "error"),
    [
        (41791234567, InvalidInputTypeError),
        ("+4179123", InvalidInputError),  # 7 digits
        ("+4179123456789012", InvalidInputError),  # 16 digits
        ("+41-79-123-45-67", InvalidInputError),
        ("+٤١٧٩١٢٣٤٥٦٧", InvalidInputError),  # Arabic-Indic digits are not ASCII digits
    ],
)
def test_bad_numbers_are_refused_without_quoting_them(
    phone: object, error: type[InvalidInputError]
) -> None:
    with pytest.raises(error) as info:
        check_phone(phone)
    assert info.value.field == "phone"
    assert "4179" not in str(info.value)


def test_a_text_must_be_a_str_and_is_never_quoted(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputTypeError) as info:
        OutboxSender(tmp_path / "o.jsonl").send(PHONE, b"code 482913")  # type: ignore[arg-type]
    assert info.value.field == "text"
    assert "482913" not in str(info.value)
    assert not (tmp_path / "o.jsonl").exists()


def test_the_8_and_15_digit_limits_are_accepted() -> None:
    assert check_phone("+12345678") == "+12345678"
    assert check_phone("+123456789012345") == "+123456789012345"
