"""System and CUDA shared memory with ``--workers 2``, and perf_analyzer ``--shared-memory
system``.

A region registered over one connection is seen by both workers: requests on new connections
reach both (the ``capserve-worker`` header says which) and each reads its input from the region
and writes lenet's logits into the output region, equal to ONNX Runtime's; unregistered over
another connection, it is gone on both. perf_analyzer registers its own regions, runs, and
unregisters them over gRPC and HTTP. CUDA registrations fan out the same way: without a GPU
each worker gives the single-process answer; with one, the last test infers through CUDA
regions on both workers (it runs only where a device is lent).
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.helpers.server import ServerProcess
from tests.integration.conftest import API_TOKEN, assert_error, one_model_store, two_worker_server
from tests.integration.test_perf_analyzer import perf_analyzer  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BATCH = 8
AUTH = {"authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = ROOT / "model_store" / "lenet"
    source = built if (built / "1" / "model.onnx").exists() else \
        request.getfixturevalue("default_store") / "lenet"
    return one_model_store(source, tmp_path_factory.mktemp("shm-store"))


@pytest.fixture(scope="module")
def two(store: Path, token_file: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with two_worker_server(store, token_file, tmp_path_factory.mktemp("shm-workers-logs")) as server:
        yield server


def _infer_new_connection(server: ServerProcess, region_in: str, region_out: str,
                          size_in: int, size_out: int) -> httpx.Response:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [BATCH, 1, 28, 28],
                        "parameters": {"shared_memory_region": region_in,
                                       "shared_memory_byte_size": size_in}}],
            "outputs": [{"name": "logits",
                         "parameters": {"shared_memory_region": region_out,
                                        "shared_memory_byte_size": size_out}}]}
    with httpx.Client(timeout=30) as c:
        return c.post(server.base + "/v2/models/lenet/infer", json=body)


def _until_both_workers(attempt: Callable[[], str]) -> set[str]:
    """Run ``attempt`` (one request on a new connection, checked; it returns the worker that
    answered) until both workers have answered, 40 times at most."""
    seen: set[str] = set()
    for _ in range(40):
        seen.add(attempt())
        if len(seen) == 2:
            break
    return seen


def test_registrations_reach_every_worker(two: ServerProcess, store: Path) -> None:
    x = np.random.default_rng(7).random((BATCH, 1, 28, 28), dtype=np.float32)
    (want,) = ort.InferenceSession(str(store / "lenet" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"]).run(None, {"input": x})
    tag = uuid.uuid4().hex[:10]
    handles = [shm.create_shared_memory_region(f"in_{tag}", f"/cs_in_{tag}", x.nbytes),
               shm.create_shared_memory_region(f"out_{tag}", f"/cs_out_{tag}", want.nbytes)]
    try:
        shm.set_shared_memory_region(handles[0], [x])
        grpc_client = grpcclient.InferenceServerClient(two.grpc_url)
        grpc_client.register_system_shared_memory(f"in_{tag}", f"/cs_in_{tag}", x.nbytes,
                                                   headers=AUTH)
        grpc_client.register_system_shared_memory(f"out_{tag}", f"/cs_out_{tag}", want.nbytes,
                                                   headers=AUTH)
        status = grpc_client.get_system_shared_memory_status(headers=AUTH, as_json=True)
        assert set(status["regions"]) == {f"in_{tag}", f"out_{tag}"}
        def served() -> str:
            shm.set_shared_memory_region(handles[1], [np.zeros_like(want)])
            r = _infer_new_connection(two, f"in_{tag}", f"out_{tag}", x.nbytes, want.nbytes)
            assert r.status_code == 200, r.text
            assert "data" not in r.json()["outputs"][0]
            got = shm.get_contents_as_numpy(handles[1], np.float32, list(want.shape))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            return r.headers["capserve-worker"]

        assert _until_both_workers(served) == {"0", "1"}
        # Unregistered over HTTP: gone on both workers.
        httpclient.InferenceServerClient(two.http_url).unregister_system_shared_memory(
            headers=AUTH)
        def gone() -> str:
            r = _infer_new_connection(two, f"in_{tag}", f"out_{tag}", x.nbytes, want.nbytes)
            assert r.status_code == 404, r.text
            assert "Unable to find shared memory region" in r.json()["error"]
            return r.headers["capserve-worker"]

        assert _until_both_workers(gone) == {"0", "1"}
        grpc_client.close()
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)


def test_duplicate_name_over_another_worker_is_already_exists(two: ServerProcess) -> None:
    tag = uuid.uuid4().hex[:10]
    handle = shm.create_shared_memory_region(f"d_{tag}", f"/cs_d_{tag}", 64)
    try:
        first = grpcclient.InferenceServerClient(two.grpc_url)
        first.register_system_shared_memory(f"d_{tag}", f"/cs_d_{tag}", 64, headers=AUTH)
        codes = set()
        for _ in range(6):  # new connections: whichever worker answers, the same error
            with httpx.Client(timeout=10) as c:
                r = c.post(f"{two.base}/v2/systemsharedmemory/region/d_{tag}/register",
                           json={"key": f"/cs_d_{tag}", "offset": 0, "byte_size": 64},
                           headers=AUTH)
            codes.add((r.status_code, "already in manager" in r.json()["error"]))
        assert codes == {(409, True)}
        first.unregister_system_shared_memory(f"d_{tag}", headers=AUTH)
        status = first.get_system_shared_memory_status(headers=AUTH, as_json=True)
        assert status.get("regions", {}) == {}
        first.close()
    finally:
        shm.destroy_shared_memory_region(handle)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_shared_memory_system(
    perf_analyzer: tuple[Path, dict[str, str]], two: ServerProcess, protocol: str,  # noqa: F811
) -> None:
    binary, env = perf_analyzer
    url = two.grpc_url if protocol == "grpc" else two.http_url
    cmd = [str(binary), "-m", "lenet", "-u", url, "-i", protocol, "-b", "4",
           "--shared-memory", "system", "--output-shared-memory-size", "4096",
           "--concurrency-range", "2", "--measurement-interval", "1000",
           "--stability-percentage", "1000", "--max-trials", "4",
           "-H", f"authorization:Bearer {API_TOKEN}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Concurrency: 2, throughput:" in out, out
    # perf_analyzer unregistered what it registered.
    status = httpclient.InferenceServerClient(two.http_url).get_system_shared_memory_status(
        headers=AUTH)
    assert status == [], status


GPU = torch.cuda.is_available()


@pytest.mark.skipif(GPU, reason="asserts the answers of a server without a GPU")
def test_cuda_register_without_a_gpu_gets_the_one_process_answer_from_every_worker(
        two: ServerProcess) -> None:
    raw = bytes(range(64))
    seen = set()
    for _ in range(12):  # new connections reach both workers
        with httpx.Client(timeout=10) as c:
            r = c.post(f"{two.base}/v2/cudasharedmemory/region/g/register", headers=AUTH,
                       json={"raw_handle": {"b64": base64.b64encode(raw).decode()},
                             "device_id": 0, "byte_size": 64})
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith("CUDA shared memory requires a GPU: "), r.text
        seen.add(r.headers["capserve-worker"])
    assert seen == {"0", "1"}
    client = grpcclient.InferenceServerClient(two.grpc_url)
    with pytest.raises(InferenceServerException) as exc:
        client.register_cuda_shared_memory("g", base64.b64encode(raw), 0, 64, headers=AUTH)
    assert_error(exc, "grpc", 400, "CUDA shared memory requires a GPU: ")
    assert client.get_cuda_shared_memory_status(headers=AUTH, as_json=True).get(
        "regions", {}) == {}
    client.unregister_cuda_shared_memory(headers=AUTH)
    client.close()


@pytest.mark.skipif(not GPU, reason="needs a CUDA device (runs on a lent GPU machine)")
def test_cuda_regions_reach_every_worker(two: ServerProcess, store: Path) -> None:
    import tritonclient.utils.cuda_shared_memory as cudashm

    x = np.random.default_rng(7).random((BATCH, 1, 28, 28), dtype=np.float32)
    (want,) = ort.InferenceSession(str(store / "lenet" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"]).run(None, {"input": x})
    tag = uuid.uuid4().hex[:10]
    handles = [cudashm.create_shared_memory_region(f"cin_{tag}", x.nbytes, 0),
               cudashm.create_shared_memory_region(f"cout_{tag}", want.nbytes, 0)]
    client = httpclient.InferenceServerClient(two.http_url)
    try:
        cudashm.set_shared_memory_region(handles[0], [x])
        for name, handle, size in ((f"cin_{tag}", handles[0], x.nbytes),
                                   (f"cout_{tag}", handles[1], want.nbytes)):
            client.register_cuda_shared_memory(name, cudashm.get_raw_handle(handle), 0, size,
                                               headers=AUTH)
        def served() -> str:
            cudashm.set_shared_memory_region(handles[1], [np.zeros_like(want)])
            r = _infer_new_connection(two, f"cin_{tag}", f"cout_{tag}", x.nbytes, want.nbytes)
            assert r.status_code == 200, r.text
            got = cudashm.get_contents_as_numpy(handles[1], np.float32, list(want.shape))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            return r.headers["capserve-worker"]

        assert _until_both_workers(served) == {"0", "1"}
    finally:
        client.unregister_cuda_shared_memory(headers=AUTH)
        assert client.get_cuda_shared_memory_status(headers=AUTH) == []
        for handle in handles:
            cudashm.destroy_shared_memory_region(handle)
