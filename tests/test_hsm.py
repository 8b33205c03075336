"""Issue 11, key custody: master keys in a PKCS#11 token (SoftHSM2 here).

The token keeps one wrapping key per key id, sensitive and never extractable; the key file
keeps only wrapped data keys. These tests run against a private SoftHSM2 token made for the
session (``scripts/system-packages.sh`` installs SoftHSM2; ``make check`` runs it).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from grpc_fixtures import spawn_server
from sls_core import ocra
from sls_core.clock import ManualClock
from sls_core.devices import DeviceType
from sls_core.errors import InvalidInputError
from sls_core.hsm import Pkcs11Custody, find_softhsm_module
from sls_core.login import SecureLogin
from sls_core.sealing import MasterKeyRing

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
SECRET = bytes(range(20))
PIN = "4711"
NOW = 1_800_000_000.0
TOKEN = "sls-test"  # noqa: S105 - a token label, not a password
USER_PIN = "2468"


@dataclass(frozen=True)
class SoftHsm:
    module: str
    conf: Path

    def custody(self, prefix: str) -> Pkcs11Custody:
        return Pkcs11Custody(self.module, TOKEN, label_prefix=prefix)

    def admin_args(self, data: Path) -> list[str]:
        return ["--data-dir", str(data), "use-hsm", "--module", self.module, "--token", TOKEN]


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A SoftHSM2 token private to this test session (the module reads SOFTHSM2_CONF once
    per process, so every test of the session shares it; each uses its own label prefix)."""
    module = find_softhsm_module()
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        pytest.fail("SoftHSM2 is missing: run scripts/system-packages.sh (make check does)")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    subprocess.run(  # noqa: S603 - the test's own token
        [util, "--init-token", "--free", "--label", TOKEN, "--pin", USER_PIN, "--so-pin", "13579"],
        env=env,
        check=True,
        capture_output=True,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(conf))
        patch.setenv("SLS_CORE_PKCS11_PIN", USER_PIN)
        yield SoftHsm(module, conf)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """Token labels of one test: its own, so tests never see each other's keys."""
    return f"t{abs(hash(request.node.nodeid)) % 10**8}-"


def _answer(challenge: str) -> str:
    return ocra.compute(SUITE, SECRET, question=challenge, pin=PIN)


def _enroll(data: Path, users: int) -> SecureLogin:
    sls = SecureLogin.open(data, clock=ManualClock(NOW))
    for u in range(users):
        sls.create_user(f"user{u}")
        sls.enroll_device(f"user{u}", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    return sls


def _logs_in(sls: SecureLogin, username: str) -> bool:
    challenge = sls.issue_challenge(username)
    return sls.verify(username, challenge.token, _answer(challenge.challenge or "")).ok


def _key_ids_of_records(data: Path) -> set[str]:
    conn = sqlite3.connect(data / "sls.db")
    try:
        rows = conn.execute("SELECT secret FROM devices UNION ALL SELECT pin_hash FROM devices")
        return {MasterKeyRing.key_id_of(blob) for (blob,) in rows if blob is not None}
    finally:
        conn.close()


def _token_labels(softhsm: SoftHsm, prefix: str) -> dict[str, dict[str, bool]]:
    """Every secret key the token holds under ``prefix``, with its protection attributes."""
    import pkcs11

    custody = softhsm.custody(prefix)
    with custody._session() as session:
        found: dict[str, dict[str, bool]] = {}
        for key in session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY}):
            label = key[pkcs11.Attribute.LABEL]
            if label.startswith(prefix):
                found[label] = {
                    "sensitive": bool(key[pkcs11.Attribute.SENSITIVE]),
                    "extractable": bool(key[pkcs11.Attribute.EXTRACTABLE]),
                    "token": bool(key[pkcs11.Attribute.TOKEN]),
                }
        return found


def _move_into_token(softhsm: SoftHsm, data: Path, prefix: str) -> MasterKeyRing:
    key_file = data / "master-key.json"
    ring = MasterKeyRing.from_file(key_file).in_custody(softhsm.custody(prefix))
    ring.save(key_file)
    return ring


# -- the key file and the token ------------------------------------------------------------


