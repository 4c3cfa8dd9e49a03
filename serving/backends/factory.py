"""Pick a backend from the model's platform."""

from __future__ import annotations

from serving.backends.base import Backend, BackendSpec

ONNX = "onnxruntime_onnx"
TORCHSCRIPT = "pytorch_libtorch"
# Platform -> the model file a version folder holds when the config names none.
DEFAULT_FILES = {ONNX: "model.onnx", TORCHSCRIPT: "model.pt"}


def create_backend(spec: BackendSpec) -> Backend:
    platform = spec.config.platform
    if platform == ONNX:
        from serving.backends.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(spec)
    if platform == TORCHSCRIPT:
        from serving.backends.torchscript import TorchScriptBackend

        return TorchScriptBackend(spec)
    raise ValueError(f"unsupported platform '{platform}' (supported: {', '.join(DEFAULT_FILES)})")
