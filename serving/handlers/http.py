"""HTTP requests in TorchServe's handler format, and handler answers as HTTP responses.

A raw body is the parameter ``body`` with the request's content type; a multipart form gives
one parameter per field (files and text fields alike), as TorchServe's frontend does. Every
request header goes to the handler (``context.get_request_header``).
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from serving.handlers.pool import Answer, HandlerRequest, Param
from serving.logs import request_id_var
from serving.transport.multipart import parse_form

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
