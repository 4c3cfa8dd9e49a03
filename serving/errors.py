"""The one error hierarchy of the server.

Every failure the server reports carries a neutral :class:`ErrorCode`. The transports turn the
code into an HTTP status or a gRPC status through the single table in
``serving/transport/errors.py``; nothing below the transport layer knows about either.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Protocol-neutral error codes (Triton's set plus what TorchServe and auth need)."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    UNIMPLEMENTED = "unimplemented"
    ALREADY_EXISTS = "already_exists"
    CANCELLED = "cancelled"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    PAYLOAD_TOO_LARGE = "payload_too_large"


class FailureReason(enum.Enum):
    """Why a request failed, as the metrics label ``reason`` spells it."""

    REJECTED = "rejected"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    BACKEND = "backend"
    CANCELED = "canceled"


class ServingError(Exception):
    """Base of every error the server reports to a client."""

    code: ErrorCode = ErrorCode.INTERNAL
    reason: FailureReason = FailureReason.BACKEND

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(ServingError):
    code = ErrorCode.INVALID_ARGUMENT
    reason = FailureReason.INVALID


class ModelNotFound(ServingError):
    code = ErrorCode.NOT_FOUND
    reason = FailureReason.INVALID


class ModelNotReady(ServingError):
    code = ErrorCode.UNAVAILABLE
    reason = FailureReason.REJECTED


class ServerNotReady(ServingError):
    code = ErrorCode.UNAVAILABLE
    reason = FailureReason.REJECTED


class QueueFull(ServingError):
    code = ErrorCode.UNAVAILABLE
    reason = FailureReason.REJECTED

    def __init__(self, message: str = "Exceeds maximum queue size") -> None:
        super().__init__(message)


class RequestTimeout(ServingError):
    code = ErrorCode.UNAVAILABLE
    reason = FailureReason.TIMEOUT

    def __init__(self, message: str = "Request timeout expired") -> None:
        super().__init__(message)


class RequestCancelled(ServingError):
    code = ErrorCode.CANCELLED
    reason = FailureReason.CANCELED


class BackendError(ServingError):
    code = ErrorCode.INTERNAL
    reason = FailureReason.BACKEND


class Unsupported(ServingError):
    code = ErrorCode.UNIMPLEMENTED
    reason = FailureReason.INVALID


class AlreadyExists(ServingError):
    code = ErrorCode.ALREADY_EXISTS
    reason = FailureReason.INVALID


class Unauthenticated(ServingError):
    code = ErrorCode.UNAUTHENTICATED
    reason = FailureReason.REJECTED


class PermissionDenied(ServingError):
    code = ErrorCode.PERMISSION_DENIED
    reason = FailureReason.REJECTED


class PayloadTooLarge(ServingError):
    code = ErrorCode.PAYLOAD_TOO_LARGE
    reason = FailureReason.INVALID


class ResponseTooLarge(ServingError):
    """The answer to a request would exceed the response size limit; a smaller request (or
    binary outputs) fits. The request caused it, so it is the client's error."""

    code = ErrorCode.INVALID_ARGUMENT
    reason = FailureReason.INVALID


class ModelLoadFailed(ServingError):
    """A model (or one of its versions) could not be loaded; the message says why."""

    code = ErrorCode.INVALID_ARGUMENT
    reason = FailureReason.INVALID
