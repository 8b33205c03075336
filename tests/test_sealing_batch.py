"""The native batch path of sealing (:meth:`MasterKeyRing.open_device_column`, Rust
``aes-gcm``) against the Python path (:meth:`MasterKeyRing.open`, pyca/cryptography): the
same format, byte-identical plaintexts, the same errors, naming the record and never a key
or a plaintext. Records sealed by Python come from ``tests/vectors/sealed-records-python.json``
(cargo test opens the same file)."""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sls_core.errors import InvalidInputError, InvalidInputTypeError
from sls_core.sealing import DataKeys, MasterKeyRing, SealingError, device_aad
from vector_data import VECTORS_DIR, load

SEALED_FILE = VECTORS_DIR / "sealed-records-python.json"


def vector_ring() -> MasterKeyRing:
    keys = {kid: bytes.fromhex(key) for kid, key in load(SEALED_FILE)["keys_hex"].items()}
    return MasterKeyRing(keys, "k1")


def python_open(ring: MasterKeyRing, device_id: int, what: str, sealed: bytes | None) -> Any:
    if sealed is None:
        return None
    return ring.open(sealed, aad=device_aad(device_id, what), record=f"device {device_id} {what}")


def test_every_record_sealed_by_python_opens_to_the_same_bytes_natively() -> None:
    ring = vector_ring()
    vectors = load(SEALED_FILE)["vectors"]
    for what in {v["what"] for v in vectors}:
        rows = [v for v in vectors if v["what"] == what]
        ids = np.array([v["device_id"] for v in rows], np.int64)
        sealed = [bytes.fromhex(v["sealed_hex"]) for v in rows]
        opened = ring.open_device_column(ids, sealed, what)
        for i, v in enumerate(rows):
            plaintext = bytes.fromhex(v["plaintext_hex"])
            assert opened.value(i) == plaintext
            assert python_open(ring, v["device_id"], what, sealed[i]) == plaintext


@pytest.mark.parametrize("case", load(SEALED_FILE)["failures"], ids=lambda f: f["name"])
def test_a_record_that_must_not_open_fails_alike_on_both_paths(case: dict[str, Any]) -> None:
    ring = vector_ring()
    sealed = bytes.fromhex(case["sealed_hex"])
    device_id, what = case["device_id"], case["what"]
    with pytest.raises(SealingError) as python:
        python_open(ring, device_id, what, sealed)
    with pytest.raises(SealingError) as native:
        ring.open_device_column(np.array([device_id], np.int64), [sealed], what)
    for error in (python.value, native.value):
        assert (error.key_id, error.rule) == (case["key_id"], case["rule"])
        assert error.record == f"device {device_id} {what}"
    assert str(native.value) == str(python.value)
    assert f"sealed record device {device_id} {what}" in str(native.value)


def test_the_first_failing_row_of_a_column_is_named_and_no_secret_is_shown() -> None:
    ring = MasterKeyRing({"k1": os.urandom(32)}, "k1")
    ids = np.arange(1, 5001, dtype=np.int64)
    secrets = [os.urandom(20) for _ in range(len(ids))]
    sealed: list[bytes | None] = [
        ring.seal(s, aad=device_aad(i, "secret"))
        for i, s in zip(ids.tolist(), secrets, strict=True)
    ]
    sealed[3000], sealed[4000] = sealed[4000], sealed[3000]  # two rows swapped
    with pytest.raises(SealingError) as caught:
        ring.open_device_column(ids, sealed, "secret")
    assert caught.value.record == "device 3001 secret"
    assert caught.value.key_id == "k1"
    text = str(caught.value) + repr(caught.value.args)
    for secret in secrets[2990:4010]:
        assert secret.hex() not in text
        assert repr(secret) not in text


def test_the_native_keys_show_ids_only_and_refuse_pickling() -> None:
    key = os.urandom(32)
    ring = MasterKeyRing({"k1": key, "k2": os.urandom(32)}, "k2")
    keys = DataKeys({"k1": key})
    assert repr(keys) == 'DataKeys(key_ids=["k1"])'
    assert keys.key_ids == ["k1"]
    assert key.hex() not in repr(keys)
    with pytest.raises(TypeError):
        pickle.dumps(keys)
    sealed = ring.seal(b"x" * 20, aad=b"device:1:secret")
    assert (
        repr(ring.open_device_column(np.array([1]), [sealed], "secret")) == "OpenedColumn(1 values)"
    )


def test_bad_arguments_are_refused_with_the_field_named() -> None:
    ring = MasterKeyRing({"k1": os.urandom(32)}, "k1")
    sealed = ring.seal(b"x", aad=b"device:1:secret")
    with pytest.raises(InvalidInputError, match="sealed"):
        ring.open_device_column(np.array([1, 2]), [sealed], "secret")
    with pytest.raises(InvalidInputTypeError, match="sealed"):
        ring.open_device_column(np.array([1]), ["text"], "secret")  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="what"):
        ring.open_device_column(np.array([1]), [sealed], "device:2:secret")
    with pytest.raises(InvalidInputError, match="width"):
        ring.open_device_column(np.array([1]), [sealed], "secret", width=0)
    with pytest.raises(InvalidInputError, match=r"keys\.k1"):
        DataKeys({"k1": b"short"})


