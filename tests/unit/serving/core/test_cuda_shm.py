"""The CUDA side of the shared-memory registry: registration checks, bounds, byte sizes,
reference counts, one namespace with system regions, and the answers without a GPU.

The device here is a fake (host bytes behind the opener the registry is given), so these tests
prove the registry's *bounds and bookkeeping logic* only. The CUDA calls themselves
(cudaIpcOpenMemHandle, cudaMemcpy, cuMemGetAddressRange) are proven only on a GPU, by
tests/integration/test_cuda_shared_memory.py::test_simple_through_cuda_regions_matches_onnx_runtime.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import pytest

from serving.backends.base import on_gpu
from serving.core.cuda_shm import CudaIpc
from serving.core.shm import RegionNotFound, SharedMemoryRegistry, host_copies
from serving.core.types import InferResponse, ParamValue, Tensor
from serving.errors import AlreadyExists, InvalidInput
from tests.helpers.fake_cuda import HANDLE, FakeOpener


@pytest.fixture
def opener() -> FakeOpener:
    return FakeOpener()


@pytest.fixture
def reg(opener: FakeOpener) -> SharedMemoryRegistry:
    return SharedMemoryRegistry(cuda=opener)


def test_register_status_unregister_closes_the_handle(reg: SharedMemoryRegistry,
                                                      opener: FakeOpener) -> None:
    reg.register_cuda("g", HANDLE, 0, 1024)
    (status,) = reg.cuda_status("g")
    assert (status.name, status.device_id, status.byte_size) == ("g", 0, 1024)
    assert reg.status() == []  # a CUDA region is not a system region
    with pytest.raises(AlreadyExists, match="already in manager"):
        reg.register_cuda("g", HANDLE, 0, 64)
    reg.unregister("g")  # system unregister leaves a CUDA region alone, as in Triton
    assert len(reg.cuda_status()) == 1
    reg.unregister_cuda("g")
    assert opener.opened[0].closed == 1 and reg.cuda_status() == []
    with pytest.raises(RegionNotFound, match="Unable to find cuda shared memory region"):
        reg.cuda_status("g")
    reg.unregister_cuda("g")  # unknown: no error


def test_one_namespace_with_system_regions(reg: SharedMemoryRegistry) -> None:
    mem = shared_memory.SharedMemory(f"capserve_unit_{uuid.uuid4().hex[:10]}", create=True,
                                     size=256)
    try:
        reg.register("both", "/" + mem.name.lstrip("/"), 0, 256)
        with pytest.raises(AlreadyExists, match="already in manager"):
            reg.register_cuda("both", HANDLE, 0, 64)
        with pytest.raises(RegionNotFound, match="Unable to find cuda"):
            reg.cuda_status("both")
        reg.unregister_cuda()  # all CUDA regions: the system one stays
        assert [r.name for r in reg.status()] == ["both"]
        reg.unregister()
    finally:
        mem.close()
        mem.unlink()


@pytest.mark.parametrize(("handle", "device", "size", "text"), [
    (b"\0" * 63, 0, 64, "raw_handle must be the 64 bytes"),
    (b"\0" * 65, 0, 64, "raw_handle must be the 64 bytes"),
    (HANDLE, -1, 64, "device_id must be a non-negative integer"),
    (HANDLE, 3, 64, "device_id 3 is not a visible CUDA device"),
    (HANDLE, 0, 0, "byte_size must be > 0"),
    (HANDLE, 0, 4097, "exceeds the 4096 bytes of the device allocation"),
    (b"\xff" * 64, 0, 64, "cudaIpcOpenMemHandle failed"),
])
def test_bad_registrations_are_refused_and_leave_nothing_open(
        reg: SharedMemoryRegistry, opener: FakeOpener, handle: bytes, device: int, size: int,
        text: str) -> None:
    with pytest.raises(InvalidInput, match=text):
        reg.register_cuda("bad", handle, device, size)
    assert len(reg) == 0
    assert all(buf.closed == 1 for buf in opener.opened)  # opened then refused: closed


def test_without_a_gpu_register_says_why_and_the_rest_works() -> None:
    reg = SharedMemoryRegistry(cuda=FakeOpener(devices=0))
    assert not reg.cuda_available()
    with pytest.raises(InvalidInput, match="CUDA shared memory requires a GPU: no CUDA device"):
        reg.register_cuda("g", HANDLE, 0, 64)
    assert reg.cuda_status() == []
    reg.unregister_cuda()


def test_the_real_opener_without_a_device_gives_the_reason() -> None:
    """Here (no GPU) the real runtime loads, or not, and register names why it cannot work."""
    ipc = CudaIpc()
    if not ipc.why_unavailable():
        pytest.skip("a CUDA device is visible")
    reg = SharedMemoryRegistry(cuda=ipc)
    with pytest.raises(InvalidInput, match="CUDA shared memory requires a GPU: .+") as opened:
        reg.register_cuda("g", HANDLE, 0, 64)
    # A worker's check before the fan-out gives the same answer as the open it stands for.
    with pytest.raises(InvalidInput) as checked:
        reg.check_register_cuda("g", HANDLE, 0, 64)
    assert checked.value.message == opened.value.message
    assert ipc.why_unavailable() in opened.value.message


def _response(name: str, data: np.ndarray) -> InferResponse:
    return InferResponse("m", "1", [Tensor(name, "FP32", data.shape, data)])


def test_inputs_and_outputs_go_through_the_device_buffer(reg: SharedMemoryRegistry,
                                                         opener: FakeOpener) -> None:
    reg.register_cuda("g", HANDLE, 0, 1024)
    buf = opener.opened[0]
    x = np.arange(8, dtype=np.float32)
    buf.mem[64:96] = x.view(np.uint8)
    with reg.scope() as scope:
        params = {"shared_memory_region": "g", "shared_memory_offset": 64,
                  "shared_memory_byte_size": 32}
        got = scope.input_array("x", "FP32", (8,), params)
        assert got is not None and params == {}
        np.testing.assert_array_equal(got, x)
        assert scope.take_output("y", {"shared_memory_region": "g",
                                       "shared_memory_offset": 512,
                                       "shared_memory_byte_size": 32})
        response = _response("y", x * 2)
        scope.write_outputs(response)
    np.testing.assert_array_equal(buf.mem[512:544].view(np.float32), x * 2)
    assert response.outputs[0].parameters["shared_memory_region"] == "g"


@pytest.mark.parametrize(("offset", "size", "text"), [
    (1000, 32, "Invalid offset \\+ byte size"), (0, 1025, "Invalid offset \\+ byte size"),
    (0, 28, "does not match the tensor")])
def test_input_slices_are_checked_before_any_copy(reg: SharedMemoryRegistry, offset: int,
                                                  size: int, text: str) -> None:
    reg.register_cuda("g", HANDLE, 0, 1024)
    with reg.scope() as scope, pytest.raises(InvalidInput, match=text):
        scope.input_array("x", "FP32", (8,), {"shared_memory_region": "g",
                                              "shared_memory_offset": offset,
                                              "shared_memory_byte_size": size})


def test_output_region_too_small_and_past_the_region(reg: SharedMemoryRegistry) -> None:
    reg.register_cuda("g", HANDLE, 0, 1024)
    with reg.scope() as scope, pytest.raises(InvalidInput, match="Invalid offset"):
        scope.take_output("y", {"shared_memory_region": "g", "shared_memory_offset": 1000,
                                "shared_memory_byte_size": 32})
    with reg.scope() as scope:
        scope.take_output("y", {"shared_memory_region": "g", "shared_memory_byte_size": 16})
        with pytest.raises(InvalidInput, match="should be at least 32 bytes"):
            scope.write_outputs(_response("y", np.zeros(8, np.float32)))


def test_a_region_in_use_closes_after_its_request(reg: SharedMemoryRegistry,
                                                  opener: FakeOpener) -> None:
    reg.register_cuda("g", HANDLE, 0, 1024)
    buf = opener.opened[0]
    scope = reg.scope()
    scope.input_array("x", "FP32", (8,), {"shared_memory_region": "g",
                                          "shared_memory_byte_size": 32})
    reg.unregister_cuda()
    assert buf.closed == 0  # the request still holds it
    with pytest.raises(RegionNotFound, match="Unable to find shared memory region"):
        reg.scope().input_array("x", "FP32", (8,), {"shared_memory_region": "g",
                                                    "shared_memory_byte_size": 32})
    reg.register_cuda("g", HANDLE, 0, 64)  # the name is free again at once
    scope.release()
    assert buf.closed == 1 and opener.opened[1].closed == 0
    reg.unregister_cuda()


def test_region_count_limit_counts_both_kinds() -> None:
    reg = SharedMemoryRegistry(max_regions=2, cuda=FakeOpener())
    reg.register_cuda("a", HANDLE, 0, 64)
    reg.register_cuda("b", HANDLE, 0, 64)
    with pytest.raises(InvalidInput, match="the most this server keeps"):
        reg.register_cuda("c", HANDLE, 0, 64)


CUDA_X: dict[str, ParamValue] = {"shared_memory_region": "g", "shared_memory_byte_size": 32}


def test_an_input_is_a_device_view_copied_only_when_a_host_array_is_asked_for(
        reg: SharedMemoryRegistry, opener: FakeOpener) -> None:
    reg.register_cuda("g", HANDLE, 0, 1024)
    buf = opener.opened[0]
    x = np.arange(8, dtype=np.float32)
    buf.mem[:32] = x.view(np.uint8)
    with reg.scope() as scope:
        view: Any = scope.input_array("x", "FP32", (2, 4), dict(CUDA_X))
        assert on_gpu(view) and buf.read_threads == []  # nothing crossed to the host
        assert view.shape == (2, 4) and view.dtype == np.float32
        cai = view.__cuda_array_interface__
        assert cai["data"] == (buf.pointer, False) and cai["typestr"] == "<f4"
        np.testing.assert_array_equal(np.asarray(view), x.reshape(2, 4))
        assert len(buf.read_threads) == 1


def test_a_view_keeps_its_region_open_after_its_request_and_an_unregister(
        reg: SharedMemoryRegistry, opener: FakeOpener) -> None:
    """A cancelled request can leave its inputs with a batch still running: the region must
    outlive the request's scope for as long as the view does."""
    reg.register_cuda("g", HANDLE, 0, 1024)
    buf = opener.opened[0]
    with reg.scope() as scope:
        view = scope.input_array("x", "FP32", (8,), dict(CUDA_X))
    reg.unregister_cuda("g")
    reg.unregister_cuda("g")
    assert buf.closed == 0
    np.asarray(view)  # still readable (the fake asserts it is not closed)
    reg.register_cuda("g", HANDLE, 0, 64)  # the name is free at once
    del view
    gc.collect()
    assert buf.closed == 1 and opener.opened[1].closed == 0


