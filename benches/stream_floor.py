"""A measuring instrument: a gRPC server that answers every ``VerifyStream`` message at
once, every attempt OK, without any domain work (no store, no kernel, no audit).

``python benches/loadtest.py --modes open --server floor`` runs the same Poisson generator
and the same gateway client (``AsyncSlsClient``, one stream) against it instead of
``sls-core serve``: what is left of the latency is what gRPC and asyncio cost on this
machine, on both ends. ``benches/open_loop_ab.py`` alternates it with the real server in
one run, so the share of the p99 that is ours shows side by side. Never a server to use::

    python benches/stream_floor.py --listen 127.0.0.1:50099
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio

from sls_core.api.v1 import common_pb2, verification_pb2, verification_pb2_grpc


class FloorVerification(verification_pb2_grpc.VerificationServiceServicer):
    """VerifyStream only: each message answered OK for each attempt, in order."""

    async def VerifyStream(  # noqa: N802 - the gRPC method name
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[verification_pb2.VerifyBatchResponse]:
        async for request in request_iterator:
            n = len(request.usernames)
            yield verification_pb2.VerifyBatchResponse(
                outcomes=[common_pb2.OUTCOME_OK] * n, device_ids=[0] * n
            )


async def serve(listen: str) -> None:
    server = grpc.aio.server()
    verification_pb2_grpc.add_VerificationServiceServicer_to_server(FloorVerification(), server)
    if not server.add_insecure_port(listen):
        raise SystemExit(f"--listen: cannot listen on {listen}")
    await server.start()
    await server.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT (loopback)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
