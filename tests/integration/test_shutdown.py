"""SIGTERM while 32 clients keep sending: accepted work finishes, the process exits 0 in time.

"Accepted" is counted by the server itself: when the signal arrives it logs how many requests
are inside the core. Each of them must come back OK after the signal. Requests the server never
took in (sent after the signal, or still unread in a socket when the listener closed) may be
refused, but only cleanly: 503 / UNAVAILABLE, or a connection that never answered.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.generated import health_pb2, health_pb2_grpc
from tests.helpers.server import ServerProcess, metric_sum, start_server
from tests.integration.conftest import SLOW_WIDTH

GRACE_S = 20.0
CLIENTS = 32
X = np.full((1, SLOW_WIDTH), 0.25, np.float32)


@dataclass
class Outcome:
    started: float
    finished: float
    result: str  # "ok", "refused" (never taken in) or what went wrong


def _grpc_client(server: ServerProcess, stop: threading.Event, out: list[Outcome]) -> None:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("x", [1, SLOW_WIDTH], "FP32")
    inp.set_data_from_numpy(X)
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            r = c.infer("slow_batch", [inp], client_timeout=GRACE_S + 10)
            result = "ok" if np.array_equal(r.as_numpy("y"), X) else "wrong output"
        except InferenceServerException as exc:
            # UNAVAILABLE: refused by the draining server or the closed port; CANCELLED without
            # a message: grpc dropped a call the server had not yet picked up at shutdown.
            clean = exc.status() == "StatusCode.UNAVAILABLE" or (
                exc.status() == "StatusCode.CANCELLED" and exc.message() == "CANCELLED")
            result = "refused" if clean else f"{exc.status()}: {exc.message()}"
        out.append(Outcome(t0, time.monotonic(), result))
        if result != "ok":
            time.sleep(0.05)


def _http_client(server: ServerProcess, stop: threading.Event, out: list[Outcome]) -> None:
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, SLOW_WIDTH],
                                     "parameters": {"binary_data_size": X.nbytes}}]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    with httpx.Client(timeout=GRACE_S + 10) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = c.post(server.base + "/v2/models/slow_batch/infer", content=header + X.tobytes(),
                           headers=headers)
                if r.status_code == 200:
                    result = "ok" if r.json()["outputs"][0]["data"] == X.ravel().tolist() else "wrong output"
                else:
                    result = "refused" if r.status_code == 503 else f"{r.status_code}: {r.text}"
            except httpx.TransportError:
                # Refused after the listener closed, or a request still unread in the socket of a
                # connection the server closed: in both cases the server never took it in.
                result = "refused"
            out.append(Outcome(t0, time.monotonic(), result))
            if result != "ok":
                time.sleep(0.05)


def _until_in_flight(server: ServerProcess, seconds: float = 5.0) -> None:
    """Wait (a few ms, normally) until the server's metrics show requests inside it, so the
    signal lands while there is work to drain: on a loaded 2-core machine the clients' process
    can stall long enough for the server to have answered everything at that instant."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if metric_sum(server, "capserve_inflight_requests") > 0:
                return
        time.sleep(0.005)


@dataclass
class Drained:
    code: int
    signalled: float
    exited: float
    outcomes: list[Outcome]
    log: str


def sigterm_under_load(server: ServerProcess, clients: int,
                       send: Callable[[ServerProcess], None] | None = None) -> Drained:
    """Half gRPC, half HTTP clients keep sending to the slow batching model; after 2 s the
    server gets SIGTERM (or ``send`` signals it its own way). Every outcome, the exit status
    and its times come back."""
    stop = threading.Event()
    outcomes: list[list[Outcome]] = [[] for _ in range(clients)]
    threads = [
        threading.Thread(target=_grpc_client if i % 2 else _http_client, args=(server, stop, outcomes[i]),
                         daemon=True)
        for i in range(clients)
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        _until_in_flight(server)
        signalled = time.monotonic()
        if send is None:
            server.proc.send_signal(signal.SIGTERM)
        else:
            send(server)
        code = server.proc.wait(timeout=GRACE_S + 15)
        exited = time.monotonic()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=GRACE_S + 15)
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)
    return Drained(code, signalled, exited, [o for per in outcomes for o in per], server.log())


def test_sigterm_drains_accepted_work(tiny_store: Path, tmp_path: Path) -> None:
    server = start_server(tiny_store, tmp_path, extra_args=["--shutdown-grace-seconds", str(GRACE_S)])
    drained = sigterm_under_load(server, CLIENTS)
    code, signalled, exited, log = drained.code, drained.signalled, drained.exited, drained.log
    assert code == 0, log
    assert exited - signalled < GRACE_S, log
    flat = drained.outcomes
    unexpected = [o for o in flat if o.result not in ("ok", "refused")]
    assert not unexpected, unexpected[:5]
    assert sum(o.result == "ok" for o in flat if o.finished < signalled) > 0
    found = re.search(r"draining: readiness is false, (\d+) requests in flight", log)
    assert found, log
    accepted = int(found.group(1))
    assert accepted > 0, "nothing was in flight at SIGTERM; the test did not exercise the drain"
    answered_after = sum(o.result == "ok" for o in flat if o.finished > signalled)
    assert answered_after >= accepted, (answered_after, accepted)
    assert "drained: 0 requests still in flight" in log


def test_sigint_with_idle_stream_and_health_watch_exits_promptly(tiny_store: Path, tmp_path: Path) -> None:
    """Open-but-idle gRPC streams (ModelStreamInfer, Health/Watch) must not hold the shutdown."""
    server = start_server(tiny_store, tmp_path, extra_args=["--shutdown-grace-seconds", "15"])
    log_lines = server.log()
    assert f"capserve: HTTP listening on http://127.0.0.1:{server.http_port}" in log_lines
    assert f"capserve: gRPC listening on 127.0.0.1:{server.grpc_port}" in log_lines
    assert f"capserve: metrics listening on http://127.0.0.1:{server.metrics_port}" in log_lines
    answers: queue.Queue[object] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    a = np.ones((1, 16), np.int32)
    inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    client.async_stream_infer("simple", inputs)
    assert not isinstance(answers.get(timeout=30), InferenceServerException)
    watched: list[int] = []
    channel = grpc.insecure_channel(server.grpc_url)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    watcher = threading.Thread(target=lambda: watched.extend(r.status for r in watch), daemon=True)
    watcher.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    assert server.stop(signal.SIGINT) == 0
    assert time.monotonic() - t0 < 5, server.log()
    watcher.join(timeout=5)
    assert watched[0] == health_pb2.HealthCheckResponse.SERVING
    assert watched[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
    client.stop_stream()
    client.close()
    channel.close()
