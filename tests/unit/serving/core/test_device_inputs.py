"""Inputs from CUDA shared-memory regions through the service: a backend that takes host arrays
gets one host copy of each, a backend that takes device inputs gets them where they lie.

The device is the fake of tests/helpers/fake_cuda.py (host bytes behind the opener), so this
proves the routing: which backend sees a view, which a copy, and how a batch of views is
passed on. What the GPU backend does with a view (``torch.as_tensor`` on the device) runs only on
a GPU: tests/integration/test_cuda_shared_memory.py::test_torchscript_on_the_gpu_reads_cuda_inputs_in_place.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from serving.backends.base import DeviceParts, on_gpu
from serving.core.metrics import Metrics
from serving.core.repository import ModelRepository
from serving.core.service import InferenceService
from serving.core.shm import SharedMemoryRegistry
from serving.core.types import InferRequest, Tensor
from serving.store import read_model_spec
from tests.helpers.fake_cuda import HANDLE, FakeBuffer, FakeOpener
from tests.unit.serving.conftest import tiny_reference

ITEM = 16 * 4  # one 1x4x4 FP32 image of the tiny models


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 4, 4)).astype(np.float32)


async def _service(store: Path) -> tuple[InferenceService, FakeBuffer]:
    service = InferenceService(ModelRepository(store, reader=read_model_spec, device="cpu"),
                               Metrics(CollectorRegistry(), gpu=False), server_version="9.9")
    opener = FakeOpener(extent=64 * ITEM)
    service.shared_memory = SharedMemoryRegistry(cuda=opener)
    service.shared_memory.register_cuda("g", HANDLE, 0, 64 * ITEM)
    await service.start()
    return service, opener.opened[0]


async def _infer_from_region(service: InferenceService, model: str, buf: FakeBuffer,
                             x: np.ndarray, slot: int) -> np.ndarray:
    """What a transport does with an input that names the region: decode it, infer."""
    offset = slot * 4 * ITEM
    buf.mem[offset:offset + x.nbytes] = x.view(np.uint8).reshape(-1)
    with service.shared_memory.scope() as scope:
        data = scope.input_array("input", "FP32", x.shape, {
            "shared_memory_region": "g", "shared_memory_offset": offset,
            "shared_memory_byte_size": x.nbytes})
        assert data is not None
        response = await service.infer(InferRequest(model, [Tensor("input", "FP32", x.shape,
                                                                   data)]))
    return next(t.data for t in response.outputs if t.name == "logits")


def test_a_host_backend_gets_one_host_copy_of_each_input(tiny_store: Path) -> None:
    async def main() -> None:
        service, buf = await _service(tiny_store)
        try:
            xs = [_images(2, seed) for seed in range(6)]
            results = await asyncio.gather(*[
                _infer_from_region(service, "tiny", buf, x, i) for i, x in enumerate(xs)])
            for x, logits in zip(xs, results, strict=True):
                np.testing.assert_allclose(logits, tiny_reference(x), rtol=1e-5, atol=1e-5)
            assert len(buf.read_threads) == len(xs)  # one device -> host copy each
        finally:
            await service.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_a_device_backend_gets_the_views_and_a_batch_of_them_as_parts(
        tiny_store: Path) -> None:
    seen: list[Any] = []

    async def main() -> None:
        service, buf = await _service(tiny_store)
        try:
            loaded = service.resolve("tiny_ts", "")
            for backend in loaded.backends:
                real_run = backend.run

                def run(inputs: dict[str, np.ndarray], outputs: list[str],
                        real_run: Any = real_run) -> dict[str, np.ndarray]:
                    # Stands in for the GPU backend: records what it was given, then runs
                    # the model on a host copy.
                    seen.append(inputs["input"])
                    reads_before = len(buf.read_threads)
                    host = {"input": np.asarray(inputs["input"])}
                    assert len(buf.read_threads) > reads_before
                    return real_run(host, outputs)

                backend.run = run  # type: ignore[method-assign,assignment]
                backend.takes_device_inputs = True
            assert loaded.takes_device_inputs
            xs = [_images(1, seed) for seed in range(12)]
            results = await asyncio.gather(*[
                _infer_from_region(service, "tiny_ts", buf, x, i) for i, x in enumerate(xs)])
            for x, logits in zip(xs, results, strict=True):
                np.testing.assert_allclose(logits, tiny_reference(x), rtol=1e-5, atol=1e-5)
        finally:
            await service.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert seen and all(on_gpu(s) or isinstance(s, DeviceParts) for s in seen)
    assert any(isinstance(s, DeviceParts) for s in seen), "12 concurrent requests never batched"
    parts = [s for s in seen if isinstance(s, DeviceParts)]
    assert all(on_gpu(p) for s in parts for p in s.parts)
    assert sum(s.shape[0] if isinstance(s, DeviceParts) else 1 for s in seen) == 12
