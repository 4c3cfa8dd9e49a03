"""Triton's CUDA shared-memory extension through unmodified tritonclient (grpc and http), on the
conformance server (model control on, token).

Without a GPU (this machine, CI) a register call with a fabricated 64-byte handle gets Triton's
INVALID_ARGUMENT / 400 saying CUDA needs a GPU and why, status is empty and unregister works;
malformed registrations get their own 400s. With CUDA visible, the last test registers real
regions made by ``tritonclient.utils.cuda_shared_memory`` and infers through them; it is the
only one that proves the CUDA calls and runs only where a device is lent.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tritonclient.utils import InferenceServerException

from tests.helpers.server import ServerProcess, start_server
from tests.integration.conftest import (
    API_TOKEN,
    assert_error,
    make_client,
    module,
    one_model_store,
)

pytestmark = pytest.mark.integration

AUTH = {"authorization": f"Bearer {API_TOKEN}"}
GPU = torch.cuda.is_available()
no_gpu_only = pytest.mark.skipif(GPU, reason="asserts the answers of a server without a GPU")
FAKE_HANDLE = base64.b64encode(bytes(range(64)))  # what get_raw_handle returns: base64 bytes


def _name() -> str:
    return f"cuda_{uuid.uuid4().hex[:10]}"


def _status(flavour: str, client: Any, name: str = "") -> dict[str, dict[str, int]]:
    """Region name -> {device_id, byte_size} in either flavour's answer."""
    if flavour == "grpc":
        doc = client.get_cuda_shared_memory_status(name, headers=AUTH, as_json=True)
        return {n: {k: int(v) for k, v in r.items() if k != "name"}
                for n, r in doc.get("regions", {}).items()}
    return {r["name"]: {"device_id": r["device_id"], "byte_size": r["byte_size"]}
            for r in client.get_cuda_shared_memory_status(name, headers=AUTH)}


@no_gpu_only
def test_register_without_a_gpu_says_why(flavour: str, client: Any) -> None:
    name = _name()
    with pytest.raises(InferenceServerException) as exc:
        client.register_cuda_shared_memory(name, FAKE_HANDLE, 0, 1024, headers=AUTH)
    assert_error(exc, flavour, 400, "CUDA shared memory requires a GPU: ")
    assert _status(flavour, client) == {}
    with pytest.raises(InferenceServerException) as exc:
        _status(flavour, client, name)
    assert_error(exc, flavour, 404, "Unable to find cuda shared memory region")
    client.unregister_cuda_shared_memory(name, headers=AUTH)  # unknown name: no error
    client.unregister_cuda_shared_memory(headers=AUTH)  # all: works with nothing registered


@no_gpu_only
def test_server_metadata_does_not_list_cuda_without_a_gpu(flavour: str, client: Any) -> None:
    meta = client.get_server_metadata()
    extensions = meta["extensions"] if flavour == "http" else list(meta.extensions)
    assert "system_shared_memory" in extensions and "cuda_shared_memory" not in extensions


@pytest.mark.parametrize(("handle", "device_id", "size", "text"), [
    (base64.b64encode(b"short"), 0, 64, "raw_handle must be the 64 bytes"),
    (FAKE_HANDLE, 0, 0, "byte_size must be > 0"),
    (FAKE_HANDLE, -1, 64, "device_id must be a non-negative integer"),
])
def test_malformed_registrations_are_refused(flavour: str, client: Any, handle: bytes,
                                             device_id: int, size: int, text: str) -> None:
    if flavour == "http" and device_id < 0:
        text = "'device_id' of a CUDA shared memory register request"
    with pytest.raises(InferenceServerException) as exc:
        client.register_cuda_shared_memory(_name(), handle, device_id, size, headers=AUTH)
    assert_error(exc, flavour, 400, text)
    assert _status(flavour, client) == {}


def test_registration_needs_the_token(flavour: str, client: Any) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.register_cuda_shared_memory(_name(), FAKE_HANDLE, 0, 64)
    assert_error(exc, flavour, 401)
    with pytest.raises(InferenceServerException) as exc:
        client.get_cuda_shared_memory_status()
    assert_error(exc, flavour, 401)


def _post(server: ServerProcess, path: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(server.base + path, data=body, method="POST",
                                     headers=AUTH)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())["error"]


@pytest.mark.parametrize(("body", "text"), [
    (b'{"raw_handle": {"b64": "not base64!"}, "device_id": 0, "byte_size": 64}',
     "is not valid base64"),
    (b'{"raw_handle": "AAAA", "device_id": 0, "byte_size": 64}', "'raw_handle': {\"b64\""),
    (b'{"raw_handle": {"b64": "AAAA"}, "byte_size": 64}', "'device_id'"),
    (b'[1, 2]', "register request"),
])
def test_http_register_bodies_that_are_not_register_requests(
        v2_server: ServerProcess, body: bytes, text: str) -> None:
    status, error = _post(v2_server, "/v2/cudasharedmemory/region/x/register", body)
    assert status == 400 and text in error, (status, error)


def test_http_unknown_cuda_route_is_a_400_naming_the_routes(v2_server: ServerProcess) -> None:
    status, error = _post(v2_server, "/v2/cudasharedmemory/region/a/b/register", b"{}")
    assert status == 400 and "not a CUDA shared memory route" in error, (status, error)


