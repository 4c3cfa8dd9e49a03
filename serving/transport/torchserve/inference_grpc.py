"""TorchServe's gRPC inference service (``org.pytorch.serve.grpc.inference``) on the gRPC port.

Ping, Predictions, StreamPredictions (one answer per call, as a stream of one) and
StreamPredictions2 (many requests on one call; a failed request answers with ``status`` and the
call goes on). The image goes in ``input["data"]``; other keys are the options (``topk``...).
Custom-handler models answer on the same calls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2
from grpc import aio

from serving.errors import (
    BackendError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    ServingError,
)
from serving.generated import torchserve_inference_pb2 as pb
from serving.generated import torchserve_inference_pb2_grpc as pb_grpc
from serving.generated.google.rpc import status_pb2
from serving.handlers.pool import HandlerRequest, Param
from serving.logs import new_request_id
from serving.tasks.options import TaskOptions
from serving.transport import traced
from serving.transport.errors import classify, grpc_errors
from serving.transport.grpc_tolerant import Undecodable, add_service, answers_undecodable
from serving.transport.torchserve.common import model_version

if TYPE_CHECKING:
    from serving.core.service import InferenceService
    from serving.handlers.models import HandlerModels
    from serving.tasks.pipelines import Pipelines

log = logging.getLogger(__name__)


def _options(inputs: Mapping[str, bytes]) -> TaskOptions:
    query = {k: v.decode(errors="replace") for k, v in inputs.items() if k not in ("data", "body")}
    return TaskOptions.parse(query)


def _answer_error(status: int, message: str) -> ServingError:
    """A failed handler answer as the error of the one table (TorchServe's gRPC front maps its
    HTTP codes the same way: 4xx INVALID_ARGUMENT / NOT_FOUND, 5xx INTERNAL / UNAVAILABLE)."""
    if status == 404:
        return ModelNotFound(message)
    if status == 413:
        return PayloadTooLarge(message)
    if status < 500:
        return InvalidInput(message)
    return ModelNotReady(message) if status == 503 else BackendError(message)


class TorchServeInference(pb_grpc.InferenceAPIsServiceServicer):
    def __init__(self, service: InferenceService, pipelines: Pipelines,
                 handler_models: HandlerModels | None = None) -> None:
        self.service = service
        self.pipelines = pipelines
        self.handler_models = handler_models

    async def _custom(self, request: pb.PredictionsRequest) -> bytes:
        """A custom-handler model: every input entry is one parameter of the request, as
        bytes (TorchServe's gRPC front gives them no content type)."""
        assert self.handler_models is not None
        model = self.handler_models.model(request.model_name,
                                          model_version(request.model_version))
        if not request.input:
            raise InvalidInput("input is empty: put the request's data in input['data']")
        job = HandlerRequest(new_request_id(), [],
                             [Param(k, "", bytes(v)) for k, v in request.input.items()])
        with self.service.admission():
            answer = await model.predict(job)
        if answer.status >= 400:
            try:
                message = str(json.loads(answer.body)["message"])
            except (ValueError, KeyError, TypeError):
                message = answer.body[:500].decode(errors="replace")
            raise _answer_error(answer.status, message)
        return answer.body

    async def _predict(self, request: pb.PredictionsRequest) -> bytes:
        if not request.model_name:
            raise InvalidInput("model_name is required")
        if self.handler_models is not None and request.model_name in self.handler_models:
            return await self._custom(request)
        image = request.input.get("data", request.input.get("body"))
        if image is None:
            keys = ", ".join(sorted(request.input)) or "none"
            raise InvalidInput(f"no image: put it in input['data'] (keys received: {keys})")
        with self.service.admission():  # a drain that begins now lets this call finish
            results = await self.pipelines.predict(request.model_name,
                                                   model_version(request.model_version),
                                                   [image], _options(request.input))
        return results[0].body

    async def Ping(self, request: empty_pb2.Empty,
                   context: aio.ServicerContext) -> pb.TorchServeHealthResponse:
        healthy = self.service.server_ready() and (
            self.handler_models is None or self.handler_models.healthy())
        status = "Healthy" if healthy else "Unhealthy"
        return pb.TorchServeHealthResponse(health=json.dumps({"status": status}))

    @grpc_errors
    @traced.grpc_method("Predictions")
    async def Predictions(self, request: pb.PredictionsRequest,
                          context: aio.ServicerContext) -> pb.PredictionResponse:
        return pb.PredictionResponse(prediction=await self._predict(request))

    async def StreamPredictions(self, request: pb.PredictionsRequest,
                                context: aio.ServicerContext
                                ) -> AsyncIterator[pb.PredictionResponse]:
        try:
            prediction = await self._predict(request)
        except Exception as exc:  # a status on the call, like Predictions
            mapping, message = classify(exc)
            await context.abort(mapping.grpc_status, message)
        yield pb.PredictionResponse(prediction=prediction)

    @answers_undecodable
    async def StreamPredictions2(self,
                                 request_iterator: AsyncIterator[pb.PredictionsRequest | Undecodable],
                                 context: aio.ServicerContext
                                 ) -> AsyncIterator[pb.PredictionResponse]:
        async for request in request_iterator:
            if isinstance(request, Undecodable):  # one failed request; the call goes on
                yield pb.PredictionResponse(status=status_pb2.Status(
                    code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=request.message()))
                continue
            seq = request.sequence_id if request.HasField("sequence_id") else None
            try:
                yield pb.PredictionResponse(prediction=await self._predict(request),
                                            sequence_id=seq)
            except Exception as exc:  # the call goes on; this request answers with a status
                mapping, message = classify(exc)
                yield pb.PredictionResponse(sequence_id=seq, status=status_pb2.Status(
                    code=mapping.grpc_status.value[0], message=message))


def add_inference_service(server: aio.Server, service: InferenceService,
                          pipelines: Pipelines,
                          handler_models: HandlerModels | None = None) -> None:
    """TorchServe's InferenceAPIsService on the gRPC server."""
    add_service(pb_grpc.add_InferenceAPIsServiceServicer_to_server,
                TorchServeInference(service, pipelines, handler_models), server)
