"""The kernel's IB Key pieces through their faces, ``sls_core.activation`` and ``sls_core.push``:
signed activation payloads, the manual activation string, X25519 + HKDF key agreement and
Ed25519 push approvals.

Cross-checks run against an independent implementation (pyca ``cryptography``): it signs
what the kernel verifies and verifies what the kernel signs, and derives the same OCRA
secret. Distinctive fake secrets are passed wherever a call takes them, so a leak into an
error message would show.
"""

from __future__ import annotations

import base64
import pickle
import string
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from sls_core import activation, push
from sls_core.errors import InvalidInputError, InvalidInputTypeError
from sls_core.outcome import Outcome

SEED_1 = b"SEED-ONE-4kP2-SECRET-".ljust(32, b"1")
SEED_2 = b"SEED-TWO-9f3Z-SECRET-".ljust(32, b"2")
SESSION = b"0123456789abcdef"
NOW = 1_800_000_100
ISSUED = 1_800_000_000
EXPIRES = 1_800_000_300
QR_ALPHANUMERIC = set(string.digits + string.ascii_uppercase + " $%*+-./:")
MANUAL_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
PAYLOAD_DOMAIN = b"sls-activation-payload-v1\0"
STATUS = {
    "valid": 0,
    "malformed": 1,
    "unsupported version": 2,
    "unknown key id": 3,
    "bad signature": 4,
    "expired": 5,
    "not yet valid": 6,
}


