"""sls_core.client.AsyncSlsClient against the in-process fake server: micro-batching of
concurrent tasks, retries, deadlines, errors, and the same answers as the blocking client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import pytest

from client_fakes import BOOM_USER, BYE_USER, SLOW_SECONDS, SLOW_USER, FakeSls, expected, serve
from sls_core.client import (
    AsyncSlsClient,
    ClientClosedError,
    ClientRefusedError,
    DeadlineExceededError,
    PermissionDeniedError,
    RetryPolicy,
    SlsClient,
    UnavailableError,
)
from sls_core.errors import InvalidInputError, InvalidInputTypeError
from sls_core.values import APPROVE, Access, DeviceType, Identity, LoginOutcome, Verdict

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeSls, str]]:
    with serve() as running:
        yield running


@pytest.fixture
def fake(server: tuple[FakeSls, str]) -> FakeSls:
    state = server[0]
    with state.lock:
        state.calls.clear()
        state.requests.clear()
        state.failures.clear()
    return state


@pytest.fixture
def target(server: tuple[FakeSls, str], fake: FakeSls) -> str:
    return server[1]


def run(target: str, body: Callable[[AsyncSlsClient], Awaitable[T]], **settings: Any) -> T:
    """Runs ``body`` with a client made (and closed) inside a fresh event loop."""

    async def main() -> T:
        async with AsyncSlsClient(target, **settings) as client:
            return await body(client)

    return asyncio.run(main())


async def verify_all(client: AsyncSlsClient, count: int, **kwargs: Any) -> list[Any]:
    attempts = [client.verify(f"user{i}", f"tok{i}", f"{i:08d}", **kwargs) for i in range(count)]
    return list(await asyncio.gather(*attempts, return_exceptions=True))


def test_concurrent_tasks_are_coalesced_in_order(fake: FakeSls, target: str) -> None:
    results = run(target, lambda c: verify_all(c, 200), linger=0.02)
    assert [(r.outcome, r.device_id) for r in results] == [
        (expected(f"{i:08d}")[0], expected(f"{i:08d}")[1] or None) for i in range(200)
    ]
    batches = fake.batches()
    assert fake.calls["Verify"] == 0
    assert len(batches) <= 3
    # tasks reach verify() in creation order, so the batches keep it
    assert [u for b in batches for u in b.usernames] == [f"user{i}" for i in range(200)]
    assert [r for b in batches for r in b.responses] == [f"{i:08d}" for i in range(200)]


def test_max_batch_splits_without_waiting_for_the_linger(fake: FakeSls, target: str) -> None:
    started = time.monotonic()
    results = run(target, lambda c: verify_all(c, 100), linger=5.0, max_batch=25)
    assert time.monotonic() - started < 2.0
    assert all(isinstance(r, Verdict) for r in results)
    assert [len(b.usernames) for b in fake.batches()] == [25, 25, 25, 25]


def test_linger_zero_sends_plain_verify_calls(fake: FakeSls, target: str) -> None:
    results = run(target, lambda c: verify_all(c, 10), linger=0)
    assert [r.outcome for r in results] == [expected(f"{i:08d}")[0] for i in range(10)]
    assert (fake.calls["Verify"], fake.calls["VerifyBatch"]) == (10, 0)


def test_a_failing_batch_fails_its_own_callers_only(fake: FakeSls, target: str) -> None:
    async def body(client: AsyncSlsClient) -> tuple[list[Any], Verdict]:
        attempts = [
            client.verify(
                BOOM_USER if i == 1 else f"user{i}",
                "tok",
                f"{i:08d}",
                access=Access.PORTAL if i % 2 else Access.TRADING,
            )
            for i in range(10)
        ]
        results = list(await asyncio.gather(*attempts, return_exceptions=True))
        return results, await client.verify("user3", "tok", "00000003")

    results, after = run(target, body, linger=0.02)
    for i, result in enumerate(results):
        if i % 2:
            assert isinstance(result, InvalidInputError)
            assert result.field == "usernames"
        else:
            assert result.outcome is expected(f"{i:08d}")[0]
    assert after.outcome is expected("00000003")[0]


def test_verify_is_never_retried(fake: FakeSls, target: str) -> None:
    fake.fail_next("VerifyBatch", grpc.StatusCode.UNAVAILABLE, "restarting", times=3)
    results = run(target, lambda c: verify_all(c, 4), linger=0.02, retry=FAST_RETRY)
    assert all(isinstance(r, UnavailableError) for r in results)
    assert fake.calls["VerifyBatch"] == 1

    fake.fail_next("Verify", grpc.StatusCode.UNAVAILABLE, "restarting", times=3)
    with pytest.raises(UnavailableError):
        run(target, lambda c: c.verify("alice", "tok", "12345678"), linger=0, retry=FAST_RETRY)
    assert fake.calls["Verify"] == 1


def test_read_only_calls_are_retried(fake: FakeSls, target: str) -> None:
    fake.fail_next("GetPushStatus", grpc.StatusCode.UNAVAILABLE, "restarting", times=2)
    assert run(target, lambda c: c.push_status(55), retry=FAST_RETRY) == "pending"
    assert fake.calls["GetPushStatus"] == 3
    fake.fail_next("ListDevices", grpc.StatusCode.UNAVAILABLE, "restarting", times=2)
    with pytest.raises(UnavailableError):
        run(target, lambda c: c.list_devices("alice"), retry=None)
    assert fake.calls["ListDevices"] == 1


def test_close_flushes_waiting_attempts(fake: FakeSls, target: str) -> None:
    async def main() -> tuple[list[Verdict], float]:
        client = AsyncSlsClient(target, linger=30.0)
        tasks = [
            asyncio.ensure_future(client.verify(f"user{i}", "tok", f"{i:08d}")) for i in range(5)
        ]
        await asyncio.sleep(0.05)  # every task is now waiting in the batcher
        started = time.monotonic()
        await client.close()
        results = list(await asyncio.gather(*tasks))
        elapsed = time.monotonic() - started
        with pytest.raises(ClientClosedError):
            await client.verify("user1", "tok", "00000001")
        await client.close()  # idempotent
        return results, elapsed

    results, elapsed = asyncio.run(main())
    assert [r.outcome for r in results] == [expected(f"{i:08d}")[0] for i in range(5)]
    assert elapsed < 2.0
    assert [len(b.usernames) for b in fake.batches()] == [5]


@pytest.mark.parametrize("linger", [0.0, 0.01])
def test_a_deadline_maps_to_deadline_exceeded(target: str, linger: float) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        run(target, lambda c: c.verify(SLOW_USER, "tok", "12345678", timeout=0.2), linger=linger)
    assert time.monotonic() - started < 0.9
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_cancelled_caller_does_not_disturb_its_batch(fake: FakeSls, target: str) -> None:
    async def body(client: AsyncSlsClient) -> list[Any]:
        attempts = [
            asyncio.ensure_future(client.verify(f"user{i}", "tok", f"{i:08d}")) for i in range(6)
        ]
        await asyncio.sleep(0)
        attempts[2].cancel()
        return list(await asyncio.gather(*attempts, return_exceptions=True))

    results = run(target, body, linger=0.02)
    assert isinstance(results[2], asyncio.CancelledError)
    for i in (0, 1, 3, 4, 5):
        assert results[i].outcome is expected(f"{i:08d}")[0]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInputError),
        (grpc.StatusCode.FAILED_PRECONDITION, ClientRefusedError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
    ],
)
def test_statuses_map_to_sls_errors(
    fake: FakeSls, target: str, code: grpc.StatusCode, error: type[Exception]
) -> None:
    fake.fail_next("EnrollDevice", code, "pin: must be 4 to 6 characters")
    with pytest.raises(error) as caught:
        run(target, lambda c: c.enroll_device("alice", DeviceType.IB_KEY, pin="4711"))
    assert "4711" not in str(caught.value)


def test_bad_input_is_refused_before_sending(fake: FakeSls, target: str) -> None:
    with pytest.raises(InvalidInputTypeError) as caught:
        run(target, lambda c: c.verify("alice", "tok", 98765432))  # type: ignore[arg-type]
    assert "98765432" not in str(caught.value)
    assert fake.calls["VerifyBatch"] == 0


# Each call with its arguments: the asyncio client must answer exactly as the blocking one.
CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("issue_challenge", ("alice",), {"device_id": 7}),
    ("issue_challenge", ("card",), {}),
    ("verify", ("alice", "tok", "00000013"), {}),
    ("verify_batch", (["a", "b"], ["t", None], ["00000001", "x"]), {}),
    ("create_activation", ("alice",), {}),
    (
        "complete_activation",
        (),
        {"app_public": b"A" * 32, "push_public": b"P" * 32, "manual_code": "K7QM"},
    ),
    ("send_sms_activation", ("alice",), {}),
    ("recover", ("alice", "a1b2"), {"app_public": b"A" * 32, "push_public": b"P" * 32}),
    ("create_push", ("alice",), {"device_id": 8}),
    ("list_pending_pushes", (b"P" * 32,), {}),
    ("answer_push", (55, APPROVE, b"sig"), {}),
    ("push_status", (55,), {}),
    ("wait_push", (55,), {"wait": 0.1}),
    ("wait_push", (55,), {"wait": timedelta(milliseconds=100)}),
    ("create_user", ("alice", Identity(citizenship="CH")), {}),
    ("enroll_device", ("alice", DeviceType.SMS), {"phone": "+41790000000"}),
    ("list_devices", ("alice",), {}),
    ("choose_device", ("alice", 7), {}),
    ("share_device", ("alice", 7, "bob"), {}),
    ("revoke_device", ("alice", 7), {}),
    ("reactivate_device", ("alice", 7), {}),
    ("issue_temporary_passcode", ("alice",), {}),
    ("issue_online_card", ("alice",), {}),
    ("set_opt_out", ("alice", False), {}),
    ("import_device", ("alice", DeviceType.PLATINUM), {"secret": b"K" * 20}),
    ("approve_sharing", (5,), {}),
    ("portal_issue_online_card", ("alice",), {}),
    (
        "request_sharing",
        ("alice", 7, "alice2"),
        {"token": "tok-7", "response": "123456", "needs_approval": True},
    ),
    ("cancel_sharing", (5,), {"username": "alice"}),
    ("portal_set_opt_out", ("alice", True), {}),
    ("portal_choose_device", ("alice", 8), {}),
    ("list_own_devices", ("alice",), {}),
    ("security_level", ("alice",), {}),
    ("withdrawal_limits", ("rich",), {}),
    ("session_length", ("pin",), {}),
    ("lockout_status", ("alice",), {}),
    ("record_password_failure", ("alice",), {}),
    ("unlock", ("alice",), {}),
    ("server_status", (), {}),
]


def test_every_call_answers_as_the_blocking_client_does(fake: FakeSls, target: str) -> None:
    with SlsClient(target, linger=0) as client:
        want = [getattr(client, name)(*args, **kwargs) for name, args, kwargs in CALLS]

    async def body(aclient: AsyncSlsClient) -> list[Any]:
        return [await getattr(aclient, name)(*args, **kwargs) for name, args, kwargs in CALLS]

    got = run(target, body, linger=0.001)
    for (name, _, _), mine, theirs in zip(CALLS, got, want, strict=True):
        if name == "verify_batch":
            assert mine.outcomes.tolist() == theirs.outcomes.tolist()
            assert mine.device_ids.tolist() == theirs.device_ids.tolist()
        else:
            assert mine == theirs, name
    assert got[2].outcome is LoginOutcome(13)
    # public names match one to one
    public = {n for n in dir(SlsClient) if not n.startswith("_")}
    assert public == {n for n in dir(AsyncSlsClient) if not n.startswith("_")}
    assert {name for name, _, _ in CALLS} == public - {"close", "wait_ready"}


def test_an_idle_async_client_sends_at_once_instead_of_lingering(
    fake: FakeSls, target: str
) -> None:
    """A free in-flight slot: the batch leaves on the loop's next turn, not after 30 s."""

    async def body(client: AsyncSlsClient) -> list[Verdict]:
        return [await client.verify(f"user{i}", "tok", f"{i:08d}") for i in range(3)]

    results = run(target, body, linger=30.0, max_in_flight=1, timeout=5.0)
    assert [r.outcome for r in results] == [expected(f"{i:08d}")[0] for i in range(3)]
    assert [len(b.usernames) for b in fake.batches()] == [1, 1, 1]


