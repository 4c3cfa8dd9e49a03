"""The project's .mar archives on a real TorchServe 0.12 give capserve's answers.

Both servers' answers are compared with one computed without the server's code
(tests/helpers/reference.py: Pillow and numpy from the documented recipe, ONNX Runtime on the
store's model.onnx), because the archives' handler runs capserve's own pre- and post-processing
inside TorchServe: comparing the two servers alone would pass a bug they share.

TorchServe (Java) is started once for the module on free loopback ports with the exported
``lenet.mar`` (and ``style_mosaic.mar`` when the store has it), and always stopped (the whole
process group it runs in). Skips with the reason where Java or TorchServe is absent.
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.ports import free_port
from tests.helpers.reference import assert_same_answer, expected_answer
from tests.helpers.server import ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
STARTUP_S = 180.0


def _post(url: str, body: bytes, timeout: float = 60.0) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), resp.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("content-type", "")


def _ready(management: str, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"{management}/models/{model}", timeout=2) as resp:
            workers = json.loads(resp.read())[0].get("workers", [])
    except (OSError, ValueError, IndexError, KeyError):
        return False
    return any(w.get("status") == "READY" for w in workers)


@pytest.fixture(scope="module")
def torchserve(default_store: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[str, list[str]]]:
    if shutil.which("java") is None:
        pytest.skip("Java is not installed: real TorchServe needs a JVM (Java 11+)")
    launcher = Path(sys.executable).parent / "torchserve"
    if not launcher.exists():
        pytest.skip("the torchserve package is not installed in this environment")
    archives = [n for n in ("lenet", "style_mosaic") if (default_store / f"{n}.mar").is_file()]
    if "lenet" not in archives:
        pytest.skip("the default store has no lenet.mar")
    work = tmp_path_factory.mktemp("torchserve")
    store = work / "store"
    store.mkdir()
    for name in archives:
        shutil.copy(default_store / f"{name}.mar", store / f"{name}.mar")
    ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc", "grpc_m")}
    (work / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{ports['inference']}\n"
        f"management_address=http://127.0.0.1:{ports['management']}\n"
        f"metrics_address=http://127.0.0.1:{ports['metrics']}\n"
        f"grpc_inference_port={ports['grpc']}\ngrpc_management_port={ports['grpc_m']}\n"
        "grpc_inference_address=127.0.0.1\ngrpc_management_address=127.0.0.1\n"
        "default_workers_per_model=1\ndisable_system_metrics=true\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOG_LOCATION": str(work / "logs"),
           "METRICS_LOCATION": str(work / "logs"),
           # The archives' handler imports serving.torchserve_handler from this checkout.
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    log = open(work / "torchserve.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [str(launcher), "--start", "--foreground", "--ncs", "--disable-token-auth",
         "--model-store", str(store), "--ts-config", str(work / "config.properties"),
         "--models", *(f"{n}={n}.mar" for n in archives)],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        management = f"http://127.0.0.1:{ports['management']}"
        deadline = time.monotonic() + STARTUP_S
        while not all(_ready(management, n) for n in archives):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (work / "torchserve.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"TorchServe did not get ready:\n{tail}")
            time.sleep(1.0)
        yield f"http://127.0.0.1:{ports['inference']}", archives
    finally:
        # The launcher, the JVM and its Python workers share the session we started.
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


@pytest.fixture(scope="module")
def capserve(default_store: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[ServerProcess]:
    server = start_server(default_store, tmp_path_factory.mktemp("capserve"))
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("image", ["images/digit7.png", "images/digit0.png", "images/photo.jpg",
                                   "images/exif_rotated.jpg", "corpus/gray16.png"])
def test_lenet_top5_agrees(torchserve: tuple[str, list[str]], capserve: ServerProcess,
                           default_store: Path, image: str) -> None:
    ts_url, _ = torchserve
    body = (DATA / image).read_bytes()
    want = expected_answer(default_store / "lenet", body)
    ts_status, ts_body, ts_type = _post(f"{ts_url}/predictions/lenet", body)
    cs_status, cs_body, cs_type = _post(f"{capserve.base}/predictions/lenet", body)
    assert ts_status == cs_status == 200, (ts_body, cs_body)
    assert_same_answer(ts_body, ts_type, want)
    assert_same_answer(cs_body, cs_type, want)


def test_bad_input_is_a_400_on_both(torchserve: tuple[str, list[str]],
                                    capserve: ServerProcess) -> None:
    ts_url, _ = torchserve
    body = (DATA / "corpus" / "truncated.png").read_bytes()
    ts_status, ts_body, _ = _post(f"{ts_url}/predictions/lenet", body)
    cs_status, cs_body, _ = _post(f"{capserve.base}/predictions/lenet", body)
    assert ts_status == cs_status == 400
    assert json.loads(ts_body)["message"] == json.loads(cs_body)["message"]


@pytest.mark.parametrize("image", ["images/photo.jpg", "images/photo.png"])
def test_style_pixels_agree(torchserve: tuple[str, list[str]], capserve: ServerProcess,
                            default_store: Path, image: str) -> None:
    ts_url, archives = torchserve
    if "style_mosaic" not in archives:
        pytest.skip("the default store has no style_mosaic.mar")
    body = (DATA / image).read_bytes()
    want = expected_answer(default_store / "style_mosaic", body)
    ts_status, ts_body, ts_type = _post(f"{ts_url}/predictions/style_mosaic", body)
    cs_status, cs_body, cs_type = _post(f"{capserve.base}/predictions/style_mosaic", body)
    assert ts_status == cs_status == 200
    assert_same_answer(ts_body, ts_type, want)
    assert_same_answer(cs_body, cs_type, want)
