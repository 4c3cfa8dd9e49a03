"""Register gRPC services so that a request which does not parse is the client's error.

grpc runs a method's ``request_deserializer`` before any code of ours: when protobuf refuses the
bytes, grpc answers UNKNOWN "Unexpected DecodeError" (a server fault to every client and to the
reliability figures), and inside a request stream the servicer's reader dies with the error.

:func:`add_service` registers a servicer through its generated ``add_XServicer_to_server``
function, given a stand-in server that only collects the method handlers. Each handler is then
registered on the real server with a deserializer that never raises (it returns an
:class:`Undecodable` marker) and a behaviour that answers the marker with INVALID_ARGUMENT
"request is not a valid <message>: <reason>".

In a request stream, a method marked :func:`answers_undecodable` receives the marker among its
messages and answers it like any bad request (the stream goes on). For any other, the first
message that does not parse ends the stream as the servicer sees it: the messages before it
are answered, the rest of what the client sends is read and dropped, then the call ends with
that INVALID_ARGUMENT. Ending a call while the client is still writing would make its grpc
library report "Internal error from Core" instead of our status.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc import aio

# The generic text protobuf's C decoder gives for any failure; it names only the type.
_GENERIC_REASON = ("the bytes do not decode as this protobuf message (truncated or corrupt "
                   "data, a wrong wire type, or invalid UTF-8 in a string field)")


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What the tolerant deserializer returns for bytes that are not a valid message."""

    message_type: str
    reason: str

    def message(self) -> str:
        return f"request is not a valid {self.message_type}: {self.reason}"


def _message_type(deserializer: Callable[[bytes], Any]) -> str:
    # The generated handlers pass ``Message.FromString``, bound to the message class.
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    full_name = getattr(descriptor, "full_name", None)
    return str(full_name) if full_name else "request message"


def _reason(exc: Exception, message_type: str) -> str:
    text = str(exc)
    if not text or text == f"Error parsing message with type '{message_type}'":
        return _GENERIC_REASON
    return text[:200]


def tolerant_deserializer(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer``, returning an :class:`Undecodable` instead of raising."""
    message_type = _message_type(deserializer)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, RecursionError on deep nesting, ...
            return Undecodable(message_type, _reason(exc, message_type))

    return deserialize


async def _refuse(context: aio.ServicerContext, bad: Undecodable) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad.message())


def _unary_request(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """A behaviour taking one request: the marker is refused before the servicer runs."""
    if inspect.isasyncgenfunction(behaviour):
        async def stream(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            async with contextlib.aclosing(behaviour(request, context)) as responses:
                async for response in responses:
                    yield response

        return stream

    _require_coroutine(behaviour)

    async def call(request: Any, context: aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        return await behaviour(request, context)

    return call


_ANSWERS_UNDECODABLE = "_answers_undecodable"

_F = TypeVar("_F", bound=Callable[..., Any])


def answers_undecodable(method: _F) -> _F:
    """Mark a request-streaming servicer method that answers :class:`Undecodable` messages
    itself (as one failed request of the stream)."""
    setattr(method, _ANSWERS_UNDECODABLE, True)
    return method


class _Requests:
    """A request stream that ends at its first undecodable message and remembers it."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self.bad: Undecodable | None = None

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        if self.bad is not None:
            raise StopAsyncIteration
        message = await anext(self._source)
        if isinstance(message, Undecodable):
            self.bad = message
            async for _ in self._source:  # let the client finish writing (see module doc)
                pass
            raise StopAsyncIteration
        return message


def _stream_request(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """A behaviour reading a request stream: answers what came before a bad message, then
    ends the call with INVALID_ARGUMENT for it (unless it answers such messages itself)."""
    if getattr(behaviour, _ANSWERS_UNDECODABLE, False):
        return behaviour
    if inspect.isasyncgenfunction(behaviour):
        async def stream(source: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            requests = _Requests(source)
            async with contextlib.aclosing(behaviour(requests, context)) as responses:
                async for response in responses:
                    yield response
            if requests.bad is not None:
                await _refuse(context, requests.bad)

        return stream

    _require_coroutine(behaviour)

    async def call(source: Any, context: aio.ServicerContext) -> Any:
        requests = _Requests(source)
        result = await behaviour(requests, context)
        if requests.bad is not None:
            await _refuse(context, requests.bad)
        return result

    return call


def _require_coroutine(behaviour: Callable[..., Any]) -> None:
    # A sync behaviour would run on grpc's thread pool with a sync context; none of ours is.
    if not inspect.iscoroutinefunction(behaviour):
        raise TypeError(f"{getattr(behaviour, '__qualname__', behaviour)!r} must be an async "
                        "servicer method to be registered on a grpc.aio server")


def tolerant_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with a deserializer that never raises and a behaviour that refuses what
    it could not decode."""
    if handler.request_deserializer is None:  # raw bytes: nothing to decode
        return handler
    deserializer = tolerant_deserializer(handler.request_deserializer)
    if handler.request_streaming:
        field = "stream_stream" if handler.response_streaming else "stream_unary"
        wrap = _stream_request
    else:
        field = "unary_stream" if handler.response_streaming else "unary_unary"
        wrap = _unary_request
    replaced: grpc.RpcMethodHandler = handler._replace(
        request_deserializer=deserializer, **{field: wrap(getattr(handler, field))})
    return replaced


class _HandlerCollector:
    """Stands in for the server in a generated ``add_XServicer_to_server`` call."""

    def __init__(self) -> None:
        self.services: list[tuple[str, dict[str, grpc.RpcMethodHandler]]] = []

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """Ignored: the generated code passes the same methods to the call below."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services.append((service, dict(handlers)))


def add_service(register: Callable[[Any, Any], None], servicer: object,
                server: aio.Server) -> None:
    """Register ``servicer`` on ``server`` the way ``register`` (a generated
    ``add_XServicer_to_server``) would, with every request decoded tolerantly."""
    collector = _HandlerCollector()
    register(servicer, collector)
    if not collector.services:
        raise RuntimeError(f"{register.__name__} registered no method handlers; the generated "
                           "gRPC code is older than this module expects (regenerate it)")
    for service, handlers in collector.services:
        tolerant = {method: tolerant_handler(h) for method, h in handlers.items()}
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, tolerant),))
        server.add_registered_method_handlers(service, tolerant)
