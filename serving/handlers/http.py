"""HTTP requests in TorchServe's handler format, and handler answers as HTTP responses.

A raw body is the parameter ``body`` with the request's content type; a multipart form gives
one parameter per field (files and text fields alike), as TorchServe's frontend does. Every
request header goes to the handler (``context.get_request_header``). The KServe fronts check
what the archive's envelope (``service_envelope``) will read, so a malformed request is a 400
here rather than a handler failure.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from typing import TYPE_CHECKING, Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.core.validation import TensorLimits
from serving.errors import InvalidInput, shown
from serving.handlers.pool import Answer, HandlerModel, HandlerRequest, Param
from serving.logs import request_id_var
from serving.transport.disconnect import cancel_on_disconnect
from serving.transport.http_body import read_body
from serving.transport.http_codec import check_json_values, parse_json_body
from serving.transport.multipart import parse_form
from serving.transport.torchserve.common import guard, model_version

if TYPE_CHECKING:
    from serving.handlers.models import HandlerModels

OFF_LOOP_BYTES = 256 * 1024

MAX_FIELDS = 64


async def handler_request(request: Request, body: bytes) -> HandlerRequest:
    ctype = request.headers.get("content-type", "")
    headers = [(k, v) for k, v in request.headers.items()]
    rid = request_id_var.get() or "0"
    if not ctype.lower().startswith("multipart/form-data"):
        base = ctype.split(";", 1)[0].strip()
        return HandlerRequest(rid, headers, [Param("body", base, body)])

    form = await parse_form(request, body, MAX_FIELDS)
    params = []
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                params.append(Param(name, value.content_type or "", await value.read()))
            else:
                params.append(Param(name, "text/plain", value.encode()))
    finally:
        await form.close()
    return HandlerRequest(rid, headers, params)


def answer_response(answer: Answer) -> Response:
    media = answer.content_type or None
    extra = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
    return Response(answer.body, status_code=answer.status, media_type=media, headers=extra)


# -- KServe fronts: what the archive's ``service_envelope`` reads ---------------------------

V2_DATATYPES = frozenset({"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                          "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"})
MAX_INSTANCES = 64


def v1_body(body: bytes) -> bytes:
    """A KServe v1 body for a ``kserve``-envelope handler: checked (JSON object, non-empty
    ``instances``), with KServe's binary form ``{"b64": S}`` (alone or under ``data``) turned
    into ``{"data": S}``, the base64 string TorchServe's vision handlers decode."""
    doc = parse_json_body(body, "KServe v1 body")
    instances = doc.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('KServe v1 body needs a non-empty list "instances"')
    if len(instances) > MAX_INSTANCES:
        raise InvalidInput(f"{len(instances)} instances in one request; the limit is "
                           f"{MAX_INSTANCES}")
    changed = False
    for i, item in enumerate(instances):
        b64 = _b64_field(item)
        if b64 is not None:
            try:
                base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput(f"instance {i} field 'b64' is not valid base64") from None
            instances[i] = {"data": b64}
            changed = True
    return json.dumps(doc).encode() if changed else body


def _b64_field(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    value = item.get("data", item)
    if isinstance(value, dict) and isinstance(value.get("b64"), str):
        return str(value["b64"])
    return None


def check_v2_body(body: bytes, limits: TensorLimits) -> None:
    """Refuse (400, naming the field) a v2 request that TorchServe's ``kservev2`` envelope
    would fail on inside the handler: it reshapes each input's ``data`` to its ``shape``."""
    check_json_values(body, limits)
    doc = parse_json_body(body, "KServe v2 inference request")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('KServe v2 request needs a non-empty list "inputs"')
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise InvalidInput(f"input {i} must be a JSON object")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"input {i} needs a string 'name'")
        if datatype not in V2_DATATYPES:
            raise InvalidInput(f"input '{shown(name)}' has unknown datatype "
                               f"{shown(str(datatype))!r}")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise InvalidInput(f"input '{shown(name)}' needs 'shape', a list of "
                               "non-negative integers")
        data = item.get("data")
        if not isinstance(data, list) or not data:
            raise InvalidInput(f"input '{shown(name)}' needs a non-empty list 'data'")
        if datatype != "BYTES":
            count = _count(data, name)
            if count != math.prod(shape):
                raise InvalidInput(f"input '{shown(name)}' has {count} values in 'data', but "
                                   f"shape {shape} holds {math.prod(shape)}")


def _count(data: list[Any], name: str) -> int:
    """Scalars in a nested list (the values were bounded before parsing)."""
    count, stack = 0, [data]
    while stack:
        for value in stack.pop():
            if isinstance(value, list):
                stack.append(value)
            elif isinstance(value, bool | int | float):
                count += 1
            else:
                raise InvalidInput(f"input '{shown(name)}' holds a non-number in 'data'")
    return count


class KServeFront:
    """The KServe v2 model routes of custom-handler models, in front of the v2 app.

    ``/v2/models/NAME[/versions/V]`` (metadata), ``.../ready`` and ``.../infer`` of a name the
    handler pool serves are answered here; everything else goes on to the app. Metadata has no
    tensor signature, since a handler declares none: name, versions and platform ``python``,
    as TorchServe answers. Errors are TorchServe's JSON, as on /predictions.
    """

    def __init__(self, app: ASGIApp, models: HandlerModels, max_request_bytes: int,
                 limits: TensorLimits) -> None:
        self.app, self.models = app, models
        self.max_request_bytes, self.limits = max_request_bytes, limits
        routes: list[Route] = []
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [Route(prefix, guard(self.metadata), methods=["GET"]),
                       Route(prefix + "/ready", guard(self.ready), methods=["GET"]),
                       Route(prefix + "/infer", guard(self.infer), methods=["POST"])]
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v2/models/"):
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.FULL and child["path_params"]["model"] in self.models:
                    scope.update(child)
                    await route.handle(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _model(self, request: Request) -> HandlerModel:
        params = request.path_params
        return self.models.model(params["model"], model_version(params.get("version", "")))

    async def metadata(self, request: Request) -> Response:
        model = self._model(request)
        return JSONResponse({"name": model.spec.model_name, "versions": [model.version],
                             "platform": "python"})

    async def ready(self, request: Request) -> Response:
        model = self._model(request)
        ready = model.ready()
        return JSONResponse({"name": model.spec.model_name, "ready": ready},
                            status_code=200 if ready else 503)

    async def infer(self, request: Request) -> Response:
        model = self._model(request)
        if model.spec.envelope != "kservev2":
            raise InvalidInput(
                f"model '{model.spec.model_name}' runs its own handler with "
                f"{model.spec.envelope or 'no'} envelope: /v2/models/.../infer needs "
                "service_envelope=kservev2 in config.properties (or use /predictions)")
        body = await read_body(request, self.max_request_bytes)
        if len(body) < OFF_LOOP_BYTES:
            check_v2_body(body, self.limits)
        else:  # parsing is client-sized work: keep it off the event loop
            await asyncio.to_thread(check_v2_body, body, self.limits)
        job = await handler_request(request, body)
        answer = await cancel_on_disconnect(request, model.predict(job))
        return answer_response(answer)
