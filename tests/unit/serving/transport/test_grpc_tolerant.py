"""Bytes that are not a valid protobuf message get INVALID_ARGUMENT naming the message type on
every service of the gRPC port (grpc's own decoding answered UNKNOWN "Unexpected DecodeError")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc import aio

from serving.core.types import InferRequest, InferResponse
from serving.generated import grpc_service_pb2 as pb
from serving.generated import torchserve_inference_pb2_grpc as ts_grpc
from serving.generated import torchserve_management_pb2_grpc as mgmt_grpc
from serving.transport.auth import ModelControlGate
from serving.transport.grpc_service import create_grpc_server
from serving.transport.grpc_tolerant import add_service, tolerant_handler
from serving.transport.management_grpc import TorchServeManagement
from serving.transport.torchserve_grpc import TorchServeInference

# A length prefix far past the end of the message, and a field of wire type 7 (none exists).
LYING_LENGTH = b"\n\xff\xff\xff\xff\x0fxxxxxxxxxx"
TRUNCATED = pb.ModelInferRequest(model_name="m", id="2").SerializeToString()[:-1]


class AnsweringService:
    """Just enough of the core for the v2 servicer: live, and echoes inference ids."""

    def server_live(self) -> bool:
        return True

    @contextlib.contextmanager
    def admission(self) -> Iterator[None]:
        yield

    def refuse_if_full(self, name: str, version: str = "") -> None:
        """Never full."""

    async def infer(self, request: InferRequest) -> InferResponse:
        return InferResponse(request.model_name, "1", [], id=request.id)


@contextlib.asynccontextmanager
async def serving_port() -> AsyncIterator[aio.Channel]:
    server, _ = create_grpc_server(AnsweringService(), ModelControlGate(False, None),  # type: ignore[arg-type]
                                   4 << 20)
    add_service(ts_grpc.add_InferenceAPIsServiceServicer_to_server,
                TorchServeInference(None, None), server)  # type: ignore[arg-type]
    add_service(mgmt_grpc.add_ManagementAPIsServiceServicer_to_server,
                TorchServeManagement(None, None), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)


async def _status(channel: aio.Channel, method: str, data: bytes) -> tuple[grpc.StatusCode, str]:
    call = channel.unary_unary(method)  # raw bytes both ways
    try:
        await call(data, timeout=10)
    except aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


UNARY = [
    ("/inference.GRPCInferenceService/ModelInfer", "inference.ModelInferRequest"),
    ("/inference.GRPCInferenceService/ModelMetadata", "inference.ModelMetadataRequest"),
    ("/inference.GRPCInferenceService/ServerMetadata", "inference.ServerMetadataRequest"),
    ("/inference.GRPCInferenceService/ModelConfig", "inference.ModelConfigRequest"),
    ("/inference.GRPCInferenceService/RepositoryModelLoad", "inference.RepositoryModelLoadRequest"),
    ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
    ("/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions",
     "org.pytorch.serve.grpc.inference.PredictionsRequest"),
    ("/org.pytorch.serve.grpc.management.ManagementAPIsService/RegisterModel",
     "org.pytorch.serve.grpc.management.RegisterModelRequest"),
]


@pytest.mark.parametrize("data", [LYING_LENGTH, b"\x0f", TRUNCATED], ids=["lying", "wire7", "cut"])
def test_undecodable_requests_are_invalid_argument_on_every_service(data: bytes) -> None:
    async def scenario() -> None:
        async with serving_port() as channel:
            for method, message_type in UNARY:
                code, details = await _status(channel, method, data)
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
                assert details.startswith(f"request is not a valid {message_type}: "), details
            # A valid message still reaches the servicer.
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                                       response_deserializer=pb.ServerLiveResponse.FromString)
            assert (await live(b"", timeout=10)).live

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_stream_answers_what_came_before_a_bad_message_then_ends_invalid_argument() -> None:
    async def scenario() -> None:
        async with serving_port() as channel:
            call = channel.stream_stream(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                response_deserializer=pb.ModelStreamInferResponse.FromString)

            async def messages() -> AsyncIterator[bytes]:
                yield pb.ModelInferRequest(model_name="m", id="1").SerializeToString()
                yield TRUNCATED
                yield pb.ModelInferRequest(model_name="m", id="3").SerializeToString()

            stream = call(messages(), timeout=10)
            answers = [r.infer_response.id async for r in _until_error(stream)]
            assert answers == ["1"]
            assert await stream.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid inference.ModelInferRequest" in (await stream.details() or "")

    asyncio.run(asyncio.wait_for(scenario(), 30))


async def _until_error(stream: Any) -> AsyncIterator[Any]:
    with contextlib.suppress(aio.AioRpcError):
        async for response in stream:
            yield response


def test_a_sync_behaviour_is_refused_at_registration() -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: None, request_deserializer=pb.ServerLiveRequest.FromString)
    with pytest.raises(TypeError, match="must be an async servicer method"):
        tolerant_handler(handler)
