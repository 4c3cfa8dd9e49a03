"""TorchServe's gRPC management service (``org.pytorch.serve.grpc.management``).

The same operations, checks and messages as the HTTP management API; each answer is
``ManagementResponse.msg``, a JSON document as TorchServe sends. With ``--api-token-file`` every
call needs metadata ``authorization: Bearer <token>``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from grpc import aio

from serving.generated import torchserve_management_pb2 as pb
from serving.generated import torchserve_management_pb2_grpc as pb_grpc
from serving.transport.errors import grpc_errors
from serving.transport.grpc_tolerant import add_service
from serving.transport.torchserve.management import ManagementOps, check_token

if TYPE_CHECKING:
    from serving.archives.store import ModelStoreAccess
    from serving.core.service import InferenceService
    from serving.handlers.models import HandlerModels
    from serving.settings import Settings


def _msg(doc: Any) -> pb.ManagementResponse:
    return pb.ManagementResponse(msg=json.dumps(doc, indent=2))


class TorchServeManagement(pb_grpc.ManagementAPIsServiceServicer):
    def __init__(self, ops: ManagementOps, token: str | None) -> None:
        self.ops = ops
        self.token = token

    def _auth(self, context: aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get("authorization")
        check_token(value if isinstance(value, str) else None, self.token)

    @grpc_errors
    async def DescribeModel(self, request: pb.DescribeModelRequest,
                            context: aio.ServicerContext) -> pb.ManagementResponse:
        self._auth(context)
        return _msg(await self.ops.describe(request.model_name, request.model_version))

    @grpc_errors
    async def ListModels(self, request: pb.ListModelsRequest,
                         context: aio.ServicerContext) -> pb.ManagementResponse:
        self._auth(context)
        return _msg(self.ops.list_models(request.limit or 100, request.next_page_token))

    @grpc_errors
    async def RegisterModel(self, request: pb.RegisterModelRequest,
                            context: aio.ServicerContext) -> pb.ManagementResponse:
        self._auth(context)
        return _msg(await self.ops.register(request.url, request.model_name,
                                            request.initial_workers))

    @grpc_errors
    async def ScaleWorker(self, request: pb.ScaleWorkerRequest,
                          context: aio.ServicerContext) -> pb.ManagementResponse:
        self._auth(context)
        return _msg(await self.ops.scale(request.model_name, request.model_version,
                                         request.min_worker, request.max_worker))

    @grpc_errors
    async def SetDefault(self, request: pb.SetDefaultRequest,
                         context: aio.ServicerContext) -> pb.ManagementResponse:
        self._auth(context)
        return _msg(await self.ops.set_default(request.model_name, request.model_version))

    @grpc_errors
    async def UnregisterModel(self, request: pb.UnregisterModelRequest,
                              context: aio.ServicerContext) -> pb.ManagementResponse:
        self._auth(context)
        return _msg(await self.ops.unregister(request.model_name, request.model_version))


def add_management_service(server: aio.Server, service: InferenceService, settings: Settings,
                           store: ModelStoreAccess,
                           handler_models: HandlerModels | None = None) -> None:
    ops = ManagementOps(service, settings, store, handler_models)
    add_service(pb_grpc.add_ManagementAPIsServiceServicer_to_server,
                TorchServeManagement(ops, settings.api_token()), server)
