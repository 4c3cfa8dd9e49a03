"""Triton's classification extension: top-k of an output as ``b"value:index[:label]"``."""

from __future__ import annotations

import numpy as np


def classify(values: np.ndarray, k: int, labels: list[str], batched: bool) -> np.ndarray:
    """Top ``k`` per batch item (whole tensor when not batched), highest first.

    Returns an object array of bytes, shape ``[batch, k]`` (``[k]`` without a batch dim). Ties keep
    the lower index first. The value is printed like C's ``%f``, as Triton does.
    """
    flat = values.reshape(values.shape[0], -1) if batched else values.reshape(1, -1)
    k = min(k, flat.shape[1])
    order = np.argsort(-flat.astype(np.float64), axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(flat, order, axis=1)
    out = np.empty(order.shape, dtype=np.object_)
    for row in range(order.shape[0]):  # only batch * k small strings
        for col in range(k):
            idx = int(order[row, col])
            text = f"{float(top[row, col]):.6f}:{idx}"
            if idx < len(labels):
                text += f":{labels[idx]}"
            out[row, col] = text.encode("utf-8")
    return out if batched else out.reshape(k)