def x25519_public(private: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


SERVER_PUBLIC = x25519_public(b"\x03" * 32)


@pytest.fixture(scope="module")
def signer() -> activation.ActivationSigner:
    return activation.ActivationSigner({1: SEED_1, 2: SEED_2}, active=2)


@pytest.fixture(scope="module")
def verifier(signer: activation.ActivationSigner) -> activation.ActivationVerifier:
    return activation.ActivationVerifier(signer.public_keys())


def sign(signer: activation.ActivationSigner, **changes: Any) -> str:
    fields: dict[str, Any] = {
        "session_id": SESSION,
        "username": "alice2024",
        "issued_at": ISSUED,
        "expires_at": EXPIRES,
        "server_public": SERVER_PUBLIC,
        "flags": 5,
    }
    fields.update(changes)
    return signer.sign(**fields)


def decode(text: str) -> bytes:
    body = text.removeprefix("SLS1:")
    return base64.b32decode(body + "=" * (-len(body) % 8))


def encode(raw: bytes) -> str:
    return "SLS1:" + base64.b32encode(raw).decode().rstrip("=")


# --- activation payloads --------------------------------------------------------------


def test_a_signed_payload_verifies_to_its_fields(
    signer: activation.ActivationSigner, verifier: activation.ActivationVerifier
) -> None:
    text = sign(signer)
    assert set(text) <= QR_ALPHANUMERIC
    assert text.startswith("SLS1:")
    status, fields = verifier.verify(text, NOW)
    assert status == 0
    assert fields == {
        "version": 1,
        "key_id": 2,
        "flags": 5,
        "session_id": SESSION,
        "username": "alice2024",
        "issued_at": ISSUED,
        "expires_at": EXPIRES,
        "server_public": SERVER_PUBLIC,
    }
    assert verifier.verify(text.encode(), float(NOW) + 0.9) == (0, fields)


def test_the_payload_signature_is_plain_ed25519_checked_by_another_implementation(
    signer: activation.ActivationSigner,
) -> None:
    raw = decode(sign(signer))
    public = Ed25519PublicKey.from_public_bytes(signer.public_keys()[2])
    public.verify(raw[-64:], PAYLOAD_DOMAIN + raw[:-64])  # raises if it does not verify
    expected = Ed25519PrivateKey.from_private_bytes(SEED_2).public_key()
    assert signer.public_keys()[2] == expected.public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_a_payload_signed_by_another_implementation_verifies(
    verifier: activation.ActivationVerifier, signer: activation.ActivationSigner
) -> None:
    raw = bytearray(decode(sign(signer)))
    raw[1] = 1  # key id 1, signed below with SEED_1 by cryptography
    signed = bytes(raw[:-64])
    signature = Ed25519PrivateKey.from_private_bytes(SEED_1).sign(PAYLOAD_DOMAIN + signed)
    status, fields = verifier.verify(encode(signed + signature), NOW)
    assert status == 0
    assert fields is not None
    assert fields["key_id"] == 1


def test_every_bit_flip_of_the_decoded_payload_and_every_truncation_is_refused(
    signer: activation.ActivationSigner, verifier: activation.ActivationVerifier
) -> None:
    text = sign(signer)
    raw = decode(text)
    flipped = [
        encode(raw[:at] + bytes([raw[at] ^ (1 << bit)]) + raw[at + 1 :])
        for at in range(len(raw))
        for bit in range(8)
    ]
    result = verifier.verify_batch(flipped, NOW)
    assert (result["status"] != 0).all()
    assert (result["status"][:8] == STATUS["unsupported version"]).all()
    truncated = [text[:cut] for cut in range(len(text))]
    assert (verifier.verify_batch(truncated, NOW)["status"] == STATUS["malformed"]).all()


def test_precise_statuses(signer: activation.ActivationSigner) -> None:
    verifier = activation.ActivationVerifier(signer.public_keys(), skew=60)
    text = sign(signer)
    assert verifier.verify(text, EXPIRES) == (STATUS["expired"], None)
    assert verifier.verify(text, EXPIRES - 1)[0] == 0
    assert verifier.verify(text, ISSUED - 60)[0] == 0
    assert verifier.verify(text, ISSUED - 61) == (STATUS["not yet valid"], None)
    raw = decode(text)
    assert verifier.verify(encode(b"\x02" + raw[1:]), NOW)[0] == STATUS["unsupported version"]
    retired = activation.ActivationSigner({7: SEED_1}, active=7)
    assert verifier.verify(sign(retired), NOW)[0] == STATUS["unknown key id"]
    impostor = activation.ActivationSigner({2: SEED_1}, active=2)
    assert verifier.verify(sign(impostor), NOW)[0] == STATUS["bad signature"]
    for bad in ["", "SLS1:", "sls1:" + text[5:], text.lower(), text + "=", " " + text, "SLS1:0"]:
        assert verifier.verify(bad, NOW) == (STATUS["malformed"], None), bad
    for name, number in STATUS.items():
        assert activation.payload_status_name(number) == name
    with pytest.raises(InvalidInputError):
        activation.payload_status_name(7)


def test_rotation_old_keys_keep_verifying(verifier: activation.ActivationVerifier) -> None:
    old = activation.ActivationSigner({1: SEED_1}, active=1)
    status, fields = verifier.verify(sign(old), NOW)
    assert status == 0
    assert fields is not None
    assert fields["key_id"] == 1
    assert verifier.key_ids == [1, 2]


@pytest.mark.parametrize("layout", ["list", "S", "U", "object"])
def test_batch_verification_equals_single_verification(
    signer: activation.ActivationSigner, verifier: activation.ActivationVerifier, layout: str
) -> None:
    good = sign(signer)
    late = sign(signer, issued_at=NOW + 10, expires_at=NOW + 20, username="bob")
    texts = [good, "SLS1:AAAA", late, good[:-1], sign(signer, username="z" * 64)] * 500
    column: Any = {
        "list": texts,
        "S": np.array([t.encode() for t in texts], dtype="S"),
        "U": np.array(texts, dtype="U"),
        "object": np.array(texts, dtype=object),
    }[layout]
    for threads in (1, 2):
        result = verifier.verify_batch(column, NOW, threads=threads)
        assert result["username"].dtype == np.dtype("S64")
        assert result["session_id"].shape == (len(texts), 16)
        assert result["server_public"].shape == (len(texts), 32)
        for row in range(5):
            status, fields = verifier.verify(texts[row], NOW)
            assert result["status"][row] == status
            if fields is None:
                assert result["key_id"][row] == 0
                assert result["username"][row] == b""
                continue
            assert result["version"][row] == fields["version"]
            assert result["key_id"][row] == fields["key_id"]
            assert result["flags"][row] == fields["flags"]
            assert result["session_id"][row].tobytes() == fields["session_id"]
            assert result["username"][row].decode() == fields["username"]
            assert result["issued_at"][row] == fields["issued_at"]
            assert result["expires_at"][row] == fields["expires_at"]
            assert result["server_public"][row].tobytes() == fields["server_public"]
        assert (result["status"].reshape(-1, 5) == result["status"][:5]).all()


@given(
    username=st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=64),
    session=st.binary(min_size=16, max_size=16),
    flags=st.integers(0, 255),
    issued=st.integers(0, 2**40),
    lifetime=st.integers(1, 2**20),
)
def test_any_valid_fields_round_trip(
    signer: activation.ActivationSigner,
    verifier: activation.ActivationVerifier,
    username: str,
    session: bytes,
    flags: int,
    issued: int,
    lifetime: int,
) -> None:
    text = sign(
        signer,
        username=username,
        session_id=session,
        flags=flags,
        issued_at=issued,
        expires_at=issued + lifetime,
    )
    assert set(text) <= QR_ALPHANUMERIC
    status, fields = verifier.verify(text, issued)
    assert status == 0
    assert fields is not None
    assert (fields["username"], fields["session_id"], fields["flags"]) == (username, session, flags)


