"""ModelStreamInfer under a client that sends faster than the model answers: the stream is
read only while fewer than ``stream_max_inflight`` requests are open (backpressure)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from serving.core.shm import SharedMemoryRegistry
from serving.core.types import InferRequest, InferResponse
from serving.generated import grpc_service_pb2 as pb
from serving.transport.auth import ModelControlGate
from serving.transport.grpc_service import InferenceServicer


class HeldService:
    """Answers every request once ``release`` is set; counts requests inside ``infer``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.inside = 0
        self.most_inside = 0

    @contextlib.contextmanager
    def admission(self, relayed: bool = False) -> Iterator[None]:
        yield

    shared_memory = SharedMemoryRegistry()  # none registered: requests carry their data

    def refuse_if_full(self, name: str, version: str = "") -> None:
        """Never full."""

    async def infer(self, request: InferRequest) -> InferResponse:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        await self.release.wait()
        self.inside -= 1
        return InferResponse(request.model_name, "1", [], id=request.id)


def test_a_stream_is_not_read_past_its_inflight_cap() -> None:
    async def body() -> None:
        service = HeldService()
        servicer = InferenceServicer(service, ModelControlGate(False, None),  # type: ignore[arg-type]
                                     stream_max_inflight=3)
        pulled = 0

        async def requests() -> AsyncIterator[pb.ModelInferRequest]:
            nonlocal pulled
            for i in range(50):
                pulled += 1
                yield pb.ModelInferRequest(model_name="m", id=str(i))

        answers: list[str] = []

        async def consume() -> None:
            stream: Any = servicer.ModelStreamInfer(requests(), None)  # type: ignore[arg-type]
            async for response in stream:
                assert not response.error_message, response.error_message
                answers.append(response.infer_response.id)

        consumer = asyncio.ensure_future(consume())
        await asyncio.sleep(0.1)
        assert service.most_inside == 3 and pulled == 3, "the stream was read past the cap"
        service.release.set()
        await asyncio.wait_for(consumer, 10)
        assert sorted(answers, key=int) == [str(i) for i in range(50)]
        assert service.most_inside <= 3

    asyncio.run(asyncio.wait_for(body(), 20))
