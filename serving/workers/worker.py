"""One worker process of a supervisor (``python -m serving.workers.worker``).

A worker is a whole server (its own batchers and backends) whose HTTP, gRPC and management
listeners share their ports with the other workers (``SO_REUSEPORT``). What must look the same
whichever worker answers goes through the supervisor:

- model control (load, unload, scale, default version) and system and CUDA shared-memory
  registration are sent to the supervisor, which applies them on every worker before the
  client gets its answer;
- statistics add up over the workers;
- readiness is this worker's own and the supervisor's "every worker is ready".

A worker of the first generation opens its listeners before loading (liveness answers while
the store loads, readiness stays false); a replacement opens them only once it serves the same
models as the others, so no client ever reaches a worker that is still loading.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.backends.base import set_core_budget
from serving.core.describe import ModelDescription
from serving.core.service import InferenceService
from serving.core.stats import ModelStats, merge_stats, stats_from_dict, stats_to_dict
from serving.core.types import InferRequest, InferResponse
from serving.errors import InvalidInput, ModelNotFound, ServerNotReady, ServingError
from serving.settings import Settings
from serving.signals import run_and_exit, stop_on_signals
from serving.workers import BIND_FIRST_ENV, SETTINGS_ENV, SOCKET_ENV
from serving.workers.channel import Channel, ChannelClosed, open_channel

if TYPE_CHECKING:
    from serving.core.loaded import LoadedVersion
    from serving.server import Server
    from serving.workers.board import LoadBoard

logger = logging.getLogger("serving.worker")

CONTROL_TIMEOUT_S = 600.0  # a load of every worker may take minutes on a big model


class WorkerService(InferenceService):
    """The core of one worker: model control and statistics span every worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._link: Channel | None = None
        self._local_only = False
        self._cluster_ready = False
        self._board: LoadBoard | None = None
        self._slot = -1

    def link(self, channel: Channel) -> None:
        self._link = channel

    def use_board(self, board: LoadBoard | None, slot: int) -> None:
        """Publish this worker's load on the board its peers read (``board.py``)."""
        self._board, self._slot = board, slot

    def set_cluster_ready(self, ready: bool) -> None:
        self._cluster_ready = ready
        if self._board is not None:  # peers send work only while every worker serves
            self._board.set_open(self._slot, ready and self.locally_ready())

    async def infer(self, request: InferRequest,
                    loaded: LoadedVersion | None = None) -> InferResponse:
        board = self._board
        if board is None:
            return await super().infer(request, loaded)
        board.add_running(self._slot, 1)
        try:
            return await super().infer(request, loaded)
        finally:
            board.add_running(self._slot, -1)

    def server_ready(self) -> bool:
        return self._cluster_ready and super().server_ready()

    async def start(self) -> None:
        # The initial load of the store is this worker's own: every worker loads the same store.
        self._local_only = True
        try:
            await super().start()
        finally:
            self._local_only = False

    # -- model control: through the supervisor, applied on every worker ----------------------

    def locally_ready(self) -> bool:
        return super().server_ready()

    async def load_model(self, name: str) -> None:
        if self._local_only:
            if self._link is not None:  # a worker that dies now is reported with this model
                await self._link.notify("loading", model=name)
            await super().load_model(name)
            return
        if name not in self._repo.names():
            self._repo.scan()
        model_dir = str(self._repo.entry(name).model_dir) if name in self._repo.names() else ""
        await self._control("load", name=name, model_dir=model_dir)

    async def unload_model(self, name: str) -> None:
        self._repo.entry(name)  # an unknown model is this worker's 404, as in one process
        await self._control("unload", name=name)

    async def scale_model(self, name: str, version: str, instances: int) -> None:
        if instances < 1:
            raise InvalidInput(f"instances must be >= 1, got {instances}")
        previous = self._repo.resolve(name, version).batcher.instances
        await self._control("scale", name=name, version=version, instances=instances,
                            previous=previous)

    async def set_default(self, name: str, version: str) -> None:
        self._repo.resolve(name, version)  # refuse an unknown version here, before the fan-out
        await self._control("set_default", name=name, version=version)

    async def register_shared_memory(self, name: str, key: str, offset: int,
                                     byte_size: int) -> None:
        # This worker's checks first: a bad key or slice is refused before any fan-out.
        self.shared_memory.check_register(name, key, offset, byte_size)
        await self._control("shm_register", name=name, key=key, offset=offset,
                            byte_size=byte_size)

    async def unregister_shared_memory(self, name: str = "") -> None:
        await self._control("shm_unregister", name=name)

    async def register_cuda_shared_memory(self, name: str, raw_handle: bytes, device_id: int,
                                          byte_size: int) -> None:
        # Each worker is its own process and opens the handle itself (a CUDA IPC handle opens
        # in any process but the one that made it); a malformed request, or a server without
        # a device, is refused here before any fan-out. On a thread: the first check loads the
        # CUDA runtime and counts devices, which can take a while.
        await asyncio.to_thread(self.shared_memory.check_register_cuda, name, raw_handle,
                                device_id, byte_size)
        await self._control("cuda_register", name=name,
                            raw_handle=base64.b64encode(raw_handle).decode("ascii"),
                            device_id=device_id, byte_size=byte_size)

    async def unregister_cuda_shared_memory(self, name: str = "") -> None:
        await self._control("cuda_unregister", name=name)

    async def _control(self, op: str, **params: Any) -> None:
        if self._link is None or self._link.closed:
            raise ServerNotReady("Server is not ready: model control waits for every worker "
                                 "to start")
        await self._link.call("control", timeout=CONTROL_TIMEOUT_S, op=op, params=params)

    async def apply(self, op: str, params: dict[str, Any]) -> None:
        """Apply one model-control operation to this worker only (the supervisor's fan-out)."""
        name = str(params["name"])
        if op == "load":
            if params.get("model_dir"):
                self._repo.add_model_dir(name, Path(params["model_dir"]))
            await InferenceService.load_model(self, name)
        elif op == "unload":
            await InferenceService.unload_model(self, name)
        elif op == "scale":
            await InferenceService.scale_model(self, name, str(params["version"]),
                                               int(params["instances"]))
        elif op == "set_default":
            InferenceService.set_default_version(self, name, str(params["version"]))
        elif op == "shm_register":
            self.shared_memory.register(name, str(params["key"]), int(params["offset"]),
                                        int(params["byte_size"]))
        elif op == "shm_unregister":
            self.shared_memory.unregister(name)
        elif op == "cuda_register":
            await InferenceService.register_cuda_shared_memory(
                self, name, base64.b64decode(str(params["raw_handle"])),
                int(params["device_id"]), int(params["byte_size"]))
        elif op == "cuda_unregister":
            await InferenceService.unregister_cuda_shared_memory(self, name)
        else:
            raise InvalidInput(f"unknown control operation '{op}'")

    # -- statistics: every worker's counts ----------------------------------------------------

    async def gather_statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        local = self.model_statistics(name, version)  # this worker's errors for bad names
        if self._link is None or self._link.closed:
            return local
        others = await self._link.call("gather", timeout=30.0, what="statistics",
                                       params={"name": name, "version": version})
        parts: dict[tuple[str, str], list[ModelStats]] = {}
        for stats in [*local, *(stats_from_dict(d) for rows in others for d in rows)]:
            parts.setdefault((stats.name, stats.version), []).append(stats)
        return [merge_stats(parts[key]) for key in ((s.name, s.version) for s in local)]

    async def gather_descriptions(self, name: str, version: str = "") -> list[ModelDescription]:
        local = self.describe_model(name, version)
        if self._link is None or self._link.closed:
            return local
        others = await self._link.call("gather", timeout=30.0, what="descriptions",
                                       params={"name": name, "version": version})
        extra: dict[str, list[int]] = {}
        for rows in others:
            for row in rows:
                sums = extra.setdefault(str(row["version"]), [0, 0])
                sums[0] += int(row["instances"])
                sums[1] += int(row["pending_requests"])
        return [dataclasses.replace(d, instances=d.instances + extra[d.version][0],
                                    pending_requests=d.pending_requests + extra[d.version][1])
                if d.ready and d.version in extra else d for d in local]

    def local_descriptions(self, name: str, version: str) -> list[dict[str, Any]]:
        try:
            return [{"version": d.version, "instances": d.instances,
                     "pending_requests": d.pending_requests}
                    for d in self.describe_model(name, version) if d.ready]
        except Exception:  # a model this worker has not loaded counts nothing
            return []

    def local_statistics(self, name: str, version: str) -> list[dict[str, Any]]:
        try:
            return [stats_to_dict(s) for s in self.model_statistics(name, version)]
        except Exception:  # a version this worker has not loaded yet counts nothing
            return []


