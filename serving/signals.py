"""SIGTERM and SIGINT for capserve's long-running processes (server, supervisor, worker).

The first signal asks for a graceful stop (the returned event is set); a second one ends the
process at once with status 1, after ``on_second`` (the supervisor kills its workers there).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

logger = logging.getLogger("serving")


def stop_on_signals(on_second: Callable[[], None] | None = None,
                    second_notice: str = "capserve: second signal, exiting without draining",
                    ) -> asyncio.Event:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received = 0

    def handle(signum: int) -> None:
        nonlocal received
        received += 1
        if received > 1:
            if second_notice:
                sys.stderr.write(second_notice + "\n")
                sys.stderr.flush()
            if on_second is not None:
                on_second()
            os._exit(1)
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handle, signum)
    return stop
