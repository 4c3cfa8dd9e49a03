"""TorchScript backend: ``<version>/model.pt`` loaded with ``torch.jit.load``.

Inputs are passed to ``forward`` positionally in config input order. Outputs may be a tensor, a
tuple/list (mapped to config outputs in order) or a dict keyed by output name.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.base import BackendSpec, DeviceParts, on_gpu
from serving.backends.devices import resolve_device

logger = logging.getLogger(__name__)


class TorchScriptBackend:
    def __init__(self, spec: BackendSpec) -> None:
        import torch

        self._torch = torch
        filename = spec.config.model_filename or "model.pt"
        path = Path(spec.version_dir) / filename
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found")
        device, explicit = resolve_device(spec.device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            if explicit:
                raise RuntimeError(f"CUDA was requested but torch cannot use it for {path}")
            logger.warning("CUDA unavailable to torch for %s; running on CPU", path)
            device = "cpu"
        self.device = device
        self._device = torch.device(device)
        self._module = torch.jit.load(str(path), map_location=self._device)
        self._module.eval()
        self.input_names = list(spec.config.input_names)
        self.output_names = list(spec.config.output_names)
        self._pin = self._device.type == "cuda"
        # Inputs from a client's CUDA shared-memory region reach run() as device views.
        self.takes_device_inputs = self._pin
        # One stream per instance, so instances of one model overlap on the GPU instead of
        # queueing behind each other on the default stream.
        self._stream = torch.cuda.Stream(self._device) if self._pin else None

    def _to_device(self, arr: np.ndarray) -> Any:
        torch = self._torch
        if self._pin and on_gpu(arr):
            # A view of the client's region (no copy on this device, a peer copy on another);
            # the tensor keeps the view, and with it the region, alive while it is used.
            return torch.as_tensor(arr, device=self._device)
        if self._pin and isinstance(arr, DeviceParts):
            return torch.cat([self._to_device(part) for part in arr.parts])
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, order="C")  # torch refuses read-only buffers
        tensor = torch.from_numpy(arr)
        if not self._pin:
            return tensor
        pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        pinned.copy_(tensor)
        return pinned.to(self._device, non_blocking=True)

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"missing inputs {missing}")
        with torch.inference_mode(), self._stream_context():
            args = [self._to_device(inputs[n]) for n in self.input_names]
            named = self._name_outputs(self._module(*args))
            out: dict[str, np.ndarray] = {}
            for name in output_names:
                if name not in named:
                    raise ValueError(f"TorchScript model produced no output '{name}'")
                out[name] = named[name].detach().to("cpu").numpy()  # waits for the stream
        return out

    def _stream_context(self) -> Any:
        if self._stream is None:
            return contextlib.nullcontext()
        return self._torch.cuda.stream(self._stream)

    def _name_outputs(self, result: Any) -> dict[str, Any]:
        torch = self._torch
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, dict):
            return dict(result)
        if isinstance(result, tuple | list):
            # Positional outputs take config output names in order; a missing one is reported
            # by ``run`` only when it is asked for.
            return dict(zip(self.output_names, result, strict=False))
        raise ValueError(f"unsupported TorchScript output type {type(result).__name__}")

    def close(self) -> None:
        self._module = None
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()
