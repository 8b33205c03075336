"""The gRPC API: the committed generated code matches proto/sls/v1, and the proto enums
match the domain's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sls_core.api.v1 import common_pb2
from sls_core.devices import DeviceState, DeviceType
from sls_core.outcome import LoginOutcome

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date_with_the_proto_files() -> None:
    check = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_outcome_enum_matches_the_domain_shifted_by_one() -> None:
    for outcome in LoginOutcome:
        assert common_pb2.Outcome.Value(f"OUTCOME_{outcome.name}") == outcome.value + 1
    assert len(common_pb2.Outcome.keys()) == len(LoginOutcome) + 1


def test_device_enums_match_the_domain() -> None:
    for device_type in DeviceType:
        assert common_pb2.DeviceType.Value(f"DEVICE_TYPE_{device_type.name}") > 0
    for state in DeviceState:
        assert common_pb2.DeviceState.Value(f"DEVICE_STATE_{state.name}") > 0
