"""sls_core.sealing: AES-256-GCM at rest under a rotating master key ring.

Round trips, every bit flip and truncation refused, ``aad`` binding, rotation, the key file
and environment variable, and that no key byte (raw, hex, base64) ever reaches a ``repr``,
an error message or a chained exception.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import pickle
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sls_core.errors import InvalidInputError, InvalidInputTypeError, SlsError
from sls_core.sealing import ENV_VAR, MasterKeyRing, SealingError

# Deterministic, distinctive keys, so a test can look for every encoding of them.
KEY1 = hashlib.sha256(b"sealing test key k1").digest()
KEY2 = hashlib.sha256(b"sealing test key k2").digest()
KEY3 = hashlib.sha256(b"sealing test key k3").digest()
SHORT_KEY = hashlib.sha256(b"sealing test short key").digest()[:31]
LONG_KEY = KEY1 + b"!"
AAD = b"device:42:secret"
PLAINTEXT = b"device secret: 20 by"


def key_forms(key: bytes) -> list[str]:
    """Every text form a key could leak in: raw, repr, hex, base64 (also a prefix of it)."""
    b64 = base64.b64encode(key).decode()
    urlsafe = base64.urlsafe_b64encode(key).decode()
    return [
        key.decode("latin-1"),
        repr(key),
        key.hex(),
        key.hex().upper(),
        b64,
        b64.rstrip("="),
        b64[:16],
        urlsafe.rstrip("="),
        urlsafe[:16],
    ]


SECRET_FORMS = [form for key in (KEY1, KEY2, KEY3, SHORT_KEY) for form in key_forms(key)]


def exception_texts(exc: BaseException) -> str:
    """str, repr and args of the exception and of everything chained to it."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), *(repr(arg) for arg in current.args)]
        texts += [repr(value) for value in vars(current).values()]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


def assert_no_key_material(text: str) -> None:
    for form in SECRET_FORMS:
        assert form not in text, f"key material {form!r} leaked into {text!r}"


def raises_without_key_material(
    call: Callable[[], Any], cls: type[BaseException] = SlsError
) -> BaseException:
    with pytest.raises(cls) as excinfo:
        call()
    assert_no_key_material(exception_texts(excinfo.value))
    return excinfo.value


def ring12() -> MasterKeyRing:
    return MasterKeyRing({"k1": KEY1, "k2": KEY2}, "k1")


def key_file_json(keys: dict[str, bytes], active: str) -> str:
    encoded = {kid: base64.b64encode(key).decode() for kid, key in keys.items()}
    return json.dumps({"active": active, "keys": encoded})


def write_key_file(path: Path, document: str, mode: int = 0o600) -> Path:
    path.write_text(document)
    path.chmod(mode)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------------------
# Sealing and opening
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", [b"", b"x", PLAINTEXT, bytes(range(256)) * 5])
def test_round_trip(plaintext: bytes) -> None:
    ring = ring12()
    assert ring.open(ring.seal(plaintext, aad=AAD), aad=AAD) == plaintext


def test_sealed_format_is_version_key_id_nonce_ciphertext_tag() -> None:
    ring = ring12()
    sealed = ring.seal(PLAINTEXT, aad=AAD)
    assert sealed[:4] == b"\x01\x02k1"
    assert len(sealed) == 1 + 1 + 2 + 12 + len(PLAINTEXT) + 16
    assert MasterKeyRing.key_id_of(sealed) == "k1"


def test_each_seal_draws_a_fresh_nonce() -> None:
    ring = ring12()
    sealed = {ring.seal(PLAINTEXT, aad=AAD) for _ in range(50)}
    assert len(sealed) == 50
    assert len({blob[4:16] for blob in sealed}) == 50


def test_bytes_like_inputs_are_accepted() -> None:
    ring = ring12()
    sealed = ring.seal(bytearray(PLAINTEXT), aad=memoryview(AAD))
    assert ring.open(bytearray(sealed), aad=bytearray(AAD)) == PLAINTEXT


def sealed_by_k1() -> tuple[MasterKeyRing, bytes]:
    # k1 and k3 differ in one bit ('1' = 0x31, '3' = 0x33): a flip there names a known key.
    ring = MasterKeyRing({"k1": KEY1, "k3": KEY3}, "k1")
    return ring, ring.seal(PLAINTEXT, aad=AAD)


