"""HOTP and TOTP verification benchmarks: sls_core vs pyotp and cryptography.

6 digits, SHA-1, 20-byte keys, window 0 (one HMAC per item; cryptography's TOTP has no
window, pyotp's default is 0). Groups, so each comparison reads side by side:

* ``{hotp,totp}-verify-scalar``: one ``hotp.verify`` / ``totp.verify`` call against one
  pyotp and one cryptography verification (peer object built in the call, as a server
  verifying a different user each time would).
* ``{hotp,totp}-verify-batch-{1,1k,100k,1M}``: ``verify_batch`` with a fresh key per item
  on one thread and on every core, against the peers looping over the same items. At
  large sizes the peers run only the first ``workloads.OTP_PEER_SAMPLE`` items: read their
  per-item rate in the summary, not their round time.

Every benchmark asserts what it computed (outcomes, matched counters or time steps, the
peers' booleans), so the smoke run (benchmarks disabled, batches capped) is a test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sls_core import hotp, totp
from workloads import (
    BATCH_SIZES,
    OTP_PEER_SAMPLE,
    THREADS,
    TOTP_STEP,
    OtpSample,
    OtpWorkload,
    make_otp,
)

KINDS = ("hotp", "totp")
PEERS = ("pyotp", "cryptography")


@pytest.fixture(
    scope="module",
    params=[(kind, size_id) for kind in KINDS for size_id in BATCH_SIZES],
    ids=lambda param: "-".join(param),
)
def batch(request: pytest.FixtureRequest, batch_items: Callable[[int], int]) -> OtpWorkload:
    """One workload per (kind, size), built once for this module."""
    kind, size_id = request.param
    return make_otp(kind, batch_items(BATCH_SIZES[size_id]))


@pytest.fixture(scope="module", params=KINDS)
def scalar(request: pytest.FixtureRequest) -> OtpSample:
    """A few items as Python objects; item 0 has a right code, item 63 a wrong one."""
    return make_otp(request.param, 64).sample(64)


def _group(request: pytest.FixtureRequest) -> str:
    kind, size_id = request.node.callspec.params["batch"]
    return f"{kind}-verify-batch-{size_id}"


def test_otp_scalar_sls_core(measure: Callable[..., Any], scalar: OtpSample) -> None:
    key, code, factor = scalar.keys[0], scalar.codes[0], scalar.factors[0]
    if scalar.kind == "hotp":
        matched = measure("hotp-verify-scalar", 1, hotp.verify, key, code, factor)
        assert matched == factor
    else:
        matched = measure(
            "totp-verify-scalar", 1, totp.verify, key, code, factor, step=TOTP_STEP, window=0
        )
        assert matched == factor // TOTP_STEP
    assert scalar.sls_core() == scalar.accepted


@pytest.mark.parametrize("peer", PEERS)
def test_otp_scalar_peer(measure: Callable[..., Any], scalar: OtpSample, peer: str) -> None:
    check, args = scalar.peer_call(peer, 0)
    accepted = measure(f"{scalar.kind}-verify-scalar", 1, check, *args)
    assert accepted is True
    assert getattr(scalar, peer)() == scalar.accepted


@pytest.mark.parametrize("threads", list(THREADS))
def test_otp_batch_sls_core(
    measure: Callable[..., Any], batch: OtpWorkload, threads: str, request: pytest.FixtureRequest
) -> None:
    result = measure(_group(request), batch.n, batch.verify, THREADS[threads])
    np.testing.assert_array_equal(result.outcomes, batch.expected)
    np.testing.assert_array_equal(result.matched, batch.matched)


@pytest.mark.parametrize("peer", PEERS)
def test_otp_batch_peer_sample(
    measure: Callable[..., Any], batch: OtpWorkload, peer: str, request: pytest.FixtureRequest
) -> None:
    sample = batch.sample(OTP_PEER_SAMPLE)
    accepted = measure(_group(request), len(sample), getattr(sample, peer))
    assert accepted == sample.accepted
