"""Expected TorchServe-dialect answers computed without the server's own code.

Preprocessing follows each model's documented recipe (config.pbtxt parameters, docs/models.md and
docs/architecture.md): decode with Pillow, EXIF orientation applied, converted to the model's
colour mode, resized bilinearly (``exact``) or kept (``none``, scaled down to ``max_side``), then
``(pixels / 255 - mean) / std`` as float32 NCHW. The forward pass is ONNX Runtime on the store's
``model.onnx``; the answers are the documented shapes (docs/torchserve.md): softmax top-k
``{label: probability}`` best first, capsule ``{"class", "index", "lengths"}``, a class-index mask
at the image's size, an RGB image rounded from [0, 1]. A bug shared by the server's pre- and
post-processing therefore fails a comparison with these values.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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


def preprocess(params: dict[str, str], image: bytes) -> np.ndarray:
    """One image as the model's float32 [1, C, H, W] input."""
    picture = ImageOps.exif_transpose(Image.open(io.BytesIO(image)))
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


def expected_answer(model_dir: Path, image: bytes, topk: int = 5) -> Expected:
    """What ``POST /predictions/<model>`` with this image should answer."""
    import onnxruntime as ort

    params = _parameters((model_dir / "config.pbtxt").read_text())
    labels_file = model_dir / "labels.txt"
    labels = labels_file.read_text().splitlines() if labels_file.is_file() else []
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = preprocess(params, image)
    outputs = [v[0] for v in session.run(None, {session.get_inputs()[0].name: x})]
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
