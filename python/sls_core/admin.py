"""Operator commands: ``python -m sls_core.admin [--store URL] COMMAND`` (SQLite or PostgreSQL).

``rotate-master-key``
    Adds a new master key to the key file and makes it active (the old keys stay, so every
    record still opens), then re-seals every device secret, PIN hash and server secret
    under it, a chunk per transaction, with a progress bar. Interrupted (Ctrl-C, a crash),
    run the same command again: it finds the new key already active and re-seals only what
    is left. ``--retire`` afterwards drops keys no record uses any more (with an HSM, their
    wrapping keys are destroyed in the token too).

``use-hsm --module PATH --token LABEL [--pin-env VAR | --pin-file FILE]``
    Moves the master keys into a PKCS#11 token (see :mod:`sls_core.hsm`): each key of the
    key file is wrapped inside the token under a wrapping key that never leaves it, and the
    key file is rewritten to hold only the wrapped keys. With no key file yet, the token
    makes the first key. Records need no re-sealing.

``status``
    Schema version, key ids in use, users, devices and consumed challenges.

``verify-audit [PATH]``
    Checks the audit trail's hash chain (default ``DATA_DIR/audit.jsonl``): prints how many
    records and seals hold, or the line of the first record that no longer matches its
    seal (changed, added, removed) and exits 1.

``unlock USERNAME --by NAME``
    Client services unlock a user after verifying identity by phone (SLS-RULES
    "Lockout"): the run of failures ends. Audited (event ``unlock``, caller ``cli:NAME``)
    in the data dir's audit trail, or ``--audit-log``.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from sls_core.errors import InvalidInputError
from sls_core.hsm import DEFAULT_PIN_ENV, Pkcs11Custody
from sls_core.sealing import MasterKeyRing
from sls_core.server.config import ConfigError, store_url_from_environment
from sls_core.store import SqliteStore
from sls_core.store.postgres import PostgresStore

__all__ = ["main"]


def _store_url(args: argparse.Namespace) -> str | None:
    """``--store``, else ``$SLS_CORE_STORE_URL`` (or its older name ``$SLS_CORE_STORE``),
    as the server reads them: a PostgreSQL store; None: SQLite."""
    if args.store:
        return str(args.store)
    try:
        found = store_url_from_environment(os.environ)
    except ConfigError as err:
        raise SystemExit(f"sls-core-admin: {err}") from None
    return None if found is None else found[1]


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    data = Path(args.data_dir)
    key_file = Path(args.key_file) if args.key_file else data / "master-key.json"
    if _store_url(args) is None and not (data / "sls.db").exists():
        raise SystemExit(f"no store at {data / 'sls.db'}")
    return data, key_file


def _open_store(
    args: argparse.Namespace, ring: MasterKeyRing, key_file: Path | None = None
) -> SqliteStore | PostgresStore:
    url = _store_url(args)
    if url is not None:
        return PostgresStore(url, keyring=ring, key_file=key_file, pool_size=2)
    return SqliteStore(Path(args.data_dir) / "sls.db", keyring=ring, key_file=key_file)


def rotate(args: argparse.Namespace) -> int:
    _data, key_file = _paths(args)
    ring = MasterKeyRing.from_file(key_file)
    if ring.active_key_id != args.new_key_id:
        if args.new_key_id in ring.key_ids:
            raise SystemExit(f"key id {args.new_key_id!r} exists but is not active: pick a new id")
        ring = ring.with_new_active_key(args.new_key_id)
        # Saved before any record changes: from here on, every record opens either way.
        ring.save(key_file)
        print(f"key file {key_file}: new active key {args.new_key_id!r}", file=sys.stderr)
    else:
        print(f"resuming: {args.new_key_id!r} is already active", file=sys.stderr)
    store = _open_store(args, ring, key_file)
    with tqdm(desc="re-sealing devices", unit="device", disable=args.quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        changed = store.rotate_master_key(ring, chunk=args.chunk, progress=progress)
    store.close()
    print(f"re-sealed {changed} records under {ring.active_key_id!r}", file=sys.stderr)
    if not args.retire:
        return 0
    # A key goes only when no record and no live process uses it any more: a running
    # server moves to the new key at its next write (it follows the key file). Decided
    # under the store's write lock, so that no write slips in between the scan and the save.
    gate = _open_store(args, ring)
    try:
        with gate.write():
            in_use = gate.key_ids_in_use()
            held: dict[str, list[str]] = {}
            for holder, host, pid, key_id, _ in gate.key_holders():
                if holder not in (gate.holder, store.holder):
                    held.setdefault(key_id, []).append(f"{host} pid {pid}")
            kept = ring.retaining(set(in_use) | set(held) | {ring.active_key_id})
            kept.save(key_file)
    finally:
        gate.close()
    retired = sorted(ring.key_ids - kept.key_ids)
    print(f"retired key ids: {', '.join(retired) or 'none'}", file=sys.stderr)
    destroyed = ring.destroy_retired(kept)  # only once the saved key file no longer names them
    if destroyed:
        print(f"destroyed in the token: {', '.join(destroyed)}", file=sys.stderr)
    refused = sorted(kept.key_ids - {ring.active_key_id})
    for key_id in refused:
        users = [f"{in_use[key_id]} records"] if key_id in in_use else []
        users += held.get(key_id, [])
        print(
            f"not retired: {key_id!r} is still used by {', '.join(users)}; run --retire again "
            "in a second (servers move within one; an idle script at its next write)",
            file=sys.stderr,
        )
    return 1 if refused else 0


def status(args: argparse.Namespace) -> int:
    _data, key_file = _paths(args)
    ring = MasterKeyRing.from_file(key_file)
    store = _open_store(args, ring)
    try:
        print(f"store: {store!r} (schema version {store.schema_version})")
        print(
            f"master keys: active {ring.active_key_id!r}, in file {sorted(ring.key_ids)}, "
            f"kept by {ring.provider}"
        )
        print(f"records per key id: {store.key_ids_in_use()}")
        for table, count in store.row_counts().items():
            print(f"{table}: {count}")
    finally:
        store.close()
    return 0


def unlock(args: argparse.Namespace) -> int:
    from sls_core.login import SecureLogin
    from sls_core.server.audit import AuditTrail

    data, key_file = _paths(args)
    sls = SecureLogin.open(data, key_file=key_file, store=_store_url(args))
    status_ = sls.unlock(args.username, by=args.by)
    trail = AuditTrail(Path(args.audit_log) if args.audit_log else data / "audit.jsonl")
    try:
        trail.record(
            "unlock", f"cli:{args.by}", uuid.uuid4().hex, username=args.username, outcome="OK"
        )
    finally:
        trail.close()
    sls.store.close()
    print(f"{args.username}: unlocked ({status_.consecutive_failures} failures on record)")
    return 0


def use_hsm(args: argparse.Namespace) -> int:
    data = Path(args.data_dir)
    key_file = Path(args.key_file) if args.key_file else data / "master-key.json"
    custody = Pkcs11Custody(
        args.module,
        args.token,
        pin_env=None if args.pin_file else args.pin_env,
        pin_file=args.pin_file,
    )
    if key_file.exists():
        ring = MasterKeyRing.from_file(key_file)
        if ring.provider != "file":
            raise SystemExit(f"{key_file}: the keys are already kept by {ring.provider}")
        moved = ring.in_custody(custody)
        # The same keys: records need no re-sealing, and a running server that follows the
        # key file keeps opening everything (it needs the PIN in its environment).
        moved.save(key_file)
        print(
            f"key file {key_file}: {len(moved.key_ids)} keys now wrapped in token "
            f"{args.token!r}; delete every backup of the old key file",
            file=sys.stderr,
        )
        return 0
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    key, entry = custody.new_key(args.key_id)
    ring = MasterKeyRing(
        {args.key_id: key}, args.key_id, custody=custody, entries={args.key_id: entry}
    )
    ring.save(key_file)
    print(
        f"key file {key_file}: new key {args.key_id!r} made in token {args.token!r}",
        file=sys.stderr,
    )
    return 0


def verify_audit(args: argparse.Namespace) -> int:
    from sls_core.server.audit import verify_trail

    path = Path(args.path) if args.path else Path(args.data_dir) / "audit.jsonl"
    if not path.exists():
        raise SystemExit(f"no audit trail at {path}")
    check = verify_trail(path)
    if check.ok:
        print(f"{path}: intact, {check.records} records under {check.seals} seals")
        return 0
    print(f"{path}: broken at line {check.first_broken_line}: {check.reason}")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sls_core.admin", description=__doc__)
    parser.add_argument("--data-dir", default="data", help="the store's folder (default: data)")
    parser.add_argument("--key-file", help="master key file (default: DATA_DIR/master-key.json)")
    parser.add_argument(
        "--store",
        help="postgresql:// URL of a shared store (default: $SLS_CORE_STORE_URL or "
        "$SLS_CORE_STORE, else SQLite in DATA_DIR)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("rotate-master-key", help="re-seal everything under a new key")
    r.add_argument("--new-key-id", required=True, help="id of the new key, e.g. k2")
    r.add_argument("--chunk", type=int, default=500, help="devices per transaction")
    r.add_argument("--retire", action="store_true", help="then drop keys no record uses")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(run=rotate)
    commands.add_parser("status", help="what the store holds").set_defaults(run=status)
    h = commands.add_parser("use-hsm", help="keep the master keys in a PKCS#11 token")
    h.add_argument("--module", required=True, help="the PKCS#11 module (.so) of the HSM")
    h.add_argument("--token", required=True, help="the token's label")
    pin = h.add_mutually_exclusive_group()
    pin.add_argument(
        "--pin-env", default=DEFAULT_PIN_ENV, help=f"user PIN variable (default {DEFAULT_PIN_ENV})"
    )
    pin.add_argument("--pin-file", help="file holding the user PIN (mode 0600)")
    h.add_argument("--key-id", default="k1", help="first key's id when there is no key file")
    h.set_defaults(run=use_hsm)
    v = commands.add_parser("verify-audit", help="check the audit trail's hash chain")
    v.add_argument("path", nargs="?", help="audit trail (default: DATA_DIR/audit.jsonl)")
    v.set_defaults(run=verify_audit)
    u = commands.add_parser("unlock", help="client services unlock a locked user (audited)")
    u.add_argument("username")
    u.add_argument("--by", required=True, help="who unlocks (recorded in the audit trail)")
    u.add_argument("--audit-log", help="audit trail (default: DATA_DIR/audit.jsonl)")
    u.set_defaults(run=unlock)
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except InvalidInputError as error:
        # A configuration mistake (a wrong PIN, a missing token or key file field): one line.
        raise SystemExit(f"sls-core-admin {args.command}: {error}") from None
    return code


if __name__ == "__main__":
    raise SystemExit(main())
