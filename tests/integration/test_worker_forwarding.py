"""``--workers 2`` and one gRPC connection: the requests still run on both workers.

perf_analyzer and tritonclient send every call over one HTTP/2 connection, which the kernel
gives to one worker. Each worker publishes its load and hands requests to a less busy one;
the ``capserve-worker`` trailing metadata names the worker that ran each request. Checked with
the tensors on the wire and in system shared memory (the peer reads and writes the client's
regions), and against ``--no-peer-forwarding``, where the connection's worker runs everything.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

from serving.generated import grpc_service_pb2 as pb
from serving.generated import grpc_service_pb2_grpc as pb_grpc
from tests.helpers.server import ServerProcess, start_server
from tests.integration.conftest import API_TOKEN, SLOW_WIDTH, one_model_store, two_worker_server

pytestmark = pytest.mark.integration

AUTH = {"authorization": f"Bearer {API_TOKEN}"}
CALLS = 24
ROWS = 4  # per request: slow_batch's identity chain returns its input unchanged


@pytest.fixture(scope="module")
def store(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_model_store(tiny_store / "slow_batch", tmp_path_factory.mktemp("forwarding-store"))


@pytest.fixture(scope="module")
def two(store: Path, token_file: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with two_worker_server(store, token_file, tmp_path_factory.mktemp("forwarding-logs")) as server:
        yield server


def _inputs(i: int) -> np.ndarray:
    return np.random.default_rng(i).random((ROWS, SLOW_WIDTH), dtype=np.float32)


def _wire_request(i: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow_batch", id=str(i))
    request.inputs.add(name="x", datatype="FP32", shape=[ROWS, SLOW_WIDTH])
    request.raw_input_contents.append(_inputs(i).tobytes())
    return request


def _concurrently(server: ServerProcess,
                  requests: list[pb.ModelInferRequest]) -> list[tuple[pb.ModelInferResponse, str]]:
    """Every request at once over one channel; (answer, worker that ran it) each."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def call(request: pb.ModelInferRequest) -> tuple[pb.ModelInferResponse, str]:
            answer, rpc = stub.ModelInfer.with_call(request, timeout=60)
            return answer, dict(rpc.trailing_metadata() or ())["capserve-worker"]

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(call, requests))


def test_one_connection_runs_on_both_workers(two: ServerProcess) -> None:
    answers = _concurrently(two, [_wire_request(i) for i in range(CALLS)])
    for i, (answer, _) in enumerate(answers):
        assert answer.id == str(i)
        got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(ROWS, SLOW_WIDTH)
        np.testing.assert_array_equal(got, _inputs(i))  # x through identity matrices is x
    workers = [w for _, w in answers]
    assert set(workers) == {"0", "1"}, workers
    # Statistics still count each request once, whichever worker ran it.
    stats = grpcclient.InferenceServerClient(two.grpc_url).get_inference_statistics(
        "slow_batch", as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) >= CALLS


def test_forwarded_errors_keep_their_status_and_message(two: ServerProcess) -> None:
    bad = pb.ModelInferRequest(model_name="slow_batch")
    bad.inputs.add(name="x", datatype="FP32", shape=[ROWS, SLOW_WIDTH + 1])
    bad.raw_input_contents.append(bytes(ROWS * (SLOW_WIDTH + 1) * 4))
    seen: dict[str, set[tuple[grpc.StatusCode, str]]] = {}
    with grpc.insecure_channel(two.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def call(request: pb.ModelInferRequest) -> None:
            try:
                stub.ModelInfer(request, timeout=60)
            except grpc.RpcError as exc:
                worker = dict(exc.trailing_metadata() or ())["capserve-worker"]  # type: ignore[attr-defined]
                seen.setdefault(worker, set()).add((exc.code(), exc.details()))  # type: ignore[attr-defined]

        for _ in range(5):  # busy workers, with bad requests among the good ones
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(call, [_wire_request(i) if i % 3 else bad for i in range(24)]))
            if len(seen) == 2:
                break
    assert set(seen) == {"0", "1"}, seen
    answers = seen["0"] | seen["1"]
    assert len(answers) == 1, answers  # the same status and message from either worker
    ((code, details),) = answers
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "shape" in details, details


def test_shared_memory_requests_of_one_connection_run_on_both_workers(two: ServerProcess) -> None:
    size = ROWS * SLOW_WIDTH * 4
    tag = uuid.uuid4().hex[:10]
    names = [f"fin_{tag}", f"fout_{tag}"]
    handles = [shm.create_shared_memory_region(n, f"/{n}", size * CALLS) for n in names]
    client = grpcclient.InferenceServerClient(two.grpc_url)
    try:
        shm.set_shared_memory_region(handles[0], [np.concatenate([_inputs(i) for i in range(CALLS)])])
        for n in names:
            client.register_system_shared_memory(n, f"/{n}", size * CALLS, headers=AUTH)
        requests = []
        for i in range(CALLS):
            request = pb.ModelInferRequest(model_name="slow_batch", id=str(i))
            tensor = request.inputs.add(name="x", datatype="FP32", shape=[ROWS, SLOW_WIDTH])
            tensor.parameters["shared_memory_region"].string_param = names[0]
            tensor.parameters["shared_memory_offset"].int64_param = i * size
            tensor.parameters["shared_memory_byte_size"].int64_param = size
            out = request.outputs.add(name="y")
            out.parameters["shared_memory_region"].string_param = names[1]
            out.parameters["shared_memory_offset"].int64_param = i * size
            out.parameters["shared_memory_byte_size"].int64_param = size
            requests.append(request)
        answers = _concurrently(two, requests)
        assert {w for _, w in answers} == {"0", "1"}, [w for _, w in answers]
        assert all(not any(a.raw_output_contents) for a, _ in answers)  # no tensor bytes
        got = shm.get_contents_as_numpy(handles[1], np.float32, [CALLS * ROWS, SLOW_WIDTH])
        for i in range(CALLS):
            np.testing.assert_array_equal(got[i * ROWS:(i + 1) * ROWS], _inputs(i))
        client.unregister_system_shared_memory(headers=AUTH)
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
        client.close()


def test_without_peer_forwarding_a_connection_stays_on_its_worker(
        store: Path, tmp_path: Path) -> None:
    server = start_server(store, tmp_path, extra_args=["--workers", "2", "--no-peer-forwarding"])
    try:
        answers = _concurrently(server, [_wire_request(i) for i in range(CALLS)])
        assert len({w for _, w in answers}) == 1, [w for _, w in answers]
    finally:
        server.stop()
