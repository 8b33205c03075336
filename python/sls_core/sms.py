"""The SMS channel: a sender interface and the default sender, an outbox file.

A real deployment plugs its SMS gateway in as a :class:`SmsSender`. The default,
:class:`OutboxSender`, appends one JSON line per message to a file a person can read
(``tail -f data/sms-outbox.jsonl``) and tests and the device simulator can parse
(:func:`read_outbox`). The message text is the delivery channel itself, so it carries the
code; nothing here logs it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sls_core.errors import InvalidInputError, InvalidInputTypeError

__all__ = ["OutboxMessage", "OutboxSender", "SmsSender", "check_phone", "read_outbox"]

_E164 = re.compile(r"\+[0-9]{8,15}")


def check_phone(phone: object) -> str:
    """A phone number in E.164 form: ``+`` then 8 to 15 digits."""
    if not isinstance(phone, str):
        raise InvalidInputTypeError("phone", "must be a str")
    if not _E164.fullmatch(phone):
        raise InvalidInputError("phone", "must be E.164: '+' then 8 to 15 digits")
    return phone


class SmsSender(Protocol):
    """What the domain layer needs from an SMS channel; a gateway client or the outbox."""

    def send(self, phone: str, text: str) -> None:
        """Delivers ``text`` to ``phone``; raises if it cannot."""
        ...


@dataclass(frozen=True)
class OutboxMessage:
    """One message read back from the outbox; ``text`` holds a code, so ``repr`` hides it."""

    to: str
    text: str = field(repr=False)
    sent_at: str


class OutboxSender:
    """Appends messages to a JSON-lines file, safe with many processes appending at once:
    each line is one ``write`` on an ``O_APPEND`` descriptor, under an exclusive lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"OutboxSender({str(self.path)!r})"

    def send(self, phone: str, text: str) -> None:
        check_phone(phone)
        if not isinstance(text, str):
            raise InvalidInputTypeError("text", "must be a str")
        sent_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        line = json.dumps({"to": phone, "text": text, "sent_at": sent_at}) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = line.encode()
            written = os.write(fd, data)
            while written < len(data):  # a short write (full disk, signal): finish the line
                written += os.write(fd, data[written:])
        finally:
            os.close(fd)  # closing releases the lock


def read_outbox(path: str | os.PathLike[str]) -> list[OutboxMessage]:
    """Every message in an outbox file, oldest first (an absent file is an empty outbox)."""
    try:
        with Path(path).open("rb") as outbox:
            # A reader polling during a send would otherwise see half a line and fail to parse.
            fcntl.flock(outbox.fileno(), fcntl.LOCK_SH)
            text = outbox.read().decode("utf-8")
    except FileNotFoundError:
        return []
    return [
        OutboxMessage(to=m["to"], text=m["text"], sent_at=m["sent_at"])
        for m in (json.loads(line) for line in text.splitlines() if line.strip())
    ]
