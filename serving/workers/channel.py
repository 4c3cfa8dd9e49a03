"""A small two-way RPC over one Unix stream between the supervisor and one worker.

Each message is one JSON object per line. A call carries an ``id`` and gets exactly one reply
with the same ``id`` (``result`` or ``error``); a notification has no ``id`` and no reply. Both
ends may call at any time, so a worker can ask the supervisor to fan out an operation while the
supervisor asks the same worker for its part of it. Every pending call is resolved when the
stream closes, so no caller ever waits on a dead peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from serving import errors

logger = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
# One line holds at most a metrics exposition or a statistics list: a few MB is plenty.
LINE_LIMIT = 64 * 1024 * 1024


class ChannelClosed(ConnectionError):
    """The peer went away before it answered."""


class RemoteError(Exception):
    """The peer's handler raised something that is not a ServingError."""


def encode_error(exc: BaseException) -> dict[str, str]:
    kind = type(exc).__name__ if isinstance(exc, errors.ServingError) else "RemoteError"
    return {"type": kind, "message": str(exc)}


def decode_error(doc: dict[str, Any]) -> Exception:
    """The ServingError subclass the peer raised (same class, same message), so a client sees
    exactly the error it would have seen from a single process."""
    cls = getattr(errors, str(doc.get("type", "")), None)
    message = str(doc.get("message", "remote call failed"))
    if isinstance(cls, type) and issubclass(cls, errors.ServingError):
        return cls(message)
    return RemoteError(message)


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 handler: Handler) -> None:
        self._reader, self._writer, self._handler = reader, writer, handler
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._reading: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reading = asyncio.create_task(self._read_loop())

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def call(self, method: str, timeout: float | None = None, **params: Any) -> Any:
        if self.closed:
            raise ChannelClosed(f"channel closed before '{method}'")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            await self._send({"id": call_id, "method": method, "params": params})
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(call_id, None)

    async def notify(self, method: str, **params: Any) -> None:
        if not self.closed:
            with contextlib.suppress(ConnectionError):
                await self._send({"method": method, "params": params})

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        self._shut()

    async def _send(self, doc: dict[str, Any]) -> None:
        self._writer.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
        await self._writer.drain()

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                self._dispatch(json.loads(line))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            logger.debug("channel read ended: %s", exc)
        finally:
            self._shut()

    def _dispatch(self, doc: dict[str, Any]) -> None:
        if "method" not in doc:  # a reply
            future = self._pending.get(int(doc.get("id", 0)))
            if future is not None and not future.done():
                if "error" in doc:
                    future.set_exception(decode_error(doc["error"]))
                else:
                    future.set_result(doc.get("result"))
            return
        task = asyncio.create_task(self._serve(doc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, doc: dict[str, Any]) -> None:
        call_id = doc.get("id")
        try:
            result = await self._handler(str(doc["method"]), dict(doc.get("params") or {}))
            reply: dict[str, Any] = {"id": call_id, "result": result}
        except Exception as exc:  # every call gets an answer, whatever its handler did
            if not isinstance(exc, errors.ServingError):
                logger.exception("control call %s failed", doc.get("method"))
            reply = {"id": call_id, "error": encode_error(exc)}
        if call_id is not None and not self.closed:
            with contextlib.suppress(ConnectionError):
                await self._send(reply)

    def _shut(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelClosed("peer closed the channel"))
        for task in self._tasks:
            task.cancel()


async def open_channel(path: str, handler: Handler) -> Channel:
    reader, writer = await asyncio.open_unix_connection(path, limit=LINE_LIMIT)
    channel = Channel(reader, writer, handler)
    channel.start()
    return channel
