"""Which accelerator to use: ``auto`` picks CUDA when a GPU is present, else the CPU."""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger(__name__)


@functools.cache
def cuda_device_count() -> int:
    """GPUs visible through NVML (cheap; does not initialise a CUDA context)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


def resolve_device(device: str) -> tuple[str, bool]:
    """(``cpu`` | ``cuda:N``, explicit) for a settings/config device string.

    ``explicit`` is True when the user demanded CUDA, so a missing GPU is an error, not a fallback.
    """
    device = (device or "auto").strip().lower()
    if device == "cpu":
        return "cpu", False
    if device == "auto":
        return ("cuda:0" if cuda_device_count() > 0 else "cpu"), False
    if device == "cuda":
        return "cuda:0", True
    if device.startswith("cuda:") and device[5:].isdigit():
        return device, True
    raise ValueError(f"unknown device '{device}' (expected auto, cpu, cuda or cuda:N)")
