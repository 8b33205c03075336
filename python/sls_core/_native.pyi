"""Type stubs of the Rust extension ``sls_core._native`` (checked by mypy.stubtest)."""

from collections.abc import Mapping, Sequence
from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "ActivationSigner",
    "ActivationVerifier",
    "DataKeys",
    "KeyTable",
    "NameIndex",
    "TokenKeys",
    "__version__",
    "approval_message",
    "audit_lines",
    "card_codes",
    "card_verify",
    "card_verify_batch",
    "default_threads",
    "derive_ocra_secret",
    "hotp_compute",
    "hotp_verify",
    "manual_code",
    "ocra_compute",
    "ocra_compute_batch",
    "ocra_suite_info",
    "ocra_verify",
    "ocra_verify_batch",
    "otp_compute_batch",
    "otp_verify_batch",
    "parse_manual_code",
    "payload_status_name",
    "push_keypair",
    "push_public_key",
    "sign_approval",
    "totp_compute",
    "totp_verify",
    "verify_approval",
    "verify_approvals_batch",
    "x25519_keypair",
    "x25519_public_key",
]

__version__: str

def ocra_compute(
    suite: str,
    key: bytes | bytearray | memoryview,
    *,
    question: str | bytes,
    counter: int | None = None,
    pin: str | bytes | None = None,
    pin_hash: bytes | str | None = None,
    session: bytes | None = None,
    timestamp: int | float | None = None,
) -> str: ...
def ocra_verify(
    suite: str,
    key: bytes | bytearray | memoryview,
    response: str | bytes,
    *,
    question: str | bytes,
    counter: int | None = None,
    pin: str | bytes | None = None,
    pin_hash: bytes | str | None = None,
    session: bytes | None = None,
    timestamp: int | float | None = None,
) -> bool: ...
def ocra_verify_batch(
    suite: str,
    keys: Any,
    questions: Any,
    responses: Any,
    *,
    pin_hashes: Any = None,
    counters: Any = None,
    timestamps: Any = None,
    sessions: Any = None,
    key_index: Any = None,
    threads: int | None = None,
) -> npt.NDArray[np.uint8]: ...
def ocra_compute_batch(
    suite: str,
    keys: Any,
    questions: Any,
    *,
    pin_hashes: Any = None,
    counters: Any = None,
    timestamps: Any = None,
    sessions: Any = None,
    key_index: Any = None,
    threads: int | None = None,
) -> npt.NDArray[np.uint8]: ...
def ocra_suite_info(suite: str) -> dict[str, Any]: ...
def hotp_compute(
    key: bytes | bytearray | memoryview, counter: int, *, digits: int = 6, algorithm: str = "sha1"
) -> str: ...
def hotp_verify(
    key: bytes | bytearray | memoryview,
    code: str | bytes,
    counter: int,
    *,
    window: int = 0,
    digits: int = 6,
    algorithm: str = "sha1",
) -> int | None: ...
def totp_compute(
    key: bytes | bytearray | memoryview,
    unix_time: int | float,
    *,
    step: int = 30,
    digits: int = 6,
    algorithm: str = "sha1",
    t0: int = 0,
) -> str: ...
def totp_verify(
    key: bytes | bytearray | memoryview,
    code: str | bytes,
    unix_time: int | float,
    *,
    step: int = 30,
    window: int | tuple[int, int] | None = None,
    digits: int = 6,
    algorithm: str = "sha1",
    t0: int = 0,
) -> int | None: ...
def otp_verify_batch(
    kind: str,
    keys: Any,
    codes: Any,
    moving_factors: Any,
    *,
    window: int | tuple[int, int] | None = None,
    digits: int = 6,
    algorithm: str = "sha1",
    step: int = 30,
    t0: int = 0,
    key_index: Any = None,
    threads: int | None = None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint64]]: ...
def otp_compute_batch(
    kind: str,
    keys: Any,
    moving_factors: Any,
    *,
    digits: int = 6,
    algorithm: str = "sha1",
    step: int = 30,
    t0: int = 0,
    key_index: Any = None,
    threads: int | None = None,
) -> npt.NDArray[np.uint8]: ...
def default_threads() -> int: ...

@final
class KeyTable:
    """HMAC keys prepared once; batches refer to them by row with ``key_index``."""

    def __new__(
        cls, keys: Any, *, algorithm: str = "sha1", threads: int | None = None
    ) -> KeyTable: ...
    def __len__(self) -> int: ...
    @property
    def algorithm(self) -> str: ...

