"""HTTP transport: the KServe v2 REST protocol with Triton's extensions, as a Starlette app.

Handlers stay thin: read (bounded) body -> ``http_codec`` -> core :class:`InferenceService` ->
``http_codec`` -> response. Every failure goes through the one error table
(``serving.transport.errors``) and becomes a non-2xx status with ``{"error": "..."}``.
No Content-Type is required on requests (tritonclient sends none).
"""

from __future__ import annotations

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

from serving.core import datatypes
from serving.core.service import InferenceService
from serving.core.types import InferRequest, Tensor
from serving.errors import InvalidInput, PayloadTooLarge, Unsupported
from serving.logs import new_request_id, request_id_var
from serving.settings import Settings
from serving.transport import grpc_converters as conv
from serving.transport import http_codec as codec
from serving.transport.auth import ModelControlGate
from serving.transport.disconnect import cancel_on_disconnect
from serving.transport.errors import http_error_payload
from serving.transport.hot_routes import HotRoutes

Endpoint = Callable[[Request], Awaitable[Response]]

_MIN_COMPRESS_BYTES = 1024


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


def header(request: Request, name: str) -> str | None:
    """One request header (``name`` lower-case). Starlette's ``Headers.get`` scans the raw
    list and raises KeyError for every absent header; on the inference path a dict built once
    per request is a measurable share of the per-request cost."""
    scope = request.scope
    found: dict[bytes, bytes] | None = scope.get("capserve.headers")
    if found is None:
        found = scope["capserve.headers"] = dict(scope["headers"])  # ASGI keys are lower-case
    value = found.get(name.encode("latin-1"))
    return None if value is None else value.decode("latin-1")


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, decompressed, refusing (413) anything over ``limit_bytes``."""
    declared = header(request, "content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLarge(
            f"request body of {declared} bytes exceeds the limit of {limit_bytes} bytes"
        )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = header(request, "content-encoding")
    return codec.decompress(body, encoding, limit_bytes) if encoding else body


def _json(doc: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(doc, status_code=status)


class V2Handlers:
    """The route handlers; one instance per app, holding the core and the settings it needs."""

    def __init__(self, service: InferenceService, gate: ModelControlGate, max_request_bytes: int) -> None:
        self.service = service
        self.gate = gate
        self.max_request_bytes = max_request_bytes

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
        return _json(conv.message_to_json_dict(self.service.model_config(name, version)))

    async def model_stats(self, request: Request) -> Response:
        name, version = _model_path(request)
        stats = self.service.model_statistics(name, version)
        return _json(conv.message_to_json_dict(conv.statistics_from_types(stats)))

    async def infer(self, request: Request) -> Response:
        name, version = _model_path(request)
        body = await read_body(request, self.max_request_bytes)
        header_length = header(request, codec.HEADER_LENGTH)
        if header_length is not None and header_length.strip() == "0":
            infer_request = self._raw_binary_request(name, version, body)
            binary_default, binary_outputs = True, {}
        else:
            header_bytes, binary = codec.split_body(body, header_length)
            decoded = codec.decode_infer_request(
                name, version, codec.parse_json_body(header_bytes, "inference request header"), binary
            )
            infer_request = decoded.request
            binary_default, binary_outputs = decoded.binary_default, decoded.binary_outputs
        request_id_var.set(infer_request.id or new_request_id())
        response = await cancel_on_disconnect(request, self.service.infer(infer_request))
        payload, json_length = codec.encode_infer_response(response, binary_default, binary_outputs)
        headers: dict[str, str] = {}
        if json_length is not None:
            headers["Inference-Header-Content-Length"] = str(json_length)
            media_type = "application/octet-stream"
        else:
            media_type = "application/json"
        encoding = codec.pick_response_encoding(header(request, "accept-encoding"))
        # Tiny bodies grow when compressed; HTTP lets the server send them as they are.
        if encoding is not None and len(payload) >= _MIN_COMPRESS_BYTES:
            payload = codec.compress(payload, encoding)
            headers["Content-Encoding"] = encoding
        return Response(payload, headers=headers, media_type=media_type)

    def _raw_binary_request(self, name: str, version: str, body: bytes) -> InferRequest:
        """Inference-Header-Content-Length: 0 -> the whole body is the single input, batch 1."""
        meta = self.service.model_metadata(name, version)
        if len(meta.inputs) != 1:
            raise InvalidInput(
                f"a raw binary request needs a model with exactly one input; '{name}' has {len(meta.inputs)}"
            )
        spec = meta.inputs[0]
        batching = self.service.model_config(name, version).max_batch_size > 0
        dims = list(spec.shape[1:] if batching else spec.shape)
        if spec.datatype == "BYTES":
            data = np.empty(1, dtype=object)
            data[0] = body
            shape = tuple([1] * len(dims)) if dims else (1,)
        else:
            if dims.count(-1) > 1:
                raise InvalidInput(f"input '{spec.name}' has more than one variable dimension")
            item = int(np.dtype(datatypes.triton_to_numpy(spec.datatype)).itemsize)
            fixed = math.prod(d for d in dims if d != -1) * item
            if fixed == 0 or len(body) % fixed:
                raise InvalidInput(
                    f"raw binary body of {len(body)} bytes does not fit input '{spec.name}' {dims}"
                )
            dims = [len(body) // fixed if d == -1 else d for d in dims]
            shape = tuple(dims)
            data = np.frombuffer(body, dtype=datatypes.triton_to_numpy(spec.datatype).newbyteorder("<"))
        if batching:
            shape = (1, *shape)
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
        if doc.get("parameters"):
            names = ", ".join(sorted(doc["parameters"]))
            raise Unsupported(f"load parameters ({names}) are not supported; models come from the store only")
        await self.service.load_model(request.path_params["model"])
        return Response(status_code=200)

    async def repository_unload(self, request: Request) -> Response:
        self.gate.check(request.headers.get("authorization"))
        codec.parse_json_body(await read_body(request, self.max_request_bytes))
        await self.service.unload_model(request.path_params["model"])
        return Response(status_code=200)

    async def unsupported(self, request: Request) -> Response:
        raise Unsupported(f"{request.url.path} is not supported by capserve")


def _model_path(request: Request) -> tuple[str, str]:
    return request.path_params.get("model", ""), request.path_params.get("version", "")


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
            Route(prefix + "/infer", g(h.infer), methods=["POST"]),
            Route(prefix + "/trace/setting", g(h.unsupported), methods=["GET", "POST"]),
        ]
    for path in ("/v2/systemsharedmemory{rest:path}", "/v2/cudasharedmemory{rest:path}",
                 "/v2/logging", "/v2/trace/setting"):
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
    handlers = V2Handlers(service, gate, settings.max_request_bytes)
    routes = [*v2_routes(handlers), *extra_routes]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
    return HotRoutes(app, routes)