@pytest.mark.skipif(not GPU, reason="needs a CUDA device (runs on a lent GPU machine)")
def test_simple_through_cuda_regions_matches_onnx_runtime(
        flavour: str, client: Any, tiny_store: Path) -> None:
    import tritonclient.utils.cuda_shared_memory as cudashm

    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    in_name, out_name = _name(), _name()
    in_handle = cudashm.create_shared_memory_region(in_name, a.nbytes + b.nbytes, 0)
    out_handle = cudashm.create_shared_memory_region(out_name, 2 * a.nbytes, 0)
    try:
        cudashm.set_shared_memory_region(in_handle, [a, b])
        client.register_cuda_shared_memory(in_name, cudashm.get_raw_handle(in_handle), 0,
                                           a.nbytes + b.nbytes, headers=AUTH)
        client.register_cuda_shared_memory(out_name, cudashm.get_raw_handle(out_handle), 0,
                                           2 * a.nbytes, headers=AUTH)
        assert _status(flavour, client)[in_name] == {"device_id": 0,
                                                     "byte_size": a.nbytes + b.nbytes}
        mod = module(flavour)
        inputs = [mod.InferInput("INPUT0", [2, 16], "INT32"),
                  mod.InferInput("INPUT1", [2, 16], "INT32")]
        inputs[0].set_shared_memory(in_name, a.nbytes)
        inputs[1].set_shared_memory(in_name, b.nbytes, a.nbytes)
        outputs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
        outputs[0].set_shared_memory(out_name, a.nbytes)
        outputs[1].set_shared_memory(out_name, a.nbytes, a.nbytes)
        client.infer("simple", inputs, outputs=outputs)
        got = cudashm.get_contents_as_numpy(out_handle, np.int32, [2, 2, 16])
        session = ort.InferenceSession(str(tiny_store / "simple" / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        want = session.run(None, {"INPUT0": a, "INPUT1": b})
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        with pytest.raises(InferenceServerException) as exc:  # past the shared allocation
            client.register_cuda_shared_memory(_name(), cudashm.get_raw_handle(out_handle),
                                               0, 1 << 40, headers=AUTH)
        assert_error(exc, flavour, 400, "failed to register CUDA shared memory region")
    finally:
        client.unregister_cuda_shared_memory(headers=AUTH)
        assert _status(flavour, client) == {}
        cudashm.destroy_shared_memory_region(in_handle)
        cudashm.destroy_shared_memory_region(out_handle)


@pytest.mark.skipif(not GPU, reason="needs a CUDA device (runs on a lent GPU machine)")
def test_torchscript_on_the_gpu_reads_cuda_inputs_in_place(
        flavour: str, token_file: Path, tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> None:
    """lenet_torchscript on ``--device cuda`` takes its inputs as views of the client's region
    (single requests and batches of them, joined on the GPU), answers equal to ONNX Runtime's
    lenet on the same images."""
    import concurrent.futures

    import tritonclient.utils.cuda_shared_memory as cudashm

    built = Path(__file__).resolve().parents[2] / "model_store"
    source = built if (built / "lenet_torchscript" / "1" / "model.pt").exists() else \
        request.getfixturevalue("default_store")
    store = one_model_store(source / "lenet_torchscript", tmp_path_factory.mktemp("ts-gpu"))
    server = start_server(store, tmp_path_factory.mktemp("ts-gpu-logs"), extra_args=[
        "--device", "cuda", "--enable-model-control", "--api-token-file", str(token_file)])
    clients = 8
    x = np.random.default_rng(3).random((clients, 1, 28, 28), dtype=np.float32)
    (want,) = ort.InferenceSession(str(source / "lenet" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"]).run(None, {"input": x})
    tag = uuid.uuid4().hex[:10]
    in_handle = cudashm.create_shared_memory_region(f"tin_{tag}", x.nbytes, 0)
    out_handle = cudashm.create_shared_memory_region(f"tout_{tag}", want.nbytes, 0)
    client = make_client(flavour, server, concurrency=clients) if flavour == "http" \
        else make_client(flavour, server)
    mod = module(flavour)
    item_in, item_out = x[0].nbytes, want[0].nbytes
    try:
        cudashm.set_shared_memory_region(in_handle, [x])
        client.register_cuda_shared_memory(f"tin_{tag}", cudashm.get_raw_handle(in_handle), 0,
                                           x.nbytes, headers=AUTH)
        client.register_cuda_shared_memory(f"tout_{tag}", cudashm.get_raw_handle(out_handle),
                                           0, want.nbytes, headers=AUTH)

        def one(i: int) -> None:
            inp = mod.InferInput("input", [1, 1, 28, 28], "FP32")
            inp.set_shared_memory(f"tin_{tag}", item_in, i * item_in)
            out = mod.InferRequestedOutput("logits")
            out.set_shared_memory(f"tout_{tag}", item_out, i * item_out)
            client.infer("lenet_torchscript", [inp], outputs=[out])

        for _ in range(3):  # concurrent single images: the batcher joins some of them
            cudashm.set_shared_memory_region(out_handle, [np.zeros_like(want)])
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                list(pool.map(one, range(clients)))
            got = cudashm.get_contents_as_numpy(out_handle, np.float32, list(want.shape))
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    finally:
        client.unregister_cuda_shared_memory(headers=AUTH)
        cudashm.destroy_shared_memory_region(in_handle)
        cudashm.destroy_shared_memory_region(out_handle)
        server.stop()