async def _handle(server: Server, service: WorkerService, method: str,
                  params: dict[str, Any]) -> Any:
    """Calls from the supervisor."""
    if method == "apply":
        await service.apply(str(params["op"]), dict(params["params"]))
        return None
    if method == "replay":  # a replacement catches up with the others, then opens its ports
        for entry in params["ops"]:
            try:
                await service.apply(str(entry["op"]), dict(entry["params"]))
            except ServingError as exc:
                if entry["op"] == "unload" and isinstance(exc, ModelNotFound):
                    continue  # its folder left the store too: not here is what unload asks
                if not str(entry["op"]).startswith(("shm_", "cuda_")):
                    raise
                # The client removed the object (or freed the device allocation) since it
                # registered it: the other workers still map it, this one cannot; its
                # requests get "Unable to find".
                logger.error("shared memory region '%s' cannot be registered on this worker: "
                             "%s", entry["params"].get("name"), exc)
        await _open(server)
        return service.locally_ready()
    if method == "cluster_ready":
        service.set_cluster_ready(bool(params["ready"]))
        return None
    if method == "descriptions":
        return service.local_descriptions(str(params["name"]), str(params.get("version", "")))
    if method == "statistics":
        return service.local_statistics(str(params.get("name", "")),
                                        str(params.get("version", "")))
    if method == "metrics":
        return (await asyncio.to_thread(server.exposition)).decode()
    raise InvalidInput(f"unknown supervisor call '{method}'")


