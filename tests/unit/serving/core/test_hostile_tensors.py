"""Hostile tensor headers and payloads: every one is a clear InvalidInput, checked before the
memory or work it asks for, over the HTTP codec and the gRPC converters alike."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from serving.core import datatypes
from serving.core.types import InferRequest, InferResponse, Tensor
from serving.core.validation import (
    DEFAULT_LIMITS,
    ElementBudget,
    TensorLimits,
    check_request,
    check_version,
    element_count,
)
from serving.errors import InvalidInput, ModelNotFound, ResponseTooLarge
from serving.generated import grpc_service_pb2 as pb
from serving.generated import model_config_pb2
from serving.settings import Settings
from serving.store.reader import spec_of
from serving.transport import grpc_converters as conv
from serving.transport import http_codec as codec
from serving.transport.http_app import _raw_shape

MiB = 1024 * 1024


@contextmanager
def bounded(max_bytes: int = 8 * MiB, max_seconds: float = 1.0) -> Iterator[None]:
    """The block allocates at most ``max_bytes`` (Python and numpy) and ends in ``max_seconds``."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < max_bytes, f"peak allocation {peak} bytes"
    assert time.perf_counter() - start < max_seconds


def _http(inputs: list[dict[str, Any]], binary: bytes = b"",
          limits: TensorLimits = DEFAULT_LIMITS) -> codec.DecodedRequest:
    return codec.decode_infer_request("m", "", {"inputs": inputs}, binary, limits)


def _grpc(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None = None,
          limits: TensorLimits = DEFAULT_LIMITS) -> Any:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.append(tensor)
    if raw is not None:
        msg.raw_input_contents.append(raw)
    return conv.infer_request_to_types(msg, limits)


def _raises(fn: Callable[[], object], *fragments: str) -> str:
    with pytest.raises(InvalidInput) as exc:
        fn()
    for fragment in fragments:
        assert fragment in exc.value.message, exc.value.message
    return exc.value.message


# --------------------------------------------------------------------------- shapes


def test_settings_defaults_are_the_core_defaults() -> None:
    assert TensorLimits.from_settings(Settings()) == DEFAULT_LIMITS


def test_bytes_shape_with_no_data_is_refused_before_allocation() -> None:
    # [2**31] BYTES with no data asked numpy for 16 GiB of object pointers.
    with bounded():
        _raises(lambda: _http([{"name": "s", "datatype": "BYTES", "shape": [2**31],
                                "parameters": {"binary_data_size": 0}}]),
                "'s'", str(2**31), "max_request_elements")
        _raises(lambda: _grpc(pb.ModelInferRequest.InferInputTensor(
            name="s", datatype="BYTES", shape=[2**31]), raw=b""), "'s'", "max_request_elements")
    # Under the element caps, the count is still checked against the buffer before allocating.
    big = TensorLimits(max_elements=2**40, max_string_elements=2**40)
    with bounded():
        _raises(lambda: _grpc(pb.ModelInferRequest.InferInputTensor(
            name="s", datatype="BYTES", shape=[2**31]), raw=b"\x00" * 8, limits=big),
            "4-byte length prefixes")


@pytest.mark.parametrize("shape", [[2**40], [2**20, 2**20, 2**20], [2**62, 2**62], [3] * 16])
def test_huge_shapes_are_invalid_not_500(shape: list[int]) -> None:
    with bounded():
        _raises(lambda: _http([{"name": "x", "datatype": "FP32", "shape": shape, "data": []}]),
                "'x'", "max_request_elements")
        _raises(lambda: _grpc(pb.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=shape), raw=b""), "'x'", "max_request_elements")


def test_too_many_dims_names_the_limit() -> None:
    shape = [1] * 65
    _raises(lambda: _http([{"name": "x", "datatype": "FP32", "shape": shape, "data": [0.0]}]),
            "'x' has 65 dimensions", "limit of 16", "max_tensor_dims")
    _raises(lambda: _grpc(pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=shape), raw=b"\x00" * 4), "max_tensor_dims")


def test_zero_sized_shapes_stay_valid_but_dims_are_bounded() -> None:
    assert element_count("x", (0, 16), 100) == 0
    _raises(lambda: element_count("x", (0, 2**62), 100), "dimension 4611686018427387904")


def test_element_limit_counts_every_input_of_a_request() -> None:
    limits = TensorLimits(max_elements=100)
    budget = ElementBudget(limits)
    assert budget.take("a", "FP32", (10, 6)) == 60
    _raises(lambda: budget.take("b", "FP32", (50,)),
            "'b' (50 elements) brings the request to 110", "limit of 100", "max_request_elements")
    ok = [{"name": n, "datatype": "INT32", "shape": [50], "data": [0] * 50} for n in "ab"]
    assert len(_http(ok, limits=limits).request.inputs) == 2
    ok.append({"name": "c", "datatype": "INT32", "shape": [1], "data": [0]})
    _raises(lambda: _http(ok, limits=limits), "'c'", "101")


