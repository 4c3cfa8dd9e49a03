"""Every RPC of the v2 service is answered by an async method of ours (none falls through to
the generated base class, whose sync stubs would not run on a grpc.aio server)."""

from __future__ import annotations

import inspect

from serving.generated import grpc_service_pb2 as pb
from serving.transport.grpc_service import InferenceServicer


def test_every_rpc_is_async_and_ours() -> None:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        impl = getattr(InferenceServicer, method.name)
        assert inspect.iscoroutinefunction(impl) or inspect.isasyncgenfunction(impl), method.name
        assert impl.__qualname__.split(".")[0] in ("InferenceServicer", "_unsupported"), method.name
