"""The dynamic batcher of one model version (Triton semantics).

Requests wait in one FIFO queue per priority level (level 1 first). A batch starts at the oldest
request of the highest non-empty level and takes every later request with the same non-batch
input shapes and dtypes (other shapes never share a batch and keep their place), up to
``max_batch_size`` (and, when the config sets ``max_batch_elements``, up to that many input
elements: a request over it alone is refused with 400).

When to run (policy; see ``docs/batching.md``). Nothing runs unless an executor (model instance)
is free; while all are busy, arrivals accumulate, so batches fill under load. With a free
executor the head batch is dispatched at once when

1. it reached ``max_batch_size`` or one of ``preferred_batch_size`` (then the largest preferred
   prefix is sent), or
2. ``max_queue_delay_microseconds`` is 0, or its oldest request has waited that long, or
3. it is a lone request: nothing else is queued. An idle model never makes a single caller wait
   out the delay.

4. arrivals have paused: no request came for twice the usual gap between arrivals (an average
   of recent gaps), so holding would only leave the instance idle (e.g. closed-loop clients
   that are all waiting for answers).

Otherwise the batch is small while requests keep arriving: it is held until one of the rules
fires, so the delay bounds the extra wait of any request once an executor is free.

Guarantees: every accepted request gets exactly one answer (its future is always resolved);
scheduling is event driven (arrival, completion, timer) and every step is guarded so no exception
stops it; a caller that goes away frees its queue slot and is not run if still queued; backend
work runs in executor threads, except CPU batches measured faster than the thread hand-off itself
(``inline_below_s``; see ``docs/batching.md``), which run on the event loop; stacking and splitting are numpy calls;
after a run every output's dim 0 must equal the batch size, else every request of that batch fails
with ``BackendError``.

Watchdogs: a batch still running after ``execution_timeout_s`` fails its requests
(``RequestTimeout``, UNAVAILABLE) and its instance is *stuck*: it takes no work until the call
returns, and :attr:`DynamicBatcher.stuck` counts it (the service turns that into liveness and
readiness). ``close`` waits a bounded time, then fails what still runs and abandons the threads
(they are daemons, so a call that never returns cannot keep the process alive). Client-facing
errors of a failing backend are generic and carry the request id; the detail goes to the log.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from serving.batching.clock import Clock, MonotonicClock, TimerHandle
from serving.batching.collate import Arrays, Executed, Runner, execute
from serving.batching.policy import BatchPolicy
from serving.batching.workers import InstanceWorker
from serving.errors import (
    BackendError,
    InvalidInput,
    ModelNotReady,
    QueueFull,
    RequestTimeout,
    ServingError,
)
from serving.logs import request_id_var, trace_context_var

logger = logging.getLogger(__name__)


class BatchObserver(Protocol):
    def pending_changed(self, delta: int) -> None: ...

    def execution_finished(
        self, batch_size: int, compute_input_s: float, compute_infer_s: float,
        compute_output_s: float, traces: Sequence[object] = (),
    ) -> None: ...


@dataclass(slots=True)
class BatchResult:
    """One request's outputs plus the timings that statistics need (seconds)."""

    outputs: Arrays
    queue_s: float
    compute_input_s: float
    compute_infer_s: float
    compute_output_s: float
    batch_size: int  # size of the whole execution this request was part of


class _State(enum.Enum):
    QUEUED = 1
    RUNNING = 2
    DONE = 3


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: Arrays
    batch_size: int
    elements: int  # of every input together (0 when the policy has no element bound)
    shape_key: tuple[object, ...]
    level: int
    enqueued: float
    future: asyncio.Future[BatchResult]
    state: _State = _State.QUEUED
    timer: TimerHandle | None = None
    dispatched: float = 0.0
    request_id: str = ""
    trace: object | None = None  # the request's span context when tracing is on (opaque here)


@dataclass(slots=True, eq=False)
class _Run:
    """One batch on one instance; ``abandoned`` once a watchdog or close answered for it."""

    instance: int
    batch: list[_Pending]
    started: float
    watchdog: TimerHandle | None = None
    abandoned: bool = False


