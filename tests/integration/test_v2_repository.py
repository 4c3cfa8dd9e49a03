"""Repository index/load/unload: enabled with a token, refused without it (both flavours)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.helpers.server import ServerProcess, start_server
from tests.integration.conftest import API_TOKEN, FLAVOURS, assert_error, make_client, make_input

AUTH = {"authorization": f"Bearer {API_TOKEN}"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_load_unload_needs_the_token(flavour: str, v2_server: ServerProcess) -> None:
    c: Any = make_client(flavour, v2_server)
    for headers in (None, {"authorization": "Bearer wrong-token"}):
        with pytest.raises(InferenceServerException) as exc:
            c.unload_model("strings", headers=headers)
        assert_error(exc, flavour, 401)
        with pytest.raises(InferenceServerException) as exc:
            c.get_model_repository_index(headers=headers)
        assert_error(exc, flavour, 401)
    assert c.is_model_ready("strings")

    index = c.get_model_repository_index(headers=AUTH)
    if flavour == "grpc":
        index = [{"name": m.name, "state": m.state} for m in index.models]
    assert {"name": "strings", "state": "READY"} in [{"name": m["name"], "state": m["state"]} for m in index]

    c.unload_model("strings", headers=AUTH)
    assert not c.is_model_ready("strings")
    with pytest.raises(InferenceServerException) as exc:
        c.load_model("strings", headers={"authorization": "Bearer nope"})
    assert_error(exc, flavour, 401)
    c.load_model("strings", headers=AUTH)
    assert c.is_model_ready("strings")
    assert c.is_server_ready()
    c.close()


def test_failed_model_is_reported_and_the_others_serve(tiny_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store / "simple", store / "simple")
    (store / "broken" / "1").mkdir(parents=True)
    (store / "broken" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\nmax_batch_size: 1\n'
                                                   'input { name: "x" data_type: TYPE_FP32 dims: [ 1 ] }\n'
                                                   'output { name: "y" data_type: TYPE_FP32 dims: [ 1 ] }\n')
    (store / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    server = start_server(store, tmp_path, wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while "broken" not in (body := httpx.get(server.base + "/v2/health/ready").json()).get("failed_models", {}):
            assert time.monotonic() < deadline, body
            time.sleep(0.2)
        r = httpx.get(server.base + "/v2/health/ready")
        assert r.status_code == 503 and "model 'broken' failed to load" in r.json()["error"]
        assert httpx.get(server.base + "/v2/health/live").status_code == 200
        c = make_client("http", server)
        assert c.is_model_ready("simple") and not c.is_model_ready("broken")
        a = np.ones((1, 16), np.int32)
        out = c.infer("simple", [make_input("http", "INPUT0", a, "INT32"), make_input("http", "INPUT1", a, "INT32")])
        np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), a * 2)
        c.close()
    finally:
        assert server.stop() == 0
