"""Sealing: device secrets and PIN hashes encrypted at rest with AES-256-GCM.

A :class:`MasterKeyRing` holds one or more 32-byte master keys, each under a key id, and
names the active one. :meth:`MasterKeyRing.seal` encrypts under the active key and tags the
record with its key id; :meth:`MasterKeyRing.open` decrypts with whichever key the record
names, so old records still open after a rotation (a rotation command re-seals records
whose key id is not the active one, see :meth:`MasterKeyRing.key_id_of`).

Sealed format (version 1)::

    b"\\x01" | len(key_id) as u8 | key_id (ASCII) | 12-byte random nonce | ciphertext + 16-byte tag

The GCM associated data is the header (version, key-id length, key id) followed by the
caller's ``aad``. ``aad`` binds a record to its place (e.g. ``b"device:42:secret"``), so a
sealed value copied to another row, or any changed byte, fails to open.

Key file / environment variable format (JSON)::

    {"active": "k2", "keys": {"k1": "<base64 of 32 bytes>", "k2": "<base64 of 32 bytes>"}}

That is the file provider, for development: whoever reads the file holds the keys. With
``"provider": "pkcs11"`` the file holds each key only wrapped by a key that never leaves an
HSM (see :mod:`sls_core.hsm`); the ring then asks the token to unwrap them when it loads.

This module never logs, and never puts key bytes (raw, hex or base64) in a ``repr``, an
error message or a chained exception. Python cannot reliably wipe memory, so keys live as
``bytes`` in the ring for its lifetime; keep rings few and long-lived.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from typing import Any, Final, NoReturn, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sls_core._native import DataKeys
from sls_core.errors import InvalidInputError, InvalidInputTypeError, SlsError
from sls_core.hsm import PROVIDER as PKCS11
from sls_core.hsm import Pkcs11Custody

__all__ = [
    "ENV_VAR",
    "FORMAT_VERSION",
    "BytesLike",
    "DataKeys",
    "KeyCustody",
    "MasterKeyRing",
    "OpenedColumn",
    "SealingError",
    "device_aad",
]

BytesLike: TypeAlias = bytes | bytearray | memoryview

ENV_VAR: Final = "SLS_CORE_MASTER_KEYS"
FORMAT_VERSION: Final = 1
KEY_BYTES: Final = 32  # AES-256
NONCE_BYTES: Final = 12  # 96-bit GCM nonce, NIST SP 800-38D section 8.2.2 (random construction)
TAG_BYTES: Final = 16
KEY_ID_RULE: Final = "must be 1-32 characters from [A-Za-z0-9_-]"

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MAX_CONFIG_BYTES: Final = 1 << 20  # a key file is a few hundred bytes; refuse anything huge
_PRIVATE_MODE: Final = 0o600


class SealingError(SlsError):
    """A sealed record cannot be opened: truncated, an unsupported version, an unknown key
    id, or authentication failed (wrong key, wrong ``aad``, tampered).

    ``key_id`` is the record's key id when the header could be read (else ``None``),
    ``rule`` says what went wrong, ``record`` which record it is when the caller said
    (e.g. ``"device 42 secret"``). None ever contains key material or a plaintext. The
    native batch path (:meth:`MasterKeyRing.open_device_column`) raises it too, with the
    same words.
    """

    def __init__(self, key_id: str | None, rule: str, record: str | None = None) -> None:
        where = "sealed record" if record is None else f"sealed record {record}"
        if key_id is not None:
            where += f" under key id {key_id!r}"
        super().__init__(f"{where}: {rule}")
        self.key_id = key_id
        self.rule = rule
        self.record = record

    def __reduce__(self) -> tuple[type[SealingError], tuple[str | None, str, str | None]]:
        return (type(self), (self.key_id, self.rule, self.record))


def _check_key_id(key_id: object, field: str = "key_id", where: str = "") -> str:
    if not isinstance(key_id, str):
        raise InvalidInputTypeError(field, f"must be a str, got {type(key_id).__name__}{where}")
    if _KEY_ID.fullmatch(key_id) is None:
        # Echo only short ids: a 44-character base64 key pasted in the wrong place is never shown.
        got = repr(key_id) if len(key_id) <= 32 else f"{len(key_id)} characters"
        raise InvalidInputError(field, f"{KEY_ID_RULE}, got {got}{where}")
    return key_id


def _check_key(key_id: str, key: object) -> bytes:
    field = f"keys.{key_id}"
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise InvalidInputTypeError(
            field, f"must be {KEY_BYTES} raw bytes, got {type(key).__name__}"
        )
    key = bytes(key)
    if len(key) != KEY_BYTES:
        raise InvalidInputError(field, f"must be exactly {KEY_BYTES} bytes, got {len(key)}")
    return key


def _check_bytes(field: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidInputTypeError(field, f"must be bytes, got {type(value).__name__}")
    return bytes(value)


def _header(key_id: str) -> bytes:
    return bytes((FORMAT_VERSION, len(key_id))) + key_id.encode("ascii")


def _parse_header(sealed: bytes, record: str | None = None) -> tuple[str, int]:
    """The record's key id and the header length; SealingError if the header is bad."""
    if len(sealed) < 2:
        raise SealingError(
            None, f"truncated: {len(sealed)} bytes, the header alone needs 2+", record
        )
    if sealed[0] != FORMAT_VERSION:
        raise SealingError(
            None,
            f"unsupported format version {sealed[0]} (this build reads {FORMAT_VERSION})",
            record,
        )
    id_length = sealed[1]
    if not 1 <= id_length <= 32:
        raise SealingError(None, f"key id length {id_length} is outside 1-32", record)
    header_length = 2 + id_length
    if len(sealed) < header_length:
        raise SealingError(
            None, f"truncated: {len(sealed)} bytes, the header says {header_length}", record
        )
    raw_id = sealed[2:header_length]
    key_id = raw_id.decode("ascii") if raw_id.isascii() else ""
    if _KEY_ID.fullmatch(key_id) is None:
        raise SealingError(None, f"key id {KEY_ID_RULE}", record)
    return key_id, header_length


