"""Daemon threads for blocking model work: instance executors and detached loads.

``concurrent.futures.ThreadPoolExecutor`` and ``asyncio.to_thread`` both join their threads at
interpreter exit (and ``asyncio.run`` waits for its default executor), so one backend call that
never returns would keep a SIGTERMed server alive forever. These threads are daemons: a caller
that gives up on one (a watchdog, a bounded close or load) can abandon it and the process still
exits.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


def _run_job(job: _Job) -> None:
    future, fn, args = job
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args)
    except BaseException as exc:  # the waiting side decides what an error means
        future.set_exception(exc)
    else:
        future.set_result(result)


class InstanceWorker:
    """One daemon thread that runs the jobs of one model instance, in order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        with self._lock:  # the thread starts on first use: building a batcher starts nothing
            if not self._started:
                self._thread.start()
                self._started = True
        future: Future[T] = Future()
        self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        """Let the thread end after its current job; never waits for it."""
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            _run_job(job)


def run_detached(fn: Callable[..., T], *args: Any, name: str) -> asyncio.Future[T]:
    """Run ``fn(*args)`` on a new daemon thread; the awaitable may be abandoned (e.g. by
    ``asyncio.wait_for``) while the call goes on."""
    future: Future[T] = Future()
    threading.Thread(target=_run_job, args=((future, fn, args),), name=name, daemon=True).start()
    return asyncio.wrap_future(future)
