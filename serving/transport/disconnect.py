"""Cancel an HTTP request's work when its client goes away.

Starlette only notices a closed connection while streaming a response, so a plain handler would
keep a departed client's request queued and still run it. Watching the ASGI ``receive`` channel
(after the body is read it yields only ``http.disconnect``) lets the handler cancel the work, and
the batcher then frees the request's queue slot without running it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from serving.errors import RequestCancelled

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` (the body must be read already); a disconnect first cancels it."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    watch.add_done_callback(
        lambda w: task.cancel() if not w.cancelled() and w.exception() is None else None)
    try:
        return await task
    except asyncio.CancelledError:
        if watch.done() and not watch.cancelled() and watch.exception() is None:
            raise RequestCancelled("the client closed the connection") from None
        raise
    finally:
        watch.cancel()
