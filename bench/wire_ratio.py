"""The ordinary wire vs plain loopback TCP, in one sitting (``python -m bench.wire_ratio``).

(a) A 37 MiB buffer sent over a loopback socket to another process that ``recv_into``s a
preallocated buffer and answers one byte: the limit of this machine. (b) The same bytes as one
FP32 tensor [1, 3, 1792, 1792] sent to capserve over v2 gRPC and over HTTP binary, by a client
in another process, to a ReduceSum model whose answer is 3 floats: like (a), each round trip
moves the 37 MiB one way and almost nothing back. Every answer is checked against numpy.

Two clients per protocol, so the numbers say how much of the time is the server's:
``raw`` sends request bytes built once (a grpc channel call without serializers; an HTTP/1.1
POST written to a socket), so nearly all of its time is the server's; ``tritonclient`` is the
unmodified client, whose own per-request work (building and serializing the request) is timed
without a server too (``*_client_only_ms``). ``perf_analyzer`` (C++, concurrency 1, random
input of the same size) is what a Triton user measures with. The loopback baseline is measured
again after every client and each ratio is to the mean of the baselines just before and after
it: on a shared machine the baseline alone swings by a factor of two between runs. Few
requests, one at a time: memory stays bounded.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.servers import REPO_ROOT, running, start_capserve

SHAPE = (1, 3, 1792, 1792)
NBYTES = int(np.prod(SHAPE)) * 4  # 36.75 MiB
MIB = 1024 * 1024
MODEL = "reduce"
TARGET_RATIO = 0.25


def _tcp_server(port_out: Any, reps: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port_out.put(srv.getsockname()[1])
        conn, _ = srv.accept()
        with conn:
            buf = bytearray(NBYTES)
            view = memoryview(buf)
            for _ in range(reps):
                got = 0
                while got < NBYTES:
                    got += conn.recv_into(view[got:])
                conn.sendall(b"k")


def tcp_rate(reps: int) -> float:
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    proc = ctx.Process(target=_tcp_server, args=(ports, reps + 1))
    proc.start()
    data = bytes(NBYTES)
    with socket.create_connection(("127.0.0.1", ports.get(timeout=30))) as sock:
        sock.sendall(data)
        sock.recv(1)  # warm-up
        start = time.perf_counter()
        for _ in range(reps):
            sock.sendall(data)
            sock.recv(1)
        elapsed = time.perf_counter() - start
    proc.join(30)
    return reps * NBYTES / MIB / elapsed


def _expected(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64).sum(axis=(2, 3))


def _close(got: np.ndarray, x: np.ndarray) -> bool:
    # float32 sums of 3.2M values: ORT and numpy accumulate in different orders.
    return got.shape == (1, 3) and bool(np.allclose(got, _expected(x), rtol=1e-4))


def _timed(call: Callable[[], Any], reps: int) -> float:
    """Seconds per call of ``call`` over ``reps`` calls."""
    start = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - start) / reps


def _tritonclient_grpc(url: str, x: np.ndarray, reps: int) -> dict[str, Any]:
    import tritonclient.grpc as tc
    from tritonclient.grpc._utils import _get_inference_request

    client = tc.InferenceServerClient(url)
    inp = tc.InferInput("x", list(SHAPE), "FP32")
    inp.set_data_from_numpy(x)
    outputs = [tc.InferRequestedOutput("y")]
    ok = _close(client.infer(MODEL, [inp], outputs=outputs).as_numpy("y"), x)

    def build() -> bytes:  # what infer() does to the request before grpc sends it
        inp.set_data_from_numpy(x)
        request = _get_inference_request(MODEL, [inp], "", "", outputs, 0, False, False, 0,
                                         None, None)
        return bytes(request.SerializeToString())

    client_only = _timed(build, reps)
    per_call = _timed(lambda: client.infer(MODEL, [inp], outputs=outputs), reps)
    return {"s_per_request": per_call, "ok": ok, "client_only_s": client_only}


def _raw_grpc(url: str, x: np.ndarray, reps: int) -> dict[str, Any]:
    import grpc
    import tritonclient.grpc as tc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc._utils import _get_inference_request

    inp = tc.InferInput("x", list(SHAPE), "FP32")
    inp.set_data_from_numpy(x)
    data = _get_inference_request(MODEL, [inp], "", "", [tc.InferRequestedOutput("y")], 0,
                                  False, False, 0, None, None).SerializeToString()
    del inp
    limits = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(url, options=limits) as channel:
        # No serializers: the request is sent as the bytes given, the answer comes back as bytes.
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        answer = pb.ModelInferResponse.FromString(call(data))
        got = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).reshape(1, 3)
        per_call = _timed(lambda: call(data), reps)
    return {"s_per_request": per_call, "ok": _close(got, x)}


def _tritonclient_http(url: str, x: np.ndarray, reps: int) -> dict[str, Any]:
    import tritonclient.http as tc
    from tritonclient.http._utils import _get_inference_request

    client = tc.InferenceServerClient(url)
    inp = tc.InferInput("x", list(SHAPE), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    outputs = [tc.InferRequestedOutput("y", binary_data=True)]
    ok = _close(client.infer(MODEL, [inp], outputs=outputs).as_numpy("y"), x)

    def build() -> bytes:  # what infer() does to the request before the HTTP client sends it
        inp.set_data_from_numpy(x, binary_data=True)
        body, _ = _get_inference_request([inp], "", outputs, 0, False, False, 0, None, None)
        return bytes(body)

    client_only = _timed(build, reps)
    per_call = _timed(lambda: client.infer(MODEL, [inp], outputs=outputs), reps)
    return {"s_per_request": per_call, "ok": ok, "client_only_s": client_only}


def _read_response(sock: socket.socket) -> tuple[dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (what the server sends here)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if not lines[0].startswith("HTTP/1.1 200"):
        raise RuntimeError(f"server answered {lines[0]}")
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("server closed the connection")
        body += chunk
    return headers, body


def _raw_http(url: str, x: np.ndarray, reps: int) -> dict[str, Any]:
    header = json.dumps({
        "inputs": [{"name": "x", "shape": list(SHAPE), "datatype": "FP32",
                    "parameters": {"binary_data_size": NBYTES}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }).encode()
    host, port = url.rsplit(":", 1)
    head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {url}\r\n"
            f"Content-Length: {len(header) + NBYTES}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n\r\n").encode()
    request = head + header + x.tobytes()
    with socket.create_connection((host, int(port))) as sock:
        def call() -> tuple[dict[str, str], bytes]:
            sock.sendall(request)
            return _read_response(sock)

        headers, body = call()
        json_len = int(headers["inference-header-content-length"])
        got = np.frombuffer(body[json_len:], dtype=np.float32).reshape(1, 3)
        per_call = _timed(call, reps)
    return {"s_per_request": per_call, "ok": _close(got, x)}


CLIENTS: dict[str, Callable[[str, np.ndarray, int], dict[str, Any]]] = {
    "grpc_raw": _raw_grpc, "grpc_tritonclient": _tritonclient_grpc,
    "http_raw": _raw_http, "http_tritonclient": _tritonclient_http,
}
FLAVOURS = [*CLIENTS, "grpc_perf_analyzer", "http_perf_analyzer"]


def _client(flavour: str, url: str, reps: int, out: Any) -> None:
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    try:
        out.put(CLIENTS[flavour](url, x, reps))
    except Exception as exc:  # the parent reports it instead of waiting for a rate
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def wire_run(flavour: str, url: str, reps: int) -> dict[str, Any]:
    """One client in another process: seconds per request, answer check, client-only cost."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_client, args=(flavour, url, reps, out))
    proc.start()
    result: dict[str, Any] = out.get(timeout=600)
    proc.join(30)
    if "error" in result:
        raise RuntimeError(f"{flavour} client failed: {result['error']}")
    return result


