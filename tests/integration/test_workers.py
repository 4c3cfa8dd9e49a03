"""``--workers 2``: one server as clients see it, over two serving processes.

Requests from many connections reach both workers (the ``capserve-worker`` response header says
which); statistics and ``/metrics`` count exactly the requests sent over both dialects and both
transports; model control reaches every worker before it answers; a worker killed with
``kill -9`` costs only its own in-flight requests and is replaced; SIGTERM drains every worker.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serving.generated import torchserve_inference_pb2 as inf
from serving.generated import torchserve_inference_pb2_grpc as inf_grpc
from tests.helpers.server import ServerProcess, http_status, metric_sum, start_server
from tests.integration.conftest import API_TOKEN, SLOW_WIDTH, one_model_store, two_worker_server
from tests.integration.test_shutdown import GRACE_S, sigterm_under_load

pytestmark = pytest.mark.integration

DIGIT = (Path(__file__).parents[1] / "data" / "images" / "digit7.png").read_bytes()
X = np.zeros((1, 1, 28, 28), np.float32)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def two(default_store: Path, token_file: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = one_model_store(default_store / "lenet", tmp_path_factory.mktemp("workers-store"))
    with two_worker_server(store, token_file, tmp_path_factory.mktemp("workers-logs")) as server:
        yield server


def _workers(server: ServerProcess) -> list[psutil.Process]:
    found = []
    for p in psutil.Process(server.proc.pid).children():
        with contextlib.suppress(psutil.Error):  # one that just died has no command line
            if "serving.workers.worker" in " ".join(p.cmdline()):
                found.append(p)
    return found


def _v2_infer_new_connection(server: ServerProcess) -> str:
    """One v2 JSON request on a connection of its own; returns the worker that answered."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],
                        "data": X.ravel().tolist()}]}
    with httpx.Client(timeout=30) as c:
        r = c.post(server.base + "/v2/models/lenet/infer", json=body)
    assert r.status_code == 200, r.text
    return r.headers["capserve-worker"]


def _predictions_new_connection(server: ServerProcess) -> httpx.Response:
    with httpx.Client(timeout=30) as c:
        return c.post(server.base + "/predictions/lenet", content=DIGIT)


def _ready_within(server: ServerProcess, seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if http_status(server.base + "/v2/health/ready") == 200:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not ready within {seconds} s:\n{server.log()[-3000:]}")


def test_both_workers_serve_and_every_request_is_counted_once(two: ServerProcess) -> None:
    assert len(_workers(two)) == 2
    before = metric_sum(two, "capserve_request_success_total", model="lenet", version="1")
    nv_before = metric_sum(two, "nv_inference_request_success_total", model="lenet", version="1")
    seen = {_v2_infer_new_connection(two) for _ in range(30)}
    assert seen == {"0", "1"}, seen
    for _ in range(10):
        r = _predictions_new_connection(two)
        assert r.status_code == 200 and next(iter(r.json())) == "7", r.text
    for _ in range(10):
        client = grpcclient.InferenceServerClient(two.grpc_url)
        inp = grpcclient.InferInput("input", [1, 1, 28, 28], "FP32")
        inp.set_data_from_numpy(X)
        assert client.infer("lenet", [inp]).as_numpy("logits").shape == (1, 10)
        client.close()
    for _ in range(10):
        with grpc.insecure_channel(two.grpc_url) as channel:
            reply = inf_grpc.InferenceAPIsServiceStub(channel).Predictions(
                inf.PredictionsRequest(model_name="lenet", input={"data": DIGIT}))
            assert b'"7"' in reply.prediction
    sent = 60
    stats = httpclient.InferenceServerClient(two.http_url).get_inference_statistics("lenet")
    grpc_stats = grpcclient.InferenceServerClient(two.grpc_url).get_inference_statistics(
        "lenet", as_json=True)
    for doc in (stats, grpc_stats):
        model = doc["model_stats"][0]
        assert int(model["inference_count"]) == sent, doc
        assert int(model["inference_stats"]["success"]["count"]) == sent, doc
    assert metric_sum(two, "capserve_request_success_total", model="lenet",
                   version="1") - before == sent
    assert metric_sum(two, "capserve_workers_ready") == 2
    # Triton's names survive the supervisor's sum, spelled as Triton writes them.
    assert metric_sum(two, "nv_inference_request_success_total", model="lenet",
                   version="1") - nv_before == sent
    raw = urllib.request.urlopen(two.metrics_url, timeout=10).read().decode()
    assert "# TYPE nv_inference_request_success counter" in raw and "_created" not in raw
    # Machine gauges come once (from the supervisor), process gauges once per worker.
    assert raw.count("\nnv_cpu_memory_total_bytes ") == 1, raw
    assert raw.count("process_resident_memory_bytes{") == 2
    # TorchServe's describe counts the model's instances on every worker.
    config = httpx.get(two.base + "/v2/models/lenet/config", timeout=10).json()
    per_worker = int(config["instance_group"][0]["count"])
    described = httpx.get(two.management_base + "/models/lenet", headers=AUTH, timeout=10)
    assert described.status_code == 200, described.text
    assert described.json()[0]["minWorkers"] == 2 * per_worker, described.text


def test_model_control_reaches_every_worker(two: ServerProcess) -> None:
    with httpx.Client(timeout=60) as c:
        r = c.post(two.base + "/v2/repository/models/lenet/unload", headers=AUTH)
        assert r.status_code == 200, r.text
    v2 = [httpx.post(two.base + "/v2/models/lenet/infer", timeout=10, json={
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],
                    "data": X.ravel().tolist()}]}) for _ in range(25)]
    ts = [_predictions_new_connection(two) for _ in range(25)]
    v2_answers = {(r.status_code, r.json()["error"]) for r in v2}
    ts_answers = {(r.status_code, r.json()["message"]) for r in ts}
    assert len(v2_answers) == 1 and len(ts_answers) == 1, (v2_answers, ts_answers)
    (v2_status, v2_error), (ts_status, ts_error) = v2_answers.pop(), ts_answers.pop()
    assert v2_status in (400, 404, 503) and "lenet" in v2_error, v2_error
    assert ts_status in (404, 503) and "lenet" in ts_error, ts_error
    assert {r.headers["capserve-worker"] for r in v2 + ts} == {"0", "1"}
    with httpx.Client(timeout=120) as c:
        r = c.post(two.base + "/v2/repository/models/lenet/load", headers=AUTH)
        assert r.status_code == 200, r.text
    for _ in range(25):
        assert _v2_infer_new_connection(two) in ("0", "1")
        assert _predictions_new_connection(two).status_code == 200


