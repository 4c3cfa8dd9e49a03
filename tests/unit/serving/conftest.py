"""Tiny real model stores for the serving core, batching and backend unit tests.

Built once per run (a torch module exported to ONNX with the dynamo exporter and to
TorchScript), then copied per test so a test may change its store freely.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

TINY_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [1, 4, 4] }]
output [{ name: "logits" data_type: TYPE_FP32 dims: [3] label_filename: "labels.txt" }]
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [{ count: 1 kind: KIND_CPU }]
parameters { key: "task" value: { string_value: "classification" } }
"""

TS_CONFIG = """
backend: "pytorch"
max_batch_size: 4
input [{ name: "input" data_type: TYPE_FP32 dims: [1, 4, 4] }]
output [{ name: "logits" data_type: TYPE_FP32 dims: [3] },
        { name: "features" data_type: TYPE_FP32 dims: [16] }]
dynamic_batching { }
instance_group [{ count: 2 }]
"""

FIXED_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 0
input [{ name: "input" data_type: TYPE_FP32 dims: [1, 1, 4, 4] }]
output [{ name: "logits" data_type: TYPE_FP32 dims: [1, 3] }]
"""


def _weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((3, 16)).astype(np.float32),
            rng.standard_normal(3).astype(np.float32))


def tiny_reference(x: np.ndarray) -> np.ndarray:
    """What the tiny models compute: a linear layer over the flattened 1x4x4 input."""
    w, b = _weights()
    return x.reshape(x.shape[0], -1) @ w.T + b


def _build(root: Path) -> None:
    import onnx
    import torch

    torch.set_num_threads(1)
    w, b = _weights()

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(16, 3)
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(w))
                self.fc.bias.copy_(torch.from_numpy(b))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    class Pair(Tiny):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
            flat = x.flatten(1)
            return self.fc(flat), flat

    tiny = root / "tiny"
    (tiny / "1").mkdir(parents=True)
    example = (torch.zeros(2, 1, 4, 4),)
    torch.onnx.export(
        Tiny().eval(), example, str(tiny / "1" / "model.onnx"), dynamo=True,
        external_data=False, input_names=["input"], output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
    )
    (tiny / "config.pbtxt").write_text(TINY_CONFIG)
    (tiny / "labels.txt").write_text("cat\ndog\nbird\n")

    ts = root / "tiny_ts"
    (ts / "1").mkdir(parents=True)
    torch.jit.trace(Pair().eval(), example).save(str(ts / "1" / "model.pt"))
    (ts / "config.pbtxt").write_text(TS_CONFIG)

    fixed = root / "fixed"
    (fixed / "1").mkdir(parents=True)
    shutil.copy(tiny / "1" / "model.onnx", fixed / "1" / "model.onnx")
    (fixed / "config.pbtxt").write_text(FIXED_CONFIG)

    ext = root / "tiny_ext"
    (ext / "1").mkdir(parents=True)
    model = onnx.load(str(tiny / "1" / "model.onnx"))
    onnx.save(model, str(ext / "1" / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=100)
    (ext / "config.pbtxt").write_text(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_store")
    _build(root)
    return root


@pytest.fixture
def tiny_store(tiny_store_template: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny store: tiny (ONNX), tiny_ts (TorchScript, 2 instances),
    fixed (ONNX, no batch dim), tiny_ext (ONNX with an external data file)."""
    store = tmp_path / "store"
    shutil.copytree(tiny_store_template, store)
    return store
