"""Triton's system shared-memory extension: registered POSIX shared-memory regions.

A client creates a POSIX shared-memory object (``/dev/shm/<key>``), registers a slice of it
under a name, and then names the region, an offset and a byte size in the parameters of an
input (read from the region, no copy of the bytes) or of a requested output (written into the
region; the answer carries no data for it).

Every bound is checked here: a key must name a regular file directly under ``/dev/shm``
(opened without following links), a registered slice must lie inside the object, a tensor's
slice inside its region, and its size must match the tensor. The object's size is checked again
on every use, since a client can shrink it (touching a page past its end would kill the server
with SIGBUS).

A region is reference-counted: unregistering takes its name away at once (new requests get
"Unable to find", the name can be registered again), while the mapping stays open until the
requests that already hold it have finished, so their views never dangle.

CUDA regions (Triton's CUDA shared-memory extension, :mod:`serving.core.cuda_shm`) live in the
same table under the same rules: one namespace for both kinds, as in Triton, the same bounds
and size checks, the same reference counts; status and unregister name one kind each.

Pure core: no wire imports; the transports parse parameters and call :class:`ShmScope`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mmap
import os
import re
import stat
import threading
import weakref
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from serving.backends.base import on_gpu
from serving.core import datatypes
from serving.core.cuda_shm import (
    IPC_HANDLE_BYTES,
    CudaArray,
    CudaError,
    CudaIpc,
    CudaOpener,
    CudaRegionStatus,
    CudaUnavailable,
    DeviceBuffer,
)
from serving.core.types import InferResponse, ParamValue
from serving.errors import AlreadyExists, InvalidInput, ModelNotFound, ServingError, shown

SHM_ROOT = "/dev/shm"
REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
SHM_PARAMETERS = (REGION, OFFSET, BYTE_SIZE)

# Copies between a region and the host up to this many bytes run on the event loop.
INLINE_COPY_BYTES = 1024 * 1024
DEFAULT_MAX_REGIONS = 256  # each region holds a file descriptor and a mapping
MAX_NAME_CHARS = 256
# POSIX shm keys: one path component under /dev/shm, optionally written with a leading "/".
_KEY = re.compile(r"/?[A-Za-z0-9._@:+=-]{1,250}")
SYSTEM, CUDA = "system", "cuda"


class RegionNotFound(ModelNotFound):
    """A region name that is not registered (Triton answers NOT_FOUND)."""


@dataclass(frozen=True, slots=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


def _check_bounds(name: str, region_size: int, offset: int, byte_size: int, what: str) -> None:
    if offset < 0 or byte_size < 0 or offset + byte_size > region_size:
        raise InvalidInput(
            f"Invalid offset + byte size for shared memory region: "
            f"'{shown(name)}' ({what}: offset {offset} + byte size "
            f"{byte_size} is past the region's {region_size} bytes)")


class _Region:
    """One registered slice ``[offset, offset + byte_size)`` of a mapped shm object."""

    kind = SYSTEM

    def __init__(self, status: RegionStatus, fd: int, mapping: mmap.mmap) -> None:
        self.status = status
        self.name = status.name
        self._fd = fd
        self._map = mapping
        self.users = 0  # requests holding it (guarded by the registry's lock)
        self.retired = False  # unregistered; closes when the last user lets go
        self.closing = False  # its close is decided (once, see _closable)

    def check_object(self) -> None:
        """The object still covers the registered slice (a client may have shrunk it)."""
        end = self.status.offset + self.status.byte_size
        size = os.fstat(self._fd).st_size
        if size < end:
            raise InvalidInput(
                f"shared memory region '{shown(self.status.name)}' shrank: its object "
                f"'{shown(self.status.key)}' is {size} bytes, the region needs {end}")

    def view(self, offset: int, byte_size: int, what: str) -> memoryview:
        """``byte_size`` bytes at ``offset`` into the region, as a view of the mapping."""
        _check_bounds(self.status.name, self.status.byte_size, offset, byte_size, what)
        start = self.status.offset + offset
        return memoryview(self._map)[start:start + byte_size]

    def check_bounds(self, offset: int, byte_size: int, what: str) -> None:
        _check_bounds(self.status.name, self.status.byte_size, offset, byte_size, what)

    def input_bytes(self, offset: int, byte_size: int, what: str) -> memoryview:
        return self.view(offset, byte_size, what)  # no copy

    def write(self, offset: int, src: np.ndarray, what: str) -> None:
        self.check_object()
        np.frombuffer(self.view(offset, src.size, what), np.uint8)[:] = src

    def close(self) -> None:
        # A view made from it may still be alive somewhere (an array a backend kept): then
        # the mapping goes when that view does, never under it.
        with contextlib.suppress(BufferError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


class _CudaRegion:
    """A registered CUDA IPC allocation: ``byte_size`` bytes from the handle's pointer."""

    kind = CUDA

    def __init__(self, status: CudaRegionStatus, buffer: DeviceBuffer) -> None:
        self.status = status
        self.name = status.name
        self.buffer = buffer
        self.users = 0  # requests and device views holding it
        self.retired = False
        self.closing = False

    def check_object(self) -> None:
        """Nothing to re-check: device memory cannot shrink under an open IPC mapping."""

    def check_bounds(self, offset: int, byte_size: int, what: str) -> None:
        _check_bounds(self.status.name, self.status.byte_size, offset, byte_size, what)

    def input_bytes(self, offset: int, byte_size: int, what: str) -> memoryview:
        """A host copy (BYTES tensors, whose elements are parsed on the host)."""
        self.check_bounds(offset, byte_size, what)
        out = np.empty(byte_size, np.uint8)
        self._copy_out(offset, out, what)
        return out.data

    def device_array(self, offset: int, byte_size: int, shape: tuple[int, ...],
                     dtype: np.dtype[Any], what: str) -> CudaArray:
        """The slice as a device view: nothing is copied until a host consumer asks."""
        self.check_bounds(offset, byte_size, what)
        return CudaArray(self.buffer.pointer + offset, shape, dtype,
                         lambda out: self._copy_out(offset, out, what))

    def _copy_out(self, offset: int, out: np.ndarray, what: str) -> None:
        self._cuda(lambda: self.buffer.to_host(offset, out), what)

    def write(self, offset: int, src: np.ndarray, what: str) -> None:
        self.check_bounds(offset, src.size, what)
        self._cuda(lambda: self.buffer.from_host(offset, src), what)

    def _cuda(self, call: Any, what: str) -> None:
        try:
            call()
        except CudaError as exc:
            raise InvalidInput(f"{what}: CUDA shared memory region '{shown(self.name)}': "
                               f"{exc}") from None

    def close(self) -> None:
        with contextlib.suppress(CudaError):
            self.buffer.close()


