"""Coalesced single Verify calls (server/coalescing.py): a call whose kind fails answers
with its error alone; the calls of other kinds in the same batch keep their verdicts
(which are committed)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from grpc_fixtures import CALL_TIMEOUT, Stubs
from sls_core import ocra
from sls_core.api.v1 import verification_pb2
from sls_core.clock import ManualClock
from sls_core.devices import DeviceType
from sls_core.errors import InvalidInputError
from sls_core.login import SecureLogin
from sls_core.server.coalescing import Attempt, SingleVerifier
from sls_core.server.interceptors import Caller
from sls_core.values import Access, LoginOutcome, Purpose

pytest_plugins = ["grpc_fixtures"]

SUITE = "OCRA-1:HOTP-SHA1-8:QN06-PSHA1"
SECRET = bytes(range(20))
PIN = "4711"


def test_a_kind_that_fails_answers_its_own_calls_only(tmp_path: Path) -> None:
    sls = SecureLogin.open(tmp_path / "d", clock=ManualClock(1_800_000_000.0))
    sls.create_user("alice")
    sls.enroll_device("alice", DeviceType.DSC_PLUS, secret=SECRET, pin=PIN)
    c = sls.issue_challenge("alice")
    answer = ocra.compute(SUITE, SECRET, question=c.challenge, pin=PIN)
    good = Attempt(
        "alice", c.token, answer, Access.TRADING, Purpose.LOGIN, None, Caller("gw-a", None, "1")
    )
    # A kind the domain refuses as a whole (here: a task on a login).
    bad = Attempt(
        "bob", None, "x", Access.TRADING, Purpose.LOGIN, "sometask", Caller("gw-b", None, "2")
    )
    domain = SimpleNamespace(
        max_batch_items=100,
        inline_max_items=0,
        executor=ThreadPoolExecutor(2),
        deadline=lambda context: None,
        phases=None,
    )

    def verify(
        method: str,
        callers: Any,
        u: Any,
        t: Any,
        r: Any,
        access: Any,
        purpose: Any,
        task: Any,
        *,
        wait: bool = True,
    ) -> Any:
        return sls.verify_batch(u, t, r, access=access, purpose=purpose, task=task, wait=wait)

    verifier = SingleVerifier(domain, verify)  # type: ignore[arg-type]

    async def both() -> list[Any]:
        verifier._busy = True  # a batch is out: both calls wait and then go together
        first = asyncio.ensure_future(verifier.verify(None, good))  # type: ignore[arg-type]
        second = asyncio.ensure_future(verifier.verify(None, bad))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        verifier._busy = False
        verifier._next()
        return await asyncio.gather(first, second, return_exceptions=True)

    verdict, error = asyncio.run(both())
    assert verdict[0] is LoginOutcome.OK
    assert isinstance(error, InvalidInputError)
    assert error.field == "task"


def test_a_verify_that_cannot_be_verified_is_refused_on_arrival(stubs: Stubs) -> None:
    request = verification_pb2.VerifyRequest(
        username="alice",
        token="t",  # noqa: S106 - not a secret, an opaque placeholder
        response="12345678",
        purpose=1,
        task="withdrawal",
    )
    with pytest.raises(grpc.RpcError) as refused:
        stubs.verification.Verify(request, timeout=CALL_TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("task: ")