@final
class TokenKeys:
    """The server's challenge-token keys (HMAC-SHA256), several ids for rotation."""

    def __new__(cls, keys: Mapping[int, bytes], *, active: int) -> TokenKeys: ...
    @property
    def active_key_id(self) -> int: ...
    def seal(
        self,
        *,
        purpose: int,
        challenge_id: int,
        user_id: int,
        device_id: int,
        issued_at: int | float,
        expires_at: int | float,
        challenge: int,
    ) -> str: ...
    def open(
        self, token: str | bytes, now: int | float, *, skew: int = 0
    ) -> tuple[int, int, int, int, int, int, int, int]: ...
    def open_batch(
        self, tokens: Any, now: int | float, *, skew: int = 0, threads: int | None = None
    ) -> dict[str, npt.NDArray[Any]]: ...
    @staticmethod
    def status_name(status: int) -> str: ...

def card_codes(card_secret: bytes, count: int) -> list[str]: ...
def card_verify(card_secret: bytes, first: int, second: int, response: str | bytes) -> int: ...
def card_verify_batch(
    card_secrets: Any, indices: Any, responses: Any, *, threads: int | None = None
) -> npt.NDArray[np.uint8]: ...

@final
class ActivationSigner:
    """The server's Ed25519 activation-payload keys: ``{key_id: 32-byte seed}``."""

    def __new__(cls, keys: Mapping[int, bytes], *, active: int) -> ActivationSigner: ...
    @property
    def active_key_id(self) -> int: ...
    def public_keys(self) -> dict[int, bytes]: ...
    def sign(
        self,
        *,
        session_id: bytes,
        username: str,
        issued_at: int | float,
        expires_at: int | float,
        server_public: bytes,
        flags: int | None = None,
    ) -> str: ...

@final
class ActivationVerifier:
    """The server's activation-payload public keys: ``{key_id: 32-byte Ed25519 key}``."""

    def __new__(
        cls, public_keys: Mapping[int, bytes], *, skew: int | None = None
    ) -> ActivationVerifier: ...
    @property
    def key_ids(self) -> list[int]: ...
    @property
    def skew(self) -> int: ...
    def verify(
        self, payload: str | bytes, now: int | float
    ) -> tuple[int, dict[str, Any] | None]: ...
    def verify_batch(
        self, payloads: Any, now: int | float, *, threads: int | None = None
    ) -> dict[str, npt.NDArray[Any]]: ...

def payload_status_name(status: int) -> str: ...
def manual_code(session_id: bytes) -> str: ...
def parse_manual_code(text: str | bytes) -> bytes: ...
def x25519_keypair() -> tuple[bytes, bytes]: ...
def x25519_public_key(private: bytes) -> bytes: ...
def derive_ocra_secret(
    own_private: bytes, peer_public: bytes, session_id: bytes, username: str
) -> bytes: ...
def push_keypair() -> tuple[bytes, bytes]: ...
def push_public_key(seed: bytes) -> bytes: ...
def approval_message(
    challenge_id: int, user_id: int, device_id: int, expires_at: int | float, decision: int
) -> bytes: ...
def sign_approval(seed: bytes, message: bytes) -> bytes: ...
def verify_approval(public: bytes, message: bytes, signature: bytes) -> bool: ...
def verify_approvals_batch(
    publics: Any, messages: Any, signatures: Any, *, threads: int | None = None
) -> npt.NDArray[np.uint8]: ...
def audit_lines(
    head: str | Sequence[str],
    usernames: Sequence[str],
    device_ids: npt.NDArray[np.uint64],
    outcomes: npt.NDArray[np.uint8],
    *,
    outcome_names: Sequence[str],
    blank_username_outcome: int,
) -> bytes: ...

@final
class NameIndex:
    """Usernames to user ids, for batch lookups (-1: unknown or not a str)."""

    def __new__(cls) -> NameIndex: ...
    def __len__(self) -> int: ...
    def insert(self, username: str, user_id: int) -> None: ...
    def extend(self, usernames: list[str], user_ids: npt.NDArray[np.int64]) -> None: ...
    def remove(self, username: str) -> None: ...
    def clear(self) -> None: ...
    def lookup(self, usernames: list[Any]) -> npt.NDArray[np.int64]: ...

@final
class DataKeys:
    """The master keys of a key ring by key id, for opening sealed records natively. No
    getter, no pickling; the repr shows the key ids only."""

    def __new__(cls, keys: dict[str, bytes]) -> DataKeys: ...
    @property
    def key_ids(self) -> list[str]: ...
    def open(self, sealed: bytes, aad: bytes) -> bytes: ...
    def open_device_column(
        self,
        device_ids: npt.NDArray[np.int64],
        sealed: list[bytes | None],
        what: str,
        *,
        width: int | None = None,
        threads: int | None = None,
    ) -> tuple[
        npt.NDArray[np.uint8],
        npt.NDArray[np.int64],
        npt.NDArray[np.bool_],
        npt.NDArray[np.uint8] | None,
    ]: ...
