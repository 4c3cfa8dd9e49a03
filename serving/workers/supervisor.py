"""The supervisor: N worker processes behind one set of ports, one consistent server.

The supervisor reserves the HTTP, gRPC and management ports (bound with ``SO_REUSEPORT``, never
listening, so they stay ours while workers come and go), materialises the store's ``.mar``
archives once, serves ``/metrics`` (every worker's exposition added up) and keeps the workers:

- readiness: each worker answers the health routes itself, true only while the supervisor says
  every worker is ready;
- a worker that exits is logged with its cause (and the model it was loading), counted in
  ``capserve_worker_exits_total`` and started again: at once when it had been serving, with a
  doubling back-off (up to 30 s) when it keeps dying before it serves;
- model control is applied on every worker, one operation at a time, before the client gets its
  answer; when a worker refuses a load the others unload it again, so all end the same; the
  operations are kept in order and replayed to a replacement before it opens its ports;
- SIGTERM/SIGINT: readiness false at once, every worker drains within the grace period, exit 0;
  a second signal kills the workers and exits 1.

It imports no model runtime and no gRPC: it stays small and cannot be taken down by a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)

from serving.backends.devices import cuda_device_count
from serving.core.gpu import GpuCollector
from serving.core.host_metrics import HostCollector
from serving.core.metrics import plain_numbers
from serving.errors import InvalidInput
from serving.settings import Settings
from serving.signals import stop_on_signals
from serving.transport.http_listener import HttpListener, reuse_port_socket
from serving.transport.metrics_http import create_metrics_app
from serving.workers import BIND_FIRST_ENV, SETTINGS_ENV, SOCKET_ENV
from serving.workers.board import LoadBoard, board_path
from serving.workers.channel import LINE_LIMIT, Channel, ChannelClosed
from serving.workers.metrics_merge import MergedCollector, merge_expositions
from serving.workers.oplog import ControlLog

logger = logging.getLogger("serving.supervisor")

MAX_BACKOFF_S = 30.0
ADMIT_TIMEOUT_S = 600.0  # replaying model control on a replacement loads models
SCRAPE_TIMEOUT_S = 5.0


@dataclass
class WorkerSlot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    admitted: bool = False  # serves the same models as the others; counts for readiness
    loading: str = ""  # the model it was loading last (named when it dies on a load)
    started_at: float = 0.0
    early_deaths: int = 0  # deaths in a row before it ever served
    generation: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


def exit_cause(returncode: int) -> tuple[str, str]:
    """(metric label, log text) for a worker's exit status."""
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else \
            f"signal {-returncode}"
        text = f"killed by {name}"
        if name == "SIGKILL":
            text += " (kill -9 or the kernel's out-of-memory killer)"
        return f"signal:{name}", text
    return f"exit:{returncode}", f"exited with status {returncode}"


def resolve_workers(settings: Settings) -> int:
    """``--workers``: a count, or ``auto``: one per visible GPU when models run on CUDA, else
    one per core this process may run on."""
    if settings.workers != "auto":
        return int(settings.workers)
    if settings.device != "cpu":
        gpus = visible_gpus()
        if gpus:
            return gpus
    return usable_cores()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def visible_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return cuda_device_count()


