"""Clocks for the batcher: the real monotonic one and a manual one for deterministic tests.

The batcher never sleeps; it asks its clock to call it back at a deadline (queue delay, request
timeout). A :class:`FakeClock` fires those callbacks only when a test advances it, so batching
rules are tested without waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale; safe to call from any thread."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the event loop once ``now() >= when``."""
        ...


class MonotonicClock:
    """``time.monotonic`` with timers on the running asyncio loop."""

    def now(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - time.monotonic()), callback)


class _FakeTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that moves only when :meth:`advance` is called; timers fire inside ``advance``."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _FakeTimer(callback)
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in deadline order (each sees its own deadline)."""
        target = self.now() + seconds
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > target:
                    self._now = target
                    return
                when, _, timer = heapq.heappop(self._timers)
                self._now = max(self._now, when)
            if not timer.cancelled:
                timer.callback()

    def pending_timers(self) -> int:
        with self._lock:
            return sum(1 for _, _, t in self._timers if not t.cancelled)
