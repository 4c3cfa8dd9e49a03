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

from serving.core.shm import SharedMemoryRegistry
from serving.core.types import InferRequest, InferResponse
from serving.generated import grpc_service_pb2 as pb
from serving.generated import torchserve_inference_pb2_grpc as ts_grpc
from serving.generated import torchserve_management_pb2_grpc as mgmt_grpc
from serving.transport.auth import ModelControlGate
from serving.transport.grpc_service import create_grpc_server
from serving.transport.grpc_tolerant import add_service, tolerant_handler
from serving.transport.torchserve.inference_grpc import TorchServeInference
from serving.transport.torchserve.management_grpc import TorchServeManagement

# A length prefix far past the end of the message, and a field of wire type 7 (none exists).
LYING_LENGTH = b"\n\xff\xff\xff\xff\x0fxxxxxxxxxx"
TRUNCATED = pb.ModelInferRequest(model_name="m", id="2").SerializeToString()[:-1]


class AnsweringService:
    """Just enough of the core for the v2 servicer: live, and echoes inference ids."""

    def server_live(self) -> bool:
        return True

    @contextlib.contextmanager
    def admission(self, relayed: bool = False) -> Iterator[None]:
        yield

    shared_memory = SharedMemoryRegistry()  # none registered: requests carry their data

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


def test_a_bad_message_in_model_stream_infer_is_one_failed_request_and_the_stream_goes_on() -> None:
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
            answers = [r async for r in stream]
            assert await stream.code() == grpc.StatusCode.OK
            assert sorted(r.infer_response.id for r in answers) == ["", "1", "3"]
            errors = [r.error_message for r in answers if r.error_message]
            assert len(errors) == 1
            assert errors[0].startswith("request is not a valid inference.ModelInferRequest: ")

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_stream_predictions2_answers_a_bad_message_with_its_status_and_goes_on() -> None:
    from serving.generated import torchserve_inference_pb2 as ts

    async def scenario() -> None:
        async with serving_port() as channel:
            call = channel.stream_stream(
                "/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions2",
                response_deserializer=ts.PredictionResponse.FromString)
            stream = call(iter([LYING_LENGTH, LYING_LENGTH]), timeout=10)
            answers = [r async for r in stream]
            assert await stream.code() == grpc.StatusCode.OK
            assert [r.status.code for r in answers] == [grpc.StatusCode.INVALID_ARGUMENT.value[0]] * 2
            assert "not a valid org.pytorch.serve.grpc.inference.PredictionsRequest" in (
                answers[0].status.message)

    asyncio.run(asyncio.wait_for(scenario(), 30))


class _Summing:
    """A client-streaming method with no handling of bad messages of its own."""

    async def Sum(self, requests: AsyncIterator[pb.ModelInferRequest],
                  context: aio.ServicerContext) -> pb.ModelInferResponse:
        ids = [r.id async for r in requests]
        return pb.ModelInferResponse(id="+".join(ids))


def _register_summing(servicer: _Summing, server: Any) -> None:
    server.add_registered_method_handlers("t.Sum", {"Sum": grpc.stream_unary_rpc_method_handler(
        servicer.Sum, request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString)})


def test_other_streams_read_to_the_end_then_end_invalid_argument() -> None:
    async def scenario() -> None:
        server = aio.server()
        add_service(_register_summing, _Summing(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        good = [pb.ModelInferRequest(id=str(i), raw_input_contents=[bytes(1 << 16)])
                .SerializeToString() for i in range(3)]
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                # Many rounds: ending the call while the client still writes made its grpc
                # library report INTERNAL "Internal error from Core" now and then.
                for _ in range(30):
                    call = channel.stream_unary("/t.Sum/Sum")
                    with pytest.raises(aio.AioRpcError) as caught:
                        await call(iter([good[0], b"\x0f", *good[1:] * 20]), timeout=10)
                    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
                        caught.value.details())
                    assert "not a valid inference.ModelInferRequest" in (
                        caught.value.details() or "")
        finally:
            await server.stop(0)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_sync_behaviour_is_refused_at_registration() -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: None, request_deserializer=pb.ServerLiveRequest.FromString)
    with pytest.raises(TypeError, match="must be an async servicer method"):
        tolerant_handler(handler)
