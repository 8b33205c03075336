"""OCRA verification benchmarks (suite ``OCRA-1:HOTP-SHA1-8:QN06-PSHA1``): sls_core vs oath.

Groups, so each comparison reads side by side:

* ``ocra-verify-scalar``: one ``ocra.verify`` call (with the stored PIN hash, and with the
  PIN) against one ``oath`` ``OcraSuite.accept`` call (which hashes the PIN itself).
* ``ocra-verify-batch-{1,1k,100k,1M}``: ``ocra.verify_batch`` with a fresh key per item
  and with a prepared ``KeyTable`` + ``key_index``, on one thread and on every core,
  against oath looping over the same items. At large sizes oath runs only the first
  ``workloads.OATH_SAMPLE`` items (about 10 us each, 1M would take 10 s a round): read its
  per-item rate in the summary, not its round time.

Every benchmark asserts what it computed (right answers accepted, the wrong ones refused),
so the smoke run (benchmarks disabled, batches capped) is a test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sls_core import ocra
from workloads import (
    BATCH_SIZES,
    OATH_SAMPLE,
    OATH_SUITE,
    SUITE,
    THREADS,
    OcraSample,
    OcraWorkload,
    make_ocra,
)

SCALAR_GROUP = "ocra-verify-scalar"


@pytest.fixture(scope="module", params=list(BATCH_SIZES))
def batch(request: pytest.FixtureRequest, batch_items: Callable[[int], int]) -> OcraWorkload:
    """One workload per size, built once for this module."""
    return make_ocra(batch_items(BATCH_SIZES[request.param]))


@pytest.fixture(scope="module")
def scalar() -> OcraSample:
    """A few items as Python objects; item 0 has a right answer, item 63 a wrong one."""
    return make_ocra(64).sample(64)


def _group(request: pytest.FixtureRequest) -> str:
    return f"ocra-verify-batch-{request.node.callspec.params['batch']}"


def test_ocra_scalar_sls_core_pin_hash(measure: Callable[..., Any], scalar: OcraSample) -> None:
    key, question, response, pin_hash = (
        scalar.keys[0],
        scalar.questions[0],
        scalar.responses[0],
        scalar.pin_hashes[0],
    )
    ok = measure(
        SCALAR_GROUP, 1, ocra.verify, SUITE, key, response, question=question, pin_hash=pin_hash
    )
    assert ok is True
    assert scalar.sls_core_pin_hash() == scalar.accepted


def test_ocra_scalar_sls_core_pin(measure: Callable[..., Any], scalar: OcraSample) -> None:
    key, question, response, pin = (
        scalar.keys[0],
        scalar.questions[0],
        scalar.responses[0],
        scalar.pins[0],
    )
    ok = measure(SCALAR_GROUP, 1, ocra.verify, SUITE, key, response, question=question, pin=pin)
    assert ok is True
    assert scalar.sls_core_pin() == scalar.accepted


def test_ocra_scalar_oath(measure: Callable[..., Any], scalar: OcraSample) -> None:
    key, question, response, pin = (
        scalar.keys[0],
        scalar.questions[0],
        scalar.responses[0],
        scalar.pins[0],
    )
    ok = measure(SCALAR_GROUP, 1, OATH_SUITE.accept, response, key, Q=question, P=pin)
    assert ok is True
    assert scalar.oath() == scalar.accepted


@pytest.mark.parametrize("threads", list(THREADS))
def test_ocra_batch_fresh_keys(
    measure: Callable[..., Any],
    batch: OcraWorkload,
    threads: str,
    request: pytest.FixtureRequest,
) -> None:
    outcomes = measure(_group(request), batch.n, batch.verify_fresh, THREADS[threads])
    np.testing.assert_array_equal(outcomes, batch.expected)


@pytest.mark.parametrize("threads", list(THREADS))
def test_ocra_batch_prepared_keytable(
    measure: Callable[..., Any],
    batch: OcraWorkload,
    threads: str,
    request: pytest.FixtureRequest,
) -> None:
    outcomes = measure(_group(request), batch.n, batch.verify_prepared, THREADS[threads])
    np.testing.assert_array_equal(outcomes, batch.expected)


def test_ocra_batch_oath_sample(
    measure: Callable[..., Any], batch: OcraWorkload, request: pytest.FixtureRequest
) -> None:
    sample = batch.sample(OATH_SAMPLE)
    accepted = measure(_group(request), len(sample), sample.oath)
    assert accepted == sample.accepted
