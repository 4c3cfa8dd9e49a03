"""v2 conformance with the unmodified tritonclient, gRPC and HTTP flavours, on a real server."""

from __future__ import annotations

import gzip
import json
import queue
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from serving.generated import grpc_service_pb2 as pb
from serving.generated import grpc_service_pb2_grpc as pb_grpc
from tests.helpers.server import ServerProcess
from tests.integration.conftest import make_client, make_input, make_output


def test_health_and_readiness(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("no_such_model")


def test_server_metadata(flavour: str, client: Any) -> None:
    meta = client.get_server_metadata(as_json=True) if flavour == "grpc" else client.get_server_metadata()
    assert meta["name"] == "capserve"
    # What perf_analyzer and image_client.py key on.
    for ext in ("binary_tensor_data", "classification", "statistics", "model_configuration"):
        assert ext in meta["extensions"]


def test_model_metadata_has_batch_dim_and_numeric_versions(flavour: str, client: Any) -> None:
    meta = client.get_model_metadata("classifier", as_json=True) if flavour == "grpc" \
        else client.get_model_metadata("classifier")
    assert meta["name"] == "classifier" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    (inp,) = meta["inputs"]
    assert inp["name"] == "input" and inp["datatype"] == "FP32"
    assert [int(d) for d in inp["shape"]] == [-1, 1, 28, 28]
    assert [int(d) for d in meta["outputs"][0]["shape"]] == [-1, 10]


def test_model_config(flavour: str, client: Any) -> None:
    cfg = client.get_model_config("classifier", as_json=True) if flavour == "grpc" \
        else client.get_model_config("classifier")
    if flavour == "grpc":
        cfg = cfg["config"]
    assert int(cfg["max_batch_size"]) == 32
    assert cfg["input"][0]["format"] == "FORMAT_NCHW"
    assert "dynamic_batching" in cfg and "sequence_batching" not in cfg
    if flavour == "http":  # Triton's JSON: snake_case, primitives printed, int64 as numbers
        assert cfg["input"][0]["dims"] == [1, 28, 28]
        assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
        assert cfg["input"][0]["is_shape_tensor"] is False


def _typed_infer(server: ServerProcess, model: str, inputs: dict[str, tuple[np.ndarray, str]],
                 outputs: list[str] | None = None, request_id: str = "") -> pb.ModelInferResponse:
    """A gRPC ModelInfer with typed ``contents``: the protocol's non-raw form, which
    tritonclient.grpc never sends (it always fills ``raw_input_contents``)."""
    req = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, (arr, datatype) in inputs.items():
        tensor = req.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if datatype == "BYTES":
            tensor.contents.bytes_contents.extend(arr.reshape(-1).tolist())
        else:
            tensor.contents.int_contents.extend(int(v) for v in arr.reshape(-1))
    for name in outputs or []:
        req.outputs.add(name=name)
    with grpc.insecure_channel(server.grpc_url) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req)


def _raw_output(resp: pb.ModelInferResponse, name: str, dtype: str) -> np.ndarray:
    index = [o.name for o in resp.outputs].index(name)
    shape = [int(d) for d in resp.outputs[index].shape]
    return np.frombuffer(resp.raw_output_contents[index], dtype).reshape(shape)