def test_tasks_wait_for_a_free_slot_then_leave_together(fake: FakeSls, target: str) -> None:
    async def body(client: AsyncSlsClient) -> tuple[Verdict, list[Any]]:
        slow = asyncio.ensure_future(client.verify(SLOW_USER, "tok", "00000000"))
        while not fake.batches():
            await asyncio.sleep(0.005)
        waiting = []
        for i in range(1, 7):  # arriving one by one while the slow batch is out
            waiting.append(asyncio.ensure_future(client.verify(f"user{i}", "tok", f"{i:08d}")))
            await asyncio.sleep(0.01)
        return await slow, list(await asyncio.gather(*waiting))

    slow, results = run(target, body, linger=30.0, max_in_flight=1, timeout=10.0)
    assert slow.outcome is expected("00000000")[0]
    assert [r.outcome for r in results] == [expected(f"{i:08d}")[0] for i in range(1, 7)]
    assert [len(b.usernames) for b in fake.batches()] == [1, 6]


# --- micro-batches over one VerifyStream (stream=True) ------------------------------------


def test_stream_mode_sends_batches_as_messages_of_one_stream(fake: FakeSls, target: str) -> None:
    async def body(client: AsyncSlsClient) -> list[Any]:
        first = await verify_all(client, 50)
        second = await verify_all(client, 50)
        return first + second

    results = run(target, body, stream=True)
    assert [(r.outcome, r.device_id) for r in results] == [
        (expected(f"{i % 50:08d}")[0], expected(f"{i % 50:08d}")[1] or None) for i in range(100)
    ]
    assert fake.calls["VerifyBatch"] == 0
    assert fake.calls["VerifyStream.open"] == 1  # one stream for every batch
    sent = fake.requests["VerifyStream"]
    assert [u for m in sent for u in m.usernames] == [f"user{i % 50}" for i in range(100)]