def device_aad(device_id: int, what: str) -> bytes:
    """A device record's place, the ``aad`` its field ``what`` is sealed with."""
    return f"device:{device_id}:{what}".encode()


class OpenedColumn:
    """The plaintexts of a column of sealed values, end to end in one array: value ``i``
    is ``data[offsets[i]:offsets[i + 1]]`` where ``present[i]`` (else None); ``padded``
    (when asked for) is every value zero-padded to a fixed width, all zeros where longer.
    Holds secrets: never printed (the repr says only how many)."""

    __slots__ = ("data", "offsets", "padded", "present")

    def __init__(
        self,
        data: npt.NDArray[np.uint8],
        offsets: npt.NDArray[np.int64],
        present: npt.NDArray[np.bool_],
        padded: npt.NDArray[np.uint8] | None,
    ) -> None:
        self.data = data
        self.offsets = offsets
        self.present = present
        self.padded = padded

    def __len__(self) -> int:
        return len(self.present)

    def __repr__(self) -> str:
        return f"OpenedColumn({len(self)} values)"

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """Each value's length, -1 where there is none."""
        return np.where(self.present, np.diff(self.offsets), -1)

    def value(self, i: int) -> bytes | None:
        if not self.present[i]:
            return None
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes()


class KeyCustody(Protocol):
    """Where master keys are kept when not in the key file itself (an HSM): it makes,
    wraps and unwraps them, and the key file holds only what it hands back."""

    @property
    def provider(self) -> str: ...

    def to_config(self) -> dict[str, str]: ...

    def unwrap_all(self, entries: Mapping[str, object], where: str = "") -> dict[str, bytes]: ...

    def new_key(self, key_id: str) -> tuple[bytes, dict[str, str]]: ...

    def adopt(self, key_id: str, key: bytes) -> dict[str, str]: ...

    def destroy(self, entries: Mapping[str, object]) -> list[str]: ...