def bit_flips(blob: bytes) -> Iterator[tuple[int, bytes]]:
    for bit in range(len(blob) * 8):
        flipped = bytearray(blob)
        flipped[bit // 8] ^= 1 << (bit % 8)
        yield bit, bytes(flipped)


def test_every_single_bit_flip_fails_to_open() -> None:
    ring, sealed = sealed_by_k1()
    opened = []
    for bit, flipped in bit_flips(sealed):
        try:
            ring.open(flipped, aad=AAD)
        except SealingError as exc:
            assert_no_key_material(exception_texts(exc))
        else:
            opened.append(bit)
    assert opened == []


def test_a_flip_to_another_known_key_id_fails_authentication() -> None:
    ring, sealed = sealed_by_k1()
    moved = sealed[:3] + b"3" + sealed[4:]
    assert MasterKeyRing.key_id_of(moved) == "k3"
    exc = raises_without_key_material(lambda: ring.open(moved, aad=AAD), SealingError)
    assert isinstance(exc, SealingError)
    assert exc.key_id == "k3"
    assert "authentication failed" in exc.rule


def test_the_header_is_authenticated_even_when_two_ids_share_a_key() -> None:
    # Same key bytes under k1 and k3: only the header in the GCM associated data tells them apart.
    ring = MasterKeyRing({"k1": KEY1, "k3": KEY1}, "k1")
    sealed = ring.seal(PLAINTEXT, aad=AAD)
    relabelled = sealed[:3] + b"3" + sealed[4:]
    exc = raises_without_key_material(lambda: ring.open(relabelled, aad=AAD), SealingError)
    assert "authentication failed" in str(exc)


def test_every_truncation_fails_to_open() -> None:
    ring, sealed = sealed_by_k1()
    opened = []
    for length in range(len(sealed)):
        try:
            ring.open(sealed[:length], aad=AAD)
        except SealingError as exc:
            assert_no_key_material(exception_texts(exc))
        else:
            opened.append(length)
    assert opened == []


@pytest.mark.parametrize("length", [0, 1, 3, 4, 15, 31])
def test_short_input_names_truncation(length: int) -> None:
    ring, sealed = sealed_by_k1()
    exc = raises_without_key_material(lambda: ring.open(sealed[:length], aad=AAD), SealingError)
    assert "truncated" in str(exc)


@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * 16])
def test_appended_bytes_fail_to_open(extra: bytes) -> None:
    ring, sealed = sealed_by_k1()
    raises_without_key_material(lambda: ring.open(sealed + extra, aad=AAD), SealingError)


@pytest.mark.parametrize(
    "wrong_aad", [b"", b"device:43:secret", b"device:42:pin_hash", AAD + b"\x00", AAD[:-1]]
)
def test_wrong_aad_fails_authentication(wrong_aad: bytes) -> None:
    ring = ring12()
    sealed = ring.seal(PLAINTEXT, aad=AAD)
    exc = raises_without_key_material(lambda: ring.open(sealed, aad=wrong_aad), SealingError)
    assert isinstance(exc, SealingError)
    assert exc.key_id == "k1"
    assert "authentication failed" in exc.rule
    assert "k1" in str(exc)


def test_wrong_key_under_the_same_id_fails_authentication() -> None:
    sealed = MasterKeyRing({"k1": KEY1}, "k1").seal(PLAINTEXT, aad=AAD)
    impostor = MasterKeyRing({"k1": KEY2}, "k1")
    exc = raises_without_key_material(lambda: impostor.open(sealed, aad=AAD), SealingError)
    assert "authentication failed" in str(exc)


def test_unknown_key_id_is_named() -> None:
    sealed = MasterKeyRing({"k9": KEY3}, "k9").seal(PLAINTEXT, aad=AAD)
    exc = raises_without_key_material(lambda: ring12().open(sealed, aad=AAD), SealingError)
    assert isinstance(exc, SealingError)
    assert exc.key_id == "k9"
    assert "not in the key ring" in exc.rule
    assert "'k9'" in str(exc)


