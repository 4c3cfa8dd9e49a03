"""HTTP routes of Triton's CUDA shared-memory extension (``/v2/cudasharedmemory/...``).

Register takes ``{"raw_handle": {"b64": <base64 of the 64-byte cudaIpcMemHandle_t>},
"device_id": N, "byte_size": N}``; status answers ``[{"name", "device_id", "byte_size"}]``;
unregister without a region name unregisters every CUDA region. All of it sits behind the
model-control gate, like system shared memory (docs/protocols.md).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from serving.core.service import InferenceService
from serving.errors import InvalidInput, shown
from serving.transport import http_codec as codec
from serving.transport.auth import ModelControlGate
from serving.transport.errors import http_error_payload
from serving.transport.http_body import header, read_body
from serving.transport.shared_memory import cuda_status, shm_gate

PREFIX = "/v2/cudasharedmemory"
# A register body is a ~100-byte JSON object; anything much larger is not one.
MAX_REGISTER_BODY_BYTES = 64 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Endpoint) -> Endpoint:
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # every failure through the one error table
            status, payload = http_error_payload(exc)
            return JSONResponse(payload, status_code=status)

    return endpoint


def _non_negative(doc: dict[str, Any], field: str) -> int:
    value = doc.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"'{field}' of a CUDA shared memory register request must be a "
                           f"non-negative integer, got {shown(repr(value))}")
    return value


def parse_register(doc: dict[str, Any]) -> tuple[bytes, int, int]:
    """(raw handle bytes, device id, byte size) of a register request body."""
    handle = doc.get("raw_handle")
    b64 = handle.get("b64") if isinstance(handle, dict) else None
    if not isinstance(b64, str):
        raise InvalidInput("a CUDA shared memory register request needs "
                           "'raw_handle': {\"b64\": <base64 string>}")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("'raw_handle.b64' of a CUDA shared memory register request is not "
                           "valid base64") from None
    return raw, _non_negative(doc, "device_id"), _non_negative(doc, "byte_size")


class _Handlers:
    def __init__(self, service: InferenceService, gate: ModelControlGate,
                 max_request_bytes: int) -> None:
        self.service = service
        self.gate = gate
        self.body_limit = min(max_request_bytes, MAX_REGISTER_BODY_BYTES)

    def _gate(self, request: Request) -> None:
        shm_gate(self.gate, header(request, "authorization"), host=header(request, "host"),
                 server=request.scope.get("server"), what="CUDA")

    async def status(self, request: Request) -> Response:
        self._gate(request)
        regions = cuda_status(self.service, request.path_params.get("region", ""))
        return JSONResponse([{"name": r.name, "device_id": r.device_id,
                              "byte_size": r.byte_size} for r in regions])

    async def register(self, request: Request) -> Response:
        self._gate(request)
        doc = codec.parse_json_body(await read_body(request, self.body_limit), "register request")
        raw, device_id, byte_size = parse_register(doc)
        await self.service.register_cuda_shared_memory(request.path_params["region"], raw,
                                                       device_id, byte_size)
        return Response(status_code=200)

    async def unregister(self, request: Request) -> Response:
        self._gate(request)
        await self.service.unregister_cuda_shared_memory(request.path_params.get("region", ""))
        return Response(status_code=200)

    async def unknown(self, request: Request) -> Response:
        raise InvalidInput(
            f"{shown(request.url.path)} is not a CUDA shared memory route: use "
            f"{PREFIX}[/region/<name>]/{{status,register,unregister}} (a region name is one "
            "path segment)")


def cuda_shared_memory_routes(service: InferenceService, gate: ModelControlGate,
                              max_request_bytes: int) -> list[BaseRoute]:
    """The extension's routes, the catch-all last."""
    h = _Handlers(service, gate, max_request_bytes)
    g = _guarded
    return [
        Route(PREFIX + "/status", g(h.status), methods=["GET"]),
        Route(PREFIX + "/region/{region}/status", g(h.status), methods=["GET"]),
        Route(PREFIX + "/region/{region}/register", g(h.register), methods=["POST"]),
        Route(PREFIX + "/unregister", g(h.unregister), methods=["POST"]),
        Route(PREFIX + "/region/{region}/unregister", g(h.unregister), methods=["POST"]),
        Route(PREFIX + "{rest:path}", g(h.unknown), methods=["GET", "POST"]),
    ]
