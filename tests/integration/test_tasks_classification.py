"""Triton's image-classification client flow on lenet: metadata -> config -> infer with
``class_count=3``; the BYTES answers ``value:index:label`` match ONNX Runtime run in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serving.tasks.images import prepare
from serving.tasks.spec import TaskSpec
from tests.helpers.server import ServerProcess, start_server

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def server(default_store: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    proc = start_server(default_store, tmp_path_factory.mktemp("cls"))
    try:
        yield proc
    finally:
        proc.stop()


def _expected(store: Path, spec: TaskSpec, image: bytes) -> tuple[np.ndarray, list[str]]:
    import onnxruntime as ort

    x = prepare(spec, image, 10**8).tensor[None]
    session = ort.InferenceSession(str(store / "lenet" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    return logits, (store / "lenet" / "labels.txt").read_text().splitlines()


@pytest.mark.parametrize("flavour", ["http", "grpc"])
def test_class_count_three(server: ServerProcess, default_store: Path, flavour: str) -> None:
    module = httpclient if flavour == "http" else grpcclient
    url = server.http_url if flavour == "http" else server.grpc_url
    client = module.InferenceServerClient(url)
    metadata = client.get_model_metadata("lenet")
    config = client.get_model_config("lenet")
    if flavour == "grpc":
        input_name, output_name = metadata.inputs[0].name, metadata.outputs[0].name
        max_batch = config.config.max_batch_size
        params = {k: v.string_value for k, v in config.config.parameters.items()}
    else:
        input_name, output_name = metadata["inputs"][0]["name"], metadata["outputs"][0]["name"]
        max_batch = config["max_batch_size"]
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert max_batch > 0
    spec = TaskSpec.from_parameters("lenet", params)
    image = (DATA / "images" / "digit7.png").read_bytes()
    batch = prepare(spec, image, 10**8).tensor[None]
    inp = module.InferInput(input_name, list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch)
    out = module.InferRequestedOutput(output_name, class_count=3)
    result = client.infer("lenet", [inp], outputs=[out]).as_numpy(output_name)
    assert result.shape == (1, 3)
    logits, labels = _expected(default_store, spec, image)
    order = np.argsort(-logits)[:3]
    for entry, idx in zip(result[0], order, strict=True):
        value, index, label = entry.decode().split(":")
        assert int(index) == idx and label == labels[idx]
        assert float(value) == pytest.approx(float(logits[idx]), abs=1e-4)