def test_moving_keys_into_the_token_leaves_no_key_in_the_key_file(
    softhsm: SoftHsm, prefix: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _enroll(data, users=2).store.close()
    clear = MasterKeyRing.from_file(data / "master-key.json")
    raw = clear._keys["k1"]

    _move_into_token(softhsm, data, prefix)

    document = (data / "master-key.json").read_text()
    assert base64.b64encode(raw).decode() not in document
    assert raw.hex() not in document
    parsed = json.loads(document)
    assert parsed["provider"] == "pkcs11"
    assert parsed["pkcs11"]["token"] == TOKEN
    assert USER_PIN not in document  # the PIN comes from the environment only
    assert set(parsed["keys"]["k1"]) == {"label", "wrapped"}
    # The same keys, unwrapped by the token: every record opens without re-sealing.
    reopened = SecureLogin.open(data, clock=ManualClock(NOW))
    assert MasterKeyRing.from_file(data / "master-key.json").provider == "pkcs11"
    assert _logs_in(reopened, "user0")
    assert _logs_in(reopened, "user1")


def test_the_wrapping_keys_never_leave_the_token(
    softhsm: SoftHsm, prefix: str, tmp_path: Path
) -> None:
    import pkcs11
    import pkcs11.exceptions

    data = tmp_path / "data"
    _enroll(data, users=1).store.close()
    _move_into_token(softhsm, data, prefix)

    labels = _token_labels(softhsm, prefix)
    assert labels == {f"{prefix}k1": {"sensitive": True, "extractable": False, "token": True}}
    custody = softhsm.custody(prefix)
    with custody._session() as session:
        key = session.get_key(label=f"{prefix}k1", object_class=pkcs11.ObjectClass.SECRET_KEY)
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[pkcs11.Attribute.VALUE]


def test_a_copy_of_the_key_file_and_the_database_opens_nothing_without_the_pin(
    softhsm: SoftHsm, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    _enroll(data, users=1).store.close()
    _move_into_token(softhsm, data, prefix)

    monkeypatch.setenv("SLS_CORE_PKCS11_PIN", "9999")
    with pytest.raises(InvalidInputError) as refused:
        SecureLogin.open(data)
    assert refused.value.field == "pkcs11.pin"
    assert "refused the user PIN" in str(refused.value)
    assert "9999" not in str(refused.value)
    assert USER_PIN not in str(refused.value)

    monkeypatch.delenv("SLS_CORE_PKCS11_PIN")
    with pytest.raises(InvalidInputError) as no_pin:
        SecureLogin.open(data)
    assert no_pin.value.field == "pkcs11.pin"
    assert "$SLS_CORE_PKCS11_PIN" in str(no_pin.value)


def test_a_pin_file_must_be_owner_only(
    softhsm: SoftHsm, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLS_CORE_PKCS11_PIN")
    pin_file = tmp_path / "pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o644)
    custody = Pkcs11Custody(softhsm.module, TOKEN, pin_env=None, pin_file=str(pin_file))
    with pytest.raises(InvalidInputError) as loose:
        custody.new_key("k1")
    assert loose.value.field == "pkcs11.pin_file"
    assert "chmod 600" in str(loose.value)
    pin_file.chmod(0o600)
    key, entry = Pkcs11Custody(
        softhsm.module, TOKEN, pin_env=None, pin_file=str(pin_file), label_prefix=prefix
    ).new_key("k1")
    assert len(key) == 32
    assert entry["label"] == f"{prefix}k1"


def test_a_wrapped_key_altered_in_the_key_file_is_refused_by_name(
    softhsm: SoftHsm, prefix: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _enroll(data, users=1).store.close()
    _move_into_token(softhsm, data, prefix)
    key_file = data / "master-key.json"
    document = json.loads(key_file.read_text())
    wrapped = bytearray(base64.b64decode(document["keys"]["k1"]["wrapped"]))
    wrapped[5] ^= 1
    document["keys"]["k1"]["wrapped"] = base64.b64encode(bytes(wrapped)).decode()
    key_file.write_text(json.dumps(document))

    with pytest.raises(InvalidInputError) as refused:
        MasterKeyRing.from_file(key_file)
    assert refused.value.field == "keys.k1.wrapped"
    assert "refused to unwrap" in str(refused.value)


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"token": "no-such-token"}, "pkcs11.token", "no token labelled 'no-such-token'"),
        ({"module": "/nonexistent/libpkcs11.so"}, "pkcs11.module", "no PKCS#11 module"),
        ({"slot": 3}, "pkcs11.slot", "is not a setting"),
        ({"pin_env": "not a name"}, "pkcs11.pin_env", "environment variable name"),
        ({"module": 7}, "pkcs11.module", "non-empty string"),
    ],
)
def test_a_wrong_pkcs11_setting_names_the_field(
    softhsm: SoftHsm,
    prefix: str,
    tmp_path: Path,
    change: dict[str, object],
    field: str,
    rule: str,
) -> None:
    data = tmp_path / "data"
    _enroll(data, users=1).store.close()
    _move_into_token(softhsm, data, prefix)
    key_file = data / "master-key.json"
    document = json.loads(key_file.read_text())
    document["pkcs11"].update(change)
    key_file.write_text(json.dumps(document))

    with pytest.raises(InvalidInputError) as refused:
        MasterKeyRing.from_file(key_file)
    assert refused.value.field == field
    assert rule in str(refused.value)