def test_unsupported_version_is_named() -> None:
    ring = ring12()
    sealed = b"\x02" + ring.seal(PLAINTEXT, aad=AAD)[1:]
    exc = raises_without_key_material(lambda: ring.open(sealed, aad=AAD), SealingError)
    assert "unsupported format version 2" in str(exc)
    raises_without_key_material(lambda: MasterKeyRing.key_id_of(sealed), SealingError)


@pytest.mark.parametrize(
    ("header", "rule"),
    [
        (b"\x01\x00", "key id length 0"),
        (b"\x01\x21" + b"k" * 33, "key id length 33"),
        (b"\x01\x02k!", "key id must be 1-32 characters"),
        (b"\x01\x02k\xff", "key id must be 1-32 characters"),
        (b"\x01\x05k1", "truncated"),
    ],
)
def test_bad_header_is_refused_by_key_id_of_and_open(header: bytes, rule: str) -> None:
    blob = header + bytes(28) if rule != "truncated" else header
    exc = raises_without_key_material(lambda: MasterKeyRing.key_id_of(blob), SealingError)
    assert rule in str(exc)
    raises_without_key_material(lambda: ring12().open(blob, aad=AAD), SealingError)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda ring: ring.seal("text", aad=AAD), "plaintext"),
        (lambda ring: ring.seal(PLAINTEXT, aad="device:42"), "aad"),
        (lambda ring: ring.open("sealed", aad=AAD), "sealed"),
        (lambda ring: ring.open(b"\x01", aad=None), "aad"),
        (lambda ring: MasterKeyRing.key_id_of(42), "sealed"),  # type: ignore[arg-type]
    ],
)
def test_non_bytes_input_is_invalid_input_type_error(
    call: Callable[[MasterKeyRing], Any], field: str
) -> None:
    exc = raises_without_key_material(lambda: call(ring12()), InvalidInputTypeError)
    assert isinstance(exc, InvalidInputTypeError)
    assert exc.field == field


def test_sealing_error_is_an_sls_error_and_pickles() -> None:
    error = SealingError("k1", "authentication failed")
    assert isinstance(error, SlsError)
    clone = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object
    assert (type(clone), clone.key_id, clone.rule, str(clone)) == (
        SealingError,
        "k1",
        "authentication failed",
        str(error),
    )


# --------------------------------------------------------------------------------------
# Rotation
# --------------------------------------------------------------------------------------


def test_rotation_keeps_old_records_open_and_seals_new_ones_under_the_new_key() -> None:
    old = MasterKeyRing({"k1": KEY1}, "k1")
    old_record = old.seal(PLAINTEXT, aad=AAD)

    rotated = old.with_new_active_key("k2")
    assert rotated.active_key_id == "k2"
    assert rotated.key_ids == frozenset({"k1", "k2"})
    assert old.key_ids == frozenset({"k1"})  # the old ring is unchanged
    assert rotated.open(old_record, aad=AAD) == PLAINTEXT

    new_record = rotated.seal(PLAINTEXT, aad=AAD)
    assert MasterKeyRing.key_id_of(new_record) == "k2"
    assert rotated.open(new_record, aad=AAD) == PLAINTEXT
    exc = raises_without_key_material(lambda: old.open(new_record, aad=AAD), SealingError)
    assert "'k2'" in str(exc)

    # What the rotation command does: re-seal every record whose key id is not the active one.
    resealed = rotated.seal(rotated.open(old_record, aad=AAD), aad=AAD)
    assert MasterKeyRing.key_id_of(resealed) == rotated.active_key_id


def test_each_rotation_draws_a_fresh_key() -> None:
    base = MasterKeyRing({"k1": KEY1}, "k1")
    record_a = base.with_new_active_key("k2").seal(PLAINTEXT, aad=AAD)
    other_k2 = base.with_new_active_key("k2")
    raises_without_key_material(lambda: other_k2.open(record_a, aad=AAD), SealingError)


def test_rotation_to_an_existing_key_id_is_refused() -> None:
    exc = raises_without_key_material(lambda: ring12().with_new_active_key("k1"), InvalidInputError)
    assert isinstance(exc, InvalidInputError)
    assert exc.field == "key_id"
    assert "already" in exc.rule