def _bytes_output(raw: bytes) -> list[bytes]:
    """BYTES elements of a raw output: each a 4-byte little-endian length, then its bytes."""
    items, at = [], 0
    while at < len(raw):
        size = int.from_bytes(raw[at:at + 4], "little")
        items.append(raw[at + 4:at + 4 + size])
        at += 4 + size
    return items


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_two_inputs_and_output_subsets(flavour: str, client: Any, binary: bool,
                                             v2_server: ServerProcess) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    if flavour == "grpc" and not binary:
        typed = {"INPUT0": (a, "INT32"), "INPUT1": (b, "INT32")}
        resp = _typed_infer(v2_server, "simple", typed, request_id="req-7")
        assert resp.id == "req-7" and [o.name for o in resp.outputs] == ["OUTPUT0", "OUTPUT1"]
        np.testing.assert_array_equal(_raw_output(resp, "OUTPUT0", "<i4"), a + b)
        np.testing.assert_array_equal(_raw_output(resp, "OUTPUT1", "<i4"), a - b)
        only = _typed_infer(v2_server, "simple", typed, outputs=["OUTPUT1"])
        assert [o.name for o in only.outputs] == ["OUTPUT1"]
        np.testing.assert_array_equal(_raw_output(only, "OUTPUT1", "<i4"), a - b)
        return
    inputs = [make_input(flavour, "INPUT0", a, "INT32", binary), make_input(flavour, "INPUT1", b, "INT32", binary)]
    result = client.infer("simple", inputs, request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response(as_json=True) if flavour == "grpc" else result.get_response()
    assert response["id"] == "req-7"
    only = client.infer("simple", inputs, outputs=[make_output(flavour, "OUTPUT1", binary)])
    assert only.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(only.as_numpy("OUTPUT1"), a - b)


def test_grpc_typed_contents(v2_server: ServerProcess) -> None:
    """Typed ``contents`` (not what tritonclient sends, but part of the protocol)."""
    with grpc.insecure_channel(v2_server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="simple", id="typed")
        for name, values in (("INPUT0", range(16)), ("INPUT1", [1] * 16)):
            req.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(values)
        resp = stub.ModelInfer(req)
    assert resp.id == "typed" and len(resp.raw_output_contents) == 2
    assert not resp.outputs[0].HasField("contents")
    np.testing.assert_array_equal(np.frombuffer(resp.raw_output_contents[0], "<i4"), np.arange(16) + 1)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_tensors(flavour: str, client: Any, binary: bool, v2_server: ServerProcess) -> None:
    words = [b"hello", "caf\u00e9 \u2603".encode(), b""]
    arr = np.array(words, dtype=object).reshape(-1, 1)
    if flavour == "grpc" and not binary:
        resp = _typed_infer(v2_server, "strings", {"INPUT0": (arr, "BYTES")}, outputs=["OUTPUT0"])
        assert resp.outputs[0].datatype == "BYTES"
        assert _bytes_output(resp.raw_output_contents[0]) == words
        return
    out = client.infer("strings", [make_input(flavour, "INPUT0", arr, "BYTES", binary)],
                       outputs=[make_output(flavour, "OUTPUT0", binary)])
    got = out.as_numpy("OUTPUT0").reshape(-1).tolist()
    # JSON has no bytes type: tritonclient.http hands BYTES outputs of a JSON body back as str.
    want = words if binary or flavour == "grpc" else [w.decode() for w in words]
    assert got == want


def _onnx_reference(store: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(store / "classifier" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def test_same_request_bit_identical_over_grpc_http_and_in_process(v2_server: ServerProcess, tiny_store: Path) -> None:
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    expected = _onnx_reference(tiny_store, x)
    results = []
    for flavour, binary in (("grpc", True), ("http", True), ("http", False)):
        c = make_client(flavour, v2_server)
        r = c.infer("classifier", [make_input(flavour, "input", x, "FP32", binary)],
                    outputs=[make_output(flavour, "logits", binary)])
        results.append(r.as_numpy("logits"))
        c.close()
    for got in results:
        assert got.dtype == np.float32
        assert got.tobytes() == expected.tobytes()


def test_classification_extension(flavour: str, client: Any, tiny_store: Path) -> None:
    x = np.random.default_rng(2).standard_normal((2, 1, 28, 28)).astype(np.float32)
    logits = _onnx_reference(tiny_store, x)
    r = client.infer("classifier", [make_input(flavour, "input", x, "FP32")],
                     outputs=[make_output(flavour, "logits", class_count=3)])
    top = r.as_numpy("logits")
    assert top.shape == (2, 3)
    for row, scores in zip(top, logits, strict=True):
        order = np.argsort(-scores)[:3]
        parsed = [item.decode().split(":") for item in row]
        assert [int(p[1]) for p in parsed] == order.tolist()
        assert [p[2] for p in parsed] == [f"digit_{i}" for i in order]
        np.testing.assert_allclose([float(p[0]) for p in parsed], scores[order], rtol=1e-5)


def test_statistics_count_requests(flavour: str, client: Any) -> None:
    def stats() -> dict[str, Any]:
        doc = client.get_inference_statistics("strings", as_json=True) if flavour == "grpc" \
            else client.get_inference_statistics("strings")
        (entry,) = doc["model_stats"]
        return entry

    before = stats()
    arr = np.array([[b"a"], [b"b"]], dtype=object)
    for _ in range(3):
        client.infer("strings", [make_input(flavour, "INPUT0", arr, "BYTES")])
    after = stats()
    assert after["version"] == "1"
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 6
    success = after["inference_stats"]["success"]
    prev_success = before["inference_stats"]["success"]
    assert int(success["count"]) - int(prev_success.get("count", 0)) == 3
    assert int(after["inference_stats"]["queue"]["count"]) >= 3 and int(success["ns"]) > 0


def test_http_compression(v2_server: ServerProcess) -> None:
    c = make_client("http", v2_server)
    a = np.ones((1, 16), np.int32)
    for req_alg, resp_alg in (("gzip", "deflate"), ("deflate", "gzip")):
        r = c.infer("simple", [make_input("http", "INPUT0", a, "INT32"), make_input("http", "INPUT1", a, "INT32")],
                    request_compression_algorithm=req_alg, response_compression_algorithm=resp_alg)
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a * 2)
    c.close()
    x = np.random.default_rng(3).standard_normal((8, 1, 28, 28)).astype(np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    r = httpx.post(v2_server.base + "/v2/models/classifier/infer", content=gzip.compress(json.dumps(body).encode()),
                   headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert np.asarray(r.json()["outputs"][0]["data"], np.float32).shape == (80,)


def test_grpc_stream_errors_do_not_end_the_stream(v2_server: ServerProcess) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    c = grpcclient.InferenceServerClient(v2_server.grpc_url)
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    good = [make_input("grpc", "INPUT0", a, "INT32"), make_input("grpc", "INPUT1", a, "INT32")]
    bad = [make_input("grpc", "INPUT0", a, "INT32"), make_input("grpc", "WRONG", a, "INT32")]
    for i, inputs in enumerate([good, bad, good, good]):
        c.async_stream_infer("simple", inputs, request_id=f"s{i}")
    answers = [results.get(timeout=30) for _ in range(4)]
    c.stop_stream()
    c.close()
    errors = [e for r, e in answers if e is not None]
    oks = [r for r, e in answers if e is None]
    assert len(errors) == 1 and "WRONG" in errors[0].message()
    assert sorted(r.get_response().id for r in oks) == ["s0", "s2", "s3"]
    for r in oks:
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a * 2)


def test_grpc_health_service(v2_server: ServerProcess) -> None:
    from serving.generated import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(v2_server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        assert stub.Check(health_pb2.HealthCheckRequest(service="simple")).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as exc:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        first = next(iter(stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)))
        assert first.status == health_pb2.HealthCheckResponse.SERVING


def test_unknown_route_and_error_body(v2_server: ServerProcess) -> None:
    r = httpx.get(v2_server.base + "/v2/nothing/here")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(v2_server.base + "/v2/models/simple/infer", content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_statistics_of_every_model(flavour: str, client: Any) -> None:
    doc = client.get_inference_statistics(as_json=True) if flavour == "grpc" \
        else client.get_inference_statistics()
    names = {s["name"] for s in doc["model_stats"]}
    assert {"simple", "strings"} <= names
    assert all(s["version"].isdigit() for s in doc["model_stats"])
