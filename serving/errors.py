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


# What of a client-chosen name or version an error message quotes.
SHOWN_CHARS = 200
# The most UTF-8 bytes of one error message. gRPC sends it percent-encoded in a trailer, and
# clients refuse trailers past 8 KiB (soft) / 16 KiB (hard) by default: the call then fails on
# their side (INTERNAL or RESOURCE_EXHAUSTED) instead of carrying our status. 2 KiB stays under
# that even when every byte is escaped (3 bytes each).
MESSAGE_BYTES = 2048
_TAIL_BYTES = 400  # the end of a long message usually says what went wrong: keep it


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` as an error message quotes it: names and versions come from clients and can
    be any length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def bounded_message(message: str) -> str:
    """``message`` cut to at most :data:`MESSAGE_BYTES` UTF-8 bytes, keeping its start and end."""
    data = message.encode("utf-8", "surrogateescape")
    if len(data) <= MESSAGE_BYTES:
        return message
    keep = MESSAGE_BYTES - _TAIL_BYTES - 40  # 40: room for the marker
    marker = f" ...[{len(data) - keep - _TAIL_BYTES} bytes cut]... "
    # A cut inside a multi-byte character drops its pieces rather than sending mojibake.
    return (data[:keep].decode("utf-8", "ignore") + marker
            + data[-_TAIL_BYTES:].decode("utf-8", "ignore"))


class ServingError(Exception):
    """Base of every error the server reports to a client.

    The message is bounded here, the one place every client-facing message passes through
    (see :func:`bounded_message`)."""

    code: ErrorCode = ErrorCode.INTERNAL
    reason: FailureReason = FailureReason.BACKEND

    def __init__(self, message: str) -> None:
        message = bounded_message(message)
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
