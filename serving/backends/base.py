"""The contract every backend meets, and what a backend needs to build itself."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from serving.generated import model_config_pb2

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


class Backend(Protocol):
    """One model instance. ``run`` is called from one executor thread at a time."""

    device: str  # "cpu" or "cuda:N": where this instance actually runs
    input_names: list[str]  # as the model file declares them
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Execute once; returns exactly ``output_names``."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BackendSpec:
    config: model_config_pb2.ModelConfig
    version_dir: Path
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    instances: int = 1  # how many instances of this model version share the machine

    def parameter(self, key: str) -> str | None:
        if key in self.config.parameters:
            return str(self.config.parameters[key].string_value)
        return None

    def int_parameter(self, key: str) -> int | None:
        value = self.parameter(key)
        if value is None or value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"config parameter '{key}' must be an integer, got {value!r}") from None

    def inline_run_threshold_s(self, on_cuda: bool) -> float:
        """Runs measured faster than this execute on the event loop (config
        ``inline_run_max_microseconds``, default 200; 0 turns it off). CPU only: a CUDA run's
        time includes waiting for the device, which must never block the loop."""
        if on_cuda:
            return 0.0
        configured = self.int_parameter("inline_run_max_microseconds")
        return 200e-6 if configured is None else max(0, configured) / 1e6

    def bool_parameter(self, key: str) -> bool:
        value = (self.parameter(key) or "").strip().lower()
        if value in ("", "0", "false", "no", "off"):
            return False
        if value in ("1", "true", "yes", "on"):
            return True
        raise ValueError(f"config parameter '{key}' must be true or false, got {value!r}")

    def intra_op_threads(self) -> int:
        """Config ``intra_op_thread_count``, else the cores shared evenly by the instances; never
        more than this process's core budget (its share when several worker processes serve)."""
        cores = usable_cores()
        configured = self.int_parameter("intra_op_thread_count")
        if configured is not None and configured > 0:
            return min(configured, cores) if _core_budget else configured
        return max(1, cores // max(1, self.instances))

    def inter_op_threads(self) -> int:
        configured = self.int_parameter("inter_op_thread_count")
        return configured if configured is not None and configured > 0 else 1