@given(st.text(max_size=400) | st.binary(max_size=400))
def test_arbitrary_text_never_verifies_and_never_raises(
    verifier: activation.ActivationVerifier, junk: str | bytes
) -> None:
    status, fields = verifier.verify(junk, NOW)
    assert status in (1, 2, 3, 4)
    assert fields is None


def test_signing_refuses_bad_fields_and_keys_without_echoing_them(
    signer: activation.ActivationSigner,
) -> None:
    for username in ["", "Alice", "al ice", "ali-ce", "a" * 65, "é"]:
        with pytest.raises(InvalidInputError) as info:
            sign(signer, username=username)
        assert info.value.field == "username"
    with pytest.raises(InvalidInputError) as info:
        sign(signer, expires_at=ISSUED)
    assert info.value.field == "expires_at"
    for field, value in [("session_id", b"short"), ("server_public", b"x" * 31), ("flags", 256)]:
        with pytest.raises(InvalidInputError) as info:
            sign(signer, **{field: value})
        assert info.value.field == field
    with pytest.raises(InvalidInputTypeError):
        sign(signer, username=b"alice")
    with pytest.raises(InvalidInputError) as info:
        activation.ActivationSigner({1: SEED_1[:31]}, active=1)
    assert "SECRET" not in repr(info.value)
    assert "SEED" not in str(info.value.args)
    with pytest.raises(InvalidInputError):
        activation.ActivationSigner({1: SEED_1}, active=2)
    with pytest.raises(InvalidInputError):
        activation.ActivationSigner({256: SEED_1}, active=256)
    with pytest.raises(InvalidInputTypeError):
        activation.ActivationSigner([SEED_1], active=0)
    with pytest.raises(InvalidInputError):
        activation.ActivationVerifier({})
    with pytest.raises(InvalidInputError):
        activation.ActivationVerifier({1: b"\x01" + b"\x00" * 31})  # the identity: small order
    with pytest.raises(InvalidInputError):
        activation.ActivationVerifier({1: b"\x01" * 32}, skew=-1)


def test_signer_and_verifier_never_show_or_pickle_keys(
    signer: activation.ActivationSigner, verifier: activation.ActivationVerifier
) -> None:
    assert repr(signer) == "ActivationSigner(active_key_id=2, redacted)"
    assert repr(verifier) == "ActivationVerifier(key_ids=[1, 2], skew=0)"
    for obj in (signer, verifier):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    assert not [name for name in dir(signer) if "seed" in name or "secret" in name]