def test_variable_dims_are_bounded_by_the_element_limit() -> None:
    # unet [1, 1, 4000, 4000] FP32 fits the 64 MiB body cap; its activations need ~1 GB each.
    _raises(lambda: _grpc(pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 1, 4000, 4000]), raw=b""),
        "'input' has 16000000 elements", f"limit of {DEFAULT_LIMITS.max_elements}")
    # A batch of style images at the pipelines' 512 px still fits.
    ElementBudget(DEFAULT_LIMITS).take("input", "FP32", (5, 3, 512, 512))


def test_string_elements_have_their_own_limit() -> None:
    limits = TensorLimits(max_string_elements=3)
    raw = datatypes.serialize_bytes_tensor(np.array([b"a"] * 4, dtype=object))
    _raises(lambda: _grpc(pb.ModelInferRequest.InferInputTensor(
        name="s", datatype="BYTES", shape=[4]), raw=raw, limits=limits),
        "BYTES input 's'", "limit of 3", "max_request_string_elements")


def test_raw_size_must_match_exactly() -> None:
    arr = np.zeros((2, 3), np.float32)
    _raises(lambda: _grpc(pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[2, 3]), raw=arr.tobytes() * 2),
        "unexpected total byte size 48 for input 'x', expecting 24")


# --------------------------------------------------------------------------- raw binary body


def test_raw_binary_body_multiple_of_a_fixed_size_is_invalid() -> None:
    assert _raw_shape("input", [1, 28, 28], "FP32", 3136) == (1, 28, 28)
    _raises(lambda: _raw_shape("input", [1, 28, 28], "FP32", 6272),
            "6272 bytes", "'input'", "expected 3136 bytes")
    assert _raw_shape("input", [1, -1], "FP32", 40) == (1, 10)
    _raises(lambda: _raw_shape("input", [1, -1], "FP32", 41), "a multiple of 4 bytes")


# --------------------------------------------------------------------------- JSON


def test_deep_json_nesting_is_invalid() -> None:
    _raises(lambda: codec.parse_json_body(b"[" * 100_000 + b"]" * 100_000), "nested too deeply")
    _raises(lambda: codec.parse_json_body(b'{"inputs":' + b"[" * 5000 + b"]" * 5000 + b"}"),
            "nested too deeply")


def test_integers_over_the_digit_limit_are_invalid() -> None:
    body = b'{"inputs":[{"name":"x","datatype":"INT64","shape":[1],"data":[' + b"9" * 5000 + b"]}]}"
    _raises(lambda: codec.parse_json_body(body, "inference request header"),
            "inference request header", "4300")


def test_json_value_count_is_bounded_before_parsing() -> None:
    limits = TensorLimits(max_elements=1000)
    body = b'{"inputs":[' + b"[]," * 10_000 + b"[]]}"
    with bounded(max_bytes=MiB):
        _raises(lambda: codec.check_json_values(body, limits), "max_request_elements", "1000")
    small = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1000],
                                    "data": [0.5] * 1000}]}).encode()
    codec.check_json_values(small, limits)


def test_json_data_far_longer_than_its_shape_is_refused_before_conversion() -> None:
    _raises(lambda: _http([{"name": "x", "datatype": "FP32", "shape": [2], "data": [0.0] * 10_000}]),
            "'x'", "10000 elements", "needs 2")


def test_out_of_range_json_integers_are_invalid() -> None:
    _raises(lambda: _http([{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]),
            "'x'", "INT8")


# --------------------------------------------------------------------------- gRPC typed contents


@pytest.mark.parametrize(("datatype", "field", "value"), [
    ("INT8", "int_contents", 300), ("INT8", "int_contents", -129),
    ("INT16", "int_contents", 40_000), ("UINT8", "uint_contents", 256),
    ("UINT16", "uint_contents", 70_000),
])
def test_typed_contents_out_of_range_are_invalid(datatype: str, field: str, value: int) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=[2])
    getattr(tensor.contents, field).extend([1, value])
    _raises(lambda: _grpc(tensor), "'x'", str(value), "out of range", datatype)


def test_typed_contents_in_range_keep_their_values() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT8", shape=[3])
    tensor.contents.int_contents.extend([-128, 0, 127])
    data = _grpc(tensor).inputs[0].data
    assert data.dtype == np.int8 and data.tolist() == [-128, 0, 127]


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize("version", ["\u00b2", "\u0661", "1\u00b2", "-1", " 1"])
def test_non_ascii_digit_versions_are_not_found(version: str) -> None:
    with pytest.raises(ModelNotFound, match="version"):
        check_version("m", version)
    msg = pb.ModelInferRequest(model_name="m", model_version=version)
    with pytest.raises(ModelNotFound):
        conv.infer_request_to_types(msg)
    assert check_version("m", "12") == "12" and check_version("m", "") == ""


