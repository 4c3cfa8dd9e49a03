"""The contract every backend meets, and what a backend needs to build itself."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serving.parsing import parse_bool

# Cores this process may use for intra-op threads; 0 means every usable core. A supervisor's
# worker sets its share once at start, so N workers x threads never oversubscribe the machine.
_core_budget = 0


def set_core_budget(cores: int) -> None:
    global _core_budget
    _core_budget = max(0, cores)


def usable_cores() -> int:
    if _core_budget:
        return _core_budget
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def on_gpu(arr: object) -> bool:
    """Whether ``arr`` lives in GPU memory (``__cuda_array_interface__``, v3): an input read
    from a client's CUDA shared-memory region. ``np.asarray(arr)`` copies it to the host."""
    return hasattr(arr, "__cuda_array_interface__")


class DeviceParts:
    """One input of a batch whose requests brought some of it in GPU memory: the parts, in
    request order, for a backend that takes device inputs to join on its device (one copy on
    the GPU instead of device -> host -> device). ``np.asarray`` joins host copies."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        first = parts[0]
        self.dtype: np.dtype[Any] = first.dtype
        self.shape = (sum(int(p.shape[0]) for p in parts), *first.shape[1:])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        joined = np.concatenate([np.asarray(p) for p in self.parts], axis=0)
        return joined if dtype is None else joined.astype(dtype, copy=False)


class Backend(Protocol):
    """One model instance. ``run`` is called from one executor thread at a time.

    ``run`` takes numpy arrays, and, when ``takes_device_inputs`` is true, also inputs that
    live on its GPU (:func:`on_gpu`) or :class:`DeviceParts` of them; the service copies device
    inputs to the host for every other backend before they are queued."""

    device: str  # "cpu" or "cuda:N": where this instance actually runs
    input_names: list[str]  # as the model file declares them
    output_names: list[str]
    takes_device_inputs: bool

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Execute once; returns exactly ``output_names``."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """What a backend reads from a model's config, parsed once when the version loads."""

    platform: str  # onnxruntime_onnx | pytorch_libtorch
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    model_filename: str = ""  # "" = the platform's default
    intra_op_threads: int | None = None  # parameter intra_op_thread_count
    inter_op_threads: int | None = None  # parameter inter_op_thread_count
    inline_run_max_us: int | None = None  # parameter inline_run_max_microseconds
    ort_allow_spinning: bool = False

    @classmethod
    def from_parameters(cls, platform: str, input_names: tuple[str, ...],
                        output_names: tuple[str, ...], model_filename: str,
                        params: Mapping[str, str]) -> BackendConfig:
        """Parse the backend's string parameters; ``ValueError`` names a malformed one."""
        return cls(
            platform=platform, input_names=input_names, output_names=output_names,
            model_filename=model_filename,
            intra_op_threads=_int_parameter(params, "intra_op_thread_count"),
            inter_op_threads=_int_parameter(params, "inter_op_thread_count"),
            inline_run_max_us=_int_parameter(params, "inline_run_max_microseconds"),
            ort_allow_spinning=_bool_parameter(params, "ort_allow_spinning"),
        )


def _int_parameter(params: Mapping[str, str], key: str) -> int | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"config parameter '{key}' must be an integer, got {value!r}") from None


def _bool_parameter(params: Mapping[str, str], key: str) -> bool:
    try:
        return parse_bool(params.get(key, ""))
    except ValueError as exc:
        raise ValueError(f"config parameter '{key}' must be true or false, got {str(exc)!r}") \
            from None


@dataclass(frozen=True, slots=True)
class BackendSpec:
    config: BackendConfig
    version_dir: Path
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    instances: int = 1  # how many instances of this model version share the machine

    def inline_run_threshold_s(self, on_cuda: bool) -> float:
        """Runs measured faster than this execute on the event loop (config
        ``inline_run_max_microseconds``, default 200; 0 turns it off). CPU only: a CUDA run's
        time includes waiting for the device, which must never block the loop."""
        if on_cuda:
            return 0.0
        configured = self.config.inline_run_max_us
        return 200e-6 if configured is None else max(0, configured) / 1e6

    def intra_op_threads(self) -> int:
        """Config ``intra_op_thread_count``, else the cores shared evenly by the instances; never
        more than this process's core budget (its share when several worker processes serve)."""
        cores = usable_cores()
        configured = self.config.intra_op_threads
        if configured is not None and configured > 0:
            return min(configured, cores) if _core_budget else configured
        return max(1, cores // max(1, self.instances))

    def inter_op_threads(self) -> int:
        configured = self.config.inter_op_threads
        return configured if configured is not None and configured > 0 else 1