# --- the manual activation string -----------------------------------------------------


@given(st.binary(min_size=16, max_size=16))
def test_manual_code_round_trips_to_the_session_prefix(session: bytes) -> None:
    code = activation.manual_code(session)
    assert len(code) == 17
    assert [len(group) for group in code.split("-")] == [4, 4, 4, 2]
    assert set(code.replace("-", "")) <= set(MANUAL_ALPHABET)
    assert activation.parse_manual_code(code) == session[:8]
    assert activation.parse_manual_code(code.lower().replace("-", " ")) == session[:8]
    assert activation.parse_manual_code(code.replace("-", "").encode()) == session[:8]


def test_the_manual_alphabet_has_no_ambiguous_characters() -> None:
    assert not set("0O1IL") & set(MANUAL_ALPHABET)
    assert len(set(MANUAL_ALPHABET)) == 31


@given(st.binary(min_size=16, max_size=16))
def test_every_mistyped_or_swapped_character_is_a_bad_check(session: bytes) -> None:
    bare = activation.manual_code(session).replace("-", "")
    variants = [
        bare[:at] + other + bare[at + 1 :]
        for at in range(len(bare))
        for other in MANUAL_ALPHABET
        if other != bare[at]
    ]
    variants += [
        bare[:at] + bare[at + 1] + bare[at] + bare[at + 2 :]
        for at in range(len(bare) - 1)
        if bare[at] != bare[at + 1]
    ]
    for typo in variants:
        with pytest.raises(InvalidInputError, match="check character") as info:
            activation.parse_manual_code(typo)
        assert info.value.field == "manual_code"


def test_manual_code_is_strict_beyond_case_spaces_and_hyphens() -> None:
    bare = activation.manual_code(SESSION).replace("-", "")
    for bad in [
        "",
        bare[:-1],
        bare + "2",
        "0" + bare[1:],
        "O" + bare[1:],
        "1" + bare[1:],
        "I" + bare[1:],
        "L" + bare[1:],
        bare[:4] + "_" + bare[4:],
        bare[:4] + "\t" + bare[4:],
        bare[:4] + "\u00a0" + bare[4:],
        "\uff21" + bare[1:],
        bare + " " * 60,
    ]:
        with pytest.raises(InvalidInputError, match="malformed"):
            activation.parse_manual_code(bad)
    with pytest.raises(InvalidInputTypeError):
        activation.parse_manual_code(12345)
    with pytest.raises(InvalidInputError):
        activation.manual_code(b"too short")


# --- key agreement --------------------------------------------------------------------


def test_both_sides_derive_the_same_secret_as_an_independent_implementation() -> None:
    server_private, server_public = activation.x25519_keypair()
    app_private, app_public = activation.x25519_keypair()
    assert len(server_private) == len(server_public) == 32
    assert (
        activation.x25519_public_key(server_private)
        == server_public
        == x25519_public(server_private)
    )
    on_server = activation.derive_ocra_secret(server_private, app_public, SESSION, "alice")
    on_app = activation.derive_ocra_secret(app_private, server_public, SESSION, "alice")
    assert on_server == on_app
    shared = X25519PrivateKey.from_private_bytes(app_private).exchange(
        X25519PublicKey.from_public_bytes(server_public)
    )
    reference = HKDF(SHA256(), 32, salt=SESSION, info=b"sls-ibkey-ocra-v1alice").derive(shared)
    assert on_app == reference
    assert (
        activation.derive_ocra_secret(app_private, server_public, SESSION[::-1], "alice") != on_app
    )
    assert activation.derive_ocra_secret(app_private, server_public, SESSION, "alice2") != on_app


