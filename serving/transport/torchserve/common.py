"""What every TorchServe-dialect front shares: its error body, its version spelling and the
endpoint guard (request id, errors as TorchServe's JSON). The inference routes, the management
API and the gRPC services import it; it imports none of them."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serving.errors import ServingError
from serving.logs import new_request_id, request_id_var
from serving.transport.errors import classify
from serving.transport.http_body import header

_TS_VERSION = re.compile(r"^(\d+)(?:\.0+)?$")


def torchserve_error(exc: BaseException) -> JSONResponse:
    mapping, message = classify(exc)
    return JSONResponse({"code": mapping.http_status, "type": mapping.torchserve_type,
                         "message": message}, status_code=mapping.http_status)


def model_version(text: str) -> str:
    """TorchServe versions are often ``1.0``; capserve's are integers: accept both spellings."""
    match = _TS_VERSION.match(text)
    return match.group(1) if match else text


def guard(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        request_id_var.set(header(request, "x-request-id") or new_request_id())
        try:
            return await fn(request)
        except ServingError as exc:
            return torchserve_error(exc)
        except Exception as exc:  # never a dropped connection: 500 with a generic message
            return torchserve_error(exc)
    return endpoint
