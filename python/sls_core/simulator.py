"""The device simulator: plays the IB Key app and the DSC+ card.

``python -m sls_core.simulator`` (or ``sls-core-simulator``)::

    # IB Key app, its state in a file (keys, users): activate from the portal's QR code,
    # the manual string under it, or an SMS activation token
    sls-core-simulator --state app.json activate --data-dir data --qr activation.png --pin 1234
    sls-core-simulator --state app.json activate --data-dir data --code K7QM-4TZ9-HX3P
    sls-core-simulator --state app.json users
    # after reinstalling the app: the IB Key PIN re-enables a user (the recovery PIN)
    sls-core-simulator --state new-app.json recover --data-dir data --user alice --pin 1234
    # offline mode: the 6-digit challenge on the login page -> the 8-digit response
    sls-core-simulator --state app.json respond --user alice --challenge 123456 --pin 1234
    # push notifications: list, approve or decline what is waiting for this app
    sls-core-simulator --state app.json pushes --data-dir data
    sls-core-simulator --state app.json approve --data-dir data [--decline]
    # DSC+: PIN + challenge -> 8-digit response
    sls-core-simulator dsc --secret 3132...30 --pin 4711 --challenge 123456

The app talks to the server the way this build allows: straight to the embedded store in
``--data-dir`` (the gRPC transport comes with the service). Its state file holds device
secrets, like the phone's keystore would: it is written 0600 and never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sls_core import activation, ocra, push, qr
from sls_core.errors import InvalidInputError, SlsError

__all__ = ["AppState", "SimulatedApp", "dsc_response", "main"]


def dsc_response(secret: bytes, pin: str, challenge: str) -> str:
    """What a DSC+ shows: the user powers it on, types the 4-digit PIN and the challenge."""
    return ocra.compute("OCRA-1:HOTP-SHA1-8:QN06-PSHA1", secret, question=challenge, pin=pin)


@dataclass
class AppUser:
    username: str
    device_id: int
    suite: str
    secret_hex: str = field(repr=False)


@dataclass
class AppState:
    """One app installation: its push key and the users added to it."""

    push_seed_hex: str = field(repr=False, default="")
    push_public_hex: str = ""
    users: list[AppUser] = field(default_factory=list)


class SimulatedApp:
    """The IB Key app, with its state in a JSON file (or in memory when ``path`` is None)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.state = AppState()
        if self.path is not None and self.path.exists():
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            self.state = AppState(
                push_seed_hex=raw["push_seed_hex"],
                push_public_hex=raw["push_public_hex"],
                users=[AppUser(**u) for u in raw["users"]],
            )
        if not self.state.push_seed_hex:
            seed, public = push.push_keypair()
            self.state.push_seed_hex = bytes(seed).hex()
            self.state.push_public_hex = bytes(public).hex()
            self._save()

    def __repr__(self) -> str:
        return f"SimulatedApp(users={[u.username for u in self.state.users]})"

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self.state), f, indent=2)
        os.replace(tmp, self.path)

    @property
    def push_seed(self) -> bytes:
        return bytes.fromhex(self.state.push_seed_hex)

    @property
    def push_public(self) -> bytes:
        return bytes.fromhex(self.state.push_public_hex)

    def user(self, username: str) -> AppUser:
        for u in self.state.users:
            if u.username == username:
                return u
        raise InvalidInputError("user", "not on this app: activate it first")

    def activate(
        self,
        ibkey: Any,
        *,
        qr_png: bytes | None = None,
        payload: str | None = None,
        manual_code: str | None = None,
        pin: str | None = None,
    ) -> AppUser:
        """Scans the QR code (or takes the typed string), completes the activation with
        ``ibkey`` (a :class:`sls_core.ibkey.IbKey`) and derives the OCRA secret locally."""
        if qr_png is not None:
            payload = qr.decode_png(qr_png)
        app_private, app_public = activation.x25519_keypair()
        done = ibkey.complete_activation(
            app_public=bytes(app_public),
            push_public=self.push_public,
            payload=payload,
            manual_code=manual_code,
            pin=pin,
        )
        secret = bytes(
            activation.derive_ocra_secret(
                app_private, done.server_public, done.session_id, done.username
            )
        )
        self.state.users = [u for u in self.state.users if u.username != done.username]
        user = AppUser(done.username, done.device.id, done.suite, secret.hex())
        self.state.users.append(user)
        self._save()
        return user

    def recover(self, ibkey: Any, username: str, recovery_pin: str) -> AppUser:
        """After a reinstall (this app lost its keys): re-enables ``username`` with the
        recovery PIN; new push and X25519 keys, a new OCRA secret agreed with the server."""
        seed, public = push.push_keypair()
        self.state.push_seed_hex, self.state.push_public_hex = (
            bytes(seed).hex(),
            bytes(public).hex(),
        )
        app_private, app_public = activation.x25519_keypair()
        done = ibkey.recover(
            username, recovery_pin, app_public=bytes(app_public), push_public=self.push_public
        )
        secret = bytes(
            activation.derive_ocra_secret(
                app_private, done.server_public, done.session_id, done.username
            )
        )
        self.state.users = [u for u in self.state.users if u.username != done.username]
        user = AppUser(done.username, done.device.id, done.suite, secret.hex())
        self.state.users.append(user)
        self._save()
        return user

    def respond(self, username: str, challenge: str, pin: str | None = None) -> str:
        """Offline mode: the 8-digit response to a 6-digit challenge."""
        user = self.user(username)
        uses_pin = ocra.parse_suite(user.suite).pin_algorithm is not None
        if uses_pin and pin is None:
            raise InvalidInputError("pin", "this app asks for its PIN (Android)")
        return ocra.compute(
            user.suite,
            bytes.fromhex(user.secret_hex),
            question=challenge,
            pin=pin if uses_pin else None,
        )

    def sign(self, message: bytes) -> bytes:
        """The app's Ed25519 signature of a push answer."""
        return bytes(push.sign_approval(self.push_seed, message))

    def answer_pushes(self, ibkey: Any, *, approve: bool = True) -> list[tuple[int, int]]:
        """Answers every push waiting for this app; returns (challenge id, outcome)."""
        decision = 1 if approve else 2
        pushes = ibkey.pending_pushes(self.push_public)
        signatures = [self.sign(p.message(decision)) for p in pushes]
        outcomes = ibkey.answer_pushes(
            [p.challenge_id for p in pushes], [decision] * len(pushes), signatures
        )
        return [(p.challenge_id, int(o)) for p, o in zip(pushes, outcomes, strict=True)]