@pytest.mark.parametrize(
    "low_order",
    [
        bytes(32),
        b"\x01" + bytes(31),
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    ],
)
def test_a_low_order_peer_key_is_refused(low_order: bytes) -> None:
    private, _ = activation.x25519_keypair()
    with pytest.raises(InvalidInputError) as info:
        activation.derive_ocra_secret(private, low_order, SESSION, "alice")
    assert info.value.field == "peer_public"
    assert private.hex() not in str(info.value)


def test_key_agreement_refuses_bad_sizes_and_names() -> None:
    private, public = activation.x25519_keypair()
    for args, field in [
        ((private[:31], public, SESSION, "alice"), "own_private"),
        ((private, public + b"x", SESSION, "alice"), "peer_public"),
        ((private, public, SESSION[:15], "alice"), "session_id"),
        ((private, public, SESSION, "Alice"), "username"),
    ]:
        with pytest.raises(InvalidInputError) as info:
            activation.derive_ocra_secret(*args)
        assert info.value.field == field
    assert activation.x25519_keypair()[0] != private


# --- push approvals -------------------------------------------------------------------


def test_approval_message_layout() -> None:
    message = push.approval_message(0x0102, 3, 4, 5, 2)
    prefix = b"sls-push-approval-v1\0"
    assert message == (
        prefix
        + (0x0102).to_bytes(8, "big")
        + (3).to_bytes(8, "big")
        + (4).to_bytes(8, "big")
        + (5).to_bytes(8, "big")
        + b"\x02"
    )
    for decision in (0, 3, 255, -1):
        with pytest.raises(InvalidInputError) as info:
            push.approval_message(1, 2, 3, 4, decision)
        assert info.value.field == "decision"
    with pytest.raises(InvalidInputTypeError):
        push.approval_message(1, 2, 3, 4, "approve")
    with pytest.raises(InvalidInputError):
        push.approval_message(-1, 2, 3, 4, 1)


def test_an_approval_verifies_only_for_its_challenge_user_device_expiry_and_decision() -> None:
    seed, public = push.push_keypair()
    assert push.push_public_key(seed) == public
    message = push.approval_message(10, 20, 30, 40, 1)
    signature = push.sign_approval(seed, message)
    assert len(signature) == 64
    assert push.verify_approval(public, message, signature)
    for other in [
        push.approval_message(11, 20, 30, 40, 1),
        push.approval_message(10, 21, 30, 40, 1),
        push.approval_message(10, 20, 31, 40, 1),
        push.approval_message(10, 20, 30, 41, 1),
        push.approval_message(10, 20, 30, 40, 2),
    ]:
        assert not push.verify_approval(public, other, signature)
    _, stranger = push.push_keypair()
    assert not push.verify_approval(stranger, message, signature)
    assert not push.verify_approval(public[:31], message, signature)
    assert not push.verify_approval(public, message, signature[:63])
    with pytest.raises(InvalidInputTypeError):
        push.verify_approval(public, message, signature.hex())


def test_signatures_interoperate_with_another_implementation() -> None:
    seed, public = push.push_keypair()
    message = push.approval_message(1, 2, 3, 4, 1)
    theirs = Ed25519PrivateKey.from_private_bytes(seed)
    assert theirs.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == public
    # Ed25519 is deterministic: both sign the same bytes.
    assert theirs.sign(message) == push.sign_approval(seed, message)
    Ed25519PublicKey.from_public_bytes(public).verify(push.sign_approval(seed, message), message)