def test_a_wrapping_key_missing_from_the_token_is_named(
    softhsm: SoftHsm, prefix: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _enroll(data, users=1).store.close()
    _move_into_token(softhsm, data, prefix)
    assert softhsm.custody(prefix).destroy({"k1": {"label": f"{prefix}k1"}}) == [f"{prefix}k1"]

    with pytest.raises(InvalidInputError) as refused:
        MasterKeyRing.from_file(data / "master-key.json")
    assert f"holds no wrapping key labelled '{prefix}k1'" in str(refused.value)


# -- rotation --------------------------------------------------------------------------------


def test_rotation_in_the_token_reseals_everything_and_destroys_the_retired_key(
    softhsm: SoftHsm, prefix: str, tmp_path: Path
) -> None:
    from sls_core import admin

    data = tmp_path / "data"
    _enroll(data, users=3).store.close()
    _move_into_token(softhsm, data, prefix)

    args = ["--data-dir", str(data), "rotate-master-key", "--new-key-id", "k2", "--quiet"]
    assert admin.main([*args, "--retire"]) == 0

    ring = MasterKeyRing.from_file(data / "master-key.json")
    assert ring.provider == "pkcs11"
    assert ring.key_ids == {"k2"}
    assert _key_ids_of_records(data) == {"k2"}
    assert set(_token_labels(softhsm, prefix)) == {f"{prefix}k2"}  # k1 destroyed in the token
    sls = SecureLogin.open(data, clock=ManualClock(NOW))
    assert all(_logs_in(sls, f"user{u}") for u in range(3))


def test_use_hsm_makes_the_first_key_in_the_token(
    softhsm: SoftHsm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sls_core import admin

    data = tmp_path / "data"
    # The default label prefix: a data dir of its own, and a key id no other test uses.
    assert admin.main([*softhsm.admin_args(data), "--key-id", "first"]) == 0
    assert "made in token" in capsys.readouterr().err
    assert MasterKeyRing.from_file(data / "master-key.json").key_ids == {"first"}
    sls = _enroll(data, users=1)
    assert _logs_in(sls, "user0")
    assert _key_ids_of_records(data) == {"first"}
    # A second move is refused (the keys are already in the token), naming the provider.
    with pytest.raises(SystemExit, match="already kept by pkcs11"):
        admin.main(softhsm.admin_args(data))


# -- a server on HSM-kept keys -----------------------------------------------------------------


def test_a_server_on_hsm_keys_serves_through_a_live_rotation_and_a_restart(
    softhsm: SoftHsm, prefix: str, tmp_path: Path
) -> None:
    """Two workers unwrap their keys through the token, follow a live rotation (they
    unwrap the new key when the key file changes) and start again on the new key alone."""
    from sls_core import admin
    from sls_core.client import SlsClient

    data = tmp_path / "data"
    sls = _enroll(data, users=2)
    sls.create_user("spare")  # enrollments during the rotation go to a user nobody logs in as
    sls.store.close()
    _move_into_token(softhsm, data, prefix)

    def log_in_everyone(address: str) -> None:
        with SlsClient(address) as client:
            for username in ("user0", "user1"):
                challenge = client.issue_challenge(username)
                answer = _answer(challenge.challenge or "")
                assert client.verify(username, challenge.token, answer).ok

    with spawn_server(data, "--workers", "2") as server, server.explained():
        log_in_everyone(server.address)
        args = ["--data-dir", str(data), "rotate-master-key", "--new-key-id", "k2", "--quiet"]
        assert admin.main(args) == 0
        with SlsClient(server.address) as client:  # every worker writes: it moves to k2
            deadline = time.monotonic() + 20
            while True:
                for _ in range(8):
                    client.enroll_device("spare", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
                if admin.main([*args, "--retire"]) == 0:
                    break
                assert time.monotonic() < deadline, "a worker never moved to k2"
        log_in_everyone(server.address)
        assert server.terminate() == 0
    assert MasterKeyRing.from_file(data / "master-key.json").key_ids == {"k2"}
    assert _key_ids_of_records(data) == {"k2"}
    with spawn_server(data) as restarted, restarted.explained():
        log_in_everyone(restarted.address)


def test_a_server_with_a_wrong_pin_exits_with_one_clear_line(
    softhsm: SoftHsm, prefix: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _enroll(data, users=1).store.close()
    _move_into_token(softhsm, data, prefix)
    env = dict(os.environ, SLS_CORE_PKCS11_PIN="0000")
    done = subprocess.run(  # noqa: S603 - our own server
        [sys.executable, "-m", "sls_core.server", "serve", "--data-dir", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "pkcs11.pin" in lines[0]
    assert "refused the user PIN" in lines[0]
    assert "0000" not in done.stderr
    assert USER_PIN not in done.stderr
