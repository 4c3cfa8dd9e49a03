"""Hostile v2 requests over the wire: each gets a 4xx / INVALID_ARGUMENT naming what was wrong,
fast and without the memory it asks for, and the server keeps serving.

One server with small limits (set through CAPSERVE_* variables) serves the whole module.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from serving.generated import grpc_service_pb2 as pb
from serving.generated import grpc_service_pb2_grpc as pb_grpc
from tests.helpers.server import ServerProcess, start_server
from tests.integration.conftest import API_TOKEN, SLOW_WIDTH

MAX_ELEMENTS = 4096
MAX_RESPONSE = 8000


@pytest.fixture(scope="module")
def server(tiny_store: Path, token_file: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"CAPSERVE_MAX_REQUEST_ELEMENTS": str(MAX_ELEMENTS),
           "CAPSERVE_MAX_RESPONSE_BYTES": str(MAX_RESPONSE)}
    proc = start_server(tiny_store, tmp_path_factory.mktemp("hostile"), env=env,
                        extra_args=["--enable-model-control", "--api-token-file", str(token_file)])
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _post(server: ServerProcess, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(server.base + path, content=body, headers=headers, timeout=30)


def _infer_json(server: ServerProcess, model: str, doc: object, version: str = "") -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return _post(server, path, json.dumps(doc).encode())


def _grpc_error(stub: pb_grpc.GRPCInferenceServiceStub, req: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(req, timeout=30)
    return exc.value


def _assert_400(r: httpx.Response, *fragments: str) -> None:
    assert r.status_code == 400, (r.status_code, r.text)
    for fragment in fragments:
        assert fragment in r.json()["error"], r.json()["error"]


def _assert_invalid(err: grpc.RpcError, *fragments: str) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    for fragment in fragments:
        assert fragment in (err.details() or ""), err.details()


def _still_serving(server: ServerProcess) -> None:
    x = np.arange(16, dtype=np.int32).tolist()
    doc = {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": x}
                      for n in ("INPUT0", "INPUT1")]}
    r = _infer_json(server, "simple", doc)
    assert r.status_code == 200, r.text


def test_bytes_shape_with_no_data_is_refused_fast(server: ServerProcess,
                                                  stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    # [2**31] BYTES with no data used to ask for 16 GiB before the shape was checked.
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [2**31, 1],
                                     "parameters": {"binary_data_size": 0}}]}).encode()
    start = time.perf_counter()
    r = _post(server, "/v2/models/strings/infer", header,
              **{"Inference-Header-Content-Length": str(len(header))})
    _assert_400(r, "'INPUT0'", str(2**31), "max_request_elements")
    req = pb.ModelInferRequest(model_name="strings")
    req.inputs.add(name="INPUT0", datatype="BYTES", shape=[2**31, 1])
    req.raw_input_contents.append(b"")
    _assert_invalid(_grpc_error(stub, req), "'INPUT0'", "max_request_elements")
    assert time.perf_counter() - start < 5
    _still_serving(server)


def test_huge_and_deep_shapes_are_400_not_500(server: ServerProcess,
                                              stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    for shape, fragment in (([2**40], "max_request_elements"), ([1] * 65, "max_tensor_dims")):
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": [0.5]}]}
        _assert_400(_infer_json(server, "slow", doc), "'x'", fragment)
        req = pb.ModelInferRequest(model_name="slow")
        req.inputs.add(name="x", datatype="FP32", shape=shape)
        req.raw_input_contents.append(b"\0" * 4)
        _assert_invalid(_grpc_error(stub, req), "'x'", fragment)


def test_element_limit_names_the_input_its_count_and_the_setting(server: ServerProcess) -> None:
    # Variable or batch dims: 6 x 784 elements over a limit of 4096.
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [6, 1, 28, 28],
                       "data": [0.0] * 6 * 784}]}
    _assert_400(_infer_json(server, "classifier", doc),
                "'input' has 4704 elements", f"limit of {MAX_ELEMENTS}", "max_request_elements")
    doc["inputs"][0].update(shape=[5, 1, 28, 28], data=[0.0] * 5 * 784)  # type: ignore[index]
    assert _infer_json(server, "classifier", doc).status_code == 200


def test_element_limit_setting_applies_over_grpc(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    req = pb.ModelInferRequest(model_name="classifier")
    req.inputs.add(name="input", datatype="FP32", shape=[6, 1, 28, 28])
    req.raw_input_contents.append(np.zeros((6, 1, 28, 28), np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"limit of {MAX_ELEMENTS}" in (err.value.details() or ""), err.value.details()


def test_malformed_json_bodies_are_400(server: ServerProcess) -> None:
    _assert_400(_post(server, "/v2/models/simple/infer", b"[" * 3000 + b"]" * 3000),
                "nested too deeply")
    body = b'{"inputs":[{"name":"INPUT0","datatype":"INT32","shape":[1],"data":[' + b"7" * 5000 + b"]}]}"
    _assert_400(_post(server, "/v2/models/simple/infer", body), "4300")
    _still_serving(server)


def test_raw_binary_body_multiple_of_the_input_size_is_400(server: ServerProcess) -> None:
    one = np.zeros((1, 28, 28), np.float32).tobytes()
    r = _post(server, "/v2/models/classifier/infer", one * 2,
              **{"Inference-Header-Content-Length": "0"})
    _assert_400(r, "6272 bytes", "'input'", "expected 3136 bytes")
    r = _post(server, "/v2/models/classifier/infer", one,
              **{"Inference-Header-Content-Length": "0"})
    assert r.status_code == 200, r.text


def test_out_of_range_int8_over_grpc_is_invalid(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    req = pb.ModelInferRequest(model_name="simple")
    tensor = req.inputs.add(name="INPUT0", datatype="INT8", shape=[1, 2])
    tensor.contents.int_contents.extend([1, 300])
    _assert_invalid(_grpc_error(stub, req), "'INPUT0'", "300", "out of range for INT8")


def test_superscript_version_is_not_found(server: ServerProcess,
                                          stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    doc = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}]}
    r = _infer_json(server, "simple", doc, version="\u00b2")
    assert r.status_code == 404 and "version" in r.json()["error"], r.text
    req = pb.ModelInferRequest(model_name="simple", model_version="\u00b2")
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(req, timeout=30)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND, exc.value.details()


def test_load_parameters_must_be_an_object(server: ServerProcess) -> None:
    r = _post(server, "/v2/repository/models/simple/load", b'{"parameters": 5}',
              Authorization=f"Bearer {API_TOKEN}")
    _assert_400(r, "'parameters'", "JSON object")


def test_non_utf8_bytes_fail_only_their_request(server: ServerProcess) -> None:
    def send(item: bytes) -> httpx.Response:
        raw = len(item).to_bytes(4, "little") + item
        header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 1],
                                         "parameters": {"binary_data_size": len(raw)}}]}).encode()
        return _post(server, "/v2/models/strings/infer", header + raw,
                     **{"Inference-Header-Content-Length": str(len(header))})

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        good, bad = pool.map(send, ["caf\u00e9".encode(), b"\xff\xfe"])
    assert good.status_code == 200 and good.json()["outputs"][0]["data"] == ["caf\u00e9"]
    _assert_400(bad, "'INPUT0'", "not valid UTF-8")


def test_response_cap(server: ServerProcess) -> None:
    x = np.random.default_rng(0).random((1, SLOW_WIDTH), dtype=np.float32)
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, SLOW_WIDTH], "data": x.tolist()}]}
    # 1024 random floats are ~20 KB of JSON, over the 8000-byte cap; binary they are 4 KB.
    _assert_400(_infer_json(server, "slow", doc), f"limit of {MAX_RESPONSE} bytes",
                "max_response_bytes")
    doc["outputs"] = [{"name": "y", "parameters": {"binary_data": True}}]
    r = _infer_json(server, "slow", doc)
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    np.testing.assert_array_equal(np.frombuffer(r.content[n:], np.float32), x[0])