def _keepalive_client(server: ServerProcess, stop: threading.Event,
                      out: list[tuple[str, str]]) -> None:
    """Predictions on one keep-alive connection; each outcome with the worker of that
    connection (the last one that answered on it)."""
    worker = "?"
    client = httpx.Client(timeout=30)
    while not stop.is_set():
        try:
            r = client.post(server.base + "/predictions/lenet", content=DIGIT)
            worker = r.headers.get("capserve-worker", "?")
            out.append(("ok" if r.status_code == 200 else f"{r.status_code}", worker))
        except httpx.TransportError as exc:
            out.append((f"transport: {type(exc).__name__}", worker))
            client.close()
            client = httpx.Client(timeout=30)
            worker = "?"
    client.close()


def test_kill_9_costs_only_the_killed_workers_requests(two: ServerProcess) -> None:
    victim = next(p for p in _workers(two) if "CAPSERVE_WORKER_SETTINGS" in p.environ()
                  and '"worker_id": 1' in p.environ()["CAPSERVE_WORKER_SETTINGS"])
    stop = threading.Event()
    outcomes: list[list[tuple[str, str]]] = [[] for _ in range(8)]
    threads = [threading.Thread(target=_keepalive_client, args=(two, stop, out), daemon=True)
               for out in outcomes]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        victim.kill()
        killed = time.monotonic()
        back = _ready_within(two, 10.0)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    flat = [o for per in outcomes for o in per]
    failures = [o for o in flat if o[0] != "ok"]
    assert sum(o[0] == "ok" for o in flat) > 50
    # Every failure was on a connection the killed worker held, at most one per connection.
    assert all(worker == "1" for _, worker in failures), failures
    assert len(failures) <= len(outcomes), failures
    assert back < 10.0
    assert re.search(r"worker 1 \(pid \d+\) killed by SIGKILL", two.log()), two.log()[-2000:]
    assert metric_sum(two, "capserve_worker_exits_total", cause="signal:SIGKILL") >= 1
    assert time.monotonic() - killed < 30
    assert len(_workers(two)) == 2


def _worker_pid(server: ServerProcess, worker: int) -> int | None:
    for p in _workers(server):
        with contextlib.suppress(psutil.Error):
            if f'"worker_id": {worker},' in p.environ().get("CAPSERVE_WORKER_SETTINGS", ""):
                return p.pid
    return None


