"""Device buffers for Triton's CUDA shared-memory extension, opened from ``cudaIpc`` handles.

A client allocates device memory, takes its ``cudaIpcMemHandle_t`` (64 opaque bytes) and
registers it with a device id and a byte size. The server opens the handle on that device with
``cudaIpcOpenMemHandle``, hands inputs on as views of it (:class:`CudaArray`: a backend on the
GPU reads them there; any other gets one device -> host copy) and writes outputs into it (host
-> device).

The CUDA runtime is reached through ctypes: ``libcudart`` beside torch's bundled NVIDIA
libraries, else wherever the loader finds it. Nothing is loaded at import time; the first
register (or the server-metadata check) loads it once. A machine without the library, without
a driver or without a device answers every register with the reason, and nothing else changes.

The registry (:mod:`serving.core.shm`) sees only :class:`DeviceBuffer` and :class:`CudaOpener`,
so its bounds and reference counting are the same for both kinds and testable without a GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

IPC_HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t)
_H2D, _D2H = 1, 2  # cudaMemcpyKind
_LAZY_PEER_ACCESS = 1  # cudaIpcMemLazyEnablePeerAccess: the flag cudaIpcOpenMemHandle wants


class CudaUnavailable(Exception):
    """No CUDA runtime, driver or device here; the text says which."""


class CudaError(Exception):
    """A CUDA call failed; the text names the call and CUDA's own message."""


@dataclass(frozen=True, slots=True)
class CudaRegionStatus:
    name: str
    device_id: int
    byte_size: int


class DeviceBuffer(Protocol):
    """An opened IPC allocation: ``extent`` bytes addressable from ``pointer``."""

    device_id: int
    pointer: int
    extent: int

    def to_host(self, offset: int, out: np.ndarray) -> None:
        """Copy ``out.nbytes`` bytes at ``offset`` into the contiguous array ``out``."""

    def from_host(self, offset: int, src: np.ndarray) -> None:
        """Copy the contiguous array ``src`` to ``offset``; complete when this returns."""

    def close(self) -> None:
        """Close the IPC mapping (cudaIpcCloseMemHandle)."""


class CudaOpener(Protocol):
    def why_unavailable(self) -> str:
        """Why no device is usable here ("" when one is; cheap after the first call)."""

    def open(self, raw_handle: bytes, device_id: int) -> DeviceBuffer:
        """Open ``raw_handle`` on ``device_id``. Raises CudaUnavailable, CudaError or
        ValueError (a device id that is not visible)."""


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * IPC_HANDLE_BYTES)]


def _cudart_candidates() -> list[str]:
    """Where libcudart may be: torch's wheels put it under site-packages/nvidia/*/lib."""
    found: list[str] = []
    spec = importlib.util.find_spec("nvidia")  # a namespace package: nothing is imported
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        for pattern in ("*/lib/libcudart.so*", "cuda_runtime/lib/libcudart.so*"):
            found += sorted(p for p in glob.glob(os.path.join(root, pattern))
                            if not p.endswith(".a"))
    by_loader = ctypes.util.find_library("cudart")
    return [*dict.fromkeys([*found, *([by_loader] if by_loader else []), "libcudart.so"])]


