"""Expected TorchServe-dialect answers computed without the server's own code.

Preprocessing follows each model's documented recipe (config.pbtxt parameters, docs/models.md and
docs/architecture.md): decode with Pillow, EXIF orientation applied, converted to the model's
colour mode (16-bit greyscale scaled to 8 bits first, docs/torchserve.md), resized bilinearly
(``exact``) or kept (``none``, scaled down to ``max_side``), then ``(pixels / 255 - mean) / std``
as float32 NCHW. The forward pass is ONNX Runtime on the version's ``model.onnx``, or TorchScript
on its ``model.pt`` when there is no ONNX file; the answers are the documented shapes (docs/torchserve.md): softmax top-k
``{label: probability}`` best first, capsule ``{"class", "index", "lengths"}``, a class-index mask
at the image's size, an RGB image rounded from [0, 1]. A bug shared by the server's pre- and
post-processing therefore fails a comparison with these values.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps


@dataclass(frozen=True)
class Expected:
    content_type: str
    json: Any = None  # for application/json answers
    pixels: np.ndarray | None = None  # for image answers: class indices or RGB values


def _parameters(config_text: str) -> dict[str, str]:
    """The ``parameters`` map of a config.pbtxt, read as plain text (key, string_value)."""
    params: dict[str, str] = {}
    key = None
    for line in config_text.splitlines():
        line = line.strip()
        if line.startswith("key:"):
            key = line.split(":", 1)[1].strip().strip('"')
        elif line.startswith("string_value:") and key is not None:
            params[key] = line.split(":", 1)[1].strip().strip('"')
            key = None
    return params


def _floats(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split(",")], dtype=np.float64)


def _eight_bit(picture: Image.Image) -> Image.Image:
    """16-bit greyscale (Pillow's ``I;16*``, or ``I`` holding values over 255) as 8-bit ``L``,
    scaled by 255 / 65535 and rounded: Pillow's own conversion would clip at 255 instead."""
    values = np.asarray(picture).astype(np.float64)
    if picture.mode.startswith("I;16") or values.max(initial=0) > 255:
        values = values * 255.0 / 65535.0
    return Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8), mode="L")


def preprocess(params: dict[str, str], image: bytes) -> np.ndarray:
    """One image as the model's float32 [1, C, H, W] input."""
    picture = ImageOps.exif_transpose(Image.open(io.BytesIO(image)))
    if picture.mode.startswith("I"):
        picture = _eight_bit(picture)
    picture = picture.convert(params["input_color"])
    if params.get("resize", "exact") == "exact":
        size = (int(params["input_width"]), int(params["input_height"]))
        if picture.size != size:
            picture = picture.resize(size, Image.Resampling.BILINEAR)
    else:
        longest, limit = max(picture.size), int(params.get("max_side", "0"))
        if limit and longest > limit:
            width, height = picture.size
            scaled = (max(1, round(width * limit / longest)), max(1, round(height * limit / longest)))
            picture = picture.resize(scaled, Image.Resampling.BILINEAR)
    pixels = np.asarray(picture, dtype=np.float64) / 255.0
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    mean, std = _floats(params["mean"]), _floats(params["std"])
    return ((chw - mean[:, None, None]) / std[:, None, None]).astype(np.float32)[None]


def _topk(scores: np.ndarray, labels: list[str], k: int) -> dict[str, float]:
    order = np.argsort(-scores, kind="stable")[:k]
    return {labels[i] if i < len(labels) else str(i): float(scores[i]) for i in order}


def forward(version_dir: Path, x: np.ndarray) -> list[np.ndarray]:
    """The model's outputs for the batch ``x``: ONNX Runtime on ``model.onnx``, else TorchScript
    on ``model.pt`` (outputs in the order the module returns them)."""
    onnx_file = version_dir / "model.onnx"
    if onnx_file.is_file():
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        return list(session.run(None, {session.get_inputs()[0].name: x}))
    import torch

    module = torch.jit.load(str(version_dir / "model.pt"), map_location="cpu")
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    return [t.numpy() for t in (out if isinstance(out, tuple | list) else (out,))]


def expected_answer(model_dir: Path, image: bytes, topk: int = 5) -> Expected:
    """What ``POST /predictions/<model>`` with this image should answer."""
    params = _parameters((model_dir / "config.pbtxt").read_text())
    labels_file = model_dir / "labels.txt"
    labels = labels_file.read_text().splitlines() if labels_file.is_file() else []
    outputs = [v[0] for v in forward(model_dir / "1", preprocess(params, image))]
    task = params["task"]
    if task == "classification":
        logits = outputs[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        return Expected("application/json", json=_topk(probs / probs.sum(), labels, topk))
    if task == "capsule_classification":
        lengths = outputs[0].reshape(-1).astype(np.float64)
        best = int(np.argmax(lengths))
        return Expected("application/json", json={
            "class": labels[best], "index": best, "lengths": _topk(lengths, labels, topk)})
    if task == "segmentation":
        mask = np.argmax(outputs[0], axis=0).astype(np.uint8)
        original = ImageOps.exif_transpose(Image.open(io.BytesIO(image))).size
        if (mask.shape[1], mask.shape[0]) != original:
            mask = np.asarray(Image.fromarray(mask).resize(original, Image.Resampling.NEAREST))
        return Expected("image/png", pixels=mask)
    if task == "style_transfer":
        rgb = np.rint(np.clip(outputs[0], 0.0, 1.0) * 255.0).astype(np.uint8)
        return Expected("image/png", pixels=rgb.transpose(1, 2, 0))
    raise ValueError(f"no reference for task {task!r}")


def assert_same_answer(got: bytes, content_type: str, want: Expected) -> None:
    """``got`` (a response body of ``content_type``) is the answer ``want`` describes: the same
    keys in the same order and values within float tolerance for JSON, the same pixels (masks:
    all but 0.1% of them; RGB: each channel within 1) for images."""
    assert content_type.split(";")[0] == want.content_type, (content_type, want.content_type)
    if want.content_type == "application/json":
        g, w = json.loads(got), want.json
        assert list(g) == list(w), (list(g), list(w))
        for key in w:
            if isinstance(w[key], dict):
                assert list(g[key]) == list(w[key]), (key, list(g[key]), list(w[key]))
                # Relative: a confident digit's other classes are ~1e-6, and a shifted input
                # moves them by less than any absolute tolerance would notice.
                np.testing.assert_allclose(list(g[key].values()), list(w[key].values()),
                                           rtol=1e-4, atol=1e-12)
            elif isinstance(w[key], float):
                assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-12), (key, g[key], w[key])
            else:  # a class name or index
                assert g[key] == w[key], (key, g[key], w[key])
        return
    assert want.pixels is not None
    g_img = np.asarray(Image.open(io.BytesIO(got)), dtype=np.int16)
    w_img = want.pixels.astype(np.int16)
    assert g_img.shape == w_img.shape, (g_img.shape, w_img.shape)
    if g_img.ndim == 2:  # masks: class per pixel
        same = (g_img == w_img).mean()
        assert same > 0.999, f"{same:.2%} of the mask's pixels agree"
    else:
        worst = int(np.abs(g_img - w_img).max())
        assert worst <= 1, f"a pixel channel is {worst} off"
