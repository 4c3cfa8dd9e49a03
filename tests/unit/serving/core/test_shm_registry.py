"""The system shared-memory registry: bounds, keys, reference counts, zero-copy inputs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from multiprocessing import shared_memory

import numpy as np
import pytest

from serving.core.shm import RegionNotFound, SharedMemoryRegistry
from serving.core.types import InferResponse, Tensor
from serving.errors import AlreadyExists, InvalidInput


@pytest.fixture
def obj() -> Iterator[shared_memory.SharedMemory]:
    mem = shared_memory.SharedMemory(f"capserve_unit_{uuid.uuid4().hex[:10]}", create=True,
                                     size=4096)
    try:
        yield mem
    finally:
        mem.close()
        mem.unlink()


def _key(mem: shared_memory.SharedMemory) -> str:
    return "/" + mem.name.lstrip("/")


def test_register_status_unregister(obj: shared_memory.SharedMemory) -> None:
    reg = SharedMemoryRegistry()
    reg.register("a", _key(obj), 128, 1024)
    (status,) = reg.status("a")
    assert (status.key, status.offset, status.byte_size) == (_key(obj), 128, 1024)
    with pytest.raises(AlreadyExists, match="already in manager"):
        reg.register("a", _key(obj), 0, 64)
    reg.unregister("a")
    reg.unregister("a")  # unknown: nothing to do, no error
    with pytest.raises(RegionNotFound, match="Unable to find system shared memory region"):
        reg.status("a")
    assert reg.status() == []


@pytest.mark.parametrize(("offset", "size", "text"), [
    (0, 4097, "exceeds"), (4000, 97, "exceeds"), (0, 0, "byte_size > 0"), (-1, 8, ">= 0")])
def test_slices_past_the_object_are_refused(obj: shared_memory.SharedMemory, offset: int,
                                            size: int, text: str) -> None:
    reg = SharedMemoryRegistry()
    with pytest.raises(InvalidInput, match=text):
        reg.register("a", _key(obj), offset, size)
    assert len(reg) == 0


def test_keys_that_are_not_shm_objects_are_refused(obj: shared_memory.SharedMemory) -> None:
    reg = SharedMemoryRegistry()
    link = f"/dev/shm/capserve_link_{uuid.uuid4().hex[:8]}"
    os.symlink("/dev/shm/" + obj.name.lstrip("/"), link)
    try:
        for key in ["/" + os.path.basename(link), "/../etc/passwd", "/dev/shm" + _key(obj),
                    "", "/", "..", "/nonexistent_capserve_key"]:
            with pytest.raises(InvalidInput, match="Unable to open shared memory region"):
                reg.register("a", key, 0, 8)
    finally:
        os.unlink(link)
    assert len(reg) == 0


def test_region_count_is_bounded(obj: shared_memory.SharedMemory) -> None:
    reg = SharedMemoryRegistry(max_regions=2)
    reg.register("a", _key(obj), 0, 8)
    reg.register("b", _key(obj), 0, 8)
    with pytest.raises(InvalidInput, match="unregister some first"):
        reg.register("c", _key(obj), 0, 8)


def test_inputs_are_views_of_the_region(obj: shared_memory.SharedMemory) -> None:
    reg = SharedMemoryRegistry()
    reg.register("a", _key(obj), 64, 1024)
    values = np.arange(16, dtype=np.float32)
    obj.buf[128:192] = values.tobytes()
    with reg.scope() as scope:
        params: dict[str, bool | int | float | str] = {
            "shared_memory_region": "a", "shared_memory_offset": 64,
            "shared_memory_byte_size": 64}
        arr = scope.input_array("x", "FP32", (4, 4), params)
        assert arr is not None and params == {}
        np.testing.assert_array_equal(arr.ravel(), values)
        obj.buf[128:132] = np.float32(42).tobytes()  # no copy: the array sees the change
        assert arr[0, 0] == 42
        with pytest.raises(InvalidInput, match="does not match the tensor"):
            scope.input_array("x", "FP32", (4, 4), {"shared_memory_region": "a",
                                                    "shared_memory_byte_size": 32})
        with pytest.raises(InvalidInput, match="Invalid offset"):
            scope.input_array("x", "FP32", (4, 4), {"shared_memory_region": "a",
                                                    "shared_memory_offset": 1000,
                                                    "shared_memory_byte_size": 64})
        del arr


def test_outputs_are_written_into_the_region(obj: shared_memory.SharedMemory) -> None:
    reg = SharedMemoryRegistry()
    reg.register("out", _key(obj), 0, 256)
    y = np.arange(8, dtype=np.int64).reshape(2, 4)
    with reg.scope() as scope:
        assert scope.take_output("y", {"shared_memory_region": "out",
                                       "shared_memory_offset": 8,
                                       "shared_memory_byte_size": 64})
        response = InferResponse("m", "1", [Tensor("y", "INT64", (2, 4), y)])
        scope.write_outputs(response)
    got = np.frombuffer(obj.buf[8:72], dtype=np.int64).reshape(2, 4)
    np.testing.assert_array_equal(got, y)
    assert response.outputs[0].parameters["shared_memory_byte_size"] == 64


def test_unregistered_while_in_use_stays_valid_until_released(
        obj: shared_memory.SharedMemory) -> None:
    reg = SharedMemoryRegistry()
    reg.register("a", _key(obj), 0, 64)
    obj.buf[:4] = np.int32(7).tobytes()
    scope = reg.scope()
    arr = scope.input_array("x", "INT32", (16,), {"shared_memory_region": "a",
                                                  "shared_memory_byte_size": 64})
    assert arr is not None
    region = scope._held["a"]
    reg.unregister()
    # The name is gone (and free again) at once; the request's view still reads the region.
    with pytest.raises(RegionNotFound):
        reg.acquire("a")
    reg.register("a", _key(obj), 0, 8)
    assert arr[0] == 7 and not region._map.closed
    del arr
    scope.release()
    assert region._map.closed
    reg.unregister()


def test_a_shrunk_object_is_refused(obj: shared_memory.SharedMemory) -> None:
    reg = SharedMemoryRegistry()
    reg.register("a", _key(obj), 0, 4096)
    os.truncate("/dev/shm/" + obj.name.lstrip("/"), 1024)
    with pytest.raises(InvalidInput, match="shrank"), reg.scope() as scope:
        scope.input_array("x", "UINT8", (8,), {"shared_memory_region": "a",
                                               "shared_memory_byte_size": 8})
    reg.unregister()
