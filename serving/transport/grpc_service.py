"""gRPC transport: Triton's ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health``.

Thin by design: each method converts the message (``grpc_converters``), calls the core
:class:`InferenceService`, converts the answer back; ``grpc_errors`` maps any failure through the
one error table. Triton RPCs capserve does not implement (trace, log settings) answer
UNIMPLEMENTED with a message saying so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
from grpc import aio

from serving import tracing
from serving.core.service import InferenceService
from serving.core.validation import DEFAULT_LIMITS, TensorLimits
from serving.errors import ServerNotReady, Unsupported
from serving.generated import grpc_service_pb2 as pb
from serving.generated import grpc_service_pb2_grpc as pb_grpc
from serving.generated import health_pb2, health_pb2_grpc
from serving.logs import new_request_id, request_id_var
from serving.store import config_message
from serving.transport import grpc_converters as conv
from serving.transport import traced
from serving.transport.auth import ModelControlGate
from serving.transport.errors import grpc_errors, grpc_status_message
from serving.transport.grpc_peers import WORKER_KEY, PeerForwarder, is_forwarded, taken_metadata
from serving.transport.grpc_tolerant import Undecodable, add_service, answers_undecodable
from serving.transport.grpc_wire import (
    RawInferResponse,
    WireInferResponse,
    WireStreamResponse,
    request_bytes,
    with_wire_codec,
)
from serving.transport.shared_memory import (
    cuda_status,
    shm_gate,
    write_outputs_off_loop,
)

logger = logging.getLogger(__name__)

_SHUTDOWN = object()  # marker put into open streams' queues when the server drains

_UNSUPPORTED_RPCS = ("TraceSetting", "LogSettings")


def _metadata_value(context: aio.ServicerContext, key: str) -> str | None:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode()
    return None


def _unsupported(rpc: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def method(self: object, request: object, context: aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is not supported by capserve")

    method.__name__ = rpc
    return method


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The v2 protocol over gRPC, backed by the protocol-neutral core."""

    def __init__(
        self, service: InferenceService, gate: ModelControlGate, stream_max_inflight: int = 64,
        limits: TensorLimits = DEFAULT_LIMITS, peers: PeerForwarder | None = None,
        worker: int = -1,
    ) -> None:
        self._service = service
        self._limits = limits
        self._peers = peers
        # A worker of a supervisor names itself on each answer (as HTTP's capserve-worker).
        self._ran_here = ((WORKER_KEY, str(worker)),) if worker >= 0 else ()
        self._gate = gate
        self._streams: set[asyncio.Queue[Any]] = set()
        self._stream_max_inflight = stream_max_inflight

    def begin_shutdown(self) -> None:
        """End open streams once they have answered what they sent (idle streams would hold
        the server's shutdown for the whole grace period)."""
        for q in self._streams:
            q.put_nowait(_SHUTDOWN)

    @grpc_errors
    async def ServerLive(self, request: pb.ServerLiveRequest, context: aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._service.server_live())

    @grpc_errors
    async def ServerReady(self, request: pb.ServerReadyRequest, context: aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.server_ready())

    @grpc_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context: aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._service.model_ready(request.name, request.version))

    @grpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return conv.server_metadata_from_types(self._service.server_metadata())

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        return conv.model_metadata_from_types(self._service.model_metadata(request.name, request.version))

    @grpc_errors
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: aio.ServicerContext) -> pb.ModelConfigResponse:
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(config_message(self._service.model_spec(request.name, request.version)))
        return response

    @grpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        stats = await self._service.gather_statistics(request.name, request.version)
        return conv.statistics_from_types(stats)

    @grpc_errors
    @traced.grpc_method("ModelInfer")
    async def ModelInfer(self, request: conv.AnyInferRequest,
                         context: aio.ServicerContext) -> WireInferResponse | RawInferResponse:
        peers = self._peers
        metadata = (context.invocation_metadata() or ()) if peers is not None else ()
        relayed = is_forwarded(metadata)  # from another worker: run here, never pass it on
        with self._service.admission(relayed):  # a drain that begins now lets this call finish
            if peers is None:
                if self._ran_here:
                    context.set_trailing_metadata(self._ran_here)
                return await self._infer(request)
            if relayed:
                if not self._service.admitted():  # draining: the sender runs it itself
                    raise ServerNotReady("Server is not ready: shutting down")
                await context.send_initial_metadata(taken_metadata(peers.me))
                return await self._infer(request)
            slot = self._peer_for()
            if slot is not None:
                # Who ran it, on the answer and on an error alike (an abort keeps what is set).
                context.set_trailing_metadata(((WORKER_KEY, str(slot)),))
                answer = await self._forward(slot, request, context.time_remaining(), metadata)
                if answer is not None:
                    return answer
            context.set_trailing_metadata(self._ran_here)
            return await self._infer(request)

    def _peer_for(self) -> int | None:
        """The less busy worker to hand an admitted request to, if there is one."""
        if self._peers is None or not self._service.admitted():
            return None
        return self._peers.choose()

    async def _forward(self, slot: int, message: conv.AnyInferRequest, timeout: float | None,
                       metadata: Any) -> RawInferResponse | None:
        """The answer of worker ``slot``, or None when it did not take the request."""
        assert self._peers is not None
        data = await self._peers.forward(slot, request_bytes(message), timeout, metadata)
        return None if data is None else RawInferResponse(data, slot)

    async def _infer(self, message: conv.AnyInferRequest) -> WireInferResponse:
        request_id_var.set(message.id or new_request_id())
        # Overload: UNAVAILABLE before the tensors are decoded (maybe on a worker thread).
        self._service.refuse_if_full(message.model_name, message.model_version)
        with self._service.shared_memory.scope() as shm:  # regions held until answered
            with tracing.child_span("decode"):
                request = await conv.infer_request_to_types_off_loop(message, self._limits, shm)
            response = await self._service.infer(request)
            if shm.has_outputs:
                await write_outputs_off_loop(shm, response)
            with tracing.child_span("encode"):
                return conv.infer_response_to_wire(response)  # outputs copied once, by grpc_wire

    @answers_undecodable
    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[conv.AnyInferRequest | Undecodable],
        context: aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse | WireStreamResponse]:
        """Requests of one stream run concurrently; an error answers that request and the stream
        goes on (a message that does not decode too: its answer carries only the error).

        At most ``stream_max_inflight`` requests of a stream are running or answered but not
        yet written; past that the stream is not read further (HTTP/2 flow control then slows
        the client), so neither tasks nor the answer queue grow with what a client sends.
        """
        out: asyncio.Queue[Any] = asyncio.Queue()
        # Read only to pass on to a peer (a servicer without peers may be driven context-free).
        stream_metadata = (context.invocation_metadata() or ()) if self._peers is not None else ()
        pending: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self._stream_max_inflight)

        async def answer(message: conv.AnyInferRequest | Undecodable) -> None:
            if isinstance(message, Undecodable):  # one bad request of the stream
                out.put_nowait(pb.ModelStreamInferResponse(error_message=message.message()))
                return
            response: pb.ModelStreamInferResponse | WireStreamResponse
            try:
                with self._service.admission():
                    slot = self._peer_for()
                    forwarded = None if slot is None else await self._forward(
                        slot, message, None, stream_metadata)
                    response = WireStreamResponse(forwarded or await self._infer(message))
            except Exception as exc:
                response = pb.ModelStreamInferResponse(error_message=grpc_status_message(exc))
                response.infer_response.model_name = message.model_name
                response.infer_response.model_version = message.model_version
                response.infer_response.id = message.id
            out.put_nowait(response)

        async def read() -> None:
            messages = aiter(request_iterator)
            try:
                while True:
                    await slots.acquire()  # backpressure: wait for a written answer
                    try:
                        message = await anext(messages)
                    except StopAsyncIteration:
                        break
                    task = asyncio.create_task(answer(message))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                while pending:
                    await asyncio.wait(set(pending))
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        self._streams.add(out)
        try:
            while (item := await out.get()) is not None:
                if item is _SHUTDOWN:
                    # Server draining: answer what this stream already sent, then end it.
                    reader.cancel()
                    while pending:
                        await asyncio.wait(set(pending))
                    while not out.empty():
                        item = out.get_nowait()
                        if isinstance(item, pb.ModelStreamInferResponse | WireStreamResponse):
                            yield item
                    return
                yield item
                slots.release()
        finally:
            self._streams.discard(out)
            reader.cancel()
            for task in list(pending):
                task.cancel()

    @grpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        self._gate.check(_metadata_value(context, "authorization"))
        return conv.repository_index_from_types(self._service.repository_index(ready_only=request.ready))

    @grpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        self._gate.check(_metadata_value(context, "authorization"))
        _refuse_load_parameters(request)
        await self._service.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        self._gate.check(_metadata_value(context, "authorization"))
        await self._service.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()


    # -- system shared memory (behind the model-control gate: see docs/protocols.md) ---------

    async def _shm_gate(self, context: aio.ServicerContext) -> None:
        shm_gate(self._gate, _metadata_value(context, "authorization"))

    @grpc_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        await self._shm_gate(context)
        return conv.shm_status_from_types(self._service.shared_memory_status(request.name))

    @grpc_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        await self._shm_gate(context)
        await self._service.register_shared_memory(request.name, request.key, request.offset,
                                                   request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @grpc_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        await self._shm_gate(context)
        await self._service.unregister_shared_memory(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    # -- CUDA shared memory (the same gate) ----------------------------------------------------

    async def _cuda_gate(self, context: aio.ServicerContext) -> None:
        shm_gate(self._gate, _metadata_value(context, "authorization"), what="CUDA")

    @grpc_errors
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: aio.ServicerContext
    ) -> pb.CudaSharedMemoryStatusResponse:
        await self._cuda_gate(context)
        response = pb.CudaSharedMemoryStatusResponse()
        for region in cuda_status(self._service, request.name):
            entry = response.regions[region.name]
            entry.name, entry.device_id, entry.byte_size = (region.name, region.device_id,
                                                             region.byte_size)
        return response

    @grpc_errors
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: aio.ServicerContext
    ) -> pb.CudaSharedMemoryRegisterResponse:
        await self._cuda_gate(context)
        await self._service.register_cuda_shared_memory(request.name, request.raw_handle,
                                                        request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @grpc_errors
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: aio.ServicerContext
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        await self._cuda_gate(context)
        await self._service.unregister_cuda_shared_memory(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()


def _refuse_load_parameters(request: pb.RepositoryModelLoadRequest) -> None:
    # Config overrides and model bytes in load parameters would let a client write and run
    # arbitrary models; capserve loads only what the operator put in the store.
    if request.parameters:
        names = ", ".join(sorted(request.parameters))
        raise Unsupported(f"load parameters ({names}) are not supported; models come from the store only")


for _rpc in _UNSUPPORTED_RPCS:
    setattr(InferenceServicer, _rpc, _unsupported(_rpc))


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Standard gRPC health: service "" = the whole server, else a model name or the v2 service."""

    WATCH_INTERVAL_S = 0.5

    def __init__(self, service: InferenceService) -> None:
        self._service = service
        self._shutting_down = False

    def begin_shutdown(self) -> None:
        self._shutting_down = True

    def _status(self, name: str) -> health_pb2.HealthCheckResponse.ServingStatus | None:
        serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                                health_pb2.HealthCheckResponse.NOT_SERVING)
        if name in ("", "inference.GRPCInferenceService"):
            return serving if self._service.server_ready() else not_serving
        if name in self._service.model_names():
            return serving if self._service.model_ready(name) else not_serving
        return None

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: health_pb2.HealthCheckResponse.ServingStatus | None | str = "initial"
        while True:
            if self._shutting_down:  # tell watchers, then let the server stop
                yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
                return
            status = self._status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(
                    status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN if status is None else status
                )
                last = status
            await asyncio.sleep(self.WATCH_INTERVAL_S)


def create_grpc_server(
    service: InferenceService, gate: ModelControlGate, max_message_bytes: int,
    reuse_port: bool = False, *, stream_max_inflight: int = 64,
    max_concurrent_streams: int = 1024, limits: TensorLimits = DEFAULT_LIMITS,
    peers: PeerForwarder | None = None, worker: int = -1,
) -> tuple[aio.Server, Callable[[], None]]:
    """A grpc.aio server with the v2 and health services (the caller binds and starts it),
    and the function to call when draining begins (ends idle streams and health watches).

    ``max_concurrent_streams`` bounds the calls one connection may have open at once (HTTP/2
    SETTINGS): a client past it waits for its own calls instead of piling up server tasks.
    ``peers``: a worker's forwarder to the other workers (``grpc_peers``); ``worker``: this
    worker's number, named in each ModelInfer answer's trailing metadata (-1: not a worker)."""
    options = [
        ("grpc.max_concurrent_streams", max_concurrent_streams),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Off, a second server could bind the same port and silently steal traffic; on only for
        # the workers of one supervisor, which share the port it reserved.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    server = aio.server(options=options)
    inference = InferenceServicer(service, gate, stream_max_inflight, limits, peers, worker)
    health = HealthServicer(service)
    # Requests that do not parse are the client's INVALID_ARGUMENT, not grpc's UNKNOWN.
    add_service(with_wire_codec(pb_grpc.add_GRPCInferenceServiceServicer_to_server), inference, server)
    add_service(health_pb2_grpc.add_HealthServicer_to_server, health, server)

    def begin_shutdown() -> None:
        inference.begin_shutdown()
        health.begin_shutdown()

    return server, begin_shutdown
