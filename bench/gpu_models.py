"""GPU variant, part 1: random-weight ResNet-50 / VGG-16 as TorchScript in a temporary store.

Runs where only torch (+ torchvision) is installed: the store is written by hand in the
project's layout (config.pbtxt text, ``1/model.pt``), fp32 and fp16 twins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARCHS = ("resnet50", "vgg16")
_DTYPES = {"fp32": ("TYPE_FP32", "FP32"), "fp16": ("TYPE_FP16", "FP16")}


def build(arch: str, seed: int = 0) -> Any:
    import torch
    import torchvision.models as tvm

    torch.manual_seed(seed)
    if arch not in ARCHS:
        raise ValueError(f"unknown GPU benchmark model {arch!r}; choose from {', '.join(ARCHS)}")
    return getattr(tvm, arch)(weights=None, num_classes=1000).eval()


def config_text(name: str, dtype: str, max_batch: int, delay_us: int, onnx: bool,
                device: str = "cuda", warm_batches: tuple[int, ...] = ()) -> str:
    type_name = _DTYPES[dtype][0]
    platform = "onnxruntime_onnx" if onnx else "pytorch_libtorch"
    kind = "KIND_CPU" if device == "cpu" else "KIND_GPU"
    params = {"task": "classification", "input_color": "RGB", "input_height": "224",
              "input_width": "224", "mean": "0.485,0.456,0.406", "std": "0.229,0.224,0.225",
              "resize": "exact", "output_semantics": "logits"}
    param_text = "".join(
        f'parameters {{\n  key: "{k}"\n  value {{\n    string_value: "{v}"\n  }}\n}}\n'
        for k, v in params.items())
    # Every batch size the batcher can form in the sitting is warmed at load, as a Triton user
    # would configure it: the first run of a new shape pays cuDNN's algorithm search and
    # TorchScript's shape specialization, which would otherwise land inside a timed window.
    warm_text = "".join(
        f'model_warmup {{\n  name: "b{b}"\n  batch_size: {b}\n  count: 3\n'
        f'  inputs {{\n    key: "input"\n    value {{\n      data_type: {type_name}\n'
        f"      dims: [3, 224, 224]\n      random_data: true\n    }}\n  }}\n}}\n"
        for b in warm_batches)
    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
        f'input {{\n  name: "input"\n  data_type: {type_name}\n  format: FORMAT_NCHW\n'
        f"  dims: [3, 224, 224]\n}}\n"
        f'output {{\n  name: "logits"\n  data_type: {type_name}\n  dims: [1000]\n}}\n'
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n"
        f"instance_group {{\n  count: 1\n  kind: {kind}\n}}\n{param_text}{warm_text}"
    )


def write_torchscript(store: Path, arch: str, dtype: str, max_batch: int,
                      delay_us: int, device: str = "cuda",
                      warm_batches: tuple[int, ...] = ()) -> tuple[str, Any]:
    """Trace ``arch`` on the GPU in ``dtype``; returns (model name, the traced module)."""
    import torch

    name = f"{arch}_{dtype}"
    module = build(arch).to(device)
    if dtype == "fp16":
        module = module.half()
    example = torch.randn(2, 3, 224, 224, device=device,
                          dtype=torch.float16 if dtype == "fp16" else torch.float32)
    with torch.inference_mode():
        traced = torch.jit.trace(module, example, check_trace=False)
    version = store / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    traced.save(str(version / "model.pt"))
    (store / name / "config.pbtxt").write_text(config_text(name, dtype, max_batch, delay_us,
                                                           onnx=False, device=device,
                                                           warm_batches=warm_batches))
    return name, torch.jit.load(str(version / "model.pt"), map_location=device).eval()


def write_onnx(store: Path, arch: str, dtype: str, max_batch: int, delay_us: int,
               warm_batches: tuple[int, ...] = ()) -> str:
    """The ONNX twin, for ONNX Runtime's CUDA provider (only where onnxruntime-gpu exists)."""
    import torch

    name = f"{arch}_{dtype}_onnx"
    module = build(arch)
    if dtype == "fp16":
        module = module.half().cuda()
    example = torch.randn(2, 3, 224, 224, dtype=torch.float16 if dtype == "fp16"
                          else torch.float32, device="cuda" if dtype == "fp16" else "cpu")
    version = store / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module, (example,), str(version / "model.onnx"), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"},
                                                             "logits": {0: "batch"}},
                      dynamo=False)
    (store / name / "config.pbtxt").write_text(config_text(name, dtype, max_batch, delay_us,
                                                           onnx=True, warm_batches=warm_batches))
    return name
