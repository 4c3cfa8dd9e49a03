"""Model execution backends: ONNX Runtime and TorchScript, on CPU or CUDA."""

from serving.backends.base import Backend, BackendConfig, BackendSpec
from serving.backends.factory import create_backend

__all__ = ["Backend", "BackendConfig", "BackendSpec", "create_backend"]