def test_bytes_inputs_are_copied_to_the_host_at_decode(reg: SharedMemoryRegistry,
                                                      opener: FakeOpener) -> None:
    reg.register_cuda("g", HANDLE, 0, 1024)
    buf = opener.opened[0]
    buf.mem[:7] = np.frombuffer(b"\x03\0\0\0abc", np.uint8)
    with reg.scope() as scope:
        got = scope.input_array("s", "BYTES", (1,), {"shared_memory_region": "g",
                                                      "shared_memory_byte_size": 7})
    assert isinstance(got, np.ndarray) and got.tolist() == [b"abc"]


@pytest.mark.parametrize(("elements", "on_loop"), [(16, True), (1 << 19, False)])
def test_host_copies_of_large_inputs_run_off_the_event_loop(elements: int,
                                                            on_loop: bool) -> None:
    opener = FakeOpener(extent=4 * elements)
    reg = SharedMemoryRegistry(cuda=opener)
    reg.register_cuda("g", HANDLE, 0, 4 * elements)
    buf = opener.opened[0]
    buf.mem[:] = np.arange(elements, dtype=np.float32).view(np.uint8)
    host = np.full(3, 7, np.float32)

    async def main() -> tuple[int, dict[str, np.ndarray]]:
        with reg.scope() as scope:
            view = scope.input_array("x", "FP32", (elements,), {
                "shared_memory_region": "g", "shared_memory_byte_size": 4 * elements})
            assert view is not None
            return threading.get_ident(), await host_copies({"x": view, "y": host})

    loop_thread, copied = asyncio.run(main())
    assert isinstance(copied["x"], np.ndarray) and copied["y"] is host
    np.testing.assert_array_equal(copied["x"], np.arange(elements, dtype=np.float32))
    assert (buf.read_threads == [loop_thread]) is on_loop
