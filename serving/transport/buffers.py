"""Tensor bytes for the wire without copies where the array already has the wire's layout."""

from __future__ import annotations

from typing import Any

import numpy as np


def output_buffer(arr: np.ndarray, dtype: np.dtype) -> memoryview:
    """``arr`` as contiguous bytes of ``dtype`` (little-endian for the v2 protocol): a view when
    it already is, else one copy. The transport's final join is then the only copy."""
    flat: Any = np.ascontiguousarray(arr, dtype=dtype)
    return memoryview(flat).cast("B")
