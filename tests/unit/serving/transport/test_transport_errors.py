"""The one error table: every code mapped, statuses as the protocol brief fixes them."""

from __future__ import annotations

import logging

import grpc
import pytest

from serving import errors
from serving.errors import ErrorCode
from serving.transport.errors import (
    ERROR_TABLE,
    GENERIC_INTERNAL_MESSAGE,
    classify,
    http_error_payload,
)


def test_every_code_has_a_mapping() -> None:
    assert set(ERROR_TABLE) == set(ErrorCode)


@pytest.mark.parametrize(
    ("exc", "http", "grpc_code"),
    [
        (errors.InvalidInput("bad shape"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ModelNotFound("no model"), 404, grpc.StatusCode.NOT_FOUND),
        (errors.QueueFull(), 503, grpc.StatusCode.UNAVAILABLE),
        (errors.RequestTimeout(), 503, grpc.StatusCode.UNAVAILABLE),
        (errors.ServerNotReady("draining"), 503, grpc.StatusCode.UNAVAILABLE),
        (errors.BackendError("boom"), 500, grpc.StatusCode.INTERNAL),
        (errors.Unsupported("nope"), 501, grpc.StatusCode.UNIMPLEMENTED),
        (errors.PayloadTooLarge("big"), 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unauthenticated("who"), 401, grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("off"), 403, grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_statuses(exc: errors.ServingError, http: int, grpc_code: grpc.StatusCode) -> None:
    mapping, message = classify(exc)
    assert (mapping.http_status, mapping.grpc_status) == (http, grpc_code)
    assert message == exc.message
    assert http_error_payload(exc) == (http, {"error": exc.message})


def test_unknown_exception_is_internal_generic_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        status, body = http_error_payload(KeyError("secret internal detail"))
    assert status == 500
    assert body == {"error": GENERIC_INTERNAL_MESSAGE}
    assert "secret" not in body["error"]
    assert any(r.exc_info for r in caplog.records)