# --------------------------------------------------------------------------- responses


def _response(n: int, datatype: str = "FP32") -> InferResponse:
    data = np.zeros(n, datatypes.triton_to_numpy(datatype))
    return InferResponse("m", "1", [Tensor("y", datatype, (n,), data)])


def test_response_floor_refuses_before_encoding() -> None:
    cost = codec.response_cost(_response(1000), binary_default=True, binary_outputs={})
    assert cost.floor_bytes == 4000
    with pytest.raises(ResponseTooLarge, match="at least 4000 bytes.*max_response_bytes"):
        codec.check_response_floor(cost, 3999)
    json_cost = codec.response_cost(_response(1000), binary_default=False, binary_outputs={})
    assert json_cost.floor_bytes == 2000 and json_cost.typical_bytes > json_cost.floor_bytes


def test_response_over_the_cap_after_encoding_is_refused() -> None:
    with pytest.raises(ResponseTooLarge, match="max_response_bytes.*binary outputs are smaller"):
        codec.encode_http_response(_response(1000), False, {}, None, 2500)
    ok = codec.encode_http_response(_response(1000), False, {}, "gzip", 64 * MiB)
    assert ok.content_encoding == "gzip" and ok.json_length is None
    assert ResponseTooLarge("x").code.value == "invalid_argument"


def test_large_json_outputs_are_encoded_in_slices_to_the_same_document() -> None:
    n = codec.JSON_SLICE * 3 + 5
    floats = np.random.default_rng(1).random(n, dtype=np.float32)
    strings = np.array([f"s{i}".encode() for i in range(n)], dtype=object)
    response = InferResponse("m", "1", [
        Tensor("f", "FP32", (1, n), floats.reshape(1, n), parameters={"p": 1}),
        Tensor("s", "BYTES", (n,), strings),
        Tensor("b", "INT32", (2,), np.array([7, 8], np.int32)),
    ], id="r1", parameters={"q": "x"})
    body, n_json = codec.encode_infer_response(response, False, {"b": True})
    assert n_json is not None
    doc = json.loads(body[:n_json])
    assert doc["id"] == "r1" and doc["parameters"] == {"q": "x"}
    f, s, b = doc["outputs"]
    assert f["data"] == floats.tolist() and f["parameters"] == {"p": 1} and f["shape"] == [1, n]
    assert s["data"] == [x.decode() for x in strings]
    assert b["parameters"] == {"binary_data_size": 8} and "data" not in b
    assert np.frombuffer(body[n_json:], np.int32).tolist() == [7, 8]


def test_grpc_decode_goes_off_loop_for_large_payloads_with_the_same_checks() -> None:
    small = pb.ModelInferRequest(model_name="m")
    small.inputs.add(name="x", datatype="FP32", shape=[4])
    small.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    large = pb.ModelInferRequest(model_name="m")
    large.inputs.add(name="x", datatype="INT8", shape=[1, 40_000])
    large.inputs[0].contents.int_contents.extend([1] * 39_999 + [300])
    assert asyncio.run(conv.infer_request_to_types_off_loop(small)).inputs[0].data.tolist() == [
        0, 1, 2, 3]
    with pytest.raises(InvalidInput, match="300 is out of range"):
        asyncio.run(conv.infer_request_to_types_off_loop(large))
    with pytest.raises(InvalidInput, match="max_request_elements"):
        asyncio.run(conv.infer_request_to_types_off_loop(large, TensorLimits(max_elements=100)))


def test_huge_priority_or_timeout_parameters_are_invalid() -> None:
    config = model_config_pb2.ModelConfig(name="m", max_batch_size=4)
    config.input.add(name="x", data_type=model_config_pb2.TYPE_FP32, dims=[2])
    config.output.add(name="y", data_type=model_config_pb2.TYPE_FP32, dims=[2])
    rules = spec_of(config).rules
    x = np.zeros((1, 2), np.float32)
    for key, value in (("timeout", 10**400), ("priority", 1e300)):
        request = InferRequest("m", [Tensor("x", "FP32", (1, 2), x)], parameters={key: value})
        _raises(lambda r=request: check_request(rules, r), f"'{key}'", "64-bit")
    ok = InferRequest("m", [Tensor("x", "FP32", (1, 2), x)], parameters={"timeout": 2**63 - 1})
    assert check_request(rules, ok).timeout_us == 2**63 - 1
