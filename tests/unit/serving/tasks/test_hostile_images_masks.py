"""Segmentation JSON masks and multi-image requests: answers and decodes bounded per request."""

from __future__ import annotations

import asyncio
import io
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from serving.core.types import InferRequest, InferResponse, Tensor
from serving.errors import PayloadTooLarge
from serving.generated import model_config_pb2
from serving.settings import Settings
from serving.store.reader import spec_of
from serving.tasks import pipelines as pipelines_mod
from serving.tasks import postprocess as post
from serving.tasks.options import TaskOptions
from serving.tasks.pipelines import Pipelines

SEG_CONFIG = """
max_batch_size: 0
input { name: "input" data_type: TYPE_FP32 dims: [3, -1, -1] }
output { name: "logits" data_type: TYPE_FP32 dims: [3, -1, -1] }
parameters { key: "task" value: { string_value: "segmentation" } }
parameters { key: "max_side" value: { string_value: "64" } }
"""


class FakeSegmenter:
    """The parts of InferenceService the pipelines use: a 3-class segmenter whose class is the
    brightest channel of each fed pixel."""

    def __init__(self) -> None:
        config = text_format.Parse(SEG_CONFIG, model_config_pb2.ModelConfig())
        self.handle = SimpleNamespace(name="seg", version="1", spec=spec_of(config, ["bg", "a", "b"]))
        self.calls = 0

    def resolve(self, name: str, version: str = "") -> SimpleNamespace:
        return self.handle

    async def infer(self, request: InferRequest, loaded: object = None) -> InferResponse:
        self.calls += 1
        data = request.inputs[0].data
        return InferResponse(request.model_name, "1", [Tensor("logits", "FP32", data.shape, data)])


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _predict(images: list[bytes], options: TaskOptions, **settings: Any) -> list[Any]:
    service = FakeSegmenter()
    pipelines = Pipelines(service, Settings(image_workers=1, **settings))  # type: ignore[arg-type]
    try:
        return asyncio.run(pipelines.predict("seg", "", images, options))
    finally:
        pipelines.close()


def test_json_mask_of_a_large_image_comes_back_reduced_with_its_aspect() -> None:
    logits = np.zeros((3, 40, 60), np.float32)
    logits[1] = 1.0
    body = post.segmentation_json(logits, ["bg", "a", "b"], (3000, 2000), False,
                                  max_values=1_000_000)
    width, height = body["width"], body["height"]
    assert width * height <= 1_000_000
    assert abs(width / height - 1.5) < 0.01
    assert body["scaled_from"] == [3000, 2000]
    assert len(body["mask"]) == height and len(body["mask"][0]) == width
    assert {v for row in body["mask"] for v in row} == {1}


def test_small_masks_keep_the_image_size() -> None:
    body = post.segmentation_json(np.zeros((3, 8, 8), np.float32), [], (30, 20), False,
                                  max_values=600)
    assert (body["width"], body["height"]) == (30, 20) and "scaled_from" not in body


def test_probabilities_over_the_limit_are_refused_naming_it() -> None:
    with pytest.raises(PayloadTooLarge, match=r"3 classes at 60x40 are 7200 numbers, over the "
                                              r"limit of 7000 .*max_mask_json_values"):
        post.segmentation_json(np.zeros((3, 40, 60), np.float32), [], (60, 40), True,
                               max_values=7000)


def test_images_of_one_request_share_the_json_budget() -> None:
    options = TaskOptions(format="json", explicit_format=True)
    results = _predict([_png((400, 300))] * 4, options, max_mask_json_values=40_000)
    total = 0
    for result in results:
        body = json.loads(result.body)
        assert body["scaled_from"] == [400, 300]
        total += body["width"] * body["height"]
    assert 30_000 < total <= 40_000  # 4 x ~10,000 instead of 4 x 120,000


def test_images_of_one_request_are_bounded_together_before_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = pipelines_mod.prepare
    monkeypatch.setattr(pipelines_mod, "prepare",
                        lambda *a: decoded.append(1) or real(*a))
    images = [_png((500, 400))] * 6  # 200,000 pixels each, each under max_image_pixels
    with pytest.raises(PayloadTooLarge, match=r"6 images of this request have 1200000 pixels "
                                              r"together, over the limit of 1000000 pixels "
                                              r"\(max_request_image_pixels\)"):
        _predict(images, TaskOptions(), max_image_pixels=300_000,
                 max_request_image_pixels=1_000_000)
    assert decoded == []
    assert len(_predict(images[:5], TaskOptions(), max_request_image_pixels=1_000_000)) == 5
