"""A custom-handler model: its handler processes and the dynamic batcher that feeds them.

Each handler process is one TorchServe "worker" (``minWorkers`` of them per model, in every
capserve worker process that serves). A batch that makes its handler raise fails with
TorchServe's 503 "Prediction failed"; one that outlives ``responseTimeout`` or whose process
dies fails with TorchServe's 500 "Worker died.", and that process is killed (its whole process
group) and started again for the next batch. Either way the other batches, the other processes
and the server go on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.batching.batcher import DynamicBatcher
from serving.batching.policy import BatchPolicy, QueuePolicy
from serving.errors import FailureReason
from serving.handlers.process import FD_ENV, SPEC_ENV

if TYPE_CHECKING:
    from serving.core.metrics import Metrics

log = logging.getLogger(__name__)
_FAILED = "Worker died."
# Where ``serving`` itself is imported from, so the handler process finds it from any folder.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(slots=True)
class Param:
    name: str
    content_type: str
    value: bytes


@dataclass(slots=True)
class HandlerRequest:
    id: str
    headers: list[tuple[str, str]]
    params: list[Param]


@dataclass(slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def error_answer(code: int, message: str) -> Answer:
    """TorchServe's error JSON for a failed prediction."""
    kind = "InternalServerException" if code >= 500 else "BadRequestException"
    body = json.dumps({"code": code, "type": kind, "message": message}, indent=2).encode()
    return Answer(code, "application/json", body)


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    model_name: str
    model_dir: Path
    handler: str
    batch_size: int
    envelope: str = ""
    start_timeout_s: float = 120.0
    response_timeout_s: float = 120.0
    max_response_bytes: int = 64 << 20