class Supervisor:
    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.slots = [WorkerSlot(i) for i in range(workers)]
        self._stop_event = asyncio.Event()
        self._gpus = visible_gpus() if settings.device in ("auto", "cuda") else 0
        self._published_ready: bool | None = None
        self._control_lock = asyncio.Lock()
        self._oplog = ControlLog()
        self._rundir = Path(tempfile.mkdtemp(prefix="capserve-run-"))
        LoadBoard.create(board_path(self._rundir), workers)
        self._board = LoadBoard.attach(board_path(self._rundir))
        self._reserved: list[socket.socket] = []
        self._ports: dict[str, int] = {}
        disable_created_metrics()  # no ``_created`` twin for every counter
        self.registry = CollectorRegistry()
        self._exits = Counter("capserve_worker_exits", "Worker processes that exited and were "
                              "replaced, by cause", ["cause"], registry=self.registry)
        self._ready_gauge = Gauge("capserve_workers_ready", "Worker processes serving",
                                  registry=self.registry)
        Gauge("capserve_workers", "Worker processes configured",
              registry=self.registry).set(workers)
        # The machine's gauges describe the host, not a worker: reported once, here.
        self.registry.register(HostCollector())
        self._gpu = GpuCollector.create()
        if self._gpu is not None:
            self.registry.register(self._gpu)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._merged: list[Any] = []
        self._metrics_listener: HttpListener | None = None

    # -- start -------------------------------------------------------------------------------

    def _reserve(self) -> None:
        s = self.settings
        for kind, host, port in (("http", s.host, s.http_port), ("grpc", s.host, s.grpc_port),
                                 ("management", s.management_host, s.management_port)):
            sock = reuse_port_socket(host, port)
            self._reserved.append(sock)
            self._ports[kind] = sock.getsockname()[1]

    def _materialize_archives(self) -> Path:
        """The store's archives, extracted once for every worker (they only read them)."""
        from serving.archives.mar import ArchiveLimits
        from serving.archives.materialize import materialize_archives

        cache = self._rundir / "archives"
        cache.mkdir()
        materialize_archives(Path(self.settings.model_store), cache, ArchiveLimits(),
                             self.settings.allow_archive_code)
        return cache

    def _worker_settings(self, slot: WorkerSlot, cache: Path) -> str:
        data = self.settings.model_dump(mode="json")
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        cores = max(1, usable_cores() // len(self.slots))
        if "image_workers" not in self.settings.model_fields_set:
            data["image_workers"] = max(1, min(4, cores))  # the decode pool shares out too
        if self.settings.pin_workers and len(cpus) >= len(self.slots):
            mine = cpus[slot.index * cores:(slot.index + 1) * cores]
            data["worker_cpus"] = ",".join(str(c) for c in mine)
        data.update(
            workers="1", worker_id=slot.index, worker_cores=cores,
            archive_cache_dir=str(cache), peer_dir=str(self._rundir), http_port=self._ports["http"],
            grpc_port=self._ports["grpc"], management_port=self._ports["management"],
        )
        if self._gpus > 1:
            data["device"] = f"cuda:{slot.index % self._gpus}"
        return json.dumps(data)

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        stop = stop_on_signals(on_second=self._kill_all)
        control = None
        try:
            self._reserve()
            cache = await asyncio.to_thread(self._materialize_archives)
            control = await asyncio.start_unix_server(
                self._on_connect, path=str(self._rundir / "control.sock"), limit=LINE_LIMIT)
            self._metrics_listener = HttpListener(
                "metrics", create_metrics_app(self.exposition), self.settings.host,
                self.settings.metrics_port, self.settings.shutdown_grace_seconds)
            metrics = await self._metrics_listener.start()
            self._announce(metrics.url)
            monitors = [asyncio.create_task(self._keep(slot, cache)) for slot in self.slots]
            await stop.wait()
            await self._shutdown(monitors)
            return 0
        except OSError as exc:  # a port in use, an unreadable store
            print(f"capserve: cannot start: {exc}", file=sys.stderr, flush=True)
            self._kill_all()
            return 1
        finally:
            if control is not None:
                control.close()
            if self._metrics_listener is not None:
                with contextlib.suppress(Exception):
                    await self._metrics_listener.stop()
            for sock in self._reserved:
                sock.close()
            shutil.rmtree(self._rundir, ignore_errors=True)

    def _announce(self, metrics_url: str) -> None:
        s, p = self.settings, self._ports
        grpc_host = s.host if ":" not in s.host else f"[{s.host}]"
        print(f"capserve: supervisor of {len(self.slots)} workers", flush=True)
        print(f"capserve: HTTP listening on http://{s.host}:{p['http']}", flush=True)
        print(f"capserve: gRPC listening on {grpc_host}:{p['grpc']}", flush=True)
        print(f"capserve: metrics listening on {metrics_url}", flush=True)
        print(f"capserve: management listening on http://{s.management_host}:"
              f"{p['management']}", flush=True)

    # -- the workers' lives ------------------------------------------------------------------

    async def _spawn(self, slot: WorkerSlot, cache: Path) -> None:
        env = {**os.environ, SETTINGS_ENV: self._worker_settings(slot, cache),
               SOCKET_ENV: str(self._rundir / "control.sock"),
               BIND_FIRST_ENV: "1" if slot.generation == 0 else "0"}
        slot.admitted, slot.loading, slot.channel = False, "", None
        slot.started_at = time.monotonic()
        # Its own session: a Ctrl-C in the terminal reaches the supervisor only, which then
        # drains the workers in order instead of each one racing its own signal.
        slot.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving.workers.worker", env=env, start_new_session=True)
        logger.info("worker %d started (pid %d)", slot.index, slot.proc.pid)

    async def _keep(self, slot: WorkerSlot, cache: Path) -> None:
        while not self._stop_event.is_set():
            await self._spawn(slot, cache)
            assert slot.proc is not None
            returncode = await slot.proc.wait()
            self._board.reset(slot.index)  # its peers stop sending it work
            was_admitted = slot.admitted
            slot.admitted, slot.channel = False, None
            await self._publish_ready()
            if self._stop_event.is_set():
                return
            label, text = exit_cause(returncode)
            self._exits.labels(cause=label).inc()
            slot.early_deaths = 0 if was_admitted else slot.early_deaths + 1
            delay = 0.0 if was_admitted else min(MAX_BACKOFF_S, 0.5 * 2 ** slot.early_deaths)
            where = f" while loading model '{slot.loading}'" if slot.loading else ""
            logger.error("worker %d (pid %d) %s%s after %.1f s; starting it again in %.1f s",
                         slot.index, slot.proc.pid, text, where,
                         time.monotonic() - slot.started_at, delay)
            slot.generation += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), delay)

    async def _shutdown(self, monitors: list[asyncio.Task[None]]) -> None:
        self._stop_event.set()  # also ends a worker's back-off wait: it is not started again
        await self._publish_ready()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGTERM)
        grace = self.settings.shutdown_grace_seconds
        done, pending = await asyncio.wait(monitors, timeout=grace + 10)
        if pending:
            logger.error("%d workers did not stop within the grace period; killing them",
                         len(pending))
            self._kill_all()
            await asyncio.wait(pending, timeout=5)
        logger.info("stopped")

    def _kill_all(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()

    # -- the control channel -----------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        mine: list[WorkerSlot] = []

        async def handler(method: str, params: dict[str, Any]) -> Any:
            if method == "hello":
                slot = self.slots[int(params["worker"])]
                if slot.proc is None or slot.proc.pid != int(params["pid"]):
                    raise InvalidInput("unknown worker")
                slot.channel = channel
                mine.append(slot)
                return None
            if not mine:
                raise InvalidInput("say hello first")
            return await self._from_worker(mine[0], method, params)

        channel = Channel(reader, writer, handler)
        channel.start()
        await channel.wait_closed()

    async def _from_worker(self, slot: WorkerSlot, method: str, params: dict[str, Any]) -> Any:
        if method == "loading":
            slot.loading = str(params["model"])
            logger.info("worker %d loading model '%s'", slot.index, slot.loading)
        elif method == "loaded":
            slot.loading = ""
            task = asyncio.create_task(self._admit(slot))
            slot.tasks.add(task)
            task.add_done_callback(slot.tasks.discard)
        elif method == "control":
            await self._control(str(params["op"]), dict(params["params"]))
        elif method == "gather":
            return await self._gather(slot, str(params["what"]), dict(params["params"]))
        return None

    async def _admit(self, slot: WorkerSlot) -> None:
        """Bring a loaded worker level with the others (the control operations since the start),
        then count it as serving."""
        channel = slot.channel
        if channel is None:
            return
        async with self._control_lock:
            try:
                await channel.call("replay", timeout=ADMIT_TIMEOUT_S, ops=self._oplog.entries)
            except (ChannelClosed, TimeoutError) as exc:
                logger.error("worker %d could not catch up: %s", slot.index, exc)
                return
            slot.admitted = True
            slot.early_deaths = 0
        logger.info("worker %d serving (%d control operations replayed)", slot.index,
                    len(self._oplog.entries))
        await self._publish_ready(force=True)

    async def _control(self, op: str, params: dict[str, Any]) -> None:
        async with self._control_lock:
            refusal = self._oplog.refusal(op, params)
            if refusal is not None:
                raise refusal
            targets = [s for s in self.slots if s.admitted and s.channel is not None]
            failure = await self._fan_out(targets, op, params)
            if failure is None:
                self._oplog.record(op, params)
                return
            # All end the same: what one worker refused is taken back on the others.
            undo = self._oplog.undo(op, params)
            if undo is None:
                raise failure
            await self._fan_out(targets, *undo)
            self._oplog.record(*undo)
            raise failure

    async def _fan_out(self, targets: list[WorkerSlot], op: str,
                       params: dict[str, Any]) -> Exception | None:
        calls = [s.channel.call("apply", timeout=ADMIT_TIMEOUT_S, op=op, params=params)
                 for s in targets if s.channel is not None]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for slot, result in zip(targets, results, strict=False):
            # A worker that died meanwhile is replaced and replays the log: not a failure.
            if isinstance(result, Exception) and not isinstance(result, ChannelClosed):
                logger.error("worker %d refused %s of '%s': %s", slot.index, op,
                             params.get("name"), result)
                return result
        return None

    async def _gather(self, asker: WorkerSlot, what: str, params: dict[str, Any]) -> list[Any]:
        if what not in ("statistics", "descriptions"):
            raise InvalidInput(f"cannot gather '{what}'")
        others = [s for s in self.slots if s is not asker and s.channel is not None]
        calls = [s.channel.call(what, timeout=10.0, **params)
                 for s in others if s.channel is not None]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return [r for r in results if not isinstance(r, BaseException)]

    async def _publish_ready(self, force: bool = False) -> None:
        ready = not self._stop_event.is_set() and all(s.admitted for s in self.slots)
        self._ready_gauge.set(sum(s.admitted for s in self.slots))
        if ready == self._published_ready and not force:
            return
        self._published_ready = ready
        for slot in self.slots:
            if slot.channel is not None:
                await slot.channel.notify("cluster_ready", ready=ready)

    # -- metrics -----------------------------------------------------------------------------

    async def _scrape(self) -> dict[str, str]:
        slots = [s for s in self.slots if s.channel is not None and s.admitted]
        calls = [s.channel.call("metrics", timeout=SCRAPE_TIMEOUT_S)
                 for s in slots if s.channel is not None]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return {str(s.index): r for s, r in zip(slots, results, strict=False)
                if isinstance(r, str)}

    def exposition(self) -> bytes:
        """Runs on a thread of the metrics listener: asks every worker, adds them up."""
        assert self._loop is not None
        texts = asyncio.run_coroutine_threadsafe(self._scrape(), self._loop).result(
            SCRAPE_TIMEOUT_S + 1)
        workers = CollectorRegistry()
        merged = merge_expositions(texts)
        workers.register(MergedCollector(lambda: merged))
        return plain_numbers(generate_latest(self.registry) + generate_latest(workers))


def run_supervisor(settings: Settings, workers: int) -> int:
    supervisor = Supervisor(settings, workers)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(supervisor.run())
    return uvloop.run(supervisor.run())