async def _open(server: Server) -> None:
    if not server.listeners:
        await server.open_listeners()


async def run(settings: Settings, socket_path: str, bind_first: bool) -> int:
    from serving.server import build_server

    set_core_budget(settings.worker_cores)
    if settings.worker_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in settings.worker_cpus.split(",")})
    server = build_server(settings, service_class=WorkerService)
    service = server.service
    assert isinstance(service, WorkerService)
    service.use_board(server.board, settings.worker_id)
    stop = stop_on_signals(second_notice="", force_on_second=False)

    async def handler(method: str, params: dict[str, Any]) -> Any:
        return await _handle(server, service, method, params)

    channel = await open_channel(socket_path, handler)
    service.link(channel)
    code = 0
    try:
        await channel.notify("hello", worker=settings.worker_id, pid=os.getpid())
        if bind_first:
            await server.open_listeners()
            await channel.notify("listening")
        load = asyncio.create_task(_load(server, channel))
        ended = asyncio.create_task(_first(stop.wait(), channel.wait_closed()))
        await asyncio.wait({load, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not load.done():
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
        else:
            load.result()
            await ended
        if channel.closed and not stop.is_set():
            logger.error("the supervisor is gone; worker %d stops", settings.worker_id)
    except OSError as exc:
        logger.error("worker %d cannot start: %s", settings.worker_id, exc)
        code = 1
    finally:
        service.set_cluster_ready(False)
        await server.stop()
        await channel.close()
    return code


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _load(server: Server, channel: Channel) -> None:
    await server.service.start()
    with contextlib.suppress(ChannelClosed):
        await channel.notify("loaded", failures=server.service.load_failures())


def main() -> int:
    from serving.allocator import keep_large_buffers
    from serving.logs import configure_logging

    settings = Settings(**json.loads(os.environ[SETTINGS_ENV]))
    keep_large_buffers(settings.heap_buffer_mib)
    configure_logging(settings.log_format, settings.log_level, f"worker {settings.worker_id}")
    bind_first = os.environ.get(BIND_FIRST_ENV) == "1"
    run_and_exit(lambda: run(settings, os.environ[SOCKET_ENV], bind_first))


if __name__ == "__main__":
    sys.exit(main())
