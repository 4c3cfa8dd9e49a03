"""Model outputs -> answers users read: top-k JSON, masks, images, capsule summaries.

Pure numpy/Pillow functions shared by the server pipelines and the TorchServe handler, so both
return the same bytes for the same model outputs.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from serving.errors import PayloadTooLarge
from serving.tasks.images import Box, encode_image
from serving.tasks.options import DEFAULT_MASK_JSON_VALUES

JSON = "application/json"
PNG = "image/png"
JPEG = "image/jpeg"


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def label_of(labels: Sequence[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)


def topk(scores: np.ndarray, labels: Sequence[str], k: int) -> dict[str, float]:
    """``{"label": score}`` for the k best classes, best first (TorchServe image_classifier)."""
    flat = scores.reshape(-1)
    k = max(1, min(k, flat.size))
    # Stable sort so ties keep class order, identical in the server and the handler.
    order = np.argsort(-flat, kind="stable")[:k]
    return {label_of(labels, int(i)): float(flat[i]) for i in order}


def classification(logits: np.ndarray, labels: Sequence[str], k: int,
                   semantics: str = "logits") -> dict[str, float]:
    """Softmax (unless the scores are already probabilities) then top-k."""
    scores = logits.astype(np.float64) if semantics == "capsule_lengths" else softmax(logits)
    return topk(scores, labels, k)


def voc_palette(n: int) -> list[int]:
    """A fixed, well separated colour per class (class 0 black), flattened for ``putpalette``."""
    palette: list[int] = []
    for cls in range(256):
        r = g = b = 0
        c = cls
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette.extend((r, g, b))
    return palette[: 3 * max(n, 1)] + [0] * (3 * (256 - max(n, 1)))


def mask_at(logits_chw: np.ndarray, size: tuple[int, int],
            fed_size: tuple[int, int] | None = None, box: Box | None = None) -> np.ndarray:
    """Argmax class per pixel at ``size`` = (width, height) of the original image (nearest).

    ``box`` is where the original lies in the fed image of ``fed_size`` (letterboxing or a
    centre crop): the padding is left out, and what a crop cut away is class 0."""
    mask = np.argmax(logits_chw, axis=0).astype(np.uint8)
    if box is None or fed_size is None:
        if (mask.shape[1], mask.shape[0]) != size:
            mask = np.asarray(Image.fromarray(mask, mode="L").resize(size,
                                                                     Image.Resampling.NEAREST))
        return mask
    out_h, out_w = mask.shape
    rows = _source_index(box[1], box[3], size[1], out_h / fed_size[1], out_h)
    cols = _source_index(box[0], box[2], size[0], out_w / fed_size[0], out_w)
    mapped = mask[np.clip(rows, 0, out_h - 1)][:, np.clip(cols, 0, out_w - 1)]
    outside = (rows < 0) | (rows >= out_h)
    mapped[outside, :] = 0
    mapped[:, (cols < 0) | (cols >= out_w)] = 0
    return mapped


def _source_index(start: float, end: float, count: int, to_output: float,
                  limit: int) -> np.ndarray:
    """For each of ``count`` original pixels along one axis, the model-output pixel whose
    centre it falls on (may be outside 0..limit-1 where a crop cut the original)."""
    centres = start + (np.arange(count) + 0.5) * ((end - start) / count)
    return np.floor(centres * to_output).astype(np.int64)


def mask_png(mask: np.ndarray, num_classes: int) -> bytes:
    image = Image.fromarray(mask, mode="L").convert("P")
    image.putpalette(voc_palette(num_classes))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def segmentation_json(logits_chw: np.ndarray, labels: Sequence[str], size: tuple[int, int],
                      probabilities: bool, fed_size: tuple[int, int] | None = None,
                      box: Box | None = None,
                      max_values: int = DEFAULT_MASK_JSON_VALUES) -> dict[str, Any]:
    """Class grid at ``size``; with ``probabilities`` also each class's per-pixel probability
    (at the model's output resolution, to keep answers small).

    The grid holds at most ``max_values`` numbers: a larger image's mask comes at a reduced size
    with the image's aspect ratio (``width``/``height`` say which, ``scaled_from`` the image's
    own size), as TorchServe's segmenter answers below the original resolution. Probabilities
    over ``max_values`` numbers are refused (413 naming the limit): they cannot be shrunk
    without changing what they mean."""
    num = logits_chw.shape[0]
    if probabilities and num * logits_chw.shape[1] * logits_chw.shape[2] > max_values:
        raise PayloadTooLarge(
            f"probabilities of {num} classes at {logits_chw.shape[2]}x{logits_chw.shape[1]} are "
            f"{num * logits_chw.shape[1] * logits_chw.shape[2]} numbers, over the limit of "
            f"{max_values} per image of this request (max_mask_json_values); ask for the mask "
            "alone, as PNG, or send a smaller image")
    grid = fit_pixels(size, max_values)
    mask = mask_at(logits_chw, grid, fed_size, box)
    body: dict[str, Any] = {
        "width": grid[0], "height": grid[1],
        "labels": [label_of(labels, i) for i in range(num)],
        "mask": mask.tolist(),
    }
    if grid != size:
        body["scaled_from"] = [size[0], size[1]]
    if probabilities:
        probs = softmax(logits_chw, axis=0)
        body["probabilities_size"] = [int(probs.shape[2]), int(probs.shape[1])]
        body["probabilities"] = {label_of(labels, i): np.round(probs[i], 6).tolist()
                                 for i in range(num)}
    return body


def fit_pixels(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """``size`` itself, or the largest size of the same aspect ratio within ``max_pixels``."""
    width, height = size
    if width * height <= max_pixels:
        return size
    scale = math.sqrt(max(1, max_pixels) / (width * height))
    fitted = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    while fitted[0] * fitted[1] > max(1, max_pixels):  # rounding of very thin images
        fitted = (max(1, fitted[0] - 1), max(1, fitted[1] - 1))
    return fitted


def to_uint8_hwc(image_chw: np.ndarray) -> np.ndarray:
    """[C, H, W] in [0, 1] -> uint8 HWC (HW for one channel), rounded like ToPILImage."""
    arr = np.clip(image_chw.astype(np.float32), 0.0, 1.0) * np.float32(255.0)
    out = np.rint(arr).astype(np.uint8).transpose(1, 2, 0)
    return out[:, :, 0] if out.shape[2] == 1 else out


def style_image(image_chw: np.ndarray, fmt: str) -> tuple[bytes, str]:
    body = encode_image(to_uint8_hwc(image_chw), fmt)
    return body, (JPEG if fmt == "jpeg" else PNG)


def png_base64(image_chw: np.ndarray) -> str:
    return base64.b64encode(encode_image(to_uint8_hwc(image_chw), "png")).decode("ascii")


def capsule(lengths: np.ndarray, labels: Sequence[str], k: int, poses: np.ndarray | None,
            reconstruction: np.ndarray | None) -> dict[str, Any]:
    """Predicted class, the top-k capsule lengths, and optionally poses / reconstruction."""
    flat = lengths.reshape(-1).astype(np.float64)
    best = int(np.argmax(flat))
    body: dict[str, Any] = {
        "class": label_of(labels, best),
        "index": best,
        "lengths": topk(flat, labels, k),
    }
    if poses is not None:
        body["poses"] = np.asarray(poses, dtype=np.float64).round(6).tolist()
    if reconstruction is not None:
        body["reconstruction"] = png_base64(reconstruction)
    return body


def dumps(body: Any) -> bytes:
    return json.dumps(body).encode()