def test_rotation_to_a_bad_key_id_is_refused() -> None:
    exc = raises_without_key_material(
        lambda: ring12().with_new_active_key("k 2"), InvalidInputError
    )
    assert isinstance(exc, InvalidInputError)
    assert exc.field == "key_id"


# --------------------------------------------------------------------------------------
# Constructor rules
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "got"), [(SHORT_KEY, "got 31"), (LONG_KEY, "got 33"), (b"", "got 0")]
)
def test_bad_key_length_names_the_key_and_the_rule(key: bytes, got: str) -> None:
    exc = raises_without_key_material(
        lambda: MasterKeyRing({"k1": KEY1, "k2": key}, "k1"), InvalidInputError
    )
    assert isinstance(exc, InvalidInputError)
    assert exc.field == "keys.k2"
    assert "exactly 32 bytes" in exc.rule
    assert got in exc.rule


@pytest.mark.parametrize("key", [base64.b64encode(KEY1).decode(), KEY1.hex(), 42])
def test_key_of_wrong_type_is_refused_without_quoting_it(key: object) -> None:
    exc = raises_without_key_material(
        lambda: MasterKeyRing({"k1": key}, "k1"),  # type: ignore[dict-item]
        InvalidInputTypeError,
    )
    assert isinstance(exc, InvalidInputTypeError)
    assert exc.field == "keys.k1"


@pytest.mark.parametrize(
    "key_id", ["", "k 1", "k1\n", "ké", "k/1", "k" * 33, base64.b64encode(KEY1).decode()]
)
def test_bad_key_id_is_named_with_the_rule(key_id: str) -> None:
    exc = raises_without_key_material(
        lambda: MasterKeyRing({key_id: KEY1}, key_id), InvalidInputError
    )
    assert isinstance(exc, InvalidInputError)
    assert exc.field == "keys"
    assert "1-32 characters from [A-Za-z0-9_-]" in exc.rule
    if len(key_id) <= 32:
        assert repr(key_id) in exc.rule


@pytest.mark.parametrize("key_id", ["k", "K-2", "key_2024_06", "a" * 32, "0", "_-"])
def test_good_key_ids_are_accepted(key_id: str) -> None:
    ring = MasterKeyRing({key_id: KEY1}, key_id)
    assert MasterKeyRing.key_id_of(ring.seal(b"", aad=b"")) == key_id


def test_active_must_name_a_key() -> None:
    exc = raises_without_key_material(lambda: MasterKeyRing({"k1": KEY1}, "k2"), InvalidInputError)
    assert isinstance(exc, InvalidInputError)
    assert exc.field == "active"
    assert "'k2'" in exc.rule


def test_empty_ring_is_refused() -> None:
    exc = raises_without_key_material(lambda: MasterKeyRing({}, "k1"), InvalidInputError)
    assert isinstance(exc, InvalidInputError)
    assert exc.field == "keys"


# --------------------------------------------------------------------------------------
# repr, pickling, copying
# --------------------------------------------------------------------------------------


def test_repr_and_str_show_key_ids_and_active_but_no_key_material() -> None:
    ring = MasterKeyRing({"k1": KEY1, "k2": KEY2, "k3": KEY3}, "k2")
    for text in (repr(ring), str(ring), f"{ring}", repr([ring]), repr({"ring": ring})):
        assert "k1" in text
        assert "k3" in text
        assert "active='k2'" in text
        assert_no_key_material(text)


def test_ring_has_no_instance_dict_and_refuses_pickling() -> None:
    ring = ring12()
    assert not hasattr(ring, "__dict__")
    exc = raises_without_key_material(lambda: pickle.dumps(ring), TypeError)
    assert "save()" in str(exc)


def test_copy_returns_the_same_immutable_ring() -> None:
    ring = ring12()
    assert copy.copy(ring) is ring
    assert copy.deepcopy(ring) is ring


# --------------------------------------------------------------------------------------
# Key file and environment variable
# --------------------------------------------------------------------------------------


