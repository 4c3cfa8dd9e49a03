"""Overload on the real server: a model whose config sets no queue policy still has a bounded
queue, so a flood is answered at once with UNAVAILABLE instead of queueing without limit."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from grpc import aio

from serving.generated import grpc_service_pb2 as pb
from serving.generated import grpc_service_pb2_grpc as pb_grpc
from tests.helpers.server import ServerProcess, start_server
from tests.integration.conftest import SLOW_WIDTH, _slow

FLOOD = 900
BOUND = 64  # max_batch_size 4, 1 instance: 4 x 4 x 1 = 16, raised to the floor of 64
CHANNELS = 3  # each under the per-connection stream cap


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("overload") / "model_store"
    # ~20-40 ms per batch of 4, and no queue policy in its config: only the defaults bound it.
    _slow(store / "unbounded", 48, "max_batch_size: 4\ninstance_group [ { count: 1 } ]\n"
          "dynamic_batching { }\n")
    proc = start_server(store, tmp_path_factory.mktemp("overload-logs"))
    try:
        yield proc
    finally:
        proc.stop()


async def flood(url: str) -> list[tuple[str, float]]:
    x = np.ones((1, SLOW_WIDTH), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="unbounded", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=[1, SLOW_WIDTH])
    channels = [aio.insecure_channel(url) for _ in range(CHANNELS)]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
    try:
        for stub in stubs:
            await stub.ServerReady(pb.ServerReadyRequest())

        async def one(stub: pb_grpc.GRPCInferenceServiceStub) -> tuple[str, float]:
            start = time.perf_counter()
            try:
                await stub.ModelInfer(request, timeout=60)
                outcome = "ok"
            except aio.AioRpcError as exc:
                outcome = f"{exc.code().name}: {exc.details()}"
            return outcome, time.perf_counter() - start

        return await asyncio.gather(*[one(stubs[i % CHANNELS]) for i in range(FLOOD)])
    finally:
        for c in channels:
            await c.close()


def test_a_flood_past_the_default_queue_bound_is_refused_at_once(server: ServerProcess) -> None:
    results = asyncio.run(flood(server.grpc_url))
    outcomes = [o for o, _ in results]
    refused = [t for o, t in results if o.startswith("UNAVAILABLE")]
    assert {o for o in outcomes if o != "ok" and not o.startswith("UNAVAILABLE")} == set()
    assert refused, "nothing was refused: the queue is unbounded"
    assert all("Exceeds maximum queue size" in o for o in outcomes if o != "ok"), Counter(outcomes)
    assert outcomes.count("ok") >= BOUND
    # Refusals do not wait behind the queue (loose: two shared CPU cores).
    assert float(np.percentile(refused, 50)) < 2.0, sorted(refused)[len(refused) // 2]