def test_worker_that_dies_while_loading_backs_off_and_names_the_model(
        tiny_store: Path, tmp_path: Path) -> None:
    """A worker killed each time it loads a model (as an out-of-memory kill would) is
    restarted with a growing delay, and the log names the model it was loading."""
    store = tmp_path / "model_store"
    shutil.copytree(tiny_store / "slow", store / "heavy")
    config = store / "heavy" / "config.pbtxt"
    # A long warm-up keeps the worker inside the load long enough to be killed there.
    config.write_text(config.read_text() + (
        'model_warmup { name: "w" batch_size: 1 count: 600 inputs { key: "x" value { '
        f'data_type: TYPE_FP32 dims: [ {SLOW_WIDTH} ] zero_data: true }} }} }}\n'))
    server = start_server(store, tmp_path, extra_args=["--workers", "2"], wait_ready=False)
    try:
        for round_ in range(1, 4):
            deadline = time.monotonic() + 60
            while server.log().count("worker 0 loading model 'heavy'") < round_:
                assert time.monotonic() < deadline, server.log()[-3000:]
                time.sleep(0.1)
            pid = _worker_pid(server, 0)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            while server.log().count("worker 0 (pid") < round_:
                assert time.monotonic() < deadline, server.log()[-3000:]
                time.sleep(0.1)
        log = server.log()
        assert log.count("killed by SIGKILL (kill -9 or the kernel's out-of-memory killer) "
                         "while loading model 'heavy'") == 3, log[-3000:]
        delays = [float(d) for d in re.findall(r"worker 0 .*starting it again in ([\d.]+) s",
                                               log)]
        assert delays == [1.0, 2.0, 4.0], delays
        # The supervisor and the other worker still answer liveness; the server is not ready.
        assert http_status(server.base + "/v2/health/live") == 200
        assert http_status(server.base + "/v2/health/ready") == 503
        assert http_status(server.base + "/ping") != 200
        assert not grpcclient.InferenceServerClient(server.grpc_url).is_server_ready()
    finally:
        assert server.stop(timeout=60) == 0


def test_sigterm_with_two_workers_drains_accepted_work(tiny_store: Path, tmp_path: Path) -> None:
    server = start_server(tiny_store, tmp_path, extra_args=[
        "--workers", "2", "--shutdown-grace-seconds", str(GRACE_S)])
    drained = sigterm_under_load(server, 16)
    log, flat, signalled = drained.log, drained.outcomes, drained.signalled
    assert drained.code == 0, log[-3000:]
    assert drained.exited - signalled < GRACE_S + 5, log[-3000:]
    assert not [o for o in flat if o.result not in ("ok", "refused")]
    accepted = sum(int(n) for n in re.findall(r"draining: readiness is false, (\d+) requests",
                                                log))
    assert log.count("drained: 0 requests still in flight") == 2, log[-3000:]
    assert sum(o.result == "ok" for o in flat if o.finished > signalled) >= accepted


def test_sigterm_to_every_process_at_once_still_drains(tiny_store: Path, tmp_path: Path) -> None:
    """systemd's default KillMode=control-group (or `pkill`) signals the supervisor and every
    worker at once; each worker then hears SIGTERM again from the supervisor's drain. That is
    one request to stop: accepted requests are answered and the server exits 0."""
    server = start_server(tiny_store, tmp_path, extra_args=[
        "--workers", "2", "--shutdown-grace-seconds", str(GRACE_S)])

    def every_process(server: ServerProcess) -> None:
        workers = _workers(server)
        assert len(workers) == 2
        for proc in [psutil.Process(server.proc.pid), *workers]:
            proc.send_signal(signal.SIGTERM)

    drained = sigterm_under_load(server, 16, send=every_process)
    log, flat = drained.log, drained.outcomes
    lost = [o for o in flat if o.result not in ("ok", "refused")]
    assert drained.code == 0, log[-3000:]
    assert not lost, lost[:5]
    assert log.count("drained: 0 requests still in flight") == 2, log[-3000:]
    assert "received SIGTERM again, still draining" in log, log[-3000:]


def test_a_replacement_replays_a_short_log_and_serves_the_same_state(
        two: ServerProcess) -> None:
    """Reloads and scales again and again: the log a replacement replays keeps only what
    still decides the state, and the replacement ends with the others' instance count."""
    def mgmt(method: str, path: str) -> httpx.Response:
        r = httpx.request(method, two.management_base + path, headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        return r

    for count in (3, 1, 2, 1, 2):
        with httpx.Client(timeout=120) as c:
            r = c.post(two.base + "/v2/repository/models/lenet/load", headers=AUTH)
            assert r.status_code == 200, r.text
        mgmt("PUT", f"/models/lenet?min_worker={count}&synchronous=true")
    before = mgmt("GET", "/models/lenet").json()[0]
    pid = _worker_pid(two, 1)
    assert pid is not None
    psutil.Process(pid).kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (_worker_pid(two, 1) in (None, pid) or
                                           http_status(two.base + "/v2/health/ready") != 200):
        time.sleep(0.2)
    assert http_status(two.base + "/v2/health/ready") == 200, two.log()[-2000:]
    replayed = re.findall(r"worker 1 serving \((\d+) control operations replayed\)", two.log())
    assert replayed and int(replayed[-1]) <= 2, (replayed, two.log()[-2000:])  # load, scale
    after = mgmt("GET", "/models/lenet").json()[0]
    assert len(after["workers"]) == len(before["workers"]), (before, after)
    assert after["minWorkers"] == before["minWorkers"], (before, after)
