"""Every v2 error path, over both tritonclient flavours, with the status the protocol brief gives."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from serving.generated import grpc_service_pb2 as pb
from serving.generated import grpc_service_pb2_grpc as pb_grpc
from tests.helpers.server import ServerProcess, start_server
from tests.integration.conftest import SLOW_WIDTH, assert_error, make_client, make_input


def _simple_inputs(flavour: str, a: np.ndarray, b: np.ndarray | None = None, dtype: str = "INT32") -> list[Any]:
    return [make_input(flavour, "INPUT0", a, dtype), make_input(flavour, "INPUT1", a if b is None else b, dtype)]


def test_unknown_model_and_version(flavour: str, client: Any) -> None:
    a = np.zeros((1, 16), np.int32)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("no_such_model", _simple_inputs(flavour, a))
    assert_error(exc, flavour, 404, "no_such_model")
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", _simple_inputs(flavour, a), model_version="7")
    assert_error(exc, flavour, 404)
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("no_such_model")
    assert_error(exc, flavour, 404)


def test_wrong_datatype(flavour: str, client: Any) -> None:
    a = np.zeros((1, 16), np.float32)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", _simple_inputs(flavour, a, dtype="FP32"))
    assert_error(exc, flavour, 400, "INT32")


def test_wrong_shape(flavour: str, client: Any) -> None:
    a = np.zeros((1, 15), np.int32)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", _simple_inputs(flavour, a))
    assert_error(exc, flavour, 400, "INPUT0")


def test_batch_too_large(flavour: str, client: Any) -> None:
    a = np.zeros((9, 16), np.int32)  # max_batch_size is 8
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", _simple_inputs(flavour, a))
    assert_error(exc, flavour, 400)


def test_unknown_input_name(flavour: str, client: Any) -> None:
    a = np.zeros((1, 16), np.int32)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", [make_input(flavour, "INPUT0", a, "INT32"), make_input(flavour, "BOGUS", a, "INT32")])
    assert_error(exc, flavour, 400, "BOGUS")


def test_wrong_byte_count_grpc(v2_server: ServerProcess) -> None:
    with grpc.insecure_channel(v2_server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="simple")
        req.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
        req.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 16])
        req.raw_input_contents.extend([b"\0" * 64, b"\0" * 60])
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(req)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unexpected total byte size 60 for input 'INPUT1', expecting 64" in exc.value.details()
        # raw and typed contents must not be mixed
        req.inputs[0].contents.int_contents.extend(range(16))
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(req)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_wrong_byte_count_http(v2_server: ServerProcess) -> None:
    header = (b'{"inputs":[{"name":"INPUT0","datatype":"INT32","shape":[1,16],"parameters":{"binary_data_size":64}},'
              b'{"name":"INPUT1","datatype":"INT32","shape":[1,16],"parameters":{"binary_data_size":60}}]}')
    r = httpx.post(v2_server.base + "/v2/models/simple/infer", content=header + b"\0" * 124,
                   headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400
    assert "unexpected total byte size 60 for input 'INPUT1', expecting 64" in r.json()["error"]


def _slow_request(flavour: str, server: ServerProcess, timeout_us: int | None = None) -> str:
    """'ok', or the error status of one request to the slow model (its own client: threads)."""
    c = make_client(flavour, server)
    x = np.full((1, SLOW_WIDTH), 0.5, np.float32)
    try:
        r = c.infer("slow", [make_input(flavour, "x", x, "FP32")], timeout=timeout_us)
        assert np.array_equal(r.as_numpy("y"), x)
        return "ok"
    except InferenceServerException as exc:
        return f"{exc.status()}|{exc.message()}"
    finally:
        c.close()


def _burst(flavour: str, server: ServerProcess, n: int, timeout_us: int | None = None) -> list[str]:
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: _slow_request(flavour, server, timeout_us), range(n)))


def test_queue_full(flavour: str, v2_server: ServerProcess) -> None:
    outcomes = _burst(flavour, v2_server, 10)  # 1 runs, 2 wait, the rest are refused
    unavailable = "503" if flavour == "http" else "StatusCode.UNAVAILABLE"
    refused = [o for o in outcomes if o != "ok"]
    assert "ok" in outcomes
    assert refused, outcomes
    assert all(o == f"{unavailable}|Exceeds maximum queue size" for o in refused), outcomes


def test_request_timeout(flavour: str, v2_server: ServerProcess) -> None:
    outcomes = _burst(flavour, v2_server, 3, timeout_us=1)  # queued 1 µs at most
    unavailable = "503" if flavour == "http" else "StatusCode.UNAVAILABLE"
    timed_out = [o for o in outcomes if o == f"{unavailable}|Request timeout expired"]
    assert timed_out, outcomes
    assert all(o == "ok" or o in timed_out or "Exceeds maximum queue size" in o for o in outcomes), outcomes


@pytest.fixture(scope="module")
def limited_server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Model control off, small request limits."""
    server = start_server(tiny_store, tmp_path_factory.mktemp("limited"),
                          extra_args=["--max-request-bytes", "100000", "--grpc-max-message-bytes", "100000"])
    yield server
    server.stop()


def test_payload_too_large(flavour: str, limited_server: ServerProcess) -> None:
    c = make_client(flavour, limited_server)
    x = np.zeros((32, 1, 28, 28), np.float32)  # 100 KB of pixels + header > 100000
    with pytest.raises(InferenceServerException) as exc:
        c.infer("classifier", [make_input(flavour, "input", x, "FP32")])
    c.close()
    assert_error(exc, flavour, 413)


def test_model_control_disabled(flavour: str, limited_server: ServerProcess) -> None:
    c = make_client(flavour, limited_server)
    for call in (lambda: c.load_model("simple"), lambda: c.unload_model("simple"),
                 c.get_model_repository_index):
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert_error(exc, flavour, 403, "--enable-model-control")
    assert c.is_model_ready("simple")
    c.close()
