"""A small asyncio gRPC client for TorchServe's ``Predictions`` RPC, aimed at either server.

capserve answers TorchServe's ``org.pytorch.serve.grpc.inference.InferenceAPIsService`` on its
gRPC port, so one client with the same request bytes measures both.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from bench.schema import LoadRun

logger = logging.getLogger(__name__)


async def _drive(target: str, model: str, body: bytes, concurrency: int,
                 duration_s: float) -> tuple[list[float], int, float, str]:
    import grpc

    from serving.generated import torchserve_inference_pb2 as pb
    from serving.generated import torchserve_inference_pb2_grpc as pb_grpc

    request = pb.PredictionsRequest(model_name=model, input={"data": body})
    latencies: list[float] = []
    errors = 0
    first_error = ""
    options = [("grpc.max_receive_message_length", 64 * 2**20),
               ("grpc.max_send_message_length", 64 * 2**20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.InferenceAPIsServiceStub(channel)
        await stub.Predictions(request, timeout=60)  # connect + warm, not counted
        deadline = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal errors, first_error
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    await stub.Predictions(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    errors += 1
                    first_error = first_error or f"{exc.code().name}: {exc.details()}"
                    continue
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    if first_error:
        logger.warning("gRPC Predictions on %s: %d errors, first: %s", target, errors,
                       first_error)
    return latencies, errors, elapsed, first_error


def run(target: str, model: str, body: bytes, concurrency: int, duration_s: float,
        server: str) -> LoadRun:
    logger.info("grpc Predictions c=%d %.0fs -> %s", concurrency, duration_s, target)
    latencies, errors, elapsed, first_error = asyncio.run(
        _drive(target, model, body, concurrency, duration_s))
    lat = np.asarray(latencies) * 1e3 if latencies else np.asarray([float("nan")])
    p50, p90, p99 = (float(v) for v in np.percentile(lat, [50, 90, 99]))
    return LoadRun(server=server, model=model, client="grpc_asyncio",
                   endpoint="Predictions-grpc", concurrency=concurrency,
                   duration_s=round(elapsed, 3), requests=len(latencies) + errors,
                   errors=errors, throughput_rps=len(latencies) / elapsed,
                   p50_ms=p50, p90_ms=p90, p99_ms=p99, note=first_error[:300])