class _Runtime:
    """libcudart (and libcuda for allocation extents), loaded on first use, once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False
        self._rt: Any = None
        self._drv: Any = None
        self._problem: str | None = None
        self._devices = 0

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            tried = []
            for name in _cudart_candidates():
                try:
                    self._rt = ctypes.CDLL(name)
                    break
                except OSError as exc:
                    tried.append(f"{name}: {exc}")
            if self._rt is None:
                self._problem = "the CUDA runtime library (libcudart) is not installed"
                return
            self._declare()
            count = ctypes.c_int(0)
            err = self._rt.cudaGetDeviceCount(ctypes.byref(count))
            if err != 0:
                self._problem = f"cudaGetDeviceCount failed: {self.error_text(err)}"
            elif count.value == 0:
                self._problem = "no CUDA device is visible"
            else:
                self._devices = count.value
                try:
                    self._drv = ctypes.CDLL("libcuda.so.1")
                except OSError as exc:
                    self._problem = f"the CUDA driver library cannot be loaded: {exc}"

    def _declare(self) -> None:
        rt = self._rt
        rt.cudaGetErrorString.restype = ctypes.c_char_p
        rt.cudaGetErrorString.argtypes = [ctypes.c_int]
        rt.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), _IpcHandle,
                                            ctypes.c_uint]
        rt.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]
        rt.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                  ctypes.c_int]
        rt.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
        rt.cudaSetDevice.argtypes = [ctypes.c_int]

    def error_text(self, err: int) -> str:
        text = self._rt.cudaGetErrorString(err) if self._rt is not None else None
        return f"{text.decode(errors='replace') if text else 'unknown error'} (error {err})"

    def devices(self) -> int:
        """The visible device count; raises CudaUnavailable with the reason when none."""
        self._load()
        if self._problem is not None:
            raise CudaUnavailable(self._problem)
        return self._devices

    def call(self, what: str, err: int) -> None:
        if err != 0:
            raise CudaError(f"{what} failed: {self.error_text(err)}")

    @property
    def rt(self) -> Any:
        return self._rt

    @property
    def drv(self) -> Any:
        return self._drv


class _IpcBuffer:
    """One opened handle. Every call selects its device first: the current device is per
    thread, and copies run on whichever decode thread serves the request."""

    def __init__(self, runtime: _Runtime, device_id: int, pointer: int, extent: int) -> None:
        self._cuda = runtime
        self.device_id = device_id
        self.pointer = pointer
        self.extent = extent

    def _device(self) -> Any:
        self._cuda.call("cudaSetDevice", self._cuda.rt.cudaSetDevice(self.device_id))
        return self._cuda.rt

    def to_host(self, offset: int, out: np.ndarray) -> None:
        rt = self._device()
        self._cuda.call("cudaMemcpy (device to host)", rt.cudaMemcpy(
            out.ctypes.data, self.pointer + offset, out.nbytes, _D2H))

    def from_host(self, offset: int, src: np.ndarray) -> None:
        rt = self._device()
        self._cuda.call("cudaMemcpy (host to device)", rt.cudaMemcpy(
            self.pointer + offset, src.ctypes.data, src.nbytes, _H2D))
        # From pageable memory cudaMemcpy may return before the DMA lands; the answer that
        # tells the client to read the region must come after it.
        self._cuda.call("cudaStreamSynchronize", rt.cudaStreamSynchronize(None))

    def close(self) -> None:
        rt = self._device()
        rt.cudaIpcCloseMemHandle(ctypes.c_void_p(self.pointer))


class CudaIpc:
    """The real opener. Constructing it loads nothing."""

    def __init__(self) -> None:
        self._runtime = _Runtime()

    def why_unavailable(self) -> str:
        try:
            return "" if self._runtime.devices() > 0 else "no CUDA device is visible"
        except CudaUnavailable as exc:
            return str(exc)

    def open(self, raw_handle: bytes, device_id: int) -> DeviceBuffer:
        count = self._runtime.devices()
        if not 0 <= device_id < count:
            raise ValueError(f"device_id {device_id} is not a visible CUDA device "
                             f"({count} visible)")
        cuda = self._runtime
        cuda.call("cudaSetDevice", cuda.rt.cudaSetDevice(device_id))
        pointer = ctypes.c_void_p()
        handle = _IpcHandle.from_buffer_copy(raw_handle)
        cuda.call("cudaIpcOpenMemHandle",
                  cuda.rt.cudaIpcOpenMemHandle(ctypes.byref(pointer), handle, _LAZY_PEER_ACCESS))
        address = int(pointer.value or 0)
        try:
            extent = self._extent(address)
        except BaseException:
            cuda.rt.cudaIpcCloseMemHandle(pointer)
            raise
        return _IpcBuffer(cuda, device_id, address, extent)

    def _extent(self, address: int) -> int:
        """Bytes of the allocation from ``address`` to its end (cuMemGetAddressRange), so a
        registered byte size can never reach past what the client shared."""
        base, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
        err = self._runtime.drv.cuMemGetAddressRange_v2(
            ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(address))
        if err != 0:
            raise CudaError(f"cuMemGetAddressRange failed (CUresult {err})")
        return int(base.value + size.value - address)


class CudaArray:
    """An input tensor in a client's CUDA region, read where it lies.

    It exposes ``__cuda_array_interface__`` (v3), so ``torch.as_tensor(obj, device=...)`` views
    it on the GPU without a host copy, and ``shape``/``dtype`` for the checks a request passes;
    ``np.asarray(obj)`` copies it to the host (``copy_out``) for a consumer that needs one.
    Valid while its region is held: the registry holds the region for as long as this object
    lives (a torch tensor made from it keeps it alive), so a client unregistering the region
    mid-request never closes the mapping under a read."""

    def __init__(self, pointer: int, shape: tuple[int, ...], dtype: np.dtype[Any],
                 copy_out: Callable[[np.ndarray], None]) -> None:
        self.shape = tuple(shape)
        self.dtype: np.dtype[Any] = np.dtype(dtype).newbyteorder("<")
        self.nbytes = self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))
        self._copy_out = copy_out
        self.__cuda_array_interface__ = {
            "shape": self.shape, "typestr": self.dtype.str,
            "data": (pointer, False), "version": 3, "strides": None,
            "stream": None,  # the client finished writing before it sent the request
        }

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        self._copy_out(out)
        return out if dtype is None else out.astype(dtype, copy=False)