class HandlerProcess:
    """One handler process, started on first use and again after it failed."""

    def __init__(self, spec: HandlerSpec, index: int) -> None:
        self.spec = spec
        self.name = f"{spec.model_name}-{index}"
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self.restarts = 0
        self.load_error = ""
        self.started_at = 0.0  # epoch seconds of the last successful start
        self._closed = False
        self._ready = False  # the handler answered that it loaded

    @property
    def pid(self) -> int:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else 0

    @property
    def status(self) -> str:
        """TorchServe's worker states: READY, UNLOADED (down, started again on demand)."""
        return "READY" if self._ready and self.pid else "UNLOADED"

    def _start(self) -> None:
        parent, child = socket.socketpair()
        spec = {"model_name": self.spec.model_name, "model_dir": str(self.spec.model_dir),
                "handler": self.spec.handler, "batch_size": self.spec.batch_size,
                "envelope": self.spec.envelope}
        env = {**os.environ, FD_ENV: str(child.fileno()), SPEC_ENV: json.dumps(spec),
               "PYTHONPATH": os.pathsep.join(filter(None, [
                   str(self.spec.model_dir), _PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "serving.handlers.process"], env=env,
                pass_fds=[child.fileno()], cwd=self.spec.model_dir, start_new_session=True)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        if not self._conn.poll(self.spec.start_timeout_s):
            self._kill()
            raise RuntimeError(f"did not initialize within {self.spec.start_timeout_s:g} s "
                               "(handler_start_timeout_seconds)")
        try:
            hello = json.loads(self._conn.recv_bytes(1 << 16))
        except (EOFError, OSError, ValueError):
            self._kill()
            raise RuntimeError("exited while loading its handler") from None
        if not hello.get("ready"):
            self._kill()
            raise RuntimeError(str(hello.get("error", "the handler failed to load"))[:500])
        self.started_at = time.time()
        self._ready = True
        log.info("handler process %s ready (pid %d)", self.name, self._proc.pid)

    def _kill(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self._ready = False
        if conn is not None:
            conn.close()
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the handler's own children too
        proc.wait()

    def revive_if_dead(self) -> None:
        """Start a process that died while idle again in the background (one that dies in a
        batch is restarted by ``run``), so health checks do not wait for a request."""
        proc = self._proc
        if (proc is not None and proc.poll() is not None and not self._closed
                and not self._lock.locked()):
            threading.Thread(target=_quiet_start, args=(self,), daemon=True,
                             name=f"restart-{self.name}").start()

    def ensure_started(self) -> None:
        with self._lock:
            self._ensure()

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._closed:
            raise RuntimeError("the server is stopping")
        if self._proc is not None:
            log.warning("handler process %s exited with %s; starting it again", self.name,
                        self._proc.returncode)
            self.restarts += 1
        self._kill()
        try:
            self._start()
            self.load_error = ""
        except (OSError, RuntimeError) as exc:
            self.load_error = str(exc)
            log.error("handler process %s of model '%s': %s", self.name,
                      self.spec.model_name, exc)
            raise

    def run(self, requests: list[HandlerRequest]) -> list[Answer]:
        with self._lock:
            try:
                self._ensure()
            except (OSError, RuntimeError) as exc:
                return [error_answer(503, f"Model {self.spec.model_name} failed to load: "
                                     f"{exc}")] * len(requests)
            try:
                return self._exchange(requests)
            except (EOFError, OSError, ValueError, TimeoutError) as exc:
                log.error("handler process %s failed its batch of %d: %s; restarting it",
                          self.name, len(requests), exc or type(exc).__name__)
                self._kill()
                self.restarts += 1
                # Started again now, as TorchServe restarts a dead worker, so /ping and the
                # next batch find it ready instead of waiting for its load.
                threading.Thread(target=_quiet_start, args=(self,), daemon=True,
                                 name=f"restart-{self.name}").start()
                return [error_answer(500, _FAILED)] * len(requests)

    def _exchange(self, requests: list[HandlerRequest]) -> list[Answer]:
        conn = self._conn
        assert conn is not None
        header = {"requests": [{"id": r.id, "headers": r.headers, "parameters": [
            {"name": p.name, "content_type": p.content_type} for p in r.params]}
            for r in requests]}
        conn.send_bytes(json.dumps(header).encode())
        for r in requests:
            for p in r.params:
                conn.send_bytes(p.value)
        deadline = time.monotonic() + self.spec.response_timeout_s
        if not conn.poll(self.spec.response_timeout_s):
            raise TimeoutError(f"no answer within responseTimeout "
                               f"{self.spec.response_timeout_s:g} s")
        limit = self.spec.max_response_bytes
        reply = json.loads(conn.recv_bytes(limit))
        if "error" in reply:
            return [error_answer(int(reply["error"]["code"]), str(reply["error"]["message"]))
                    ] * len(requests)
        answers = []
        for meta in reply["answers"][:len(requests)]:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("answer not complete within responseTimeout")
            body = conn.recv_bytes(limit)
            answers.append(Answer(int(meta["status"]), str(meta["content_type"]), body,
                                  dict(meta.get("headers", {}))))
        if len(answers) != len(requests):
            raise ValueError("the handler process answered the wrong number of requests")
        return answers

    def close(self) -> None:
        # Called at shutdown; a run in progress keeps the lock, so do not wait for it.
        self._closed = True
        self._kill()


class HandlerModel:
    """A model served by its archive's handler: processes and their batcher."""

    def __init__(self, spec: HandlerSpec, version: str, workers: int, max_batch_delay_ms: int,
                 queue: QueuePolicy, metrics: Metrics | None = None) -> None:
        self.spec = spec
        self.version = version
        self.max_batch_delay_ms = max(0, max_batch_delay_ms)
        self.max_queue_size = queue.max_queue_size
        self.loaded_at = time.time()
        self.processes = [HandlerProcess(spec, i) for i in range(max(1, workers))]
        self._metrics = metrics
        policy = BatchPolicy(max_batch_size=max(1, spec.batch_size),
                             dynamic=spec.batch_size > 1,
                             max_queue_delay_us=self.max_batch_delay_ms * 1000,
                             default_queue_policy=queue)
        observer = None if metrics is None else _MetricsObserver(metrics, spec.model_name,
                                                                 version)
        self.batcher = DynamicBatcher([self._runner(p) for p in self.processes], policy,
                                      name=spec.model_name, observer=observer)

    def ready(self) -> bool:
        """True while at least one handler process runs its loaded handler."""
        for process in self.processes:
            process.revive_if_dead()
        return any(p.status == "READY" for p in self.processes)

    @staticmethod
    def _runner(process: HandlerProcess) -> Any:
        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            answers = process.run(list(inputs["request"]))
            out = np.empty(len(answers), dtype=object)
            out[:] = answers
            return {"answer": out}
        return run

    def start(self) -> None:
        """Start every process in the background (a first request waits for its own)."""
        for process in self.processes:
            threading.Thread(target=_quiet_start, args=(process,), daemon=True,
                             name=f"start-{process.name}").start()

    async def predict(self, request: HandlerRequest) -> Answer:
        """The handler's answer (an error answer when the handler failed); the batcher's
        errors (queue full, timed out) are raised. Both count in the model's metrics."""
        item = np.empty(1, dtype=object)
        item[0] = request
        started = time.monotonic()
        try:
            result = await self.batcher.submit({"request": item}, 1)
        except Exception as exc:
            self._count_failure(getattr(exc, "reason", FailureReason.BACKEND), started)
            raise
        answer = result.outputs["answer"][0]
        assert isinstance(answer, Answer)
        if answer.status >= 400:
            self._count_failure(FailureReason.INVALID if answer.status < 500
                                else FailureReason.BACKEND, started)
        elif self._metrics is not None:
            self._metrics.request_succeeded(
                self.spec.model_name, self.version, time.monotonic() - started, result.queue_s,
                1, (result.compute_input_s, result.compute_infer_s, result.compute_output_s))
        return answer

    def _count_failure(self, reason: FailureReason, started: float) -> None:
        if self._metrics is not None:
            self._metrics.request_failed(self.spec.model_name, self.version, reason,
                                         time.monotonic() - started)

    def close(self) -> None:
        for process in self.processes:
            process.close()


class _MetricsObserver:
    """The batcher's queue and executions in the model's metrics, as the core counts its own."""

    def __init__(self, metrics: Metrics, name: str, version: str) -> None:
        self._metrics, self._name, self._version = metrics, name, version

    def pending_changed(self, delta: int) -> None:
        self._metrics.pending_changed(self._name, self._version, delta)

    def execution_finished(self, batch_size: int, compute_input_s: float,
                           compute_infer_s: float, compute_output_s: float,
                           traces: Sequence[object] = ()) -> None:
        self._metrics.execution(self._name, self._version, batch_size, compute_input_s,
                                compute_infer_s, compute_output_s)



def _quiet_start(process: HandlerProcess) -> None:
    # A failure is logged; the next request tries again and answers the reason.
    with contextlib.suppress(OSError, RuntimeError):
        process.ensure_started()
