"""The one table from a neutral :class:`ErrorCode` to HTTP status, gRPC status and TorchServe type.

Every transport maps failures through this module only: the HTTP handlers call
:func:`http_error_response`, the gRPC servicers wrap their methods in :func:`grpc_errors`, and the
TorchServe dialect reads :attr:`ErrorMapping.torchserve_type`. Exceptions that are not a
:class:`ServingError` are bugs: the client gets a generic INTERNAL message (never our internals)
and the traceback goes to the log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc import aio

from serving.errors import ErrorCode, ServingError

logger = logging.getLogger(__name__)

GENERIC_INTERNAL_MESSAGE = "internal server error (see the server log)"


@dataclass(frozen=True, slots=True)
class ErrorMapping:
    http_status: int
    grpc_status: grpc.StatusCode
    torchserve_type: str


# HTTP statuses follow Triton's documented table where it has one (400/404/500/501/503);
# the codes Triton lumps into 400 get the more precise status HTTP has for them, since every
# client we serve only tests for "not 200" and reads the message.
ERROR_TABLE: dict[ErrorCode, ErrorMapping] = {
    ErrorCode.INVALID_ARGUMENT: ErrorMapping(400, grpc.StatusCode.INVALID_ARGUMENT, "BadRequestException"),
    ErrorCode.NOT_FOUND: ErrorMapping(404, grpc.StatusCode.NOT_FOUND, "ModelNotFoundException"),
    ErrorCode.UNAVAILABLE: ErrorMapping(503, grpc.StatusCode.UNAVAILABLE, "ServiceUnavailableException"),
    ErrorCode.INTERNAL: ErrorMapping(500, grpc.StatusCode.INTERNAL, "InternalServerException"),
    ErrorCode.UNIMPLEMENTED: ErrorMapping(501, grpc.StatusCode.UNIMPLEMENTED, "MethodNotAllowedException"),
    ErrorCode.ALREADY_EXISTS: ErrorMapping(409, grpc.StatusCode.ALREADY_EXISTS, "ConflictStatusException"),
    # 499 is the de-facto "client closed request" status; the client has usually gone already.
    ErrorCode.CANCELLED: ErrorMapping(499, grpc.StatusCode.CANCELLED, "RequestCancelledException"),
    ErrorCode.UNAUTHENTICATED: ErrorMapping(401, grpc.StatusCode.UNAUTHENTICATED, "InvalidKeyException"),
    ErrorCode.PERMISSION_DENIED: ErrorMapping(403, grpc.StatusCode.PERMISSION_DENIED, "PermissionDeniedException"),
    ErrorCode.PAYLOAD_TOO_LARGE: ErrorMapping(413, grpc.StatusCode.RESOURCE_EXHAUSTED, "RequestTooLargeException"),
}


class PeerAnswer(ServingError):
    """The error another worker answered a forwarded request with, passed on unchanged."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_from_grpc(status: grpc.StatusCode, details: str) -> ServingError:
    """The error behind a status this table produced (another worker's answer), so it goes
    out again with the same status and message; a status the table never gives is INTERNAL."""
    for code, mapping in ERROR_TABLE.items():
        if mapping.grpc_status == status:
            return PeerAnswer(code, details)
    return PeerAnswer(ErrorCode.INTERNAL, details or GENERIC_INTERNAL_MESSAGE)


def classify(exc: BaseException) -> tuple[ErrorMapping, str]:
    """The mapping and the client-facing message for any exception (logs unexpected ones)."""
    if isinstance(exc, ServingError):
        # Overload refusals (queue full, timeouts) come in floods: keep them out of INFO logs.
        level = logging.DEBUG if exc.code is ErrorCode.UNAVAILABLE else logging.INFO
        logger.log(level, "request failed (%s): %s", exc.code.value, exc.message)
        return ERROR_TABLE[exc.code], exc.message
    logger.error("unexpected error while serving a request", exc_info=exc)
    return ERROR_TABLE[ErrorCode.INTERNAL], GENERIC_INTERNAL_MESSAGE


def http_error_payload(exc: BaseException) -> tuple[int, dict[str, str]]:
    """HTTP status and the KServe v2 error body ``{"error": ...}`` for an exception."""
    mapping, message = classify(exc)
    return mapping.http_status, {"error": message}


_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])


def grpc_errors(method: _Method) -> _Method:
    """Wrap an async unary gRPC servicer method: map any exception to the call's status."""

    @functools.wraps(method)
    async def wrapper(self: object, request: object, context: aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except aio.AbortError:
            raise  # context.abort() already set the status
        except Exception as exc:  # every failure becomes a status, never a dropped call
            mapping, message = classify(exc)
            await context.abort(mapping.grpc_status, message)

    return wrapper  # type: ignore[return-value]


def grpc_status_message(exc: BaseException) -> str:
    """The message a streaming response carries in ``error_message`` for an exception."""
    return classify(exc)[1]