def test_from_file_reads_the_json_key_file(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.json", key_file_json({"k1": KEY1, "k2": KEY2}, "k2"))
    ring = MasterKeyRing.from_file(path)
    assert (ring.active_key_id, ring.key_ids) == ("k2", frozenset({"k1", "k2"}))
    assert ring.open(ring12().seal(PLAINTEXT, aad=AAD), aad=AAD) == PLAINTEXT
    assert MasterKeyRing.from_file(str(path)).key_ids == ring.key_ids


@pytest.mark.parametrize("mode", [0o400, 0o600, 0o700])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path / "keys.json", key_file_json({"k1": KEY1}, "k1"), mode)
    assert MasterKeyRing.from_file(path).active_key_id == "k1"


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o606, 0o610, 0o601, 0o666])
def test_key_file_accessible_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path / "keys.json", key_file_json({"k1": KEY1}, "k1"), mode)
    exc = raises_without_key_material(lambda: MasterKeyRing.from_file(path), InvalidInputError)
    assert isinstance(exc, InvalidInputError)
    assert exc.field == "key_file"
    assert "group or others" in exc.rule
    assert f"{mode:04o}" in exc.rule
    assert "chmod 600" in exc.rule


def test_mode_is_checked_on_the_file_a_symlink_points_to(tmp_path: Path) -> None:
    target = write_key_file(tmp_path / "keys.json", key_file_json({"k1": KEY1}, "k1"), 0o644)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    raises_without_key_material(lambda: MasterKeyRing.from_file(link), InvalidInputError)
    target.chmod(0o600)
    assert MasterKeyRing.from_file(link).active_key_id == "k1"


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    exc = raises_without_key_material(lambda: MasterKeyRing.from_file(tmp_path), InvalidInputError)
    assert "regular file" in str(exc)


def test_missing_key_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        MasterKeyRing.from_file(tmp_path / "absent.json")


B64_KEY1 = base64.b64encode(KEY1).decode()
B64_SHORT = base64.b64encode(SHORT_KEY).decode()


@pytest.mark.parametrize(
    ("document", "field", "rule"),
    [
        (f'{{"active": "k1", "keys": {{"k1": "{B64_KEY1}"}}', "master keys", "JSON"),
        (f'{{"active": "k1", "keys": {{"k1": "{B64_KEY1}", }}}}', "master keys", "JSON"),
        (f'{{"active": "k1", "keys": {{"k1": "{B64_KEY1}"}}}}\xff', "master keys", "JSON"),
        ("", "master keys", "JSON"),
        ("[]", "master keys", 'exactly "active" and "keys"'),
        (f'{{"keys": {{"k1": "{B64_KEY1}"}}}}', "master keys", 'exactly "active" and "keys"'),
        (
            f'{{"active": "k1", "activ": "k1", "keys": {{"k1": "{B64_KEY1}"}}}}',
            "master keys",
            'exactly "active" and "keys"',
        ),
        (
            f'{{"active": "k1", "keys": {{"k1": "{B64_KEY1}", "k1": "{B64_SHORT}"}}}}',
            "master keys",
            "must not repeat a name",
        ),
        ('{"active": "k1", "keys": {}}', "keys", "non-empty"),
        (f'{{"active": "k1", "keys": ["{B64_KEY1}"]}}', "keys", "non-empty"),
        (f'{{"active": "k2", "keys": {{"k1": "{B64_KEY1}"}}}}', "active", "must name a key"),
        (f'{{"active": 1, "keys": {{"k1": "{B64_KEY1}"}}}}', "active", "must be a str"),
        (f'{{"active": "k 1", "keys": {{"k 1": "{B64_KEY1}"}}}}', "active", "1-32 characters"),
        (f'{{"active": "k1", "keys": {{"k!": "{B64_KEY1}"}}}}', "keys", "1-32 characters"),
        (f'{{"active": "k1", "keys": {{"k1": "{B64_SHORT}"}}}}', "keys.k1", "got 31"),
        (f'{{"active": "k1", "keys": {{"k1": "{B64_KEY1[:-2]}"}}}}', "keys.k1", "base64"),
        (f'{{"active": "k1", "keys": {{"k1": "{KEY1.hex()}"}}}}', "keys.k1", "got 48"),
        (
            f'{{"active": "k1", "keys": {{"k1": "{base64.urlsafe_b64encode(KEY1).decode()}"}}}}',
            "keys.k1",
            "standard base64",
        ),
        (f'{{"active": "k1", "keys": {{"k1": {list(KEY1)}}}}}', "keys.k1", "base64 string"),
        (f'{{"active": "k1", "keys": {{"{B64_KEY1}": "{B64_KEY1}"}}}}', "keys", "44 characters"),
    ],
)
def test_bad_key_document_names_field_and_rule_without_key_material(
    tmp_path: Path, document: str, field: str, rule: str
) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(document.encode("latin-1"))
    path.chmod(0o600)
    for load, source in (
        (lambda: MasterKeyRing.from_file(path), f"key file {path}"),
        (lambda: MasterKeyRing.from_env(env={ENV_VAR: document}), f"${ENV_VAR}"),
    ):
        exc = raises_without_key_material(load, InvalidInputError)
        assert isinstance(exc, InvalidInputError)
        assert exc.field == field
        assert rule in exc.rule, exc.rule
        assert source in exc.rule
        assert B64_KEY1 not in exception_texts(exc)
        assert exc.__cause__ is None
        assert exc.__context__ is None