def _shape_key(inputs: Arrays, batched: bool) -> tuple[object, ...]:
    skip = 1 if batched else 0
    return tuple((n, a.dtype.str, a.shape[skip:]) for n, a in sorted(inputs.items()))


class DynamicBatcher:
    def __init__(
        self,
        runners: Sequence[Runner],
        policy: BatchPolicy,
        *,
        clock: Clock | None = None,
        observer: BatchObserver | None = None,
        name: str = "model",
        inline_below_s: float = 0.0,
        execution_timeout_s: float = 0.0,
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner (model instance)")
        self._runners = list(runners)
        self._policy = policy
        self._clock = clock or MonotonicClock()
        self._observer = observer
        self._name = name
        self._queues: list[deque[_Pending]] = [deque() for _ in range(policy.levels)]
        self._counts = [0] * policy.levels
        self._items = [0] * policy.levels  # queued batch items per level
        self._free = list(range(len(runners)))[::-1]  # pop() takes instance 0 first
        self._running = 0
        self._workers = [InstanceWorker(f"infer-{name}-{i}") for i in range(len(runners))]
        self._execution_timeout_s = execution_timeout_s  # 0 = no watchdog
        self._runs: set[_Run] = set()
        self._stuck: dict[int, float] = {}  # instance -> when its run started
        self._delay_timer: TimerHandle | None = None
        self._delay_deadline = 0.0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_arrival = 0.0
        self._gap = 0.0
        self._arrivals = 0
        # Executions that reliably take less than this run on the event loop itself: handing a
        # 30 us LeNet batch to a thread and back costs more than the run (two wake-ups and GIL
        # transfers). 0 disables it; the EWMA of measured run times decides, so a model that
        # turns slow (bigger batches, a busy machine) goes back to the executor threads.
        self._inline_below_s = inline_below_s
        self._run_s = float("inf")
        self._run_count = 0

    @property
    def policy(self) -> BatchPolicy:
        return self._policy

    @property
    def queued(self) -> int:
        return sum(self._counts)

    def queue_full(self) -> bool:
        """Whether a request of one item at the default priority would be refused as queue
        full now, so a transport can refuse before it reads and decodes a request."""
        policy = self._policy
        level = policy.level_for(0)
        queue = policy.queue_policy(level)
        return bool((queue.max_queue_size and self._counts[level] >= queue.max_queue_size)
                    or (queue.max_queue_items and self._items[level] >= queue.max_queue_items))

    @property
    def running(self) -> int:
        """Requests handed to an executor and not yet answered."""
        return self._running

    @property
    def instances(self) -> int:
        return len(self._runners)

    @property
    def busy_threads(self) -> int:
        """Instances with a call in progress, answered or not (abandoned calls included)."""
        return len(self._runs)

    @property
    def stuck(self) -> int:
        """Instances whose run outlived the execution timeout and has not returned yet."""
        return len(self._stuck)

    async def submit(
        self, inputs: Arrays, batch_size: int, *, priority: int = 0, timeout_us: int = 0
    ) -> BatchResult:
        """Queue one request and wait for its outputs; raises a ``ServingError`` subclass."""
        pending = self._enqueue(inputs, batch_size, priority, timeout_us)
        try:
            return await pending.future
        except asyncio.CancelledError:
            if pending.state is _State.QUEUED:
                self._remove(pending)
                self._guarded_schedule()
            raise

    def _enqueue(self, inputs: Arrays, batch_size: int, priority: int, timeout_us: int) -> _Pending:
        if self._closed:
            raise ModelNotReady(f"model '{self._name}' is unloading")
        policy = self._policy
        if policy.max_batch_size > 0 and batch_size > policy.max_batch_size:
            raise InvalidInput(
                f"inference request batch-size must be <= {policy.max_batch_size} for "
                f"'{self._name}', got {batch_size}"
            )
        # Counted only for a bounded model (the count is what the bound compares).
        elements = sum(math.prod(a.shape) for a in inputs.values()) \
            if policy.max_batch_elements else 0
        if elements > policy.max_batch_elements > 0:
            raise InvalidInput(
                f"the inputs of this request have {elements} elements, more than one execution "
                f"of '{self._name}' may hold ({policy.max_batch_elements}, its config parameter "
                "max_batch_elements): send fewer or smaller images per request"
            )
        level = policy.level_for(priority)
        qpolicy = policy.queue_policy(level)
        timeout = qpolicy.timeout_us(timeout_us)
        if qpolicy.max_queue_size and self._counts[level] >= qpolicy.max_queue_size:
            raise QueueFull()
        if qpolicy.max_queue_items and self._items[level] + batch_size > qpolicy.max_queue_items:
            raise QueueFull()
        now = self._clock.now()
        self._note_arrival(now)
        pending = _Pending(
            inputs=inputs,
            batch_size=batch_size,
            elements=elements,
            shape_key=_shape_key(inputs, policy.max_batch_size > 0),
            level=level,
            enqueued=now,
            future=asyncio.get_running_loop().create_future(),
            request_id=request_id_var.get(),
            trace=trace_context_var.get(),
        )
        if timeout:
            pending.timer = self._clock.call_at(
                now + timeout / 1e6, lambda: self._expire(pending)
            )
        self._queues[level].append(pending)
        self._counts[level] += 1
        self._items[level] += batch_size
        self._idle.clear()
        self._pending_changed(1)
        self._guarded_schedule()
        return pending

    def _note_arrival(self, now: float) -> None:
        """Track the typical gap between arrivals (an EWMA; gaps capped at the delay)."""
        if self._arrivals:
            gap = min(max(0.0, now - self._last_arrival), self._policy.max_queue_delay_us / 1e6)
            self._gap = gap if self._arrivals == 1 else 0.7 * self._gap + 0.3 * gap
        self._arrivals += 1
        self._last_arrival = now

    # -- queue bookkeeping -------------------------------------------------------------------

    def _remove(self, pending: _Pending) -> None:
        """Take a queued request out (lazily: its deque entry is skipped and purged later)."""
        pending.state = _State.DONE
        self._counts[pending.level] -= 1
        self._items[pending.level] -= pending.batch_size
        if pending.timer is not None:
            pending.timer.cancel()
        self._pending_changed(-1)
        self._check_idle()

    def _expire(self, pending: _Pending) -> None:
        if pending.state is not _State.QUEUED:
            return
        self._remove(pending)
        if not pending.future.done():
            pending.future.set_exception(RequestTimeout())
        self._guarded_schedule()

    def _pending_changed(self, delta: int) -> None:
        if self._observer is not None:
            try:
                self._observer.pending_changed(delta)
            except Exception:
                logger.exception("batch observer failed")

    def _check_idle(self) -> None:
        if self.queued == 0 and self._running == 0:
            self._idle.set()

    # -- scheduling --------------------------------------------------------------------------

    def _guarded_schedule(self) -> None:
        try:
            self._schedule()
        except Exception:  # a scheduling bug must not strand requests: fail what is queued
            logger.exception("batch scheduling failed for %s", self._name)
            self._fail_queued(BackendError("internal batching error"))

    def _schedule(self) -> None:
        while self._free and self.queued:
            batch = self._next_batch()
            if batch is None:
                return
            self._dispatch(batch)

    def _iter_queued(self) -> list[_Pending]:
        out: list[_Pending] = []
        for q in self._queues:
            while q and q[0].state is not _State.QUEUED:
                q.popleft()
            out.extend(p for p in q if p.state is _State.QUEUED)
        return out

    def _next_batch(self) -> list[_Pending] | None:
        """The batch to run now, or None when the head batch should wait (timer armed)."""
        policy = self._policy
        queued = self._iter_queued()
        head = queued[0]
        if not policy.dynamic:
            return [head]
        limit, element_limit = policy.max_batch_size, policy.max_batch_elements
        chosen: list[_Pending] = []
        total = elements = 0
        preferred_cut = 0
        for p in queued:
            if p.shape_key != head.shape_key:
                continue  # other shapes keep their place for a later batch
            if total + p.batch_size > limit:
                break  # as Triton: never let a later, smaller request jump ahead of this one
            if element_limit and chosen and elements + p.elements > element_limit:
                return chosen  # as full as its memory bound allows: no reason to wait
            elements += p.elements

            chosen.append(p)
            total += p.batch_size
            if total in policy.preferred_batch_sizes:
                preferred_cut = len(chosen)
            if total == limit:
                return chosen
        if preferred_cut:
            return chosen[:preferred_cut]
        delay = policy.max_queue_delay_us / 1e6
        deadline = head.enqueued + delay
        # The tolerance absorbs float rounding and timers that fire a hair early; without it a
        # timer at exactly ``deadline`` could re-arm itself forever.
        now = self._clock.now() + 1e-7
        if delay <= 0 or now >= deadline or len(queued) == 1:
            return chosen
        # Hold only while requests keep arriving: once no request came for twice the usual gap
        # between arrivals, waiting longer would leave the instance idle for nothing.
        quiet_at = self._last_arrival + 2 * self._gap
        if now >= quiet_at:
            return chosen
        self._arm_delay(min(deadline, quiet_at))
        return None

    def _arm_delay(self, deadline: float) -> None:
        if self._delay_timer is not None and self._delay_deadline == deadline:
            return
        if self._delay_timer is not None:
            self._delay_timer.cancel()
        self._delay_deadline = deadline
        self._delay_timer = self._clock.call_at(deadline, self._on_delay)

    def _on_delay(self) -> None:
        self._delay_timer = None
        self._guarded_schedule()

    def _dispatch(self, batch: list[_Pending]) -> None:
        now = self._clock.now()
        for p in batch:
            p.state = _State.RUNNING
            p.dispatched = now
            self._counts[p.level] -= 1
            self._items[p.level] -= p.batch_size
            if p.timer is not None:
                p.timer.cancel()
        self._pending_changed(-len(batch))
        instance = self._free.pop()
        self._running += len(batch)
        run = _Run(instance, batch, now)
        self._runs.add(run)
        loop = asyncio.get_running_loop()
        sizes = [p.batch_size for p in batch] if self._policy.max_batch_size > 0 else None
        if self._run_s < self._inline_below_s and len(self._runners) == 1:
            done: asyncio.Future[Executed] = loop.create_future()
            try:
                done.set_result(execute(self._runners[instance], [p.inputs for p in batch],
                                        sizes, self._clock.now, self._name))
            except Exception as exc:
                done.set_exception(exc)
            # Completion goes through the loop, so back-to-back inline batches never recurse.
            loop.call_soon(self._finished, run, done)
            return
        if self._execution_timeout_s > 0:
            run.watchdog = self._clock.call_at(now + self._execution_timeout_s,
                                               lambda: self._overran(run))
        fut = asyncio.wrap_future(self._workers[instance].submit(
            execute, self._runners[instance], [p.inputs for p in batch], sizes,
            self._clock.now, self._name,
        ))
        fut.add_done_callback(lambda f: self._finished(run, f))

    def _overran(self, run: _Run) -> None:
        """Watchdog: the run outlived the execution timeout; answer its requests now."""
        if run.abandoned or run not in self._runs:
            return
        self._stuck[run.instance] = run.started
        logger.error("model '%s' instance %d: a batch of %d has run for more than %.1f s; its "
                     "requests fail and the instance takes no work until the call returns",
                     self._name, run.instance, len(run.batch), self._execution_timeout_s)
        self._abandon(run, RequestTimeout(
            f"model '{self._name}' did not finish within the execution timeout of "
            f"{self._execution_timeout_s:g} s"))

    def _abandon(self, run: _Run, error: ServingError) -> None:
        run.abandoned = True
        self._running -= len(run.batch)
        for p in run.batch:
            p.state = _State.DONE
            if not p.future.done():
                p.future.set_exception(error)
        self._check_idle()

    def _backend_failure(self, p: _Pending) -> BackendError:
        """What the client sees of a backend exception: never its text (it can hold paths)."""
        rid = f" (request id {p.request_id})" if p.request_id else ""
        return BackendError(f"inference failed on model '{self._name}'; see the server log{rid}")

    def _finished(self, run: _Run, fut: asyncio.Future[Executed]) -> None:
        instance, batch = run.instance, run.batch
        self._runs.discard(run)
        if run.watchdog is not None:
            run.watchdog.cancel()
        try:
            self._free.append(instance)
            if run.abandoned:  # its requests were answered already; the instance is usable again
                if self._stuck.pop(instance, None) is not None:
                    logger.warning("model '%s' instance %d returned after its execution timeout",
                                   self._name, instance)
                return
            self._running -= len(batch)
            error: ServingError | None = None
            timings: Executed | None = None
            try:
                timings = fut.result()
            except ServingError as exc:
                error = exc
            except (Exception, asyncio.CancelledError):
                ids = ", ".join(p.request_id for p in batch if p.request_id) or "-"
                logger.exception("model '%s' failed on a batch of %d (request ids: %s)",
                                 self._name, len(batch), ids)
            size = sum(p.batch_size for p in batch)
            for i, p in enumerate(batch):
                p.state = _State.DONE
                if p.future.done():  # the caller went away meanwhile
                    continue
                if timings is None:
                    p.future.set_exception(error or self._backend_failure(p))
                else:
                    p.future.set_result(BatchResult(
                        outputs=timings.outputs[i],
                        queue_s=p.dispatched - p.enqueued,
                        compute_input_s=timings.compute_input_s,
                        compute_infer_s=timings.compute_infer_s,
                        compute_output_s=timings.compute_output_s,
                        batch_size=size,
                    ))
            if timings is not None:
                total = timings.compute_input_s + timings.compute_infer_s + timings.compute_output_s
                self._run_count += 1
                self._run_s = total if self._run_count == 1 else 0.8 * self._run_s + 0.2 * total
            if timings is not None and self._observer is not None:
                self._observer.execution_finished(
                    size, timings.compute_input_s, timings.compute_infer_s,
                    timings.compute_output_s, [p.trace for p in batch if p.trace is not None],
                )
        except Exception:
            logger.exception("batch completion failed for %s", self._name)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(BackendError("internal batching error"))
        finally:
            self._check_idle()
            if not self._closed:
                self._guarded_schedule()

    # -- lifecycle ---------------------------------------------------------------------------

    def _fail_queued(self, error: ServingError) -> None:
        for p in self._iter_queued():
            self._remove(p)
            if not p.future.done():
                p.future.set_exception(error)
        for q in self._queues:
            q.clear()

    async def drain(self) -> None:
        """Wait until nothing is queued or running."""
        await self._idle.wait()

    async def close(self, timeout_s: float | None = None) -> None:
        """Refuse new work, fail what is still queued, wait for running batches (at most
        ``timeout_s``; None = no bound), stop the threads.

        Past the bound, running requests fail with ``ModelNotReady`` and their threads are
        abandoned: they end when their call returns, and never hold the process.
        """
        self._closed = True
        if self._delay_timer is not None:
            self._delay_timer.cancel()
        self._fail_queued(ModelNotReady(f"model '{self._name}' was unloaded"))
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except TimeoutError:
            running = [r for r in self._runs if not r.abandoned]
            logger.error("model '%s': %d batches still running %.1f s after close; failing their "
                         "requests and abandoning their threads", self._name, len(running),
                         timeout_s or 0.0)
            for run in running:
                self._abandon(run, ModelNotReady(f"model '{self._name}' was unloaded while "
                                                 "running the request"))
        for worker in self._workers:
            worker.stop()
