"""Model execution backends: ONNX Runtime and TorchScript, on CPU or CUDA."""

from serving.backends.base import Backend, BackendSpec
from serving.backends.factory import create_backend, platform_of

__all__ = ["Backend", "BackendSpec", "create_backend", "platform_of"]
