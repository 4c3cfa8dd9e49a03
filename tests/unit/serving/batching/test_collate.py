"""Stacking and splitting, the pure half of batching."""

from __future__ import annotations

import numpy as np
import pytest

from serving.batching.collate import execute, split, stack
from serving.errors import BackendError


def test_single_request_is_not_copied_and_many_are_concatenated() -> None:
    a = {"x": np.ones((2, 3), np.float32)}
    assert stack([a])["x"] is a["x"]
    b = {"x": np.zeros((1, 3), np.float32)}
    assert stack([a, b])["x"].shape == (3, 3)


def test_split_returns_views_in_request_order() -> None:
    out = {"y": np.arange(12).reshape(6, 2)}
    parts = split(out, [1, 3, 2], "m")
    assert [p["y"].shape[0] for p in parts] == [1, 3, 2]
    assert parts[2]["y"].tolist() == [[8, 9], [10, 11]]
    assert np.shares_memory(parts[1]["y"], out["y"])


def test_dim0_contract_and_unbatched_models() -> None:
    with pytest.raises(BackendError, match="output 'y' with shape \\[5\\]; dim 0 must be"):
        split({"y": np.zeros(5)}, [2, 2], "m")
    with pytest.raises(BackendError):
        split({"y": np.float32(1.0).reshape(())}, [1], "m")
    ticks = iter(range(10))
    done = execute(lambda i: {"y": i["x"] * 3}, [{"x": np.ones((2, 2))}], None,
                   lambda: float(next(ticks)), "m")
    assert done.outputs[0]["y"].shape == (2, 2)
    assert (done.compute_input_s, done.compute_infer_s, done.compute_output_s) == (1, 1, 1)
