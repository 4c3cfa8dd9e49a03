"""Helpers shared by the v2 conformance tests: one API over tritonclient's grpc and http flavours."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.helpers.server import ServerProcess

FLAVOURS = ["grpc", "http"]
GRPC_CODE = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE", 500: "INTERNAL",
             501: "UNIMPLEMENTED", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
             413: "RESOURCE_EXHAUSTED"}


def module(flavour: str) -> ModuleType:
    return grpcclient if flavour == "grpc" else httpclient


def make_client(flavour: str, server: ServerProcess, **kwargs: Any) -> Any:
    if flavour == "grpc":
        return grpcclient.InferenceServerClient(server.grpc_url, **kwargs)
    return httpclient.InferenceServerClient(server.http_url, **kwargs)


def make_input(flavour: str, name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> Any:
    inp = module(flavour).InferInput(name, list(arr.shape), datatype)
    if flavour == "http":
        inp.set_data_from_numpy(arr, binary_data=binary)
    else:
        inp.set_data_from_numpy(arr)
    return inp


def make_output(flavour: str, name: str, binary: bool = True, class_count: int = 0) -> Any:
    if flavour == "http":
        return httpclient.InferRequestedOutput(name, binary_data=binary, class_count=class_count)
    return grpcclient.InferRequestedOutput(name, class_count=class_count)


def assert_error(exc: pytest.ExceptionInfo[InferenceServerException], flavour: str, http_status: int,
                 match: str = "") -> None:
    """The status the protocol brief gives, in the flavour's own spelling, and the message."""
    status = exc.value.status()
    if flavour == "http":
        assert status == str(http_status), (status, exc.value.message())
    else:
        assert status == f"StatusCode.{GRPC_CODE[http_status]}", (status, exc.value.message())
    if match:
        assert match in (exc.value.message() or ""), exc.value.message()
