"""A measuring instrument: a gRPC server that answers every ``VerifyStream`` message at
once, every attempt OK, without any domain work (no store, no kernel, no audit).

``python benches/loadtest.py --modes open --server floor`` runs the same Poisson generator
and the same gateway client (``AsyncSlsClient``, one stream) against it instead of
``sls-core serve``: what is left of the latency is what gRPC and asyncio cost on this
machine, on both ends. ``benches/open_loop_ab.py`` alternates it with the real server in
one run, so the share of the p99 that is ours shows side by side. Never a server to use::

    python benches/stream_floor.py --listen 127.0.0.1:50099 [--work-us 300]

``--work-us`` spends that much CPU on the event loop per message before answering, as a
domain batch would: alternated with ``--floor-work-us`` variants of the load test, it shows
how the open-loop p99 grows with the server's fixed cost per message.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio

from sls_core.api.v1 import common_pb2, verification_pb2, verification_pb2_grpc


class FloorVerification(verification_pb2_grpc.VerificationServiceServicer):
    """VerifyStream only: each message answered OK for each attempt, in order, after
    ``work_us`` microseconds of busy CPU on the event loop (a stand-in for the domain's
    fixed cost per message: how the p99 grows with it)."""

    def __init__(self, work_us: float = 0.0) -> None:
        self.work = work_us / 1e6

    async def VerifyStream(  # noqa: N802 - the gRPC method name
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[verification_pb2.VerifyBatchResponse]:
        async for request in request_iterator:
            if self.work:
                until = time.perf_counter() + self.work
                while time.perf_counter() < until:
                    pass
            n = len(request.usernames)
            yield verification_pb2.VerifyBatchResponse(
                outcomes=[common_pb2.OUTCOME_OK] * n, device_ids=[0] * n
            )


async def serve(listen: str, work_us: float = 0.0) -> None:
    server = grpc.aio.server()
    servicer = FloorVerification(work_us)
    verification_pb2_grpc.add_VerificationServiceServicer_to_server(servicer, server)
    if not server.add_insecure_port(listen):
        raise SystemExit(f"--listen: cannot listen on {listen}")
    await server.start()
    await server.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT (loopback)")
    parser.add_argument(
        "--work-us", type=float, default=0.0, help="busy CPU per message, microseconds"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.work_us <= 100_000:
        parser.error("--work-us: between 0 and 100000")
    asyncio.run(serve(args.listen, args.work_us))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