class _DuplicateNameError(Exception):
    """Raised inside the JSON hook; turned into an InvalidInputError with no chained text."""


def _reject_duplicate_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise _DuplicateNameError
    return dict(pairs)


def _ring_from_json(document: str | bytes, source: str) -> MasterKeyRing:
    """Parses the key-file JSON. ``source`` says where it came from, for error messages.

    Parser exceptions carry the whole document (keys included), so none is ever chained:
    each failure is noted inside ``except`` and raised after it.
    """
    where = f" (in {source})"
    parsed: object
    try:
        parsed = json.loads(document, object_pairs_hook=_reject_duplicate_names)
    except _DuplicateNameError:
        parsed = _DuplicateNameError
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        parsed = ValueError
    if parsed is _DuplicateNameError:
        raise InvalidInputError("master keys", f"must not repeat a name in one JSON object{where}")
    if parsed is ValueError:
        raise InvalidInputError("master keys", f"must be UTF-8 JSON{where}")
    provider = parsed.get("provider", "file") if isinstance(parsed, dict) else None
    fields = {"active", "keys"}
    if isinstance(parsed, dict) and "provider" in parsed:
        fields.add("provider")
    if provider == PKCS11:
        fields.add(PKCS11)
    if not isinstance(parsed, dict) or set(parsed) != fields:
        raise InvalidInputError(
            "master keys",
            f'must be a JSON object with exactly "active" and "keys" (and, with an HSM, '
            f'"provider": "pkcs11" and "pkcs11"){where}',
        )
    if provider not in ("file", PKCS11):
        raise InvalidInputError("provider", f'must be "file" or "pkcs11"{where}')
    active = _check_key_id(parsed["active"], "active", where)
    encoded_keys = parsed["keys"]
    if not isinstance(encoded_keys, dict) or not encoded_keys:
        raise InvalidInputError("keys", f"must be a non-empty JSON object{where}")
    if provider == PKCS11:
        for key_id in encoded_keys:
            _check_key_id(key_id, "keys", where)
        if active not in encoded_keys:
            raise InvalidInputError("active", f"must name a key in keys, got {active!r}{where}")
        custody = Pkcs11Custody.from_config(parsed[PKCS11], where)
        unwrapped = custody.unwrap_all(encoded_keys, where)
        return MasterKeyRing(unwrapped, active, custody=custody, entries=encoded_keys)
    keys: dict[str, bytes] = {}
    for key_id, encoded in encoded_keys.items():
        _check_key_id(key_id, "keys", where)
        field = f"keys.{key_id}"
        if not isinstance(encoded, str):
            raise InvalidInputTypeError(field, f"must be a base64 string{where}")
        key: bytes | None
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            key = None
        if key is None:
            raise InvalidInputError(field, f"must be standard base64{where}")
        if len(key) != KEY_BYTES:
            raise InvalidInputError(
                field, f"must be base64 of exactly {KEY_BYTES} bytes, got {len(key)}{where}"
            )
        keys[key_id] = key
    if active not in keys:
        raise InvalidInputError("active", f"must name a key in keys, got {active!r}{where}")
    return MasterKeyRing(keys, active)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private_file(path: str | os.PathLike[str], data: bytes, *, replace: bool) -> None:
    """Writes ``data`` to ``path`` mode 0600, all or nothing.

    The content goes to a temporary file next to ``path`` (``mkstemp``: O_EXCL, 0600), is
    synced, then either replaces ``path`` (``os.replace``) or is hard-linked to it, which
    fails if ``path`` exists, so a reader never sees a partly written key file.
    """
    target = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(target)
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, _PRIVATE_MODE)  # mkstemp already uses 0600; be explicit whatever umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, target)
        else:
            os.link(temporary, target)  # atomic, and refuses an existing target
            os.unlink(temporary)
        _fsync_directory(directory)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise


