"""A TorchServe user's KServe storage root served unchanged: ``config/config.properties`` and
``model-store/*.mar``, found from ``--model-store`` pointing at the root.

One server for the module; the test writes the root (lenet and unet archives, per-model batch
settings in ``model_snapshot``, KServe's usual keys) and checks each envelope's route and that
describe reports the configured batch size, delay and workers.
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.server import ServerProcess, start_server

DATA = Path(__file__).resolve().parents[1] / "data"
SNAPSHOT = {"name": "startup.cfg", "modelCount": 2, "models": {
    "mnist": {"1.0": {"defaultVersion": True, "marName": "lenet.mar", "minWorkers": 2,
                      "maxWorkers": 4, "batchSize": 4, "maxBatchDelay": 7,
                      "responseTimeout": 120}},
    "unet": {"1.0": {"defaultVersion": True, "marName": "unet.mar", "minWorkers": 1,
                     "maxWorkers": 1, "batchSize": 2, "maxBatchDelay": 20}}}}


def _config(root: Path) -> str:
    return ("inference_address=http://0.0.0.0:8085\nmanagement_address=http://0.0.0.0:8085\n"
            "metrics_address=http://0.0.0.0:8082\ngrpc_inference_port=7070\n"
            "grpc_management_port=7071\nenable_metrics_api=true\nmetrics_format=prometheus\n"
            "number_of_netty_threads=4\njob_queue_size=10\nenable_envvars_config=true\n"
            "install_py_dep_per_model=true\nservice_envelope=kserve\n"
            "model_store=/mnt/models/model-store\n"
            f"model_snapshot={json.dumps(SNAPSHOT)}\n")


@pytest.fixture(scope="module")
def server(default_store: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("kserve-root")
    (root / "config").mkdir()
    (root / "model-store").mkdir()
    for name in ("lenet", "unet"):
        shutil.copy(default_store / f"{name}.mar", root / "model-store" / f"{name}.mar")
    (root / "config" / "config.properties").write_text(_config(root))
    proc = start_server(root, tmp_path_factory.mktemp("logs"))
    try:
        yield proc
    finally:
        proc.stop()


def _post(url: str, body: bytes, ctype: str = "application/octet-stream"
          ) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_predictions_under_the_configured_name(server: ServerProcess) -> None:
    status, body = _post(f"{server.base}/predictions/mnist", (DATA / "images/digit7.png").read_bytes())
    assert status == 200, body
    top = json.loads(body)
    assert next(iter(top)) == "7"
    status, body = _post(f"{server.base}/predictions/unet", (DATA / "images/photo.jpg").read_bytes())
    assert status == 200 and body.startswith(b"\x89PNG"), body[:200]


def test_kserve_v1_predict(server: ServerProcess) -> None:
    image = base64.b64encode((DATA / "images/digit7.png").read_bytes()).decode()
    status, body = _post(f"{server.base}/v1/models/mnist:predict",
                         json.dumps({"instances": [{"data": image}]}).encode(),
                         "application/json")
    assert status == 200, body
    assert next(iter(json.loads(body)["predictions"][0])) == "7"


def test_v2_infer(server: ServerProcess) -> None:
    pixels = np.asarray(Image.open(DATA / "images/digit7.png").convert("L").resize((28, 28)),
                        dtype=np.float32) / 255.0
    doc = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                       "data": ((pixels - 0.1311) / 0.3083).ravel().tolist()}]}
    status, body = _post(f"{server.base}/v2/models/mnist/infer", json.dumps(doc).encode(),
                         "application/json")
    assert status == 200, body
    out = json.loads(body)["outputs"][0]
    assert out["shape"] == [1, 10] and int(np.argmax(out["data"])) == 7


def test_describe_shows_configured_batching(server: ServerProcess) -> None:
    with urllib.request.urlopen(f"{server.management_base}/models/mnist", timeout=10) as resp:
        mnist = json.loads(resp.read())[0]
    assert (mnist["batchSize"], mnist["maxBatchDelay"]) == (4, 7)
    assert mnist["minWorkers"] == mnist["maxWorkers"] == 2  # a fixed count: minWorkers
    with urllib.request.urlopen(f"{server.management_base}/models/unet", timeout=10) as resp:
        unet = json.loads(resp.read())[0]
    assert (unet["batchSize"], unet["maxBatchDelay"], unet["minWorkers"]) == (2, 20, 1)


def test_ignored_keys_logged_once(server: ServerProcess) -> None:
    log = server.log()
    assert log.count("key 'number_of_netty_threads' is ignored") == 1
    assert "key 'install_py_dep_per_model' is ignored: an archive's requirements.txt is never " \
           "installed" in log
