"""ONNX Runtime backend: ``<version>/model.onnx`` (+ its ``.onnx.data`` side file)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from serving.backends.base import BackendSpec
from serving.backends.devices import resolve_device
from serving.errors import InvalidInput

logger = logging.getLogger(__name__)


class OnnxRuntimeBackend:
    # The Python binding takes host arrays only (binding device memory needs IOBinding and the
    # CUDA build); the service copies CUDA shared-memory inputs to the host for it.
    takes_device_inputs = False

    def __init__(self, spec: BackendSpec) -> None:
        import onnxruntime as ort

        filename = spec.config.model_filename or "model.onnx"
        path = Path(spec.version_dir) / filename
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found")
        device, explicit = resolve_device(spec.device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.intra_op_threads()
        options.inter_op_num_threads = spec.inter_op_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's pool threads busy-wait after each run by default. In a server the cores they
        # spin on belong to the event loop, the decode pool and other instances: measured on
        # 2 cores with LeNet, spinning took ~60% of a core and cut HTTP throughput.
        if not spec.config.ort_allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if hasattr(ort, "preload_dlls"):
                try:  # CUDA/cuDNN from the nvidia-* wheels that torch brings along
                    ort.preload_dlls()
                except Exception:
                    logger.debug("onnxruntime.preload_dlls failed", exc_info=True)
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.split(":")[1]}))
        # The path (not bytes) lets ORT find the external-data file next to the model.
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        active = self._session.get_providers()
        if device.startswith("cuda") and "CUDAExecutionProvider" not in active:
            if explicit:
                raise RuntimeError(f"CUDA was requested but ONNX Runtime could not use it for {path}")
            logger.warning("CUDA unavailable to ONNX Runtime for %s; running on CPU", path)
            device = "cpu"
        self.device = device if device.startswith("cuda") else "cpu"
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self._run_options = ort.RunOptions()

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        feed = {n: _to_ort_strings(n, a) if a.dtype == np.object_ else a for n, a in inputs.items()}
        results = self._session.run(output_names, feed, self._run_options)
        out = {}
        for name, r in zip(output_names, results, strict=True):
            arr = np.asarray(r)
            out[name] = _from_ort_strings(arr) if arr.dtype == np.object_ else arr
        return out

    def close(self) -> None:
        # ORT frees the session when the last reference goes; drop ours now.
        self._session = None


# ONNX string tensors hold text: ORT's Python binding takes ``str`` elements (a ``bytes`` element
# would be stored as its repr) and returns ``str``. BYTES tensors are the only per-element path.
def _to_ort_strings(name: str, arr: np.ndarray) -> np.ndarray:
    try:
        items = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"BYTES input '{name}' is not valid UTF-8; ONNX string tensors hold text"
        ) from None
    return np.array(items, dtype=np.object_).reshape(arr.shape)


def _from_ort_strings(arr: np.ndarray) -> np.ndarray:
    items = [x.encode("utf-8") if isinstance(x, str) else x for x in arr.reshape(-1)]
    return np.array(items, dtype=np.object_).reshape(arr.shape)
