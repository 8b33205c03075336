"""Key custody in a PKCS#11 token (an HSM, or SoftHSM2 for tests and development).

Envelope encryption: each key id of the master key ring names a *data key* (32 bytes,
AES-256) that seals records, and a *wrapping key* (AES-256) that lives in the token,
marked sensitive and not extractable, so it never leaves it. The key file holds each data
key only wrapped (RFC 3394 AES key wrap, done inside the token)::

    {"provider": "pkcs11",
     "pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so", "token": "sls",
                "pin_env": "SLS_CORE_PKCS11_PIN"},
     "active": "k2",
     "keys": {"k2": {"label": "sls-core-k2", "wrapped": "<base64, 40 bytes>"}}}

A process opens the ring by asking the token to unwrap each data key (once at start, and
again when the key file changes during a live rotation); a copy of the key file and of the
database together open nothing without the token and its PIN. Data keys are then held in
process memory like the file provider's keys: the token is not on the hot path (a login
storm makes no HSM call).

The PIN comes from the environment variable ``pin_env`` (default ``SLS_CORE_PKCS11_PIN``)
or from ``pin_file`` (mode 0600, e.g. a systemd credential); never from the key file, and
never in a message. Wrong PIN, a missing token or module, or a wrapped key the token
refuses each raise :class:`InvalidInputError` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from sls_core.errors import InvalidInputError

if TYPE_CHECKING:
    import pkcs11

__all__ = ["DEFAULT_PIN_ENV", "PROVIDER", "Pkcs11Custody", "find_softhsm_module"]

PROVIDER: Final = "pkcs11"
DEFAULT_PIN_ENV: Final = "SLS_CORE_PKCS11_PIN"
DEFAULT_LABEL_PREFIX: Final = "sls-core-"
_KEY_BITS: Final = 256
_WRAPPED_BYTES: Final = 40  # RFC 3394 wrap of 32 bytes: 32 + the 8-byte integrity block
_LABEL = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_CONFIG_FIELDS: Final = frozenset({"module", "token", "pin_env", "pin_file", "label_prefix"})

#: Where Debian, Fedora and Homebrew put SoftHSM2's module.
SOFTHSM_MODULES: Final = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)

# A PKCS#11 module is initialised once per process (C_Initialize), and a token's login is
# shared by all of a process's sessions: one lock serialises this module's few token calls.
_lock = threading.Lock()
_libraries: dict[str, Any] = {}  # pkcs11.lib by module path


def find_softhsm_module() -> str | None:
    """The path of SoftHSM2's PKCS#11 module on this machine, or None."""
    return next((path for path in SOFTHSM_MODULES if os.path.exists(path)), None)


def _text(config: Mapping[str, Any], name: str, where: str, *, default: str | None = None) -> str:
    value = config.get(name, default)
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"pkcs11.{name}", f"must be a non-empty string{where}")
    return value