def test_a_sealing_error_with_its_record_pickles() -> None:
    error = SealingError("k1", "authentication failed", "device 7 pin_hash")
    again = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object
    assert (again.key_id, again.rule, again.record) == (
        "k1",
        "authentication failed",
        "device 7 pin_hash",
    )
    assert str(again) == str(error)


key_ids = st.sampled_from(["k1", "k2", "rotated_3"])
rows = st.lists(
    st.tuples(st.none() | st.binary(max_size=80), key_ids),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(
    rows=rows,
    first_id=st.integers(1, 2**40),
    what=st.sampled_from(["secret", "pin_hash"]),
    width=st.none() | st.integers(1, 64),
    threads=st.sampled_from([1, 2]),
)
def test_a_column_under_several_keys_opens_exactly_as_row_by_row(
    rows: list[tuple[bytes | None, str]],
    first_id: int,
    what: str,
    width: int | None,
    threads: int,
) -> None:
    keys = {kid: os.urandom(32) for kid in ("k1", "k2", "rotated_3")}
    rings = {kid: MasterKeyRing(keys, kid) for kid in keys}  # one ring per active key
    ids = np.arange(first_id, first_id + len(rows), dtype=np.int64)
    sealed = [
        None if p is None else rings[kid].seal(p, aad=device_aad(int(i), what))
        for (p, kid), i in zip(rows, ids, strict=True)
    ]
    ring = rings["k1"]
    opened = ring.open_device_column(ids, sealed, what, width=width, threads=threads)
    assert len(opened) == len(rows)
    for i, ((plaintext, _), blob) in enumerate(zip(rows, sealed, strict=True)):
        assert opened.value(i) == python_open(ring, int(ids[i]), what, blob) == plaintext
        assert opened.lengths[i] == (-1 if plaintext is None else len(plaintext))
        if width is not None:
            assert opened.padded is not None
            cell = bytes(opened.padded[i])
            fits = plaintext is not None and len(plaintext) <= width
            assert cell == (plaintext.ljust(width, b"\0") if fits else bytes(width))  # type: ignore[union-attr]


@settings(max_examples=60, deadline=None)
@given(
    plaintexts=st.lists(st.binary(max_size=40), min_size=1, max_size=20),
    data=st.data(),
)
def test_any_changed_byte_of_any_row_fails_alike_on_both_paths(
    plaintexts: list[bytes], data: st.DataObject
) -> None:
    ring = MasterKeyRing({"k1": os.urandom(32), "k2": os.urandom(32)}, "k1")
    ids = np.arange(10, 10 + len(plaintexts), dtype=np.int64)
    sealed: list[bytes | None] = [
        ring.seal(p, aad=device_aad(int(i), "secret")) for p, i in zip(plaintexts, ids, strict=True)
    ]
    row = data.draw(st.integers(0, len(sealed) - 1))
    blob = sealed[row]
    assert blob is not None
    at = data.draw(st.integers(0, len(blob) - 1))
    flip = data.draw(st.integers(1, 255))
    sealed[row] = blob[:at] + bytes([blob[at] ^ flip]) + blob[at + 1 :]
    with pytest.raises(SealingError) as python:
        python_open(ring, int(ids[row]), "secret", sealed[row])
    with pytest.raises(SealingError) as native:
        ring.open_device_column(ids, sealed, "secret")
    assert native.value.record == f"device {int(ids[row])} secret"
    assert (native.value.key_id, native.value.rule) == (python.value.key_id, python.value.rule)


def test_the_native_single_open_matches_the_python_path() -> None:
    ring = vector_ring()
    keys = DataKeys({kid: bytes.fromhex(k) for kid, k in load(SEALED_FILE)["keys_hex"].items()})
    for v in load(SEALED_FILE)["vectors"]:
        aad = device_aad(v["device_id"], v["what"])
        sealed = bytes.fromhex(v["sealed_hex"])
        assert keys.open(sealed, aad) == ring.open(sealed, aad=aad)


def test_the_lowest_failing_row_is_named_whatever_fails_further_down() -> None:
    ring = MasterKeyRing({"k1": os.urandom(32)}, "k1")
    ids = np.arange(1, 3001, dtype=np.int64)
    sealed: list[bytes | None] = [
        ring.seal(b"s" * 20, aad=device_aad(i, "pin_hash")) for i in ids.tolist()
    ]
    sealed[2500] = b"\x01"  # a bad header, further down
    sealed[1200] = sealed[1201]  # moved from another row
    with pytest.raises(SealingError) as caught:
        ring.open_device_column(ids, sealed, "pin_hash")
    assert caught.value.record == "device 1201 pin_hash"
    sealed[1200] = ring.seal(b"s" * 20, aad=device_aad(1201, "pin_hash"))
    with pytest.raises(SealingError) as caught:
        ring.open_device_column(ids, sealed, "pin_hash")
    assert caught.value.record == "device 2501 pin_hash"
    assert caught.value.key_id is None
