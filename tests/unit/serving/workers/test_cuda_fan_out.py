"""CUDA shared-memory registrations with worker processes: a region registered through one
worker is opened by every worker, refused names and failed opens leave nothing open anywhere,
and what a replacement replays opens it again.

The supervisor and two worker cores are real and talk over real control channels (socket
pairs, the same framing as between processes); only the device is a stand-in
(tests/helpers/fake_cuda.py), so this proves the fan-out and bookkeeping, not the CUDA calls:
those run on a GPU in tests/integration/test_cuda_shared_memory.py.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from serving.core.limits import ServiceLimits
from serving.core.metrics import Metrics
from serving.core.repository import ModelRepository
from serving.core.shm import RegionNotFound, SharedMemoryRegistry
from serving.errors import AlreadyExists, InvalidInput
from serving.settings import Settings
from serving.store import read_model_spec
from serving.workers.channel import Channel
from serving.workers.supervisor import Supervisor
from serving.workers.worker import WorkerService, _handle
from tests.helpers.fake_cuda import HANDLE, FakeOpener

Body = Callable[[Supervisor, list[WorkerService], list[FakeOpener]], Awaitable[None]]


async def _channel_pair(a: Callable[[str, dict[str, Any]], Awaitable[Any]],
                        b: Callable[[str, dict[str, Any]], Awaitable[Any]]
                        ) -> tuple[Channel, Channel]:
    left, right = socket.socketpair()
    channels = []
    for sock, handler in ((left, a), (right, b)):
        reader, writer = await asyncio.open_connection(sock=sock)
        channel = Channel(reader, writer, handler)
        channel.start()
        channels.append(channel)
    return channels[0], channels[1]


def _worker(store: Path, opener: FakeOpener) -> WorkerService:
    repo = ModelRepository(store, reader=read_model_spec, device="cpu", limits=ServiceLimits())
    service = WorkerService(repo, Metrics(CollectorRegistry(), gpu=False), server_version="9.9")
    service.shared_memory = SharedMemoryRegistry(cuda=opener)
    return service


def with_workers(tmp_path: Path, openers: list[FakeOpener], body: Body) -> None:
    store = tmp_path / "store"
    store.mkdir()

    async def main() -> None:
        supervisor = Supervisor(Settings(model_store=store), len(openers))
        workers = [_worker(store, opener) for opener in openers]
        links: list[Channel] = []
        try:
            for slot, service in zip(supervisor.slots, workers, strict=True):
                async def from_worker(method: str, params: dict[str, Any],
                                      slot: Any = slot) -> Any:
                    return await supervisor._from_worker(slot, method, params)

                async def from_supervisor(method: str, params: dict[str, Any],
                                          service: WorkerService = service) -> Any:
                    return await _handle(None, service, method, params)  # type: ignore[arg-type]

                to_worker, to_supervisor = await _channel_pair(from_worker, from_supervisor)
                slot.channel, slot.admitted = to_worker, True
                service.link(to_supervisor)
                links += [to_worker, to_supervisor]
            await body(supervisor, workers, openers)
        finally:
            for channel in links:
                await channel.close()
            shutil.rmtree(supervisor._rundir, ignore_errors=True)

    asyncio.run(asyncio.wait_for(main(), timeout=30))


def test_a_region_registered_through_one_worker_is_open_on_every_worker(
        tmp_path: Path) -> None:
    async def body(sup: Supervisor, workers: list[WorkerService],
                   openers: list[FakeOpener]) -> None:
        await workers[0].register_cuda_shared_memory("g", HANDLE, 0, 1024)
        for service, opener in zip(workers, openers, strict=True):
            assert opener.handles == [HANDLE]  # each worker opened the client's own handle
            (status,) = service.shared_memory.cuda_status("g")
            assert (status.device_id, status.byte_size) == (0, 1024)
        # The same name through the other worker, as either kind: Triton's duplicate answer,
        # and nothing more is opened.
        with pytest.raises(AlreadyExists, match="'g' already in manager"):
            await workers[1].register_cuda_shared_memory("g", HANDLE, 0, 64)
        assert [len(o.handles) for o in openers] == [1, 1]
        await workers[1].unregister_cuda_shared_memory("g")
        for service, opener in zip(workers, openers, strict=True):
            assert opener.opened[0].closed == 1
            with pytest.raises(RegionNotFound):
                service.shared_memory.cuda_status("g")
        assert sup._oplog.entries == []  # a replacement has nothing to replay
    with_workers(tmp_path, [FakeOpener(), FakeOpener()], body)


def test_a_region_one_worker_cannot_open_is_closed_on_the_others(tmp_path: Path) -> None:
    async def body(sup: Supervisor, workers: list[WorkerService],
                   openers: list[FakeOpener]) -> None:
        with pytest.raises(InvalidInput, match="exceeds the 512 bytes of the device allocation"):
            await workers[0].register_cuda_shared_memory("g", HANDLE, 0, 1024)
        assert openers[0].opened[0].closed == 1  # opened by the first, taken back
        assert all(s.shared_memory.cuda_status() == [] for s in workers)
        assert sup._oplog.entries == []
        await workers[0].register_cuda_shared_memory("g", HANDLE, 0, 256)  # the name is free
        assert all(len(s.shared_memory.cuda_status()) == 1 for s in workers)
    with_workers(tmp_path, [FakeOpener(extent=4096), FakeOpener(extent=512)], body)


def test_bad_requests_are_refused_before_any_worker_opens_anything(tmp_path: Path) -> None:
    async def body(sup: Supervisor, workers: list[WorkerService],
                   openers: list[FakeOpener]) -> None:
        with pytest.raises(InvalidInput, match="raw_handle must be the 64 bytes"):
            await workers[1].register_cuda_shared_memory("g", b"short", 0, 64)
        with pytest.raises(InvalidInput, match="byte_size must be > 0"):
            await workers[1].register_cuda_shared_memory("g", HANDLE, 0, 0)
        assert [o.handles for o in openers] == [[], []]
    with_workers(tmp_path, [FakeOpener(), FakeOpener()], body)


def test_without_a_device_register_says_so_and_nothing_fans_out(tmp_path: Path) -> None:
    async def body(sup: Supervisor, workers: list[WorkerService],
                   openers: list[FakeOpener]) -> None:
        with pytest.raises(InvalidInput, match="CUDA shared memory requires a GPU"):
            await workers[0].register_cuda_shared_memory("g", HANDLE, 0, 64)
        assert openers[1].handles == [] and sup._oplog.entries == []
        await workers[0].unregister_cuda_shared_memory()  # all: works with nothing there
    with_workers(tmp_path, [FakeOpener(devices=0), FakeOpener(devices=0)], body)


def test_a_replacement_opens_the_regions_by_replaying_the_log(tmp_path: Path) -> None:
    async def body(sup: Supervisor, workers: list[WorkerService],
                   openers: list[FakeOpener]) -> None:
        await workers[0].register_cuda_shared_memory("g", HANDLE, 1, 2048)
        fresh_opener = FakeOpener(devices=2)
        fresh = _worker(tmp_path / "store", fresh_opener)
        for entry in sup._oplog.entries:  # what "replay" applies, over the channel's JSON
            await fresh.apply(entry["op"], entry["params"])
        assert fresh_opener.handles == [HANDLE]
        (status,) = fresh.shared_memory.cuda_status("g")
        assert (status.device_id, status.byte_size) == (1, 2048)
    with_workers(tmp_path, [FakeOpener(devices=2), FakeOpener(devices=2)], body)
