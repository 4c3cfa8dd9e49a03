"""TorchServe's inference API on the HTTP port (8000), for TorchServe clients unchanged.

``/ping``, ``/predictions/{model}[/{version}]`` (raw body as ``curl -T``/``--data-binary``, or
multipart fields ``data``: several images give a JSON list in order), ``/explanations/...``,
KServe v1 ``/v1/models/{model}:predict`` (base64 images), ``/api-description`` and ``OPTIONS /``.
Errors are TorchServe's JSON ``{"code", "type", "message"}`` with the status of the one error table.
Custom-handler models (``serving.handlers``) answer on the same routes; a client that hangs up
cancels its queued request on every route.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from serving.errors import InvalidInput
from serving.handlers.http import answer_response, handler_request, v1_body
from serving.tasks.kinds import TaskResult
from serving.tasks.options import TaskOptions
from serving.transport import traced
from serving.transport.disconnect import cancel_on_disconnect
from serving.transport.http_body import header, read_body
from serving.transport.multipart import parse_form
from serving.transport.torchserve.common import guard, model_version

if TYPE_CHECKING:
    from serving.core.service import InferenceService
    from serving.handlers.models import HandlerModels
    from serving.settings import Settings
    from serving.tasks.pipelines import Pipelines

log = logging.getLogger(__name__)
MAX_PARTS = 64
MAX_JSON_STRUCTURE = 4096  # commas, brackets and braces of a JSON body of MAX_PARTS images
OFF_LOOP_BYTES = 256 * 1024
T = TypeVar("T")


def decode_b64(value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where} is not valid base64") from None


def combine(results: list[TaskResult]) -> Response:
    """One image: its answer as is; several: a JSON list in order (images as base64)."""
    if len(results) == 1:
        return Response(results[0].body, media_type=results[0].content_type)
    return Response(json_list(results), media_type="application/json")


def json_list(results: list[TaskResult]) -> bytes:
    """The answers as one JSON array, in order. JSON answers are embedded as the bytes they
    already are (never parsed and dumped again); images become base64 strings."""
    parts = [r.body if r.content_type == "application/json"
             else json.dumps(base64.b64encode(r.body).decode("ascii")).encode()
             for r in results]
    return b"[" + b",".join(parts) + b"]"


async def off_loop(fn: Callable[[bytes], T], body: bytes) -> T:
    """``fn(body)`` on a worker thread when the body is large enough for parsing it to hold up
    the event loop (a 64 MiB JSON body takes a good part of a second), else right here."""
    if len(body) < OFF_LOOP_BYTES:
        return fn(body)
    return await asyncio.to_thread(fn, body)


def load_json(body: bytes) -> Any:
    """A TorchServe JSON body: a few images as base64 strings. Bodies with more structure than
    that are refused before parsing, which would build a Python object per value."""
    structure = body.count(b",") + body.count(b"[") + body.count(b"{")
    if structure > MAX_JSON_STRUCTURE:
        raise InvalidInput(f"JSON body holds up to {structure} values, over the limit of "
                           f"{MAX_JSON_STRUCTURE}; send at most {MAX_PARTS} images, each as one "
                           "base64 string")
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidInput("JSON body is nested too deeply") from None
    except ValueError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from None


def _json_images(body: bytes) -> list[bytes]:
    doc = load_json(body)
    items = doc if isinstance(doc, list) else [doc]
    if len(items) > MAX_PARTS:
        raise InvalidInput(f"{len(items)} images in one request; the limit is {MAX_PARTS}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("data"), str):
            raise InvalidInput(f"JSON item {i} needs a base64 string field 'data'")
        out.append(decode_b64(item["data"], f"JSON item {i} field 'data'"))
    return out


def _v1_images(body: bytes) -> list[bytes]:
    doc = load_json(body)
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('KServe v1 body needs a non-empty list "instances"')
    if len(instances) > MAX_PARTS:
        raise InvalidInput(f"{len(instances)} instances in one request; the limit is "
                           f"{MAX_PARTS}")
    return [_instance(item, i) for i, item in enumerate(instances)]


async def _images(request: Request, limit: int) -> list[bytes]:
    body = await read_body(request, limit)
    ctype = (header(request, "content-type") or "").lower()
    if ctype.startswith("multipart/form-data"):
        return await _multipart(request, body)
    if ctype.startswith("application/json"):
        return await off_loop(_json_images, body)
    return [body]


async def _multipart(request: Request, body: bytes) -> list[bytes]:
    form = await parse_form(request, body, MAX_PARTS)
    try:
        parts = form.getlist("data")
        if not parts:
            names = ", ".join(sorted(set(form.keys()))) or "none"
            raise InvalidInput(f"multipart request has no field 'data' (fields received: "
                               f"{names}); send images as -F data=@image.jpg")
        images = []
        for part in parts:
            if isinstance(part, UploadFile):
                images.append(await part.read())
            else:  # a text field: TorchServe vision clients send base64 there
                images.append(decode_b64(part, "text field 'data'"))
        return images
    finally:
        await form.close()


class TorchServeHandlers:
    def __init__(self, service: InferenceService, pipelines: Pipelines,
                 settings: Settings, handler_models: HandlerModels | None = None) -> None:
        self.service = service
        self.pipelines = pipelines
        self.limit = int(settings.max_request_bytes)
        self.handler_models = handler_models  # archives run by their own handler

    async def _custom(self, request: Request, model: str, version: str,
                      verb: str = "") -> Response:
        assert self.handler_models is not None
        target = self.handler_models.model(model, model_version(version))  # 404 first
        envelope = target.spec.envelope
        if verb and envelope == "kservev2":
            raise InvalidInput(f"model '{model}' reads KServe v2 requests "
                               "(service_envelope=kservev2): send /v2/models/"
                               f"{model}/infer")
        body = await read_body(request, self.limit)
        if verb and envelope == "kserve":  # its envelope reads "instances"
            body = await off_loop(v1_body, body)
        job = await handler_request(request, body)
        if verb == "explain":  # what TorchServe's kserve envelope looks for
            job.headers.append(("explain", "True"))
        answer = await cancel_on_disconnect(request, target.predict(job))
        return answer_response(answer)

    def healthy(self) -> bool:
        """TorchServe's /ping: the store is ready and every custom handler has a process up."""
        return self.service.server_ready() and (
            self.handler_models is None or self.handler_models.healthy())

    async def ping(self, request: Request) -> Response:
        healthy = self.healthy()
        return JSONResponse({"status": "Healthy" if healthy else "Unhealthy"},
                            status_code=200 if healthy else 500)

    async def _run(self, request: Request, explain: bool) -> list[TaskResult]:
        model = request.path_params["model"]
        version = model_version(request.path_params.get("version", ""))
        options = TaskOptions.parse(request.query_params, header(request, "accept") or "")
        images = await _images(request, self.limit)
        run = self.pipelines.explain if explain else self.pipelines.predict
        # The body is read: a client that hangs up now frees its queue slots unrun.
        return await cancel_on_disconnect(request, run(model, version, images, options))

    async def predictions(self, request: Request) -> Response:
        model = request.path_params["model"]
        if self.handler_models is not None and model in self.handler_models:
            return await self._custom(request, model, request.path_params.get("version", ""))
        return combine(await self._run(request, explain=False))

    async def explanations(self, request: Request) -> Response:
        return combine(await self._run(request, explain=True))

    async def kserve_v1(self, request: Request) -> Response:
        target = request.path_params["target"]
        model, _, verb = target.rpartition(":")
        if verb not in ("predict", "explain") or not model:
            raise InvalidInput(f"unknown KServe v1 verb in '{target}' (use :predict or :explain)")
        if self.handler_models is not None and model in self.handler_models:
            return await self._custom(request, model, "", verb)
        images = await off_loop(_v1_images, await read_body(request, self.limit))
        options = TaskOptions.parse(request.query_params, header(request, "accept") or "")
        run = self.pipelines.explain if verb == "explain" else self.pipelines.predict
        results = await cancel_on_disconnect(request, run(model, "", images, options))
        key = "explanations" if verb == "explain" else "predictions"
        return Response(b'{"' + key.encode() + b'":' + json_list(results) + b"}",
                        media_type="application/json")

    async def api_description(self, request: Request) -> Response:
        return JSONResponse(api_description(self.service))


