"""Pick a backend from the config's ``platform`` (or ``backend``) field."""

from __future__ import annotations

from pathlib import Path

from serving.backends.base import Backend, BackendSpec
from serving.generated import model_config_pb2

ONNX = "onnxruntime_onnx"
TORCHSCRIPT = "pytorch_libtorch"
_BACKEND_TO_PLATFORM = {"onnxruntime": ONNX, "pytorch": TORCHSCRIPT}
_DEFAULT_FILE = {ONNX: "model.onnx", TORCHSCRIPT: "model.pt"}


def platform_of(config: model_config_pb2.ModelConfig, model_dir: Path | None = None) -> str:
    """The served platform; when neither field is set, guess from the files of a version dir."""
    if config.platform:
        if config.platform not in _DEFAULT_FILE:
            raise ValueError(
                f"unsupported platform '{config.platform}' (supported: {', '.join(_DEFAULT_FILE)})"
            )
        return config.platform
    if config.backend:
        try:
            return _BACKEND_TO_PLATFORM[config.backend]
        except KeyError:
            raise ValueError(
                f"unsupported backend '{config.backend}' (supported: onnxruntime, pytorch)"
            ) from None
    if model_dir is not None:
        for platform, filename in _DEFAULT_FILE.items():
            if any(model_dir.glob(f"*/{filename}")):
                return platform
    raise ValueError("config sets neither platform nor backend, and no model file was found")


def create_backend(spec: BackendSpec) -> Backend:
    platform = platform_of(spec.config)
    if platform == ONNX:
        from serving.backends.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(spec)
    from serving.backends.torchscript import TorchScriptBackend

    return TorchScriptBackend(spec)