AnyRegion = _Region | _CudaRegion


def _closable(region: AnyRegion) -> bool:
    """Whether the caller (holding the registry's lock) is the one to close ``region`` now:
    retired, unused, and not taken by another caller already."""
    if region.closing or not region.retired or region.users:
        return False
    region.closing = True
    return True


def _open_object(key: str) -> int:
    """A read-write descriptor of the shm object ``key``; refuses anything else."""
    if not isinstance(key, str) or not _KEY.fullmatch(key) or key.lstrip("/") in (".", ".."):
        raise InvalidInput(f"Unable to open shared memory region: '{shown(str(key))}' "
                           "(not a POSIX shared-memory key)")
    path = os.path.join(SHM_ROOT, key.lstrip("/"))
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO must not block
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        why = "no such object" if exc.errno == errno.ENOENT else os.strerror(exc.errno or 0)
        raise InvalidInput(f"Unable to open shared memory region: '{shown(key)}' ({why})") \
            from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidInput(f"Unable to open shared memory region: '{shown(key)}' "
                           "(not a shared-memory object)")
    return fd


def _check_slice(name: str, key: str, offset: int, byte_size: int, object_size: int) -> None:
    if offset < 0 or byte_size <= 0:
        raise InvalidInput(
            f"failed to register shared memory region '{shown(name)}': offset must be >= 0 "
            f"and byte_size > 0, got offset {offset}, byte_size {byte_size}")
    if offset + byte_size > object_size:
        raise InvalidInput(
            f"failed to register shared memory region '{shown(name)}': offset {offset} + "
            f"byte_size {byte_size} exceeds the {object_size} bytes of shared memory "
            f"object '{shown(key)}'")