def _instance(item: Any, index: int) -> bytes:
    if isinstance(item, str):
        return decode_b64(item, f"instance {index}")
    if isinstance(item, dict):
        for key in ("data", "b64"):
            value = item.get(key)
            if isinstance(value, dict) and isinstance(value.get("b64"), str):
                value = value["b64"]
            if isinstance(value, str):
                return decode_b64(value, f"instance {index} field '{key}'")
    raise InvalidInput(f'instance {index} must be a base64 string or {{"data": "<base64>"}}')


def api_description(service: InferenceService) -> dict[str, Any]:
    """A compact OpenAPI 3.0.1 description of the TorchServe inference routes."""
    def op(summary: str, body: bool = True) -> dict[str, Any]:
        entry: dict[str, Any] = {"summary": summary, "responses": {
            "200": {"description": "OK"}, "400": {"description": "Bad input"},
            "404": {"description": "Model not found"}, "413": {"description": "Too large"},
            "503": {"description": "Queue full or not ready"}}}
        if body:
            entry["requestBody"] = {"content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "data": {"type": "string", "format": "binary"}}}}}}
        return entry
    return {
        "openapi": "3.0.1",
        "info": {"title": "capserve TorchServe-compatible inference API",
                 "version": service.server_metadata().version},
        "paths": {
            "/ping": {"get": op("Health check", body=False)},
            "/predictions/{model_name}": {"post": op("Predictions of the default version")},
            "/predictions/{model_name}/{model_version}": {"post": op("Predictions of a version")},
            "/explanations/{model_name}": {"post": op("CapsNet explanations")},
            "/explanations/{model_name}/{model_version}": {"post": op("CapsNet explanations")},
            "/v1/models/{model_name}:predict": {"post": op("KServe v1 predict (base64)")},
            "/v1/models/{model_name}:explain": {"post": op("KServe v1 explain (base64)")},
            "/api-description": {"get": op("This description", body=False)},
        },
    }


def torchserve_routes(service: InferenceService, pipelines: Pipelines,
                      settings: Settings, handler_models: HandlerModels | None = None
                      ) -> list[BaseRoute]:
    h = TorchServeHandlers(service, pipelines, settings, handler_models)
    predictions = traced.http_endpoint("Predictions", h.predictions)
    explanations = traced.http_endpoint("Explanations", h.explanations)
    kserve_v1 = traced.http_endpoint("KServeV1", h.kserve_v1)
    return [
        Route("/ping", guard(h.ping), methods=["GET", "POST"]),
        Route("/predictions/{model}", guard(predictions), methods=["POST", "PUT"]),
        Route("/predictions/{model}/{version}", guard(predictions), methods=["POST", "PUT"]),
        Route("/explanations/{model}", guard(explanations), methods=["POST", "PUT"]),
        Route("/explanations/{model}/{version}", guard(explanations), methods=["POST", "PUT"]),
        Route("/v1/models/{target}", guard(kserve_v1), methods=["POST"]),
        Route("/api-description", guard(h.api_description), methods=["GET"]),
        Route("/", guard(h.api_description), methods=["OPTIONS"]),
    ]
