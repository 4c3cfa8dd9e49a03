"""The lecture-scale AlexNet, VGG and GoogLeNet of the default store: exported with a passing
parity gate and served by the image-classification pipeline, answering real held-out digits
with the right label over TorchServe's ``/predictions`` and KServe v2 ``infer``."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.server import ServerProcess, start_server
from training import data as datasets
from training.checkpoint import load_checkpoint
from training.models.registry import build_model

LECTURE = ("alexnet", "vgg", "googlenet")
SIDES = {"alexnet": 64, "vgg": 32, "googlenet": 32}
CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


@pytest.fixture(scope="module")
def server(default_store: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    proc = start_server(default_store, tmp_path_factory.mktemp("lecture"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def digits() -> list[tuple[int, bytes]]:
    """The first held-out digit of every class (never trained on), as 28x28 grey PNGs."""
    ds = datasets.load("mnist5k", train=False)
    out = []
    for cls in range(10):
        i = int(np.flatnonzero(ds.test_y.numpy() == cls)[0])
        pixels = (ds.test_x[i, 0].numpy() * 255 + 0.5).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
        out.append((cls, buf.getvalue()))
    return out


@pytest.mark.parametrize("model", LECTURE)
def test_checkpoint_report_holds_a_passing_held_out_gate(model: str) -> None:
    from training.defaults import DEFAULT_MODELS

    spec = next(m for m in DEFAULT_MODELS if m.name == model)
    ckpt = load_checkpoint(CHECKPOINTS / f"{model}.pt")
    assert ckpt["provenance"]["data"] == "mnist5k" and ckpt["provenance"]["dry_run"] is False
    assert "test_accuracy" in ckpt["metrics"]  # measured on the held-out half
    assert spec.passed(ckpt["metrics"]), (model, ckpt["metrics"])


@pytest.mark.parametrize("model", LECTURE)
def test_export_passes_the_parity_gate_and_writes_the_pipeline_parameters(
        default_store: Path, model: str) -> None:
    for entry, artifact in ((model, "model.onnx"), (f"{model}_torchscript", "model.pt")):
        vdir = default_store / entry / "1"
        assert (vdir / artifact).is_file()
        assert (vdir / artifact).stat().st_size < 4 * 2**20  # a few MB at most
        report = json.loads((vdir / "export_report.json").read_text())
        assert report["parity"]["passed"] is True
        cases = report["parity"]["cases"]
        assert {"random[b=1]", "random[b=7]", "zeros[b=1]", "zeros[b=7]"} <= set(cases)
        for case in cases.values():
            for out in case["outputs"].values():
                assert out["max_abs_diff"] <= max(1e-4, 1e-4 * out["scale"])
    config = (default_store / model / "config.pbtxt").read_text()
    side = SIDES[model]
    for key, value in (("task", "classification"), ("input_color", "L"),
                       ("input_height", str(side)), ("resize", "exact")):
        assert f'key: "{key}"\n  value {{\n    string_value: "{value}"' in config, (key, config)
    assert (default_store / f"{model}.mar").is_file()


@pytest.mark.parametrize("model", LECTURE)
def test_predictions_name_the_right_digit(server: ServerProcess, digits: list[tuple[int, bytes]],
                                          model: str) -> None:
    for label, png in digits:
        resp = httpx.post(f"{server.base}/predictions/{model}", content=png, timeout=60)
        assert resp.status_code == 200, resp.text
        scores = resp.json()
        top = max(scores, key=scores.get)
        assert top == str(label), (model, label, scores)


@pytest.mark.parametrize("model", LECTURE)
def test_v2_infer_on_the_preprocessed_tensor(server: ServerProcess, default_store: Path,
                                             model: str) -> None:
    side = SIDES[model]
    x = datasets.sample_inputs("mnist5k", 4, seed=5, color="L", size=side).numpy()
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}
    resp = httpx.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    out = resp.json()["outputs"][0]
    logits = np.asarray(out["data"], np.float32).reshape(out["shape"])
    assert logits.shape == (4, 10)
    # the committed checkpoint, run eagerly on the same tensor, gives the same logits
    ckpt = load_checkpoint(CHECKPOINTS / f"{model}.pt")
    net = build_model(ckpt["arch"], **ckpt["arch_kwargs"])
    net.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        eager = net.eval()(torch.from_numpy(x)).numpy()
    assert np.allclose(logits, eager, atol=1e-3)
    assert (logits.argmax(1) == eager.argmax(1)).all()