def test_stream_mode_keeps_the_answers_in_order_with_batches_in_flight(
    fake: FakeSls, target: str
) -> None:
    """max_in_flight=3: a slow batch first, two behind it on the same stream; each caller
    still gets its own answer."""

    async def body(client: AsyncSlsClient) -> list[Any]:
        slow = asyncio.ensure_future(client.verify(SLOW_USER, "tok", "00000000"))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(client.verify(f"user{i}", "t", f"{i:08d}")) for i in (1, 2)]
        return list(await asyncio.gather(slow, *rest))

    results = run(target, body, stream=True, max_in_flight=3, timeout=10.0)
    assert [r.outcome for r in results] == [expected(f"{i:08d}")[0] for i in (0, 1, 2)]
    assert fake.calls["VerifyStream.open"] == 1


def test_a_failed_stream_fails_its_batches_only_and_the_next_opens_a_new_one(
    fake: FakeSls, target: str
) -> None:
    async def body(client: AsyncSlsClient) -> tuple[list[Any], Verdict, list[Any], Verdict]:
        boom = await asyncio.gather(
            client.verify(BOOM_USER, "tok", "00000001"),
            client.verify("user2", "tok", "00000002"),
            return_exceptions=True,
        )
        after_boom = await client.verify("user3", "tok", "00000003")
        bye = await asyncio.gather(
            client.verify(BYE_USER, "tok", "00000004"), return_exceptions=True
        )
        after_bye = await client.verify("user5", "tok", "00000005")
        return boom, after_boom, bye, after_bye

    boom, after_boom, bye, after_bye = run(target, body, stream=True)
    assert all(isinstance(r, InvalidInputError) for r in boom)  # the batch they shared
    assert isinstance(bye[0], UnavailableError)  # the server ended the stream
    assert after_boom.outcome is expected("00000003")[0]
    assert after_bye.outcome is expected("00000005")[0]
    assert fake.calls["VerifyStream.open"] == 3


