"""``sls-core admin``: client services over gRPC, against a running server.

::

    sls-core admin [--target HOST:PORT ...] [--tls-ca PEM --tls-cert PEM --tls-key PEM]
                   [--timeout S] [--json] COMMAND

    user create USERNAME [--date-of-birth D --citizenship C --residence R --id-type T]
    user show USERNAME            devices, security level, lockout, withdrawal limits
    user opt-out USERNAME on|off
    devices list USERNAME
    devices enroll USERNAME TYPE [--serial S] [--phone P] [--suite S] [--shipped]
                   [--pin-env VAR] [--replaces ID [--lost]]
    devices revoke|reactivate|choose USERNAME DEVICE_ID
    unlock USERNAME               after the holder's identity was verified by phone
    passcode USERNAME             a temporary passcode, shown once
    online-card USERNAME --png FILE [--pdf FILE]
    approve-sharing REQUEST_ID
    status                        the server's version, store, keys, counts and health

The server checks the caller's role (the admin role is the client certificate's CN in
``[roles]``; see the README), audits every change with that identity, and refuses what
the SLS rules refuse: this command only shows its answer. Unlike ``python -m
sls_core.admin`` (the operator's commands on the store itself), it needs no access to the
data directory, the store or the master keys, only the server's address.

Secrets never go on the command line: a device PIN is read from the environment variable
``--pin-env`` names (or asked on the terminal). The one secret printed is the temporary
passcode ``passcode`` asks for, which the agent reads out to the holder.

A refusal (no such user, taken username, the rules, no permission, an unreachable
server) is one line on stderr and exit status 1; bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import enum
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sls_core.client import SlsClient, SlsRpcError, TlsSettings
from sls_core.devices import DeviceType
from sls_core.errors import SlsError
from sls_core.values import Identity

__all__ = ["main"]

#: ``--target`` when none is given and ``SLS_CORE_TARGET`` is unset: the development server.
DEFAULT_TARGET = "127.0.0.1:50051"

_DEVICE_TYPES = {t.value: t for t in DeviceType}


def _plain(value: Any) -> Any:
    """A JSON-able form of the client's answers (dataclasses, enums, times)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.repr  # fields kept out of repr (phone numbers) stay out of the output too
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _when(value: Any) -> str:
    """A time for people: UTC, to the second; '-' when unset."""
    if value is None or value == 0:
        return "-"
    if isinstance(value, int | float):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _device_lines(devices: Sequence[Any]) -> list[str]:
    if not devices:
        return ["(no devices)"]
    rows = [("id", "type", "state", "serial", "issued", "activated", "expires")]
    rows += [
        (
            str(d.id),
            d.type.value,
            d.state.value,
            d.serial or "-",
            _when(d.issued_at),
            _when(d.activated_at),
            _when(d.expires_at),
        )
        for d in devices
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


class _Out:
    """Prints an answer as text for people or, with ``--json``, one JSON document."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def show(self, value: Any, lines: Callable[[], list[str]] | str) -> None:
        if self.as_json:
            print(json.dumps(_plain(value), sort_keys=True))
        elif isinstance(lines, str):
            print(lines)
        else:
            print("\n".join(lines()))


# -- commands ------------------------------------------------------------------------------


def _user_create(c: SlsClient, a: argparse.Namespace, out: _Out) -> None:
    identity = Identity(
        date_of_birth=a.date_of_birth or "",
        citizenship=a.citizenship or "",
        residence=a.residence or "",
        id_type=a.id_type or "",
    )
    user_id = c.create_user(a.username, identity)
    out.show({"username": a.username, "user_id": user_id}, f"created {a.username} (id {user_id})")


def _user_show(c: SlsClient, a: argparse.Namespace, out: _Out) -> None:
    devices = c.list_devices(a.username)
    level = c.security_level(a.username)
    lockout = c.lockout_status(a.username)
    limits = c.withdrawal_limits(a.username)
    answer = {
        "username": a.username,
        "devices": devices,
        "security_level": level,
        "lockout": lockout,
        "withdrawal_limits": limits,
    }

    def lines() -> list[str]:
        locked = (
            f"locked until {_when(lockout.locked_until)}" if lockout.locked_until else "not locked"
        )
        per_day = "unlimited" if limits.per_day is None else f"{limits.per_day:,} USD"
        per_five = "unlimited" if limits.per_five_days is None else f"{limits.per_five_days:,} USD"
        return [
            f"user {a.username}",
            f"security level: {level.level or '-'} (strongest device: "
            f"{level.strongest_device.value if level.strongest_device else 'none active'})",
            f"lockout: {locked}, {lockout.consecutive_failures} consecutive failures",
            f"withdrawal limits: {per_day} a day, {per_five} in 5 business days",
            "devices:",
            *("  " + line for line in _device_lines(devices)),
        ]

    out.show(answer, lines)


def _opt_out(c: SlsClient, a: argparse.Namespace, out: _Out) -> None:
    opted_out = a.state == "on"
    c.set_opt_out(a.username, opted_out)
    out.show(
        {"username": a.username, "opted_out": opted_out},
        f"{a.username}: opted out of the second factor"
        if opted_out
        else f"{a.username}: second factor required",
    )


def _devices_list(c: SlsClient, a: argparse.Namespace, out: _Out) -> None:
    devices = c.list_devices(a.username)
    out.show(devices, lambda: _device_lines(devices))


def _read_pin(variable: str | None) -> str | None:
    """The device PIN from the environment variable named, else the terminal (if any)."""
    if variable:
        pin = os.environ.get(variable)
        if not pin:
            raise SlsError(f"--pin-env: the environment variable {variable} is not set")
        return pin
    return None


def _devices_enroll(c: SlsClient, a: argparse.Namespace, out: _Out) -> None:
    device_type = _DEVICE_TYPES[a.type]
    pin = _read_pin(a.pin_env)
    if pin is None and a.ask_pin:
        pin = getpass.getpass("device PIN: ")
    device = c.enroll_device(
        a.username,
        device_type,
        pin=pin,
        suite=a.suite,
        serial=a.serial,
        phone=a.phone,
        shipped=a.shipped,
        replaces=a.replaces,
        replaces_lost=a.lost,
    )
    out.show(device, lambda: [f"enrolled for {a.username}:", *_device_lines([device])])


def _device_action(verb: str) -> Callable[[SlsClient, argparse.Namespace, _Out], None]:
    def run(c: SlsClient, a: argparse.Namespace, out: _Out) -> None:
        action = {
            "revoke": c.revoke_device,
            "reactivate": c.reactivate_device,
            "choose": c.choose_device,
        }[verb]
        action(a.username, a.device_id)
        past = {"revoke": "revoked", "reactivate": "reactivated", "choose": "chosen"}[verb]
        out.show(
            {"username": a.username, "device_id": a.device_id, "done": verb},
            f"device {a.device_id} of {a.username}: {past}",
        )

    return run


def _unlock(c: SlsClient, a: argparse.Namespace, out: _Out) -> None:
    status = c.unlock(a.username)
    out.show(status, f"{a.username}: unlocked ({status.consecutive_failures} failures now)")


def _passcode(c: SlsClient, a: argparse.Namespace, out: _Out) -> None:
    passcode = c.issue_temporary_passcode(a.username)
    out.show(
        {"username": a.username, "passcode": passcode},
        f"temporary passcode for {a.username} (shown once): {passcode}",
    )


def _online_card(c: SlsClient, a: argparse.Namespace, out: _Out) -> None:
    card = c.issue_online_card(a.username)
    written = []
    for path, data in ((a.png, card.card_png), (a.pdf, card.card_pdf)):
        if path:
            # The card is a secret (its codes answer logins): owner-only from the first byte.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            written.append(str(path))
    out.show(
        {"username": a.username, "device": card.device, "written": written},
        lambda: (
            [f"online card for {a.username}:", *_device_lines([card.device])]
            + [f"written to {p}" for p in written]
        ),
    )


def _approve_sharing(c: SlsClient, a: argparse.Namespace, out: _Out) -> None:
    request = c.approve_sharing(a.request_id)
    out.show(
        request,
        f"sharing request {request.id} approved: {request.requester} answers with "
        f"{request.owner}'s device {request.device_id}",
    )


def _status(c: SlsClient, a: argparse.Namespace, out: _Out) -> None:
    status = c.server_status()

    def lines() -> list[str]:
        keys = ", ".join(f"{k}: {n:,}" for k, n in sorted(status.key_ids_in_use.items()))
        return [
            f"sls-core {status.version}: {'SERVING' if status.serving else 'NOT_SERVING'}",
            f"store: {status.store_backend}, schema version {status.schema_version}",
            f"master key: {status.active_key_id} active; sealed values per key: {keys or '-'}",
            f"users: {status.users:,}, devices: {status.devices:,}, consumed challenges: "
            f"{status.consumed_challenges:,}",
            f"started: {_when(status.started_at)}, up {_span(status.uptime)}",
        ]

    out.show(status, lines)


def _span(span: dt.timedelta) -> str:
    seconds = int(span.total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return (f"{days} d " if days else "") + f"{hours:02}:{minutes:02}:{seconds:02}"


# -- the command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sls-core admin", description="client services over gRPC (admin role)"
    )
    p.add_argument(
        "--target",
        action="append",
        help=f"server HOST:PORT (repeat for several; default $SLS_CORE_TARGET or {DEFAULT_TARGET})",
    )
    p.add_argument("--tls-ca", help="PEM file of the CA that signed the server certificate")
    p.add_argument("--tls-cert", help="PEM file of this caller's client certificate (mTLS)")
    p.add_argument("--tls-key", help="PEM file of this caller's client key (mTLS)")
    p.add_argument("--server-name", help="name the server certificate must carry")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    commands = p.add_subparsers(dest="command", required=True)

    user = commands.add_parser("user", help="create or show a user").add_subparsers(
        dest="action", required=True
    )
    create = user.add_parser("create", help="a new user")
    create.add_argument("username")
    for name in ("date-of-birth", "citizenship", "residence", "id-type"):
        create.add_argument(f"--{name}")
    create.set_defaults(run=_user_create)
    show = user.add_parser("show", help="devices, security level, lockout, limits")
    show.add_argument("username")
    show.set_defaults(run=_user_show)
    opt = user.add_parser("opt-out", help="opt the user out of (on) or back into (off) 2FA")
    opt.add_argument("username")
    opt.add_argument("state", choices=("on", "off"))
    opt.set_defaults(run=_opt_out)

    devices = commands.add_parser("devices", help="a user's devices").add_subparsers(
        dest="action", required=True
    )
    listing = devices.add_parser("list", help="the user's devices")
    listing.add_argument("username")
    listing.set_defaults(run=_devices_list)
    enroll = devices.add_parser("enroll", help="issue a new device")
    enroll.add_argument("username")
    enroll.add_argument("type", choices=sorted(_DEVICE_TYPES))
    enroll.add_argument("--serial")
    enroll.add_argument("--phone")
    enroll.add_argument("--suite")
    enroll.add_argument("--shipped", action="store_true")
    enroll.add_argument("--pin-env", help="environment variable holding the device PIN")
    enroll.add_argument("--ask-pin", action="store_true", help="ask the PIN on the terminal")
    enroll.add_argument("--replaces", type=int, help="id of the device this one replaces")
    enroll.add_argument("--lost", action="store_true", help="the replaced one was lost/stolen")
    enroll.set_defaults(run=_devices_enroll)
    for verb in ("revoke", "reactivate", "choose"):
        action = devices.add_parser(verb, help=f"{verb} a device")
        action.add_argument("username")
        action.add_argument("device_id", type=int)
        action.set_defaults(run=_device_action(verb))

    unlock = commands.add_parser("unlock", help="end a lock (identity verified by phone)")
    unlock.add_argument("username")
    unlock.set_defaults(run=_unlock)
    passcode = commands.add_parser("passcode", help="issue a temporary passcode")
    passcode.add_argument("username")
    passcode.set_defaults(run=_passcode)
    card = commands.add_parser("online-card", help="issue an online security code card")
    card.add_argument("username")
    card.add_argument("--png", type=Path, help="write the card as PNG")
    card.add_argument("--pdf", type=Path, help="write the card as PDF")
    card.set_defaults(run=_online_card)
    sharing = commands.add_parser("approve-sharing", help="compliance approves a sharing")
    sharing.add_argument("request_id", type=int)
    sharing.set_defaults(run=_approve_sharing)
    commands.add_parser("status", help="the server's version, store and health").set_defaults(
        run=_status
    )
    return p


def _client(a: argparse.Namespace) -> SlsClient:
    targets = a.target or [os.environ.get("SLS_CORE_TARGET") or DEFAULT_TARGET]
    tls = None
    if a.tls_ca or a.tls_cert or a.tls_key:
        tls = TlsSettings(
            ca_cert=a.tls_ca,
            client_cert=a.tls_cert,
            client_key=a.tls_key,
            server_name_override=a.server_name,
        )
    return SlsClient(targets if len(targets) > 1 else targets[0], tls=tls, timeout=a.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with _client(args) as client:
            args.run(client, args, _Out(args.json))
    except SlsRpcError as err:
        # The server's own words (they name the rule or the field, never a secret).
        print(f"sls-core admin: {err.code.name}: {err.details or err}", file=sys.stderr)
        return 1
    except SlsError as err:
        print(f"sls-core admin: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"sls-core admin: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
