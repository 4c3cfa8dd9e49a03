"""SIGTERM and SIGINT for capserve's long-running processes (server, supervisor, worker).

The first signal asks for a graceful stop (the returned event is set); a second one ends the
process at once with status 1, after ``on_second`` (the supervisor kills its workers there).

One request to stop often arrives as two signals a few milliseconds apart: ``make serve``
passes a SIGTERM on to its child, and systemd's default ``KillMode=control-group`` signals every
process of the unit at once, so a worker hears it from systemd and again from its supervisor's
drain. A repeat within ``SAME_REQUEST_S`` of the first is that same request, not a second one;
and a worker never ends itself on a repeat (its supervisor ends the drain at the grace period).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

logger = logging.getLogger("serving")


SAME_REQUEST_S = 0.5


def stop_on_signals(on_second: Callable[[], None] | None = None,
                    second_notice: str = "capserve: second signal, exiting without draining",
                    force_on_second: bool = True) -> asyncio.Event:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    first_at: float | None = None

    def handle(signum: int) -> None:
        nonlocal first_at
        if first_at is not None:
            if not force_on_second or time.monotonic() - first_at < SAME_REQUEST_S:
                logger.info("received %s again, still draining", signal.Signals(signum).name)
                return
            if second_notice:
                sys.stderr.write(second_notice + "\n")
                sys.stderr.flush()
            if on_second is not None:
                on_second()
            os._exit(1)
        first_at = time.monotonic()
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handle, signum)
    return stop


def run_and_exit(main: Callable[[], Coroutine[Any, Any, int]]) -> NoReturn:
    """Run a serving process's main coroutine (on uvloop when installed), then end the process
    at once with its status. After a drain nothing is left to finish, but a model thread the
    watchdog abandoned may still be inside the runtime, and normal interpreter exit would wait
    for it or abort in the runtime's destructors (SIGABRT instead of the drained exit 0)."""
    try:
        import uvloop
    except ImportError:  # uvloop is optional: plain asyncio works, a little slower
        code = asyncio.run(main())
    else:
        code = uvloop.run(main())
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