def test_stream_mode_close_waits_for_the_batches_in_flight(fake: FakeSls, target: str) -> None:
    async def main() -> Verdict:
        client = AsyncSlsClient(target, stream=True, timeout=10.0)
        slow = asyncio.ensure_future(client.verify(SLOW_USER, "tok", "00000000"))
        await asyncio.sleep(0.05)
        await client.close()
        return await slow

    assert asyncio.run(main()).outcome is expected("00000000")[0]


def test_async_stream_mode_keeps_each_batchs_deadline(fake: FakeSls, target: str) -> None:
    async def body(client: AsyncSlsClient) -> tuple[Any, float, Verdict]:
        started = time.monotonic()
        late = await asyncio.gather(
            client.verify(SLOW_USER, "tok", "00000000", timeout=0.2), return_exceptions=True
        )
        took = time.monotonic() - started
        return late[0], took, await client.verify("user1", "tok", "00000001")

    late, took, after = run(target, body, stream=True, timeout=5.0)
    assert isinstance(late, DeadlineExceededError)
    assert took < SLOW_SECONDS
    assert after.outcome is expected("00000001")[0]
    assert fake.calls["VerifyStream.open"] == 2


def test_a_late_batch_behind_an_older_one_fails_alone(fake: FakeSls, target: str) -> None:
    """Stream mode, two batches in flight: the second one's callers give up first; only
    they fail, and the older batch, still within its time, gets its answer."""

    async def body(client: AsyncSlsClient) -> list[Any]:
        older = asyncio.ensure_future(client.verify(SLOW_USER, "tok", "00000000", timeout=5.0))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(client.verify("user1", "tok", "00000001", timeout=0.1))
        return list(await asyncio.gather(older, late, return_exceptions=True))

    older, late = run(target, body, stream=True, max_in_flight=2, timeout=5.0)
    assert isinstance(late, DeadlineExceededError)
    assert older.outcome is expected("00000000")[0]
    assert fake.calls["VerifyStream.open"] == 1
