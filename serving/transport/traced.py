"""Request spans for the HTTP endpoints and gRPC methods of both dialects (serving/tracing.py).

HTTP endpoints are wrapped when the routes are built, and only when tracing is on, so a server
without tracing runs exactly the endpoints it always did. gRPC methods are decorated on their
class; with tracing off the wrapper is one global read before the call.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from serving import tracing
from serving.errors import ServingError

_PROPAGATED = ("traceparent", "tracestate")
R = TypeVar("R")


def _status(exc: BaseException) -> str:
    return exc.code.name if isinstance(exc, ServingError) else type(exc).__name__


def http_endpoint(name: str, fn: Callable[[Request], Awaitable[Response]]
                  ) -> Callable[[Request], Awaitable[Response]]:
    """``fn`` inside a server span continuing the caller's W3C trace (``fn`` itself when
    tracing is off)."""
    if not tracing.active():
        return fn

    @functools.wraps(fn)
    async def endpoint(request: Request) -> Response:
        headers = request.headers
        carrier = {k: headers[k] for k in _PROPAGATED if k in headers}
        params = request.path_params
        with tracing.request_span(name, carrier, **{
                "capserve.model": str(params.get("model", params.get("target", ""))),
                "capserve.version": str(params.get("version", "")),
                "capserve.protocol": "http"}):
            try:
                response = await fn(request)
            except BaseException as exc:
                tracing.set_attributes(**{"capserve.status": _status(exc)})
                raise
            code = response.status_code
            tracing.set_attributes(**{"capserve.status": "OK" if code < 400 else f"HTTP_{code}",
                                      "http.response.status_code": code})
            return response

    return endpoint


def _metadata(context: Any) -> dict[str, str]:
    pairs: Iterable[tuple[str, Any]] = context.invocation_metadata() or ()
    return {k: str(v) for k, v in pairs if k in _PROPAGATED}


def grpc_method(name: str) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """A unary gRPC method inside a server span; the model comes from the request message."""
    def decorate(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        @functools.wraps(fn)
        async def method(self: Any, request: Any, context: Any) -> R:
            if not tracing.active():
                return await fn(self, request, context)
            with tracing.request_span(name, _metadata(context), **{
                    "capserve.model": str(getattr(request, "model_name", "")),
                    "capserve.version": str(getattr(request, "model_version", "")),
                    "capserve.protocol": "grpc"}):
                try:
                    result = await fn(self, request, context)
                except BaseException as exc:
                    tracing.set_attributes(**{"capserve.status": _status(exc)})
                    raise
                tracing.set_attributes(**{"capserve.status": "OK"})
                return result
        return method
    return decorate
