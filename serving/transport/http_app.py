"""HTTP transport: the KServe v2 REST protocol with Triton's extensions, as a Starlette app.

Handlers stay thin: read (bounded) body -> ``http_codec`` -> core :class:`InferenceService` ->
``http_codec`` -> response. Every failure goes through the one error table
(``serving.transport.errors``) and becomes a non-2xx status with ``{"error": "..."}``.
No Content-Type is required on requests (tritonclient sends none).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from serving import tracing
from serving.core import datatypes
from serving.core.service import InferenceService
from serving.core.shm import ShmScope
from serving.core.types import InferRequest, InferResponse, Tensor
from serving.core.validation import DEFAULT_LIMITS, ElementBudget, TensorLimits, check_version
from serving.errors import InvalidInput, Unsupported, shown
from serving.logs import new_request_id, request_id_var
from serving.settings import Settings
from serving.store import config_message
from serving.transport import grpc_converters as conv
from serving.transport import http_codec as codec
from serving.transport import traced
from serving.transport.auth import ModelControlGate
from serving.transport.cuda_shared_memory import cuda_shared_memory_routes
from serving.transport.disconnect import cancel_on_disconnect
from serving.transport.errors import http_error_payload
from serving.transport.hot_routes import HotRoutes
from serving.transport.http_body import header, read_body
from serving.transport.shared_memory import shm_gate, write_outputs_off_loop

Endpoint = Callable[[Request], Awaitable[Response]]

# Bodies and responses up to these sizes are decoded / encoded on the event loop: handing
# them to a thread costs more than the work (see docs/protocols.md for the measurement).
INLINE_DECODE_BYTES = 32 * 1024
INLINE_ENCODE_BYTES = 32 * 1024


def _guarded(handler: Endpoint) -> Endpoint:
    """Map any exception of a handler through the error table to a JSON error response."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            status, payload = http_error_payload(exc)
            return JSONResponse(payload, status_code=status)

    return endpoint