class SharedMemoryRegistry:
    """The registered regions of one process; safe to call from decode threads too."""

    def __init__(self, max_regions: int = DEFAULT_MAX_REGIONS,
                 cuda: CudaOpener | None = None) -> None:
        self._max = max_regions
        self._regions: dict[str, AnyRegion] = {}
        # Re-entrant: the last view of a CUDA input lets its region go from a finalizer, which
        # the garbage collector may run while this thread holds the lock.
        self._lock = threading.RLock()
        self._cuda: CudaOpener = cuda if cuda is not None else CudaIpc()

    def check_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Every check :meth:`register` makes, registering nothing (a worker runs them before
        asking every worker to register)."""
        self._check_name(name)
        fd = _open_object(key)
        try:
            _check_slice(name, key, offset, byte_size, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_name(name)
        fd = _open_object(key)
        try:
            _check_slice(name, key, offset, byte_size, os.fstat(fd).st_size)
            mapping = mmap.mmap(fd, offset + byte_size, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._insert(_Region(RegionStatus(name, key, offset, byte_size), fd, mapping))

    def _insert(self, region: AnyRegion) -> None:
        with self._lock:
            problem = self._refusal(region.name)
            if problem is None:
                self._regions[region.name] = region
        if problem is not None:
            region.close()
            raise problem

    # -- CUDA regions ----------------------------------------------------------------------

    def cuda_available(self) -> bool:
        """Whether CUDA regions can be registered here (a device is visible)."""
        return not self._cuda.why_unavailable()

    def check_register_cuda(self, name: str, raw_handle: bytes, device_id: int,
                            byte_size: int) -> None:
        """The checks :meth:`register_cuda` makes before it opens the handle (a worker runs
        them before asking every worker to open it)."""
        self._check_name(name)
        _check_cuda_request(name, raw_handle, device_id, byte_size)
        missing = self._cuda.why_unavailable()
        if missing:  # the same words as a failed open in one process
            raise InvalidInput(f"CUDA shared memory requires a GPU: {missing}")

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int,
                      byte_size: int) -> None:
        """Open ``raw_handle`` (a ``cudaIpcMemHandle_t``) on ``device_id`` and register
        ``byte_size`` bytes of it; the byte size must lie inside the shared allocation."""
        self.check_register_cuda(name, raw_handle, device_id, byte_size)
        failed = f"failed to register CUDA shared memory region '{shown(name)}'"
        try:
            buffer = self._cuda.open(bytes(raw_handle), device_id)
        except CudaUnavailable as exc:
            raise InvalidInput(f"CUDA shared memory requires a GPU: {exc}") from None
        except (CudaError, ValueError) as exc:
            raise InvalidInput(f"{failed}: {exc}") from None
        if byte_size > buffer.extent:
            with contextlib.suppress(CudaError):
                buffer.close()
            raise InvalidInput(f"{failed}: byte_size {byte_size} exceeds the {buffer.extent} "
                               "bytes of the device allocation the handle shares")
        self._insert(_CudaRegion(CudaRegionStatus(name, device_id, byte_size), buffer))

    def unregister_cuda(self, name: str = "") -> None:
        """Unregister CUDA region ``name`` ("" = every CUDA region)."""
        self._unregister(name, CUDA)

    def cuda_status(self, name: str = "") -> list[CudaRegionStatus]:
        return [r.status for r in self._of_kind(name, CUDA) if isinstance(r, _CudaRegion)]

    # -- both kinds ------------------------------------------------------------------------

    def _of_kind(self, name: str, kind: str) -> list[AnyRegion]:
        with self._lock:
            if not name:
                return [r for r in self._regions.values() if r.kind == kind]
            region = self._regions.get(name)
        if region is None or region.kind != kind:
            raise RegionNotFound(f"Unable to find {kind} shared memory region: '{shown(name)}'")
        return [region]

    def _unregister(self, name: str, kind: str) -> None:
        with self._lock:
            names = [n for n, r in self._regions.items()
                     if r.kind == kind and (not name or n == name)]
            closing = []
            for n in names:
                region = self._regions.pop(n)
                region.retired = True
                if _closable(region):
                    closing.append(region)
        for region in closing:
            region.close()

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise InvalidInput(f"a shared memory region name must be 1 to {MAX_NAME_CHARS} "
                               f"characters, got {len(name) if isinstance(name, str) else name!r}")
        with self._lock:
            problem = self._refusal(name)
        if problem is not None:
            raise problem

    def _refusal(self, name: str) -> ServingError | None:
        if name in self._regions:
            return AlreadyExists(f"shared memory region '{shown(name)}' already in manager")
        if len(self._regions) >= self._max:
            return InvalidInput(f"{len(self._regions)} shared memory regions are registered, "
                                f"the most this server keeps; unregister some first")
        return None

    def unregister(self, name: str = "") -> None:
        """Unregister system region ``name`` ("" = every system region). An unknown name is
        not an error (Triton)."""
        self._unregister(name, SYSTEM)

    def status(self, name: str = "") -> list[RegionStatus]:
        return [r.status for r in self._of_kind(name, SYSTEM) if isinstance(r, _Region)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._regions)

    def acquire(self, name: str) -> AnyRegion:
        with self._lock:
            region = self._regions.get(name)
            if region is not None:
                region.users += 1
        if region is None:
            raise RegionNotFound(f"Unable to find shared memory region: '{shown(name)}'")
        try:
            region.check_object()
        except BaseException:
            self.release(region)
            raise
        return region

    def hold(self, region: AnyRegion) -> None:
        """One more user of a region already held (see :meth:`release`)."""
        with self._lock:
            region.users += 1

    def release(self, region: AnyRegion) -> None:
        with self._lock:
            region.users -= 1
            close = _closable(region)
        if close:
            region.close()

    def scope(self) -> ShmScope:
        return ShmScope(self)


@dataclass(frozen=True, slots=True)
class ShmRef:
    region: str
    offset: int
    byte_size: int


def _check_cuda_request(name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
    failed = f"failed to register CUDA shared memory region '{shown(name)}'"
    if not isinstance(raw_handle, bytes | bytearray) or len(raw_handle) != IPC_HANDLE_BYTES:
        got = len(raw_handle) if isinstance(raw_handle, bytes | bytearray) else "no"
        raise InvalidInput(f"{failed}: raw_handle must be the {IPC_HANDLE_BYTES} bytes of a "
                           f"cudaIpcMemHandle_t, got {got} bytes")
    if not isinstance(device_id, int) or isinstance(device_id, bool) or device_id < 0:
        raise InvalidInput(f"{failed}: device_id must be a non-negative integer, "
                           f"got {device_id!r}")
    if not isinstance(byte_size, int) or isinstance(byte_size, bool) or byte_size <= 0:
        raise InvalidInput(f"{failed}: byte_size must be > 0, got {byte_size!r}")


def _int(value: ParamValue, key: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"{where}: '{key}' must be a non-negative integer, got {value!r}")
    return value


def take_ref(params: dict[str, ParamValue], where: str) -> ShmRef | None:
    """Remove the shared-memory parameters from ``params``; the reference they make, if any."""
    if not any(k in params for k in SHM_PARAMETERS):
        return None
    region = params.pop(REGION, None)
    size = params.pop(BYTE_SIZE, None)
    offset = params.pop(OFFSET, 0)
    if region is None or size is None:
        raise InvalidInput(f"{where}: '{REGION}' and '{BYTE_SIZE}' must be given together")
    if not isinstance(region, str) or not region:
        raise InvalidInput(f"{where}: '{REGION}' must be a non-empty string")
    return ShmRef(region, _int(offset, OFFSET, where), _int(size, BYTE_SIZE, where))


class ShmScope:
    """The regions one request uses, held from decoding until its answer is written.

    Use as a context manager (or call :meth:`release`) so the regions are let go whatever
    happens to the request."""

    def __init__(self, registry: SharedMemoryRegistry) -> None:
        self._registry = registry
        self._held: dict[str, AnyRegion] = {}
        self._outputs: dict[str, tuple[AnyRegion, ShmRef]] = {}

    def __enter__(self) -> ShmScope:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _region(self, name: str) -> AnyRegion:
        region = self._held.get(name)
        if region is None:
            region = self._held[name] = self._registry.acquire(name)
        return region

    def input_array(self, name: str, datatype: str, shape: tuple[int, ...],
                    params: dict[str, ParamValue]) -> np.ndarray | None:
        """The input's array read from its region (a view, no copy, for fixed-size types: of
        the mapping for a system region, of device memory for a CUDA one), or None when the
        input names no region. Removes the parameters from ``params``."""
        ref = take_ref(params, f"input '{shown(name)}'")
        if ref is None:
            return None
        region = self._region(ref.region)
        region.check_bounds(ref.offset, ref.byte_size, f"input '{shown(name)}'")
        if datatype != "BYTES":
            expected = datatypes.element_size(datatype) * int(np.prod(shape, dtype=np.int64))
            if ref.byte_size != expected:
                raise InvalidInput(
                    f"input '{shown(name)}': shared_memory_byte_size {ref.byte_size} does not "
                    f"match the tensor: shape {list(shape)} {datatype} is {expected} bytes")
        if isinstance(region, _CudaRegion) and datatype != "BYTES":
            return self._device_input(region, ref, shape, datatype, f"input '{shown(name)}'")
        view = region.input_bytes(ref.offset, ref.byte_size, f"input '{shown(name)}'")
        return datatypes.array_from_raw(view, datatype, shape, name)

    def _device_input(self, region: _CudaRegion, ref: ShmRef, shape: tuple[int, ...],
                      datatype: str, what: str) -> np.ndarray:
        """A CUDA input as a view of the region (a backend on the GPU reads it in place; the
        service copies it to the host, off the event loop, for any other). The view holds the
        region itself, since a cancelled request can leave it with a running batch after
        this scope has let go."""
        array = region.device_array(ref.offset, ref.byte_size, shape,
                                    datatypes.triton_to_numpy(datatype), what)
        self._registry.hold(region)
        weakref.finalize(array, self._registry.release, region)
        # Typed as the ndarray it stands for: it has shape and dtype, np.asarray() gives the
        # host array, and only a backend that declares takes_device_inputs sees it as it is.
        return cast(np.ndarray, array)

    def take_output(self, name: str, params: dict[str, ParamValue]) -> bool:
        """Note a requested output that goes into a region (checked and held now, before the
        model runs); False when it names none. Removes the parameters from ``params``."""
        ref = take_ref(params, f"output '{shown(name)}'")
        if ref is None:
            return False
        region = self._region(ref.region)
        region.check_bounds(ref.offset, ref.byte_size, f"output '{shown(name)}'")  # now
        self._outputs[name] = (region, ref)
        return True

    @property
    def has_outputs(self) -> bool:
        return bool(self._outputs)

    def output_bytes(self) -> int:
        return sum(ref.byte_size for _, ref in self._outputs.values())

    def write_outputs(self, response: InferResponse) -> None:
        """Copy each output bound for a region into it (one copy) and leave the tensor with
        the shared-memory parameters, which tell the encoders to send no data for it."""
        for tensor in response.outputs:
            target = self._outputs.get(tensor.name)
            if target is None:
                continue
            region, ref = target
            where = f"output '{shown(tensor.name)}'"
            if tensor.datatype == "BYTES":
                src = np.frombuffer(datatypes.array_to_raw(tensor.data, "BYTES"), np.uint8)
            else:
                dtype = datatypes.triton_to_numpy(tensor.datatype).newbyteorder("<")
                src = np.ascontiguousarray(tensor.data, dtype=dtype).reshape(-1).view(np.uint8)
            if src.size > ref.byte_size:
                raise InvalidInput(
                    f"shared memory size specified with the request for {where} "
                    f"({ref.byte_size} bytes) should be at least {src.size} bytes to hold "
                    "the results")
            region.write(ref.offset, src, where)
            tensor.parameters = {**tensor.parameters, REGION: ref.region,
                                 BYTE_SIZE: int(src.size)}
            if ref.offset:
                tensor.parameters[OFFSET] = ref.offset

    def release(self) -> None:
        held, self._held, self._outputs = self._held, {}, {}
        for region in held.values():
            self._registry.release(region)


async def host_copies(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` with every device view (a CUDA region's input) copied to the host, for a
    backend that takes host arrays; on a thread past :data:`INLINE_COPY_BYTES` (the size is the
    client's)."""
    def copy() -> dict[str, np.ndarray]:
        return {n: np.asarray(a) if on_gpu(a) else a for n, a in inputs.items()}

    if sum(a.nbytes for a in inputs.values() if on_gpu(a)) <= INLINE_COPY_BYTES:
        return copy()
    return await asyncio.to_thread(copy)


def in_region(parameters: dict[str, ParamValue]) -> bool:
    """True for a response tensor written into a region (it is sent without data)."""
    return REGION in parameters