class MasterKeyRing:
    """Master keys by key id, one of them active. Immutable; safe to share across threads.

    ``keys`` maps key ids (1-32 characters from ``[A-Za-z0-9_-]``) to 32-byte AES-256 keys;
    ``active`` is the id new records are sealed under. With a ``custody`` (an HSM),
    ``entries`` holds each key as the key file stores it (wrapped), and new keys are made
    by the custody.
    """

    __slots__ = ("_active", "_aeads", "_custody", "_entries", "_keys", "_native")

    def __init__(
        self,
        keys: Mapping[str, BytesLike],
        active: str,
        *,
        custody: KeyCustody | None = None,
        entries: Mapping[str, object] | None = None,
    ) -> None:
        if not isinstance(keys, Mapping):
            raise InvalidInputTypeError("keys", f"must be a mapping, got {type(keys).__name__}")
        if not keys:
            raise InvalidInputError("keys", "must hold at least one key")
        checked: dict[str, bytes] = {}
        for key_id, key in keys.items():
            _check_key_id(key_id, "keys")  # first: the key's field name quotes the id
            checked[key_id] = _check_key(key_id, key)
        _check_key_id(active, "active")
        if active not in checked:
            raise InvalidInputError("active", f"must name a key in keys, got {active!r}")
        if custody is not None and (entries is None or set(entries) != set(checked)):
            raise InvalidInputError("entries", "must hold the stored form of every key")
        self._keys: dict[str, bytes] = checked
        self._aeads: dict[str, AESGCM] = {kid: AESGCM(key) for kid, key in checked.items()}
        # The same keys in Rust, for opening whole columns (wiped there when the ring goes).
        self._native = DataKeys(checked)
        self._active: str = active
        self._custody = custody
        self._entries: dict[str, object] = dict(entries) if entries is not None else {}

    # -- loading and saving --------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MasterKeyRing:
        """Reads the JSON key file at ``path``; refuses one that group or others can access."""
        shown = os.fspath(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            # fstat the open file, not the path, so the mode checked is the file read.
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise InvalidInputError("key_file", f"must be a regular file ({shown})")
            mode = stat.S_IMODE(status.st_mode)
            if mode & 0o077:
                raise InvalidInputError(
                    "key_file",
                    f"must not be accessible by group or others, mode is {mode:04o} "
                    f"(chmod 600 {shown})",
                )
            chunks: list[bytes] = []
            size = 0
            while size <= _MAX_CONFIG_BYTES and (chunk := os.read(fd, 65536)):
                chunks.append(chunk)
                size += len(chunk)
            document = b"".join(chunks)
        finally:
            os.close(fd)
        if len(document) > _MAX_CONFIG_BYTES:
            raise InvalidInputError("key_file", f"must be at most {_MAX_CONFIG_BYTES} bytes")
        return _ring_from_json(document, f"key file {shown}")

    @classmethod
    def from_env(cls, var: str = ENV_VAR, *, env: Mapping[str, str] = os.environ) -> MasterKeyRing:
        """Reads the same JSON as a key file from the environment variable ``var``."""
        if var not in env:
            raise InvalidInputError(var, "environment variable is not set")
        return _ring_from_json(env[var], f"${var}")

    @classmethod
    def load(
        cls,
        *,
        key_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] = os.environ,
        var: str = ENV_VAR,
    ) -> MasterKeyRing:
        """The environment variable ``var`` if it is set (even to an empty or bad value,
        which is then an error rather than a silent fall back), else ``key_file``."""
        if var in env:
            return cls.from_env(var, env=env)
        if key_file is None:
            raise InvalidInputError("key_file", f"no master keys: set ${var} or pass key_file")
        return cls.from_file(key_file)

    @staticmethod
    def generate_file(path: str | os.PathLike[str], key_id: str = "k1") -> MasterKeyRing:
        """A new ring with one random key under ``key_id``, written to ``path`` mode 0600.
        Raises FileExistsError rather than overwrite an existing file."""
        ring = MasterKeyRing({_check_key_id(key_id): AESGCM.generate_key(bit_length=256)}, key_id)
        if os.path.lexists(path):
            _refuse_overwrite(path)
        try:
            _write_private_file(path, ring._to_json(), replace=False)
        except FileExistsError:
            _refuse_overwrite(path)  # appeared between the check and the link
        return ring

    def with_new_active_key(self, key_id: str) -> MasterKeyRing:
        """A new ring: these keys plus a fresh random key under ``key_id``, made active."""
        _check_key_id(key_id)
        if key_id in self._keys:
            raise InvalidInputError(
                "key_id", f"must be new to the key ring, {key_id!r} is already in it"
            )
        keys = dict(self._keys)
        if self._custody is None:
            keys[key_id] = AESGCM.generate_key(bit_length=256)
            return MasterKeyRing(keys, key_id)
        entries = dict(self._entries)
        keys[key_id], entries[key_id] = self._custody.new_key(key_id)
        return MasterKeyRing(keys, key_id, custody=self._custody, entries=entries)

    def retaining(self, key_ids: frozenset[str] | set[str]) -> MasterKeyRing:
        """A new ring with only ``key_ids`` (plus the active key): retires the others once
        no record is sealed under them."""
        kept = set(key_ids) | {self._active}
        keep = {kid: key for kid, key in self._keys.items() if kid in kept}
        entries = {kid: entry for kid, entry in self._entries.items() if kid in kept}
        return MasterKeyRing(
            keep, self._active, custody=self._custody, entries=entries if self._custody else None
        )

    def in_custody(self, custody: KeyCustody) -> MasterKeyRing:
        """The same keys, now kept by ``custody`` (moving a development ring into an HSM):
        each key is wrapped inside the token under a new wrapping key of its own. Records
        need no re-sealing; the saved key file then holds no key in the clear."""
        if self._custody is not None:
            raise InvalidInputError(
                "provider", f"the keys are already kept by {self._custody.provider}"
            )
        entries = {kid: custody.adopt(kid, key) for kid, key in self._keys.items()}
        return MasterKeyRing(self._keys, self._active, custody=custody, entries=entries)

    def destroy_retired(self, kept: MasterKeyRing) -> list[str]:
        """After ``kept`` (this ring minus retired keys) is saved: destroys the retired keys'
        wrapping keys in the custody, so no copy of the key file opens them again. Returns
        what was destroyed (nothing for the file provider: the old file is the only copy)."""
        if self._custody is None:
            return []
        retired = {kid: e for kid, e in self._entries.items() if kid not in kept.key_ids}
        return self._custody.destroy(retired) if retired else []

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the ring as a key file at ``path``, mode 0600, replacing it atomically."""
        _write_private_file(path, self._to_json(), replace=True)

    def _to_json(self) -> bytes:
        document: dict[str, object]
        if self._custody is None:
            document = {
                "active": self._active,
                "keys": {
                    kid: base64.b64encode(key).decode("ascii") for kid, key in self._keys.items()
                },
            }
        else:
            document = {
                "provider": self._custody.provider,
                self._custody.provider: self._custody.to_config(),
                "active": self._active,
                "keys": self._entries,
            }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("ascii")

    # -- the ring ------------------------------------------------------------------------

    @property
    def active_key_id(self) -> str:
        """The key id new records are sealed under."""
        return self._active

    @property
    def key_ids(self) -> frozenset[str]:
        """Every key id this ring can open."""
        return frozenset(self._keys)

    @property
    def provider(self) -> str:
        """Who keeps the keys: ``"file"`` (the key file itself) or ``"pkcs11"`` (an HSM)."""
        return "file" if self._custody is None else self._custody.provider

    def __repr__(self) -> str:
        return (
            f"MasterKeyRing(active={self._active!r}, key_ids={sorted(self._keys)!r}, "
            f"provider={self.provider!r})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("MasterKeyRing holds master keys and is not picklable; use save()")

    def __copy__(self) -> MasterKeyRing:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, object]) -> MasterKeyRing:
        return self

    # -- sealing -------------------------------------------------------------------------

    def seal(self, plaintext: BytesLike, *, aad: BytesLike) -> bytes:
        """Encrypts ``plaintext`` under the active key, bound to ``aad`` (the record's place).

        Each call draws a fresh random nonce; NIST SP 800-38D section 8.3 limits one key to
        2**32 such calls, so rotate well before that.
        """
        plaintext = _check_bytes("plaintext", plaintext)
        aad = _check_bytes("aad", aad)
        header = _header(self._active)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._aeads[self._active].encrypt(nonce, plaintext, header + aad)
        return header + nonce + ciphertext

    def open(self, sealed: BytesLike, *, aad: BytesLike, record: str | None = None) -> bytes:
        """Decrypts a record sealed by :meth:`seal` under any key of this ring with the
        same ``aad``; SealingError (naming ``record`` if given) if it cannot (see
        :class:`SealingError`)."""
        sealed = _check_bytes("sealed", sealed)
        aad = _check_bytes("aad", aad)
        key_id, header_length = _parse_header(sealed, record)
        minimum = header_length + NONCE_BYTES + TAG_BYTES
        if len(sealed) < minimum:
            raise SealingError(
                key_id, f"truncated: {len(sealed)} bytes, needs at least {minimum}", record
            )
        aead = self._aeads.get(key_id)
        if aead is None:
            known = ", ".join(sorted(self._keys))
            raise SealingError(key_id, f"key id is not in the key ring (known: {known})", record)
        header = sealed[:header_length]
        nonce = sealed[header_length : header_length + NONCE_BYTES]
        plaintext: bytes | None
        try:
            plaintext = aead.decrypt(nonce, sealed[header_length + NONCE_BYTES :], header + aad)
        except InvalidTag:
            plaintext = None
        if plaintext is None:
            raise SealingError(
                key_id,
                "authentication failed: wrong key, wrong aad (record moved from another row) "
                "or tampered",
                record,
            )
        return plaintext

    def open_device_column(
        self,
        device_ids: npt.NDArray[np.int64],
        sealed: list[bytes | None],
        what: str,
        *,
        width: int | None = None,
        threads: int | None = None,
    ) -> OpenedColumn:
        """Opens field ``what`` of many devices at once: ``sealed[i]`` (or None) belongs to
        device ``device_ids[i]`` and is bound to ``device:{id}:{what}`` (as the stores seal
        it). One native pass over every core (AES-NI), the same format, plaintexts and
        errors as :meth:`open`: the first record that fails raises SealingError naming it
        (``device 42 secret``). With ``width``, also every value zero-padded to ``width``
        bytes (the batch path's key and PIN-hash columns)."""
        ids = np.ascontiguousarray(device_ids, dtype=np.int64)
        data, offsets, present, padded = self._native.open_device_column(
            ids, sealed, what, width=width, threads=threads
        )
        return OpenedColumn(data, offsets, present, padded)

    @staticmethod
    def key_id_of(sealed: BytesLike) -> str:
        """The key id a sealed record names (for rotation), without opening it."""
        key_id, _ = _parse_header(_check_bytes("sealed", sealed))
        return key_id


def _refuse_overwrite(path: str | os.PathLike[str]) -> NoReturn:
    raise FileExistsError(
        errno.EEXIST, "refusing to overwrite an existing key file", os.fspath(path)
    )
