"""The ordinary wire vs plain loopback TCP, in one sitting (``python -m bench.wire_ratio``).

(a) A 37 MiB buffer sent over a loopback socket to another process that ``recv_into``s a
preallocated buffer: the limit of this machine. (b) The same bytes as one FP32 tensor
[1, 3, 1792, 1792] sent to capserve over v2 gRPC and over HTTP binary by tritonclient in
another process, on an Identity ONNX model (compute is nothing). Prints one JSON object with
MiB/s of request bytes and the ratios to (a). Few requests, one at a time: memory stays bounded.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.servers import running, start_capserve

SHAPE = (1, 3, 1792, 1792)
NBYTES = int(np.prod(SHAPE)) * 4  # 36.75 MiB
MIB = 1024 * 1024


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


def _client(flavour: str, url: str, reps: int, out: Any) -> None:
    if flavour == "grpc":
        import tritonclient.grpc as client_mod
    else:
        import tritonclient.http as client_mod  # type: ignore[no-redef]
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    client = client_mod.InferenceServerClient(url)
    inp = client_mod.InferInput("x", list(SHAPE), "FP32")
    if flavour == "grpc":
        inp.set_data_from_numpy(x)
        outputs = [client_mod.InferRequestedOutput("y")]
    else:
        inp.set_data_from_numpy(x, binary_data=True)
        outputs = [client_mod.InferRequestedOutput("y", binary_data=True)]
    try:
        result = client.infer("ident", [inp], outputs=outputs)  # warm-up and correctness check
        ok = bool(np.array_equal(result.as_numpy("y"), x))
        start = time.perf_counter()
        for _ in range(reps):
            client.infer("ident", [inp], outputs=outputs)
        out.put((reps * NBYTES / MIB / (time.perf_counter() - start), ok))
    except Exception as exc:  # the parent reports it instead of waiting for a rate
        out.put((str(exc), False))


def wire_rate(flavour: str, url: str, reps: int) -> tuple[float, bool]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_client, args=(flavour, url, reps, out))
    proc.start()
    rate, ok = out.get(timeout=600)
    proc.join(30)
    if isinstance(rate, str):
        raise RuntimeError(f"{flavour} client failed: {rate}")
    return float(rate), bool(ok)


def build_store(root: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    store = root / "model_store"
    (store / "ident" / "1").mkdir(parents=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1792, 1792])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 1792, 1792])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "ident", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(store / "ident" / "1" / "model.onnx"))
    (store / "ident" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [ 1, 3, 1792, 1792 ] }\n'
        'output { name: "y" data_type: TYPE_FP32 dims: [ 1, 3, 1792, 1792 ] }\n')
    return store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    # One 37 MiB tensor is past the default per-request element limit; the server inherits these.
    os.environ.setdefault("CAPSERVE_MAX_REQUEST_ELEMENTS", str(2 * int(np.prod(SHAPE))))
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp))
        tcp = tcp_rate(args.reps * 4)
        with running(start_capserve(store, Path(tmp), extra_args=["--workers", "1"])) as server:
            grpc_rate, grpc_ok = wire_rate("grpc", server.grpc_target, args.reps)
            http_rate, http_ok = wire_rate("http", server.http.removeprefix("http://"), args.reps)
    print(json.dumps({
        "request_mib": round(NBYTES / MIB, 2), "tcp_loopback_mib_s": round(tcp, 1),
        "grpc_mib_s": round(grpc_rate, 1), "grpc_ratio": round(grpc_rate / tcp, 3),
        "http_binary_mib_s": round(http_rate, 1), "http_ratio": round(http_rate / tcp, 3),
        "answers_exact": grpc_ok and http_ok, "target_ratio": 0.25,
    }))


if __name__ == "__main__":
    main()