def _json(doc: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(doc, status_code=status)


class V2Handlers:
    """The route handlers; one instance per app, holding the core and the settings it needs."""

    def __init__(self, service: InferenceService, gate: ModelControlGate, max_request_bytes: int,
                 limits: TensorLimits = DEFAULT_LIMITS,
                 max_response_bytes: int = 64 * 1024 * 1024) -> None:
        self.service = service
        self.gate = gate
        self.max_request_bytes = max_request_bytes
        self.limits = limits
        self.max_response_bytes = max_response_bytes

    # ------------------------------------------------------------------ server
    async def server_metadata(self, request: Request) -> Response:
        meta = self.service.server_metadata()
        return _json({"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)})

    async def live(self, request: Request) -> Response:
        live = self.service.server_live()
        return _json({"live": live}, 200 if live else 503)

    async def ready(self, request: Request) -> Response:
        if self.service.server_ready():
            return _json({"ready": True})
        doc: dict[str, Any] = {"ready": False, "error": "server is not ready"}
        failures = self.service.load_failures()
        if failures:
            doc["failed_models"] = failures
            doc["error"] = "server is not ready: " + "; ".join(
                f"model '{name}' failed to load: {msg}" for name, msg in sorted(failures.items())
            )
        return _json(doc, 503)

    # ------------------------------------------------------------------ models
    async def model_metadata(self, request: Request) -> Response:
        name, version = _model_path(request)
        meta = self.service.model_metadata(name, version)

        def tensors(items: Sequence[Any]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        return _json({
            "name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": tensors(meta.inputs), "outputs": tensors(meta.outputs),
        })

    async def model_ready(self, request: Request) -> Response:
        name, version = _model_path(request)
        if self.service.model_ready(name, version):
            return _json({"name": name, "ready": True})
        label = f"'{name}'" + (f" version {version}" if version else "")
        return _json({"name": name, "ready": False, "error": f"model {label} is not ready"}, 503)

    async def model_config(self, request: Request) -> Response:
        name, version = _model_path(request)
        spec = self.service.model_spec(name, version)
        return _json(conv.message_to_json_dict(config_message(spec)))

    async def model_stats(self, request: Request) -> Response:
        name, version = _model_path(request)
        stats = await self.service.gather_statistics(name, version)
        return _json(conv.message_to_json_dict(conv.statistics_from_types(stats)))

    async def infer(self, request: Request) -> Response:
        name, version = _model_path(request)
        self.service.refuse_if_full(name, version)  # overload: 503 before reading the body
        body = await read_body(request, self.max_request_bytes)
        header_length = header(request, codec.HEADER_LENGTH)
        with self.service.shared_memory.scope() as shm:  # regions held until answered
            with tracing.child_span("decode"):
                if header_length is not None and header_length.strip() == "0":
                    infer_request = self._raw_binary_request(name, version, body)
                    decoded = codec.DecodedRequest(infer_request, binary_default=True)
                elif len(body) <= INLINE_DECODE_BYTES:
                    decoded = self._decode(name, version, body, header_length, shm)
                else:  # parsing is a client-sized amount of work: keep it off the event loop
                    decoded = await asyncio.to_thread(self._decode, name, version, body,
                                                      header_length, shm)
            infer_request = decoded.request
            request_id_var.set(infer_request.id or new_request_id())
            response = await cancel_on_disconnect(request, self.service.infer(infer_request))
            if shm.has_outputs:
                await write_outputs_off_loop(shm, response)
            with tracing.child_span("encode"):
                return await self._encode(request, response, decoded)

    def _decode(self, name: str, version: str, body: bytes, header_length: str | None,
                shm: ShmScope | None = None) -> codec.DecodedRequest:
        header_bytes, binary = codec.split_body(body, header_length)
        codec.check_json_values(header_bytes, self.limits)
        doc = codec.parse_json_body(header_bytes, "inference request header")
        return codec.decode_infer_request(name, version, doc, binary, self.limits, shm)

    async def _encode(self, request: Request, response: InferResponse,
                      decoded: codec.DecodedRequest) -> Response:
        binary_default, binary_outputs = decoded.binary_default, decoded.binary_outputs
        cost = codec.response_cost(response, binary_default, binary_outputs)
        codec.check_response_floor(cost, self.max_response_bytes)
        encoding = codec.pick_response_encoding(header(request, "accept-encoding"))
        args = (response, binary_default, binary_outputs, encoding, self.max_response_bytes)
        if cost.typical_bytes <= INLINE_ENCODE_BYTES:
            encoded = codec.encode_http_response(*args)
        else:  # JSON encoding and gzip of MBs would stall every other request on the loop
            encoded = await asyncio.to_thread(codec.encode_http_response, *args)
        headers: dict[str, str] = {}
        if encoded.json_length is not None:
            headers["Inference-Header-Content-Length"] = str(encoded.json_length)
            media_type = "application/octet-stream"
        else:
            media_type = "application/json"
        if encoded.content_encoding is not None:
            headers["Content-Encoding"] = encoded.content_encoding
        return Response(encoded.body, headers=headers, media_type=media_type)

    def _raw_binary_request(self, name: str, version: str, body: bytes) -> InferRequest:
        """Inference-Header-Content-Length: 0 -> the whole body is the single input, batch 1."""
        meta = self.service.model_metadata(name, version)
        if len(meta.inputs) != 1:
            raise InvalidInput(
                f"a raw binary request needs a model with exactly one input; '{name}' has {len(meta.inputs)}"
            )
        spec = meta.inputs[0]
        batching = self.service.model_spec(name, version).batched
        dims = list(spec.shape[1:] if batching else spec.shape)
        if spec.datatype == "BYTES":
            data = np.empty(1, dtype=object)
            data[0] = body
            shape = tuple([1] * len(dims)) if dims else (1,)
        else:
            shape = _raw_shape(spec.name, dims, spec.datatype, len(body))
            data = np.frombuffer(body, dtype=datatypes.triton_to_numpy(spec.datatype).newbyteorder("<"))
        if batching:
            shape = (1, *shape)
        ElementBudget(self.limits).take(spec.name, spec.datatype, shape)
        tensor = Tensor(name=spec.name, datatype=spec.datatype, shape=shape, data=data.reshape(shape))
        return InferRequest(model_name=name, model_version=version, inputs=[tensor])

    # ------------------------------------------------------------------ repository
    async def repository_index(self, request: Request) -> Response:
        self.gate.check(request.headers.get("authorization"))
        doc = codec.parse_json_body(await read_body(request, self.max_request_bytes))
        entries = self.service.repository_index(ready_only=bool(doc.get("ready", False)))
        return _json([
            {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
            for e in entries
        ])

    async def repository_load(self, request: Request) -> Response:
        self.gate.check(request.headers.get("authorization"))
        doc = codec.parse_json_body(await read_body(request, self.max_request_bytes))
        params = doc.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidInput("'parameters' of a load request must be a JSON object")
        if params:
            names = ", ".join(sorted(params))
            raise Unsupported(f"load parameters ({names}) are not supported; models come from the store only")
        await self.service.load_model(request.path_params["model"])
        return Response(status_code=200)

    async def repository_unload(self, request: Request) -> Response:
        self.gate.check(request.headers.get("authorization"))
        codec.parse_json_body(await read_body(request, self.max_request_bytes))
        await self.service.unload_model(request.path_params["model"])
        return Response(status_code=200)

    # ------------------------------------------------------------------ system shared memory
    def _shm_gate(self, request: Request) -> None:
        shm_gate(self.gate, header(request, "authorization"), host=header(request, "host"),
                 server=request.scope.get("server"))

    async def shm_status(self, request: Request) -> Response:
        self._shm_gate(request)
        regions = self.service.shared_memory_status(request.path_params.get("region", ""))
        return _json([{"name": r.name, "key": r.key, "offset": r.offset,
                       "byte_size": r.byte_size} for r in regions])

    async def shm_register(self, request: Request) -> Response:
        self._shm_gate(request)
        doc = codec.parse_json_body(await read_body(request, self.max_request_bytes),
                                    "register request")
        key = doc.get("key")
        if not isinstance(key, str):
            raise InvalidInput("a register request needs a string 'key'")
        offset, byte_size = doc.get("offset", 0), doc.get("byte_size")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidInput(f"'{field}' of a register request must be a non-negative "
                                   f"integer, got {value!r}")
        assert isinstance(offset, int) and isinstance(byte_size, int)
        await self.service.register_shared_memory(request.path_params["region"], key, offset,
                                                  byte_size)
        return Response(status_code=200)

    async def shm_unregister(self, request: Request) -> Response:
        self._shm_gate(request)
        await self.service.unregister_shared_memory(request.path_params.get("region", ""))
        return Response(status_code=200)

    async def shm_unknown(self, request: Request) -> Response:
        raise InvalidInput(
            f"{shown(request.url.path)} is not a system shared memory route: use "
            "/v2/systemsharedmemory[/region/<name>]/{status,register,unregister} (a region "
            "name is one path segment)")

    async def unsupported(self, request: Request) -> Response:
        raise Unsupported(f"{request.url.path} is not supported by capserve")


def _model_path(request: Request) -> tuple[str, str]:
    name = request.path_params.get("model", "")
    return name, check_version(name, request.path_params.get("version", ""))


def _raw_shape(name: str, dims: list[int], datatype: str, size: int) -> tuple[int, ...]:
    """The shape a raw binary body of ``size`` bytes has for an input with ``dims``: exactly
    the fixed size, or whole multiples of it in the single variable dim."""
    if dims.count(-1) > 1:
        raise InvalidInput(f"input '{name}' has more than one variable dimension")
    fixed = math.prod(d for d in dims if d != -1) * datatypes.element_size(datatype)
    fits = size == fixed if -1 not in dims else fixed > 0 and size % fixed == 0
    if not fits:
        expected = f"{fixed} bytes" if -1 not in dims else f"a multiple of {fixed} bytes"
        raise InvalidInput(
            f"raw binary body of {size} bytes does not fit input '{name}' {dims} "
            f"{datatype}: expected {expected}"
        )
    return tuple(size // fixed if d == -1 else d for d in dims)


def v2_routes(handlers: V2Handlers) -> list[BaseRoute]:
    g = _guarded
    h = handlers
    routes: list[BaseRoute] = [
        Route("/v2", g(h.server_metadata), methods=["GET"]),
        Route("/v2/", g(h.server_metadata), methods=["GET"]),
        Route("/v2/health/live", g(h.live), methods=["GET"]),
        Route("/v2/health/ready", g(h.ready), methods=["GET"]),
        Route("/v2/models/stats", g(h.model_stats), methods=["GET"]),
        Route("/v2/repository/index", g(h.repository_index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", g(h.repository_load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", g(h.repository_unload), methods=["POST"]),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route(prefix, g(h.model_metadata), methods=["GET"]),
            Route(prefix + "/ready", g(h.model_ready), methods=["GET"]),
            Route(prefix + "/config", g(h.model_config), methods=["GET"]),
            Route(prefix + "/stats", g(h.model_stats), methods=["GET"]),
            Route(prefix + "/infer", g(traced.http_endpoint("ModelInfer", h.infer)),
                  methods=["POST"]),
            Route(prefix + "/trace/setting", g(h.unsupported), methods=["GET", "POST"]),
        ]
    shm = "/v2/systemsharedmemory"
    routes += [
        Route(shm + "/status", g(h.shm_status), methods=["GET"]),
        Route(shm + "/region/{region}/status", g(h.shm_status), methods=["GET"]),
        Route(shm + "/region/{region}/register", g(h.shm_register), methods=["POST"]),
        Route(shm + "/unregister", g(h.shm_unregister), methods=["POST"]),
        Route(shm + "/region/{region}/unregister", g(h.shm_unregister), methods=["POST"]),
        Route(shm + "{rest:path}", g(h.shm_unknown), methods=["GET", "POST"]),
    ]
    routes += cuda_shared_memory_routes(h.service, h.gate, h.max_request_bytes)
    for path in ("/v2/logging", "/v2/trace/setting"):
        routes.append(Route(path, g(h.unsupported), methods=["GET", "POST"]))
    return routes


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route for {request.url.path}",
               405: f"method {request.method} not allowed on {request.url.path}"}
    return JSONResponse({"error": message.get(exc.status_code, str(exc.detail))},
                        status_code=exc.status_code, headers=exc.headers)


def create_http_app(
    service: InferenceService,
    settings: Settings,
    extra_routes: Sequence[BaseRoute] = (),
    gate: ModelControlGate | None = None,
) -> ASGIApp:
    """The app for port 8000: v2 routes first, then ``extra_routes`` (the TorchServe dialect),
    with the inference routes taken straight (``HotRoutes``)."""
    if gate is None:
        gate = ModelControlGate(settings.enable_model_control, settings.api_token())
    handlers = V2Handlers(service, gate, settings.max_request_bytes,
                          TensorLimits.from_settings(settings), settings.max_response_bytes)
    routes = [*v2_routes(handlers), *extra_routes]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
    return HotRoutes(app, routes)