def _ibkey(data_dir: str) -> Any:
    from sls_core.login import SecureLogin

    return SecureLogin.open(data_dir).ibkey


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sls-core-simulator", description="IB Key app and DSC+ simulator"
    )
    parser.add_argument("--state", default="ibkey-app.json", help="the app's state file")
    commands = parser.add_subparsers(dest="command", required=True)
    a = commands.add_parser("activate", help="activate from a QR code, manual string or SMS token")
    a.add_argument("--data-dir", required=True)
    source = a.add_mutually_exclusive_group(required=True)
    source.add_argument("--qr", help="PNG of the QR code")
    source.add_argument("--payload", help="the QR code's text")
    source.add_argument("--code", help="the manual string (or SMS token)")
    a.add_argument("--pin", help="IB Key PIN (Android: in the computation)")
    rc = commands.add_parser("recover", help="after a reinstall: re-enable a user by recovery PIN")
    rc.add_argument("--data-dir", required=True)
    rc.add_argument("--user", required=True)
    rc.add_argument("--pin", required=True)
    commands.add_parser("users", help="users on this app")
    r = commands.add_parser("respond", help="offline mode: challenge -> response")
    r.add_argument("--user", required=True)
    r.add_argument("--challenge", required=True)
    r.add_argument("--pin")
    p = commands.add_parser("pushes", help="list pushes waiting for this app")
    p.add_argument("--data-dir", required=True)
    ap = commands.add_parser("approve", help="approve (or --decline) waiting pushes")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--decline", action="store_true")
    d = commands.add_parser("dsc", help="DSC+: PIN + challenge -> response")
    d.add_argument("--secret", required=True, help="the card's secret, hex")
    d.add_argument("--pin", required=True)
    d.add_argument("--challenge", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "dsc":
            print(dsc_response(bytes.fromhex(args.secret), args.pin, args.challenge))
            return 0
        app = SimulatedApp(args.state)
        if args.command == "activate":
            png = Path(args.qr).read_bytes() if args.qr else None
            user = app.activate(
                _ibkey(args.data_dir),
                qr_png=png,
                payload=args.payload,
                manual_code=args.code,
                pin=args.pin,
            )
            print(f"activated {user.username} (device {user.device_id})")
        elif args.command == "recover":
            user = app.recover(_ibkey(args.data_dir), args.user, args.pin)
            print(f"recovered {user.username} (device {user.device_id})")
        elif args.command == "users":
            for u in app.state.users:
                print(f"{u.username}\tdevice {u.device_id}\t{u.suite}")
        elif args.command == "respond":
            print(app.respond(args.user, args.challenge, args.pin))
        elif args.command == "pushes":
            for pending in _ibkey(args.data_dir).pending_pushes(app.push_public):
                print(
                    f"push {pending.challenge_id}\tuser {pending.user_id}"
                    f"\texpires {pending.expires_at}"
                )
        elif args.command == "approve":
            for challenge_id, outcome in app.answer_pushes(
                _ibkey(args.data_dir), approve=not args.decline
            ):
                print(f"push {challenge_id}: {outcome}")
    except (SlsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
