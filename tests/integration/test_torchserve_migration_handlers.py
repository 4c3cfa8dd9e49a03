"""Archives with custom handlers (``--allow-archive-code``): the same answers as a real
TorchServe 0.12 on the same archives, and a handler that raises, overruns its
``responseTimeout`` or calls ``os._exit`` fails only its own requests.

The archives are written here: a ``BaseHandler`` subclass with its own ``preprocess`` (and a
TorchScript model), a module-level ``handle`` function, a handler answering JSON lists for a
batch, and a fragile one. capserve serves them from a ``--ts-config`` (batch size, delay and
``responseTimeout`` per model); TorchServe, when Java and the torchserve package are there,
from the same store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.ports import free_port
from tests.helpers.server import ServerProcess, start_server

LIMIT = 1 << 20  # the capserve server's max_request_bytes

BASE = '''
import json
import torch
from ts.torch_handler.base_handler import BaseHandler


class Doubler(BaseHandler):
    def preprocess(self, data):
        rows = [json.loads(row.get("data") or row.get("body")) for row in data]
        return torch.tensor(rows, dtype=torch.float32) * 2
'''
FUNCTION = '''
def handle(data, context):
    if data is None:
        return None
    props = context.system_properties
    out = []
    for i, row in enumerate(data):
        body = row.get("data") or row.get("body")
        out.append({"model": context.manifest["model"]["modelName"], "bytes": len(body),
                    "batch_size": props["batch_size"]})
    return out
'''
LISTS = '''
class Lists:
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        return [[i, len(row.get("body") or row.get("data")), sorted(row)] for i, row in
                enumerate(data)]
'''
FRAGILE = '''
import os
import time


def handle(data, context):
    if data is None:  # TorchServe's loader calls handle(None, context) to initialize
        return None
    out = []
    for row in data:
        body = bytes(row.get("body") or row.get("data"))
        if body == b"raise":
            raise ValueError("asked to fail")
        if body == b"sleep":
            time.sleep(60)
        if body == b"exit":
            os._exit(3)
        out.append("ok " + body.decode())
    return out
'''


def _mar(store: Path, name: str, source: str, handler: str, model: bytes | None = None) -> None:
    manifest = {"createdOn": "01/01/2026 00:00:00", "runtime": "python", "archiverVersion":
                "0.12.0", "model": {"modelName": name, "modelVersion": "1.0",
                                    "handler": handler}}
    if model is not None:
        manifest["model"]["serializedFile"] = "model.pt"
    with zipfile.ZipFile(store / f"{name}.mar", "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        zf.writestr(handler.split(":")[0] if handler.endswith(".py") else
                    handler.split(":")[0] + ".py", source)
        if model is not None:
            zf.writestr("model.pt", model)


def _linear_model() -> bytes:
    import io

    import torch

    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]]))
        layer.bias.copy_(torch.tensor([0.25, -0.25]))
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(layer), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("handler-store")
    _mar(store, "doubler", BASE, "doubler_handler.py", _linear_model())
    _mar(store, "function", FUNCTION, "function_handler.py")
    _mar(store, "lists", LISTS, "lists_handler.py")
    _mar(store, "fragile", FRAGILE, "fragile_handler.py")
    return store


@pytest.fixture(scope="module")
def capserve(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("capserve-handlers")
    models = {"lists": {"1.0": {"batchSize": 4, "maxBatchDelay": 200}},
              "fragile": {"1.0": {"responseTimeout": 3}}}
    (work / "config.properties").write_text(
        f"model_store={store}\nload_models=all\nmodels={json.dumps(models)}\n")
    server = start_server(store, work, ["--ts-config", str(work / "config.properties"),
                                        "--allow-archive-code"],
                          env={"CAPSERVE_MAX_REQUEST_BYTES": str(LIMIT)})
    try:
        yield server
    finally:
        server.stop()


def _post(url: str, body: bytes, headers: dict[str, str] | None = None,
          timeout: float = 120.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/octet-stream", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _ready(management: str, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"{management}/models/{model}", timeout=2) as resp:
            workers = json.loads(resp.read())[0].get("workers", [])
    except (OSError, ValueError, IndexError, KeyError):
        return False
    return any(w.get("status") == "READY" for w in workers)


@pytest.fixture(scope="module")
def torchserve(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("java") is None:
        pytest.skip("Java is not installed: real TorchServe needs a JVM (Java 11+)")
    launcher = Path(sys.executable).parent / "torchserve"
    if not launcher.exists():
        pytest.skip("the torchserve package is not installed in this environment")
    work = tmp_path_factory.mktemp("torchserve-handlers")
    ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc", "grpc_m")}
    (work / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{ports['inference']}\n"
        f"management_address=http://127.0.0.1:{ports['management']}\n"
        f"metrics_address=http://127.0.0.1:{ports['metrics']}\n"
        f"grpc_inference_port={ports['grpc']}\ngrpc_management_port={ports['grpc_m']}\n"
        "default_workers_per_model=1\ndisable_system_metrics=true\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOG_LOCATION": str(work / "logs"),
           "METRICS_LOCATION": str(work / "logs"),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    names = ["doubler", "function", "lists"]
    log = open(work / "torchserve.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [str(launcher), "--start", "--foreground", "--ncs", "--disable-token-auth",
         "--model-store", str(store), "--ts-config", str(work / "config.properties"),
         "--models", *(f"{n}={n}.mar" for n in names)],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        management = f"http://127.0.0.1:{ports['management']}"
        deadline = time.monotonic() + 180
        while not all(_ready(management, n) for n in names):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (work / "torchserve.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"TorchServe did not get ready:\n{tail}")
            time.sleep(1.0)
        yield f"http://127.0.0.1:{ports['inference']}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


CASES = [("doubler", b"[1.0, 2.0, 3.0]", {}), ("function", b"abcdef", {"x-tag": "blue"}),
         ("lists", b"xyz", {})]


@pytest.mark.parametrize("model, body, headers", CASES)
def test_answers_equal_torchserve(capserve: ServerProcess, torchserve: str, model: str,
                                  body: bytes, headers: dict[str, str]) -> None:
    ts_status, ts_body = _post(f"{torchserve}/predictions/{model}", body, headers)
    cs_status, cs_body = _post(f"{capserve.base}/predictions/{model}", body, headers)
    assert ts_status == cs_status == 200, (ts_body, cs_body)
    assert json.loads(cs_body) == json.loads(ts_body)


def test_base_handler_answer(capserve: ServerProcess) -> None:
    status, body = _post(f"{capserve.base}/predictions/doubler", b"[1.0, 2.0, 3.0]")
    assert status == 200, body
    # x2 then Linear: [2-6+0.25, 0.5*(2+4+6)-0.25]
    assert json.loads(body) == pytest.approx([-3.75, 5.75])


def test_batch_of_lists_is_one_handler_call(capserve: ServerProcess) -> None:
    shared = False
    for _ in range(3):  # arrivals on a loaded machine may miss one 200 ms window
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda b: _post(f"{capserve.base}/predictions/lists", b),
                                    [b"a", b"bb", b"ccc", b"dddd"]))
        assert all(status == 200 for status, _ in answers), answers
        rows = [json.loads(body) for _, body in answers]
        assert sorted(r[1] for r in rows) == [1, 2, 3, 4]
        shared = shared or max(r[0] for r in rows) > 0
    assert shared, "the requests never shared a batch"


@pytest.mark.parametrize("trigger, code, message", [
    (b"raise", 503, "Prediction failed"), (b"sleep", 500, "Worker died."),
    (b"exit", 500, "Worker died.")])
def test_failing_handler_fails_only_its_requests(capserve: ServerProcess, trigger: bytes,
                                                 code: int, message: str) -> None:
    started = time.monotonic()
    status, body = _post(f"{capserve.base}/predictions/fragile", trigger)
    assert (status, json.loads(body)["message"]) == (code, message), body
    assert time.monotonic() - started < 30, "responseTimeout (3 s) was not applied"
    # Another model was served meanwhile, and the next request of this one succeeds.
    assert _post(f"{capserve.base}/predictions/function", b"x")[0] == 200
    assert _post(f"{capserve.base}/predictions/fragile", b"again") == (200, b"ok again")


def test_without_the_flag_archives_are_refused_naming_it(store: Path,
                                                        tmp_path: Path) -> None:
    server = start_server(store, tmp_path, wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while "--allow-archive-code" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        status, body = _post(f"{server.base}/predictions/function", b"x")
        assert status == 404, body
        assert "handler 'function_handler.py' is Python code inside the archive" in server.log()
        assert "--allow-archive-code" in server.log()
    finally:
        server.stop()


# -- the other places a TorchServe user meets a model ---------------------------------------


def _get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _torchserve_error(status: int, body: bytes, code: int, words: str) -> None:
    doc = json.loads(body)
    assert status == code and doc["code"] == code, body
    assert set(doc) == {"code", "type", "message"} and words in doc["message"], body


def test_grpc_predictions_reach_custom_handlers(capserve: ServerProcess) -> None:
    import grpc
    from google.protobuf import empty_pb2

    from serving.generated import torchserve_inference_pb2 as inf
    from serving.generated import torchserve_inference_pb2_grpc as inf_grpc

    with grpc.insecure_channel(capserve.grpc_url) as channel:
        stub = inf_grpc.InferenceAPIsServiceStub(channel)
        reply = stub.Predictions(inf.PredictionsRequest(
            model_name="function", model_version="1.0", input={"data": b"abcdef"}), timeout=60)
        assert json.loads(reply.prediction) == json.loads(
            _post(f"{capserve.base}/predictions/function", b"abcdef")[1])
        with pytest.raises(grpc.RpcError) as failed:
            stub.Predictions(inf.PredictionsRequest(model_name="fragile",
                                                    input={"data": b"raise"}), timeout=60)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert failed.value.details() == "Prediction failed"
        with pytest.raises(grpc.RpcError) as missing:
            stub.Predictions(inf.PredictionsRequest(model_name="function", model_version="7",
                                                    input={"data": b"x"}), timeout=60)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        health = json.loads(stub.Ping(empty_pb2.Empty(), timeout=30).health)
        assert health == {"status": "Healthy"}


def test_management_lists_and_describes_custom_handlers(capserve: ServerProcess) -> None:
    import grpc

    from serving.generated import torchserve_management_pb2 as mgmt
    from serving.generated import torchserve_management_pb2_grpc as mgmt_grpc

    status, body = _get(f"{capserve.management_base}/models")
    assert status == 200, body
    names = [m["modelName"] for m in json.loads(body)["models"]]
    assert {"doubler", "function", "lists", "fragile"} <= set(names)
    _post(f"{capserve.base}/predictions/lists", b"x")  # its process is up now
    status, body = _get(f"{capserve.management_base}/models/lists")
    assert status == 200, body
    lists = json.loads(body)[0]
    assert (lists["batchSize"], lists["maxBatchDelay"], lists["minWorkers"]) == (4, 200, 1)
    assert lists["modelVersion"] == "1.0" and lists["runtime"] == "python"
    assert [w["status"] for w in lists["workers"]] == ["READY"]
    assert lists["workers"][0]["pid"] > 0
    assert _get(f"{capserve.management_base}/models/lists/7")[0] == 404
    with grpc.insecure_channel(capserve.grpc_url) as channel:
        stub = mgmt_grpc.ManagementAPIsServiceStub(channel)
        described = json.loads(stub.DescribeModel(
            mgmt.DescribeModelRequest(model_name="fragile"), timeout=30).msg)[0]
        assert described["responseTimeout"] == 3 and described["modelName"] == "fragile"
        listed = json.loads(stub.ListModels(mgmt.ListModelsRequest(), timeout=30).msg)
        assert "function" in [m["modelName"] for m in listed["models"]]
        with pytest.raises(grpc.RpcError) as scaled:
            stub.ScaleWorker(mgmt.ScaleWorkerRequest(model_name="lists", min_worker=3),
                             timeout=30)
        assert scaled.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "minWorkers" in (scaled.value.details() or "")


def test_ping_and_metrics_count_custom_handlers(capserve: ServerProcess) -> None:
    import re
    import socket

    def served() -> float:
        text = _get(capserve.metrics_url)[1].decode()
        for line in text.splitlines():
            labels = re.match(r"ts_inference_requests_total\{(.*)\} (\S+)$", line)
            if labels and set(labels.group(1).split(",")) == {
                    'model_name="function"', 'model_version="1.0"',
                    f'hostname="{socket.gethostname()}"'}:
                return float(labels.group(2))
        return 0.0

    before = served()
    for _ in range(3):
        assert _post(f"{capserve.base}/predictions/function", b"abc")[0] == 200
    assert served() - before == 3
    deadline = time.monotonic() + 60  # every handler process up (fragile restarts after exit)
    while _get(f"{capserve.base}/ping")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _get(f"{capserve.base}/ping") == (200, b'{"status":"Healthy"}')


def test_bad_input_on_handler_paths_gets_torchserve_errors(capserve: ServerProcess) -> None:
    base = capserve.base
    import http.client

    # The body is refused from its declared length, before it is sent.
    conn = http.client.HTTPConnection("127.0.0.1", capserve.http_port, timeout=30)
    try:
        conn.putrequest("POST", "/predictions/function")
        conn.putheader("Content-Length", str(LIMIT + 1))
        conn.endheaders()
        resp = conn.getresponse()
        _torchserve_error(resp.status, resp.read(), 413, "exceeds the limit")
    finally:
        conn.close()
    _torchserve_error(*_post(f"{base}/predictions/function/9.0", b"x"), 404,
                      "does not exist for model")
    _torchserve_error(*_post(f"{base}/v2/models/function/infer", b"{}"), 400,
                      "service_envelope=kservev2")
    _torchserve_error(*_get(f"{base}/v2/models/function/versions/9"), 404,
                      "does not exist for model")
    assert json.loads(_get(f"{base}/v2/models/function")[1]) == {
        "name": "function", "versions": ["1.0"], "platform": "python"}


# -- two capserve workers, KServe v2 envelope -----------------------------------------------

V2 = '''
import os


def handle(data, context):
    if data is None:
        return None
    out = []
    for item in data:  # the kservev2 envelope gives one dict per v2 input
        if item["data"] == "exit":
            os._exit(3)
        out.append([[2 * v for v in row] for row in item["data"]])
    return out
'''


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("v2-store")
    _mar(store, "twice", V2, "twice_handler.py")
    work = tmp_path_factory.mktemp("capserve-two-workers")
    (work / "config.properties").write_text(
        f"model_store={store}\nload_models=all\nservice_envelope=kservev2\n"
        f"models={json.dumps({'twice': {'1.0': {'responseTimeout': 5}}})}\n")
    server = start_server(store, work, ["--ts-config", str(work / "config.properties"),
                                        "--allow-archive-code"],
                          env={"CAPSERVE_WORKERS": "2"})
    try:
        yield server
    finally:
        server.stop()


def _infer(server: ServerProcess, doc: object, path: str = "/v2/models/twice/infer"
           ) -> tuple[int, bytes, str]:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    req = urllib.request.Request(server.base + path, data=data,
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read(), resp.headers.get("capserve-worker", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("capserve-worker", "")


ROW = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


def test_v2_infer_over_two_workers_and_exit_fails_only_its_request(
        two_workers: ServerProcess) -> None:
    seen: set[str] = set()
    for _ in range(40):  # each request on a new connection; the kernel spreads them
        status, body, worker = _infer(two_workers, ROW)
        assert status == 200, body
        out = json.loads(body)
        assert out["model_name"] == "twice" and out["outputs"][0]["data"] == [2, 4, 6]
        seen.add(worker)
        if len(seen) == 2:
            break
    assert seen == {"0", "1"}
    exit_doc = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                            "data": ["exit"]}]}
    status, body, _ = _infer(two_workers, exit_doc)
    assert (status, json.loads(body)["message"]) == (500, "Worker died."), body
    answers = [_infer(two_workers, ROW)[0] for _ in range(6)]
    assert answers == [200] * 6
    status, body = _get(f"{two_workers.base}/v2/models/twice/ready")
    assert (status, json.loads(body)["ready"]) == (200, True)


@pytest.mark.parametrize("doc, code, words", [
    ({"inputs": []}, 400, 'non-empty list "inputs"'),
    ({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
     400, "shape [2, 3] holds 6"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP128", "data": [1]}]}, 400,
     "unknown datatype"),
    (b"[not json", 400, "KServe v2 inference request is not valid JSON"),
])
def test_bad_v2_requests_get_torchserve_errors(two_workers: ServerProcess, doc: object,
                                               code: int, words: str) -> None:
    status, body, _ = _infer(two_workers, doc)
    _torchserve_error(status, body, code, words)


def test_v2_front_refuses_unknown_version_and_v1(two_workers: ServerProcess) -> None:
    status, body, _ = _infer(two_workers, ROW, "/v2/models/twice/versions/3/infer")
    _torchserve_error(status, body, 404, "does not exist for model")
    status, body, _ = _infer(two_workers, {"instances": [1]}, "/v1/models/twice:predict")
    _torchserve_error(status, body, 400, "/v2/models/twice/infer")
