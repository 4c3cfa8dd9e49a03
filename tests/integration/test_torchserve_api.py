"""TorchServe clients against the real server (``python -m serving``) on the default models.

One server for the module, on a copy of the default store plus hostile archives (``../``
members, a symlink, custom handler code) and a ``.mar``-only model: curl-style raw and multipart
requests for every task equal answers computed without the server's code (tests/helpers/reference.py),
the bad-input corpus gets its documented 4xx while the server keeps serving, TorchServe gRPC
Ping/Predictions work through stubs from this project's proto, and the management API enforces
its token and refuses remote or escaping URLs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import empty_pb2
from PIL import Image

from serving.generated import torchserve_inference_pb2 as inf
from serving.generated import torchserve_inference_pb2_grpc as inf_grpc
from tests.helpers.reference import Expected, expected_answer
from tests.helpers.server import ServerProcess, start_server

DATA = Path(__file__).resolve().parents[1] / "data"
TOKEN = "ts-management-token-42"
# model -> (sample image, request options) for each default model that has an image task
SAMPLES = {"lenet": "digit7.png", "capsnet": "digit7.png", "unet": "photo.png",
           "style_mosaic": "photo.jpg"}


@pytest.fixture(scope="module")
def store(default_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("ts_store") / "store"
    shutil.copytree(default_store, copy, ignore=shutil.ignore_patterns(".*"))
    for name in ("zipslip", "symlink", "custom_handler"):
        shutil.copy(DATA / "archives" / f"{name}.mar", copy / f"{name}.mar")
    if (default_store / "lenet.mar").is_file():
        shutil.copy(default_store / "lenet.mar", copy / "lenet_archive.mar")
    return copy


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text(TOKEN)
    os.chmod(token, 0o600)
    proc = start_server(store, tmp_path_factory.mktemp("logs"), extra_args=[
        "--api-token-file", str(token), "--enable-model-control"])
    try:
        yield proc
    finally:
        proc.stop()


def assert_same(got: bytes, ctype: str, want: Expected) -> None:
    assert ctype.split(";")[0] == want.content_type
    if want.content_type == "application/json":
        g, w = json.loads(got), want.json
        assert list(g) == list(w)
        for key in w:
            if isinstance(w[key], dict):
                assert list(g[key]) == list(w[key])
                # Relative: a confident digit's other classes are ~1e-6, and a shifted input
                # moves them by less than any absolute tolerance would notice.
                np.testing.assert_allclose(list(g[key].values()), list(w[key].values()),
                                           rtol=1e-4, atol=1e-12)
            else:
                assert g[key] == w[key] or np.allclose(g[key], w[key], rtol=1e-4, atol=1e-12)
        return
    assert want.pixels is not None
    g_img = np.asarray(Image.open(io.BytesIO(got)), dtype=np.int16)
    w_img = want.pixels.astype(np.int16)
    assert g_img.shape == w_img.shape
    if g_img.ndim == 2:  # masks: class per pixel
        assert (g_img == w_img).mean() > 0.999
    else:
        assert np.abs(g_img - w_img).max() <= 1


@pytest.mark.parametrize("model", sorted(SAMPLES))
def test_every_task_raw_and_multipart_equal_the_pipeline(server: ServerProcess, store: Path,
                                                         model: str) -> None:
    if not (store / model).is_dir():
        pytest.skip(f"the default store has no {model}")
    image = (DATA / "images" / SAMPLES[model]).read_bytes()
    want = expected_answer(store / model, image)
    raw = httpx.post(f"{server.base}/predictions/{model}", content=image, timeout=60)
    assert raw.status_code == 200, raw.text
    assert_same(raw.content, raw.headers["content-type"], want)
    multi = httpx.post(f"{server.base}/predictions/{model}/1", timeout=60,
                       files=[("data", ("x", image, "application/octet-stream"))])
    assert multi.status_code == 200
    assert_same(multi.content, multi.headers["content-type"], want)


def test_curl_upload_and_several_images(server: ServerProcess) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    seven, zero = DATA / "images" / "digit7.png", DATA / "images" / "digit0.png"
    out = subprocess.run(["curl", "-s", "-T", str(seven), f"{server.base}/predictions/lenet"],
                         capture_output=True, check=True, timeout=60).stdout
    assert next(iter(json.loads(out))) == "7"
    out = subprocess.run(["curl", "-s", "-F", f"data=@{seven}", "-F", f"data=@{zero}",
                          f"{server.base}/predictions/lenet?topk=2"],
                         capture_output=True, check=True, timeout=60).stdout
    answers = json.loads(out)
    assert [next(iter(a)) for a in answers] == ["7", "0"] and len(answers[0]) == 2


def test_unet_executions_hold_at_most_max_batch_elements(server: ServerProcess,
                                                        store: Path) -> None:
    """The exporter bounds what one execution of a fully convolutional model holds
    (max_batch_elements: a quarter of a full batch at max_side). A v2 request over it is a 400
    naming it, refused before anything runs; TorchServe uploads of as many images are served
    (each image is its own request)."""
    config = (store / "unet" / "config.pbtxt").read_text()
    bound = int(config.split('key: "max_batch_elements"')[1].split('"')[1])
    side = 512
    count = bound // (side * side) + 1  # one image more than one execution holds
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                     "shape": [count, 1, side, side],
                                     "parameters": {"binary_data_size": count * side * side * 4}}]
                         }).encode()
    body = header + np.zeros(count * side * side, np.float32).tobytes()
    with httpx.Client(timeout=120) as client:
        refused = client.post(f"{server.base}/v2/models/unet/infer", content=body, headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream"})
        assert refused.status_code == 400, refused.text
        assert "max_batch_elements" in refused.text and str(bound) in refused.text
        # Uploads: each image is its own request, joined up to the bound (small ones here:
        # an execution at the bound peaks near 1.1 GiB).
        png = io.BytesIO()
        Image.fromarray(np.full((64, 64), 128, np.uint8)).save(png, format="PNG")
        files = [("data", (f"{i}.png", png.getvalue(), "image/png")) for i in range(count)]
        served = client.post(f"{server.base}/predictions/unet", files=files)
        assert served.status_code == 200 and len(served.json()) == count


@pytest.mark.parametrize(("name", "status"), [
    ("truncated.png", 400), ("truncated.jpg", 400), ("empty.bin", 400), ("text.txt", 400),
    ("huge_header.png", 413), ("one_pixel.png", 200), ("cmyk.jpg", 200), ("gray16.png", 200),
    ("animated.gif", 200)])
def test_bad_input_corpus_and_the_server_keeps_serving(server: ServerProcess, name: str,
                                                       status: int) -> None:
    resp = httpx.post(f"{server.base}/predictions/lenet",
                      content=(DATA / "corpus" / name).read_bytes(), timeout=60)
    assert resp.status_code == status, resp.text
    if status != 200:
        assert set(resp.json()) == {"code", "type", "message"}
    wrong = httpx.post(f"{server.base}/predictions/lenet", timeout=60,
                       files=[("image", ("x.png", b"123", "image/png"))])
    assert wrong.status_code == 400 and "'data'" in wrong.json()["message"]
    ok = httpx.post(f"{server.base}/predictions/lenet",
                    content=(DATA / "images" / "digit7.png").read_bytes(), timeout=60)
    assert ok.status_code == 200


def test_hostile_archives_are_not_served_and_the_mar_model_is(server: ServerProcess,
                                                              store: Path) -> None:
    digit = (DATA / "images" / "digit7.png").read_bytes()
    for name in ("zipslip", "symlink", "custom_handler"):
        resp = httpx.post(f"{server.base}/predictions/{name}", content=digit, timeout=30)
        assert resp.status_code == 404
    log = server.log()
    assert "escapes the archive" in log and "symbolic link" in log
    assert "never runs archive code" in log
    if not (store / "lenet_archive.mar").is_file():
        pytest.skip("the default store has no lenet.mar")
    from_mar = httpx.post(f"{server.base}/predictions/lenet_archive", content=digit, timeout=60)
    direct = httpx.post(f"{server.base}/predictions/lenet", content=digit, timeout=60)
    assert list(from_mar.json()) == list(direct.json())
    np.testing.assert_allclose(list(from_mar.json().values()), list(direct.json().values()),
                               atol=1e-4)


def test_grpc_ping_and_predictions(server: ServerProcess) -> None:
    digit = (DATA / "images" / "digit7.png").read_bytes()
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = inf_grpc.InferenceAPIsServiceStub(channel)
        assert json.loads(stub.Ping(empty_pb2.Empty()).health) == {"status": "Healthy"}
        reply = stub.Predictions(inf.PredictionsRequest(model_name="lenet",
                                                        input={"data": digit}))
        http = httpx.post(f"{server.base}/predictions/lenet", content=digit, timeout=60)
        assert json.loads(reply.prediction) == http.json()
        with pytest.raises(grpc.RpcError) as err:
            stub.Predictions(inf.PredictionsRequest(model_name="nope", input={"data": digit}))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _mgmt(server: ServerProcess, method: str, path: str, auth: bool = True,
          **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
    return httpx.request(method, f"{server.management_base}{path}", headers=headers,
                         timeout=60, **kw)


def test_management_auth_refusals_and_scale(server: ServerProcess) -> None:
    assert _mgmt(server, "GET", "/models", auth=False).status_code == 401
    listed = _mgmt(server, "GET", "/models?limit=1").json()
    assert len(listed["models"]) == 1 and "nextPageToken" in listed
    for url in ("http://127.0.0.1:1/evil.mar", "https://example.com/m.mar"):
        resp = _mgmt(server, "POST", "/models", params={"url": url})
        assert resp.status_code == 400 and "never fetched" in resp.json()["message"]
    for url in ("../../etc", "/etc/passwd", "lenet/../../x.mar"):
        resp = _mgmt(server, "POST", "/models", params={"url": url})
        assert resp.status_code == 400 and "outside the model store" in resp.json()["message"]
    assert _mgmt(server, "POST", "/models", params={"url": "symlink.mar"}).status_code == 400
    scaled = _mgmt(server, "PUT", "/models/lenet?min_worker=2")
    assert scaled.status_code == 200, scaled.text
    described = _mgmt(server, "GET", "/models/lenet").json()[0]
    assert described["minWorkers"] == 2 and len(described["workers"]) == 2
    digit = (DATA / "images" / "digit7.png").read_bytes()
    assert httpx.post(f"{server.base}/predictions/lenet", content=digit,
                      timeout=60).status_code == 200