def build_store(root: Path) -> Path:
    """One model: y[1, 3] = the sum of x[1, 3, 1792, 1792] over its two last axes."""
    import onnx
    from onnx import TensorProto, helper

    store = root / "model_store"
    (store / MODEL / "1").mkdir(parents=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    graph = helper.make_graph([node], MODEL, [x], [y], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(store / MODEL / "1" / "model.onnx"))
    (store / MODEL / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [ 1, 3, 1792, 1792 ] }\n'
        'output { name: "y" data_type: TYPE_FP32 dims: [ 1, 3 ] }\n')
    return store


def server_env() -> dict[str, str]:
    """What the child server needs for one 37 MiB tensor (past the default per-request element
    limit); set here so the bench needs no hand-set variable."""
    return {"CAPSERVE_MAX_REQUEST_ELEMENTS": str(2 * int(np.prod(SHAPE)))}


def perf_analyzer_run(flavour: str, url: str, reps: int, work: Path) -> dict[str, Any]:
    """perf_analyzer at concurrency 1 (it does not check answers: ``ok`` is None)."""
    from bench.perf_analyzer import ensure_perf_analyzer
    from bench.perf_analyzer import run as pa_run

    binary, cudart = ensure_perf_analyzer(REPO_ROOT / "bench" / "results" / "cache")
    protocol = flavour.split("_")[0]
    got = pa_run(binary, cudart, url, protocol, MODEL, 1, max(3.0, reps * 0.5), work)
    return {"s_per_request": 1 / got.throughput_rps, "ok": None}


def measure(store: Path, work: Path, reps: int, flavours: list[str],
            server_args: list[str] | None = None,
            baseline: Callable[[], float] | None = None) -> dict[str, Any]:
    """MiB/s of request bytes per client flavour against one capserve (``--workers 1``);
    with ``baseline``, also the loopback rate measured before the first and after each one."""
    os.environ.update(server_env())  # the server process inherits it
    rates: dict[str, Any] = {}
    ok = True
    tcp = [baseline()] if baseline else []
    with running(start_capserve(store, work, extra_args=["--workers", "1",
                                                          *(server_args or [])])) as server:
        for flavour in flavours:
            url = server.grpc_target if flavour.startswith("grpc") else server.http[len("http://"):]
            if flavour.endswith("_perf_analyzer"):
                got = perf_analyzer_run(flavour, url, reps, work)
            else:
                got = wire_run(flavour, url, reps)
                ok = ok and got["ok"]
            mib_s = NBYTES / MIB / got["s_per_request"]
            rates[f"{flavour}_mib_s"] = round(mib_s, 1)
            rates[f"{flavour}_ms"] = round(got["s_per_request"] * 1000, 1)
            if "client_only_s" in got:
                rates[f"{flavour}_client_only_ms"] = round(got["client_only_s"] * 1000, 1)
            if baseline:
                tcp.append(baseline())
                rates[f"{flavour}_ratio"] = round(mib_s / ((tcp[-2] + tcp[-1]) / 2), 3)
    rates["answers_close"] = ok
    if tcp:
        rates["tcp_loopback_mib_s"] = [round(t, 1) for t in tcp]
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--clients", default=",".join(FLAVOURS),
                        help="comma-separated subset of " + ", ".join(FLAVOURS))
    args = parser.parse_args(argv)
    flavours = [f for f in args.clients.split(",") if f]
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp))
        result: dict[str, Any] = {"request_mib": round(NBYTES / MIB, 2)}
        result.update(measure(store, Path(tmp), args.reps, flavours,
                              baseline=lambda: tcp_rate(args.reps * 4)))
    result["target_ratio"] = TARGET_RATIO
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
