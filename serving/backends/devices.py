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


def check_device(device: str) -> str:
    """A device setting normalised (``auto``, ``cpu``, ``cuda`` or ``cuda:N``); ``ValueError``
    for anything else. Settings validate with it, so a bad value fails at start, not at load."""
    value = device.strip().lower()
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def resolve_device(device: str) -> tuple[str, bool]:
    """(``cpu`` | ``cuda:N``, explicit) for a settings/config device string.

    ``explicit`` is True when the user demanded CUDA, so a missing GPU is an error, not a fallback.
    """
    device = check_device(device or "auto")
    if device == "cpu":
        return "cpu", False
    if device == "auto":
        return ("cuda:0" if cuda_device_count() > 0 else "cpu"), False
    if device == "cuda":
        return "cuda:0", True
    return device, True
