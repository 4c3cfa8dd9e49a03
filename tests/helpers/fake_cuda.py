"""A stand-in CUDA device for tests of the shared-memory registry's bookkeeping: host bytes
behind the opener a registry is given. It proves bounds, counts and fan-out logic only; the
CUDA calls themselves run only on a GPU (tests/integration/test_cuda_shared_memory.py)."""

from __future__ import annotations

import threading

import numpy as np

from serving.core.cuda_shm import CudaError, CudaUnavailable

HANDLE = bytes(range(64))


class FakeBuffer:
    """Host bytes standing in for an opened IPC allocation."""

    def __init__(self, extent: int, device_id: int) -> None:
        self.mem = np.zeros(extent, np.uint8)
        self.device_id, self.pointer, self.extent = device_id, 0x7F0000000000, extent
        self.closed = 0
        self.read_threads: list[int] = []  # the thread of every device -> host copy, in order

    def to_host(self, offset: int, out: np.ndarray) -> None:
        assert offset >= 0 and offset + out.nbytes <= self.extent  # the registry's promise
        assert self.closed == 0, "read after close"
        self.read_threads.append(threading.get_ident())
        out.view(np.uint8).reshape(-1)[:] = self.mem[offset:offset + out.nbytes]

    def from_host(self, offset: int, src: np.ndarray) -> None:
        assert offset >= 0 and offset + src.nbytes <= self.extent
        self.mem[offset:offset + src.nbytes] = src.view(np.uint8).reshape(-1)

    def close(self) -> None:
        self.closed += 1


class FakeOpener:
    def __init__(self, extent: int = 4096, devices: int = 1) -> None:
        self.extent, self.devices = extent, devices
        self.opened: list[FakeBuffer] = []
        self.handles: list[bytes] = []  # every handle it was asked to open, in order

    def why_unavailable(self) -> str:
        return "" if self.devices > 0 else "no CUDA device is visible"

    def open(self, raw_handle: bytes, device_id: int) -> FakeBuffer:
        self.handles.append(raw_handle)
        if self.devices == 0:
            raise CudaUnavailable("no CUDA device is visible")
        if device_id >= self.devices:
            raise ValueError(f"device_id {device_id} is not a visible CUDA device")
        if raw_handle == b"\xff" * 64:
            raise CudaError("cudaIpcOpenMemHandle failed: invalid argument (error 1)")
        buf = FakeBuffer(self.extent, device_id)
        self.opened.append(buf)
        return buf
