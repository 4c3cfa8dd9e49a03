"""HTTP body codec: JSON tensors, binary extension, compression (no server, no network)."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from serving.core.types import InferResponse, Tensor
from serving.errors import InvalidInput, PayloadTooLarge
from serving.transport import http_codec as codec


def _decode(header: dict, binary: bytes = b"") -> codec.DecodedRequest:
    return codec.decode_infer_request("m", "", header, binary)


def test_json_tensor_nested_and_flat() -> None:
    nested = _decode({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2],
                                  "data": [[1, 2], [3, 4.5]]}]})
    flat = _decode({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4.5]}]})
    for d in (nested, flat):
        arr = d.request.inputs[0].data
        assert arr.dtype == np.float32 and arr.shape == (2, 2)
        np.testing.assert_array_equal(arr, [[1, 2], [3, 4.5]])


def test_json_element_count_mismatch_names_the_input() -> None:
    with pytest.raises(InvalidInput, match="input 'x'.*3 elements.*needs 4"):
        _decode({"inputs": [{"name": "x", "datatype": "INT32", "shape": [4], "data": [1, 2, 3]}]})


def test_binary_inputs_follow_json_in_order() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([7, 8], dtype=np.int64)
    header = {"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": a.nbytes}},
        {"name": "b", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": b.nbytes}},
    ], "outputs": [{"name": "y", "parameters": {"binary_data": True, "classification": 3}}],
       "parameters": {"priority": 2}}
    d = _decode(header, a.tobytes() + b.tobytes())
    np.testing.assert_array_equal(d.request.inputs[0].data, a)
    np.testing.assert_array_equal(d.request.inputs[1].data, b)
    assert d.request.inputs[0].parameters == {}
    assert d.binary_outputs == {"y": True}
    assert d.request.outputs[0].class_count == 3
    assert d.request.parameters == {"priority": 2}


def test_binary_size_mismatch_is_clear() -> None:
    header = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [4],
                          "parameters": {"binary_data_size": 12}}]}
    with pytest.raises(InvalidInput, match="unexpected total byte size 12 for input 'a', expecting 16"):
        _decode(header, b"\0" * 12)
    with pytest.raises(InvalidInput, match="no input claims"):
        _decode({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1],
                             "parameters": {"binary_data_size": 4}}]}, b"\0" * 8)


def test_bytes_json_and_binary() -> None:
    d = _decode({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["hé", "x"]}]})
    assert list(d.request.inputs[0].data) == ["hé".encode(), b"x"]
    raw = b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
    d = _decode({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2],
                             "parameters": {"binary_data_size": len(raw)}}]}, raw)
    assert list(d.request.inputs[0].data) == [b"ab", b""]


def test_split_body() -> None:
    head, rest = codec.split_body(b'{"a":1}XYZ', "7")
    assert head == b'{"a":1}' and bytes(rest) == b"XYZ"
    with pytest.raises(InvalidInput, match="does not fit"):
        codec.split_body(b"{}", "9")


def test_response_binary_and_json() -> None:
    y = np.array([[0.5, -1.25]], dtype=np.float32)
    resp = InferResponse("m", "1", [Tensor("y", "FP32", (1, 2), y), Tensor("z", "INT32", (1,), np.array([3], np.int32))], id="r1")
    body, hlen = codec.encode_infer_response(resp, binary_default=False, binary_outputs={"y": True})
    assert hlen is not None
    head = json.loads(body[:hlen])
    assert head["id"] == "r1" and head["model_version"] == "1"
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert head["outputs"][1]["data"] == [3]
    np.testing.assert_array_equal(np.frombuffer(body[hlen:], "<f4").reshape(1, 2), y)
    body, hlen = codec.encode_infer_response(resp, binary_default=False, binary_outputs={})
    assert hlen is None and json.loads(body)["outputs"][0]["data"] == [0.5, -1.25]


def test_compression_round_trip_and_bomb_limit() -> None:
    payload = b'{"inputs": []}' * 100
    assert codec.decompress(gzip.compress(payload), "gzip", 10_000) == payload
    assert codec.decompress(zlib.compress(payload), "deflate", 10_000) == payload
    with pytest.raises(PayloadTooLarge):
        codec.decompress(gzip.compress(b"\0" * 1_000_000), "gzip", 1000)
    with pytest.raises(InvalidInput, match="unsupported Content-Encoding"):
        codec.decompress(payload, "br", 10_000)
    assert codec.pick_response_encoding("deflate, gzip;q=0") == "deflate"
    assert codec.pick_response_encoding("identity") is None
    assert gzip.decompress(codec.compress(payload, "gzip")) == payload