class Pkcs11Custody:
    """Wraps and unwraps data keys with wrapping keys kept in one PKCS#11 token."""

    provider: Final = PROVIDER

    __slots__ = ("label_prefix", "module", "pin_env", "pin_file", "token_label")

    def __init__(
        self,
        module: str,
        token_label: str,
        *,
        pin_env: str | None = DEFAULT_PIN_ENV,
        pin_file: str | None = None,
        label_prefix: str = DEFAULT_LABEL_PREFIX,
    ) -> None:
        if pin_env is not None and _ENV_NAME.fullmatch(pin_env) is None:
            raise InvalidInputError("pkcs11.pin_env", "must be an environment variable name")
        if (pin_env is None) == (pin_file is None):
            raise InvalidInputError("pkcs11", "must name exactly one of pin_env and pin_file")
        if _LABEL.fullmatch(label_prefix + "k") is None:
            raise InvalidInputError(
                "pkcs11.label_prefix", "must be up to 60 characters from [A-Za-z0-9_.:-]"
            )
        self.module = module
        self.token_label = token_label
        self.pin_env = pin_env
        self.pin_file = pin_file
        self.label_prefix = label_prefix

    @classmethod
    def from_config(cls, config: object, where: str = "") -> Pkcs11Custody:
        """The ``"pkcs11"`` object of a key file."""
        if not isinstance(config, dict):
            raise InvalidInputError("pkcs11", f"must be a JSON object{where}")
        unknown = sorted(set(config) - _CONFIG_FIELDS)
        if unknown:
            raise InvalidInputError(
                f"pkcs11.{unknown[0]}",
                f"is not a setting (known: {', '.join(sorted(_CONFIG_FIELDS))}){where}",
            )
        pin_file = _text(config, "pin_file", where) if "pin_file" in config else None
        pin_env = (
            _text(config, "pin_env", where, default=DEFAULT_PIN_ENV) if pin_file is None else None
        )
        if "pin_env" in config and pin_file is not None:
            raise InvalidInputError("pkcs11", f"must name only one of pin_env and pin_file{where}")
        return cls(
            _text(config, "module", where),
            _text(config, "token", where),
            pin_env=pin_env,
            pin_file=pin_file,
            label_prefix=_text(config, "label_prefix", where, default=DEFAULT_LABEL_PREFIX),
        )

    def to_config(self) -> dict[str, str]:
        config = {"module": self.module, "token": self.token_label}
        if self.pin_file is not None:
            config["pin_file"] = self.pin_file
        elif self.pin_env is not None:
            config["pin_env"] = self.pin_env
        if self.label_prefix != DEFAULT_LABEL_PREFIX:
            config["label_prefix"] = self.label_prefix
        return config

    def __repr__(self) -> str:
        return f"Pkcs11Custody(module={self.module!r}, token={self.token_label!r})"

    # -- the token -----------------------------------------------------------------------

    def _pin(self) -> str:
        if self.pin_file is not None:
            try:
                fd = os.open(self.pin_file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as error:
                raise InvalidInputError(
                    "pkcs11.pin_file", f"cannot be read ({error.strerror}): {self.pin_file}"
                ) from None
            try:
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                if mode & 0o077:
                    raise InvalidInputError(
                        "pkcs11.pin_file",
                        f"must not be accessible by group or others, mode is {mode:04o} "
                        f"(chmod 600 {self.pin_file})",
                    )
                pin = os.read(fd, 4096).decode("utf-8", "replace").strip()
            finally:
                os.close(fd)
        else:
            assert self.pin_env is not None
            pin = os.environ.get(self.pin_env, "")
        if not pin:
            source = self.pin_file if self.pin_file is not None else f"${self.pin_env}"
            raise InvalidInputError("pkcs11.pin", f"no user PIN for the token in {source}")
        return pin

    def _library(self) -> Any:
        library = _libraries.get(self.module)
        if library is None:
            try:
                import pkcs11
            except ImportError:
                raise InvalidInputError(
                    "pkcs11",
                    "the HSM provider needs the python-pkcs11 package: pip install 'sls-core[hsm]'",
                ) from None
            if not os.path.isfile(self.module):
                raise InvalidInputError("pkcs11.module", f"no PKCS#11 module at {self.module}")
            library = pkcs11.lib(self.module)
            _libraries[self.module] = library
        return library

    @contextmanager
    def _session(self) -> Iterator[pkcs11.Session]:
        import pkcs11.exceptions as p11

        with _lock:
            library = self._library()
            pin = self._pin()
            failure: str | None = None
            try:
                token = library.get_token(token_label=self.token_label)
            except p11.NoSuchToken:
                failure = f"no token labelled {self.token_label!r} in {self.module}"
            except p11.PKCS11Error as error:
                failure = f"the module failed to list tokens ({type(error).__name__})"
            if failure is not None:
                raise InvalidInputError("pkcs11.token", failure)
            try:
                session = token.open(rw=True, user_pin=pin)
            except (p11.PinIncorrect, p11.PinLenRange, p11.PinInvalid):
                failure = f"the token {self.token_label!r} refused the user PIN"
            except p11.PinLocked:
                failure = f"the token {self.token_label!r} has locked its user PIN"
            except p11.PKCS11Error as error:
                failure = f"cannot open a session ({type(error).__name__})"
            if failure is not None:
                raise InvalidInputError("pkcs11.pin", failure)
            try:
                yield session
            finally:
                session.close()

    def _wrapping_key(self, session: pkcs11.Session, label: str) -> Any:
        import pkcs11
        import pkcs11.exceptions as p11

        try:
            key = session.get_key(
                object_class=pkcs11.ObjectClass.SECRET_KEY,
                key_type=pkcs11.KeyType.AES,
                label=label,
            )
        except p11.NoSuchKey:
            raise InvalidInputError(
                "pkcs11",
                f"the token {self.token_label!r} holds no wrapping key labelled {label!r}",
            ) from None
        except p11.MultipleObjectsReturned:
            raise InvalidInputError(
                "pkcs11",
                f"the token {self.token_label!r} holds several keys labelled {label!r}",
            ) from None
        return key  # a SecretKey with the wrap and unwrap mixins

    # -- what the ring asks for ----------------------------------------------------------

    def unwrap_all(self, entries: Mapping[str, object], where: str = "") -> dict[str, bytes]:
        """The data key of each key id, unwrapped inside the token (one session)."""
        import pkcs11
        import pkcs11.exceptions as p11

        parsed: dict[str, tuple[str, bytes]] = {}
        for key_id, entry in entries.items():
            field = f"keys.{key_id}"
            if not isinstance(entry, dict) or set(entry) != {"label", "wrapped"}:
                raise InvalidInputError(
                    field, f'must be a JSON object with exactly "label" and "wrapped"{where}'
                )
            label, encoded = entry["label"], entry["wrapped"]
            if not isinstance(label, str) or _LABEL.fullmatch(label) is None:
                raise InvalidInputError(
                    f"{field}.label", f"must be 1-64 characters from [A-Za-z0-9_.:-]{where}"
                )
            wrapped: bytes | None
            try:
                wrapped = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError, TypeError):
                wrapped = None
            if wrapped is None or len(wrapped) != _WRAPPED_BYTES:
                raise InvalidInputError(
                    f"{field}.wrapped",
                    f"must be base64 of a {_WRAPPED_BYTES}-byte wrapped AES-256 key{where}",
                )
            parsed[key_id] = (label, wrapped)
        keys: dict[str, bytes] = {}
        with self._session() as session:
            for key_id, (label, wrapped) in parsed.items():
                wrapping = self._wrapping_key(session, label)
                data_key: bytes | None
                try:
                    unwrapped = wrapping.unwrap_key(
                        pkcs11.ObjectClass.SECRET_KEY,
                        pkcs11.KeyType.AES,
                        wrapped,
                        mechanism=pkcs11.Mechanism.AES_KEY_WRAP,
                        template=_session_data_key(),
                    )
                    data_key = bytes(unwrapped[pkcs11.Attribute.VALUE])
                    unwrapped.destroy()
                except p11.PKCS11Error:
                    data_key = None
                if data_key is None or len(data_key) != _KEY_BITS // 8:
                    raise InvalidInputError(
                        f"keys.{key_id}.wrapped",
                        f"the token refused to unwrap it with {label!r}: not wrapped by that "
                        f"key, or altered{where}",
                    )
                keys[key_id] = data_key
        return keys

    def new_key(self, key_id: str) -> tuple[bytes, dict[str, str]]:
        """A fresh data key for ``key_id`` and its key-file entry: the token makes a wrapping
        key (sensitive, never extractable; kept if an earlier attempt left one under the
        same label, since nothing was sealed under that attempt's data key), draws the data
        key and wraps it."""
        import pkcs11
        import pkcs11.exceptions as p11

        label = self.label_prefix + key_id
        with self._session() as session:
            try:
                wrapping = self._wrapping_key(session, label)
            except InvalidInputError:
                wrapping = _new_wrapping_key(session, label)
            data = session.generate_key(
                pkcs11.KeyType.AES,
                _KEY_BITS,
                store=False,
                capabilities=pkcs11.MechanismFlag.ENCRYPT,
                template=_session_data_key(),
            )
            try:
                raw = bytes(data[pkcs11.Attribute.VALUE])
                wrapped = wrapping.wrap_key(data, mechanism=pkcs11.Mechanism.AES_KEY_WRAP)
            except p11.PKCS11Error as error:
                raise InvalidInputError(
                    "pkcs11", f"the token cannot wrap a new key ({type(error).__name__})"
                ) from None
            finally:
                data.destroy()
        return raw, {"label": label, "wrapped": base64.b64encode(wrapped).decode("ascii")}

    def adopt(self, key_id: str, key: bytes) -> dict[str, str]:
        """The key-file entry of an existing data key (moving a ring from the file provider
        into the token): the key is imported as a session object, wrapped under a new
        wrapping key for ``key_id``, and the session object destroyed."""
        import pkcs11

        label = self.label_prefix + key_id
        with self._session() as session:
            try:
                self._wrapping_key(session, label)
            except InvalidInputError:
                pass
            else:
                raise InvalidInputError(
                    "key_id",
                    f"the token {self.token_label!r} already holds a key labelled {label!r}",
                )
            wrapping = _new_wrapping_key(session, label)
            imported = session.create_object(
                {
                    pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                    pkcs11.Attribute.KEY_TYPE: pkcs11.KeyType.AES,
                    pkcs11.Attribute.VALUE: key,
                    **_session_data_key(),
                }
            )
            try:
                wrapped = wrapping.wrap_key(imported, mechanism=pkcs11.Mechanism.AES_KEY_WRAP)
            finally:
                imported.destroy()
        return {"label": label, "wrapped": base64.b64encode(wrapped).decode("ascii")}

    def destroy(self, entries: Mapping[str, object]) -> list[str]:
        """Destroys the wrapping keys of retired key ids (after the key file no longer
        names them); returns the labels destroyed."""
        labels = [
            entry["label"]
            for entry in entries.values()
            if isinstance(entry, dict) and isinstance(entry.get("label"), str)
        ]
        destroyed: list[str] = []
        with self._session() as session:
            for label in labels:
                try:
                    self._wrapping_key(session, label).destroy()
                except InvalidInputError:
                    continue  # already gone
                destroyed.append(label)
        return destroyed


def _session_data_key() -> dict[Any, Any]:
    import pkcs11

    # A data key passes through the token only as a session object (gone when the session
    # closes), readable so that the process can seal with it.
    return {
        pkcs11.Attribute.TOKEN: False,
        pkcs11.Attribute.SENSITIVE: False,
        pkcs11.Attribute.EXTRACTABLE: True,
    }


def _new_wrapping_key(session: pkcs11.Session, label: str) -> Any:
    import pkcs11

    # Kept in the token (store), sensitive and never extractable: it wraps and unwraps
    # data keys and does nothing else.
    return session.generate_key(
        pkcs11.KeyType.AES,
        _KEY_BITS,
        label=label,
        store=True,
        capabilities=pkcs11.MechanismFlag.WRAP | pkcs11.MechanismFlag.UNWRAP,
        template={
            pkcs11.Attribute.SENSITIVE: True,
            pkcs11.Attribute.EXTRACTABLE: False,
            pkcs11.Attribute.PRIVATE: True,
        },
    )