def approvals(n: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    keys = [push.push_keypair() for _ in range(8)]
    messages = [push.approval_message(i, 7, 9, EXPIRES, 1 + i % 2) for i in range(n)]
    publics = [keys[i % 8][1] for i in range(n)]
    signatures = [push.sign_approval(keys[i % 8][0], messages[i]) for i in range(n)]
    return publics, messages, signatures


def test_batch_gives_every_item_its_own_verdict() -> None:
    publics, messages, signatures = approvals(300)
    signatures[3] = signatures[4]  # another message's signature: wrong
    signatures[17] = signatures[17][:40] + bytes([signatures[17][40] ^ 1]) + signatures[17][41:]
    signatures[30] = signatures[30][:63]  # malformed
    publics[31] = b"\x01" + bytes(31)  # small-order key: malformed
    signatures[32] = signatures[32][:32] + b"\xff" * 32  # s not canonical: malformed
    publics[33] = publics[34]  # wrong key
    for row in range(64, 80):  # a whole chunk of forgeries
        signatures[row] = bytes(64 - len(str(row))) + str(row).encode()
    for threads in (1, 2):
        outcomes = push.verify_approvals_batch(publics, messages, signatures, threads=threads)
        assert outcomes.dtype == np.uint8
        expected = [
            int(push.verify_approval(p, m, s) is False)
            for p, m, s in zip(publics, messages, signatures, strict=True)
        ]
        assert [int(o != Outcome.OK) for o in outcomes] == expected
        assert outcomes[3] == outcomes[17] == outcomes[33] == Outcome.WRONG
        assert outcomes[30] == outcomes[31] == outcomes[32] == Outcome.MALFORMED
        assert (outcomes[64:80] != Outcome.OK).all()
        assert (np.delete(outcomes, [3, 17, 30, 31, 32, 33, *range(64, 80)]) == Outcome.OK).all()


def test_large_batch_in_numpy_layouts_on_one_and_two_threads() -> None:
    n = 4096  # above the size where batches release the GIL and use the pool
    publics, messages, signatures = approvals(n)
    signatures[::64] = [bytes(64)] * len(signatures[::64])  # one in 64 bad
    as_matrix = {
        "publics": np.frombuffer(b"".join(publics), np.uint8).reshape(n, 32),
        "messages": np.array(messages, dtype=f"S{len(messages[0])}"),
        "signatures": np.frombuffer(b"".join(signatures), np.uint8).reshape(n, 64),
    }
    reference = push.verify_approvals_batch(publics, messages, signatures, threads=1)
    assert (reference[::64] != Outcome.OK).all()
    assert (np.delete(reference, np.arange(0, n, 64)) == Outcome.OK).all()
    for threads in (1, 2):
        outcomes = push.verify_approvals_batch(**as_matrix, threads=threads)
        assert (outcomes == reference).all()


def test_batch_columns_of_different_lengths_raise_before_any_work() -> None:
    publics, messages, signatures = approvals(3)
    with pytest.raises(InvalidInputError):
        push.verify_approvals_batch(publics, messages[:2], signatures)
    with pytest.raises(InvalidInputError):
        push.verify_approvals_batch(publics, messages, signatures, threads=0)
    assert len(push.verify_approvals_batch([], [], [])) == 0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["good", "wrong", "short", "junk", "swap"]),
            st.integers(0, 2**64 - 1),
        ),
        max_size=40,
    )
)
def test_batch_equals_single_for_any_mix(items: list[tuple[str, int]]) -> None:
    seed, public = push.push_keypair()
    publics, messages, signatures = [], [], []
    for kind, challenge in items:
        message = push.approval_message(challenge, 1, 2, 3, 1)
        signature = push.sign_approval(seed, message)
        if kind == "wrong":
            message = push.approval_message(challenge, 1, 2, 3, 2)
        elif kind == "short":
            signature = signature[:-1]
        elif kind == "junk":
            signature = challenge.to_bytes(8, "big") * 8
        elif kind == "swap":
            signature = signature[32:] + signature[:32]
        publics.append(public)
        messages.append(message)
        signatures.append(signature)
    outcomes = push.verify_approvals_batch(publics, messages, signatures)
    singles = [
        push.verify_approval(*item) for item in zip(publics, messages, signatures, strict=True)
    ]
    assert [o == Outcome.OK for o in outcomes] == singles
    for (kind, _), outcome in zip(items, outcomes, strict=True):
        assert (outcome == Outcome.OK) == (kind == "good")
        if kind == "short":
            assert outcome == Outcome.MALFORMED
