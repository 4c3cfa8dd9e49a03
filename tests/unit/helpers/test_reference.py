"""The independent reference (tests/helpers/reference.py) against values worked out by hand.

The parity tests trust it to catch a bug shared by the server's pre- and post-processing, so its
own recipe is pinned here on images whose answers are known, with no server code involved. This
also runs it where the real-TorchServe test skips (no Java).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tests.helpers.reference import assert_same_answer, expected_answer, preprocess

GREY = {"input_color": "L", "input_width": "2", "input_height": "2", "mean": "0", "std": "1"}


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_16_bit_greyscale_is_scaled_to_8_bits_not_clipped() -> None:
    values = np.array([[0, 257], [32896, 65535]], dtype=np.uint16)
    data = _png(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    x = preprocess(GREY, data)
    # x / 257 is the 8-bit value; clipping would give [0, 255, 255, 255].
    np.testing.assert_allclose(x[0, 0], np.array([[0, 1], [128, 255]]) / 255, rtol=1e-6)


def test_normalisation_uses_mean_and_std_per_channel() -> None:
    image = Image.fromarray(np.array([[[255, 0, 51]]], dtype=np.uint8), mode="RGB")
    params = {"input_color": "RGB", "input_width": "1", "input_height": "1",
              "mean": "0.5,0.5,0.1", "std": "0.25,0.5,0.1"}
    x = preprocess(params, _png(image))
    assert x.dtype == np.float32 and x.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(x.reshape(-1), [2.0, -1.0, 1.0], rtol=1e-6)


def test_exact_resize_is_bilinear_and_none_keeps_the_aspect_under_max_side() -> None:
    stripes = Image.fromarray(np.tile(np.array([0, 255], dtype=np.uint8), (4, 2)), mode="L")
    exact = preprocess({**GREY, "input_width": "2", "input_height": "4"}, _png(stripes))
    # 4 columns halved: each output pixel mixes black and white (nearest would keep one).
    assert exact.shape == (1, 1, 4, 2) and exact.min() > 0.3 and exact.max() < 0.7
    wide = Image.new("L", (200, 100), 255)
    kept = preprocess({**GREY, "resize": "none", "max_side": "64"}, _png(wide))
    assert kept.shape == (1, 1, 32, 64)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("L", (4, 2), 0)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes())
    x = preprocess({**GREY, "resize": "none"}, buf.getvalue())
    assert x.shape == (1, 1, 4, 2)


def _classifier(model_dir: Path, weights: np.ndarray) -> None:
    """A 2x2 greyscale image -> logits = flatten(x) @ weights, as an ONNX model in a store."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 2, 2])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    w = numpy_helper.from_array(weights.astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Flatten", ["input"], ["flat"]),
                               helper.make_node("MatMul", ["flat", "w"], ["logits"])],
                              "classifier", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (model_dir / "1").mkdir(parents=True)
    onnx.save(model, str(model_dir / "1" / "model.onnx"))
    (model_dir / "labels.txt").write_text("cat\ndog\nbird\n")
    params = {**GREY, "task": "classification"}
    (model_dir / "config.pbtxt").write_text("".join(
        f'parameters {{\n  key: "{k}"\n  value {{\n    string_value: "{v}"\n  }}\n}}\n'
        for k, v in params.items()))


def test_classification_answer_is_softmax_top_k_best_first(tmp_path: Path) -> None:
    weights = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 0], [3, 0, 1]], dtype=np.float64)
    _classifier(tmp_path / "m", weights)
    image = Image.fromarray(np.array([[255, 255], [0, 255]], dtype=np.uint8), mode="L")
    want = expected_answer(tmp_path / "m", _png(image), topk=2)
    assert want.content_type == "application/json"
    # x = [1, 1, 0, 1]: logits [4, 2, 1]
    total = math.exp(4) + math.exp(2) + math.exp(1)
    assert list(want.json) == ["cat", "dog"]
    assert want.json["cat"] == pytest.approx(math.exp(4) / total, rel=1e-6)
    assert want.json["dog"] == pytest.approx(math.exp(2) / total, rel=1e-6)
    wrong = b'{"dog": 0.8, "cat": 0.1}'
    with pytest.raises(AssertionError):
        assert_same_answer(wrong, "application/json", want)