def test_from_env_reads_the_variable() -> None:
    env = {ENV_VAR: key_file_json({"k1": KEY1, "k2": KEY2}, "k1")}
    ring = MasterKeyRing.from_env(env=env)
    assert (ring.active_key_id, ring.key_ids) == ("k1", frozenset({"k1", "k2"}))
    other = MasterKeyRing.from_env("OTHER_VAR", env={"OTHER_VAR": env[ENV_VAR]})
    assert other.key_ids == ring.key_ids


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, key_file_json({"k7": KEY1}, "k7"))
    assert MasterKeyRing.from_env().active_key_id == "k7"
    assert MasterKeyRing.load().active_key_id == "k7"


def test_from_env_without_the_variable_names_it() -> None:
    exc = raises_without_key_material(lambda: MasterKeyRing.from_env(env={}), InvalidInputError)
    assert isinstance(exc, InvalidInputError)
    assert exc.field == ENV_VAR


def test_env_var_wins_over_the_key_file(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.json", key_file_json({"file": KEY1}, "file"))
    env = {ENV_VAR: key_file_json({"env": KEY2}, "env")}
    assert MasterKeyRing.load(key_file=path, env=env).active_key_id == "env"
    assert MasterKeyRing.load(key_file=path, env={}).active_key_id == "file"


def test_env_var_set_means_the_key_file_is_not_read(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.json", key_file_json({"file": KEY1}, "file"), 0o644)
    env = {ENV_VAR: key_file_json({"env": KEY2}, "env")}
    assert MasterKeyRing.load(key_file=path, env=env).active_key_id == "env"
    assert MasterKeyRing.load(key_file=tmp_path / "absent", env=env).active_key_id == "env"


def test_env_var_set_but_empty_is_an_error_not_a_fall_back(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.json", key_file_json({"file": KEY1}, "file"))
    exc = raises_without_key_material(
        lambda: MasterKeyRing.load(key_file=path, env={ENV_VAR: ""}), InvalidInputError
    )
    assert f"${ENV_VAR}" in str(exc)


def test_load_with_neither_source_says_what_to_set() -> None:
    exc = raises_without_key_material(lambda: MasterKeyRing.load(env={}), InvalidInputError)
    assert ENV_VAR in str(exc)
    assert "key_file" in str(exc)


# --------------------------------------------------------------------------------------
# Writing key files
# --------------------------------------------------------------------------------------


def test_generate_file_writes_a_0600_file_that_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = MasterKeyRing.generate_file(path, key_id="first")
    assert mode_of(path) == 0o600
    assert (ring.active_key_id, ring.key_ids) == ("first", frozenset({"first"}))
    loaded = MasterKeyRing.from_file(path)
    assert loaded.key_ids == ring.key_ids
    assert loaded.open(ring.seal(PLAINTEXT, aad=AAD), aad=AAD) == PLAINTEXT
    assert sorted(os.listdir(tmp_path)) == ["keys.json"]  # no temporary file left behind


def test_generate_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        MasterKeyRing.generate_file(tmp_path / "keys.json")
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "keys.json") == 0o600


def test_generate_file_draws_a_new_key_each_time(tmp_path: Path) -> None:
    first = MasterKeyRing.generate_file(tmp_path / "a.json")
    second = MasterKeyRing.generate_file(tmp_path / "b.json")
    sealed = first.seal(PLAINTEXT, aad=AAD)
    raises_without_key_material(lambda: second.open(sealed, aad=AAD), SealingError)


def test_generate_file_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.json", key_file_json({"k1": KEY1}, "k1"))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        MasterKeyRing.generate_file(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keys.json"]


def test_generate_file_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "keys.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(FileExistsError):
        MasterKeyRing.generate_file(link)
    assert not (tmp_path / "elsewhere.json").exists()


def test_generate_file_refuses_a_bad_key_id_before_writing(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        MasterKeyRing.generate_file(tmp_path / "keys.json", key_id="bad id")
    assert os.listdir(tmp_path) == []


def test_save_replaces_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.json", key_file_json({"k1": KEY1}, "k1"), 0o644)
    rotated = MasterKeyRing({"k1": KEY1}, "k1").with_new_active_key("k2")
    rotated.save(path)
    assert mode_of(path) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["keys.json"]
    loaded = MasterKeyRing.from_file(path)
    assert (loaded.active_key_id, loaded.key_ids) == ("k2", frozenset({"k1", "k2"}))
    assert loaded.open(rotated.seal(PLAINTEXT, aad=AAD), aad=AAD) == PLAINTEXT
    document = json.loads(path.read_text())
    assert document["keys"]["k1"] == B64_KEY1


def test_save_creates_a_missing_file(tmp_path: Path) -> None:
    ring12().save(tmp_path / "new.json")
    assert mode_of(tmp_path / "new.json") == 0o600
    assert MasterKeyRing.from_file(tmp_path / "new.json").key_ids == {"k1", "k2"}


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

key_ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)


@given(
    plaintext=st.binary(max_size=512),
    aad=st.binary(max_size=64),
    key=st.binary(min_size=32, max_size=32),
    key_id=key_ids,
)
def test_seal_open_round_trip_property(
    plaintext: bytes, aad: bytes, key: bytes, key_id: str
) -> None:
    ring = MasterKeyRing({key_id: key}, key_id)
    sealed = ring.seal(plaintext, aad=aad)
    assert MasterKeyRing.key_id_of(sealed) == key_id
    assert ring.open(sealed, aad=aad) == plaintext


@given(
    plaintext=st.binary(max_size=64),
    aad=st.binary(max_size=16),
    other_aad=st.binary(max_size=16),
)
def test_any_other_aad_is_refused_property(plaintext: bytes, aad: bytes, other_aad: bytes) -> None:
    ring = ring12()
    sealed = ring.seal(plaintext, aad=aad)
    if other_aad == aad:
        assert ring.open(sealed, aad=other_aad) == plaintext
    else:
        with pytest.raises(SealingError):
            ring.open(sealed, aad=other_aad)


@given(plaintext=st.binary(max_size=64), data=st.data())
def test_any_changed_byte_is_refused_property(plaintext: bytes, data: st.DataObject) -> None:
    ring = ring12()
    sealed = bytearray(ring.seal(plaintext, aad=AAD))
    index = data.draw(st.integers(0, len(sealed) - 1))
    sealed[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SealingError):
        ring.open(bytes(sealed), aad=AAD)


def test_a_missing_master_key_is_never_regenerated_over_sealed_data(tmp_path: Path) -> None:
    """Issue 11, finding 7: a key regenerated under the same id would open nothing the
    lost one sealed, and every later start would fail. Refuse, saying what to do."""
    from sls_core.login import SecureLogin

    data = tmp_path / "data"
    sls = SecureLogin.open(data)
    sls.create_user("alice")
    sls.store.close()
    (data / "master-key.json").unlink()
    with pytest.raises(InvalidInputError, match=r"master key is missing.*restore the key file"):
        SecureLogin.open(data)
    assert not (data / "master-key.json").exists()  # nothing created


def test_the_server_refuses_to_start_without_its_master_key_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from sls_core.login import SecureLogin

    data = tmp_path / "data"
    SecureLogin.open(data).store.close()
    (data / "master-key.json").unlink()
    done = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [
            sys.executable,
            "-m",
            "sls_core.server",
            "serve",
            "--data-dir",
            str(data),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith(
        "sls-core: cannot start: key_file: the master key is missing"
    )
