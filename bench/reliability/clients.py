"""Clients that send exactly the bytes a case says: raw HTTP/1.1 over asyncio streams, and gRPC
with identity serializers (so malformed protobuf goes out as it is).

An answer is the status (HTTP code, or the gRPC status name), the time to the first byte of the
status line (or of the gRPC status), and the first bytes of the body for the report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

BODY_KEEP = 300  # bytes of an answer kept for the report
READ_CAP = 256 << 20  # an answer larger than this is read and dropped


@dataclass
class Answer:
    status: str  # "200", "400" ... or gRPC "OK", "INVALID_ARGUMENT" ...; "" when none came
    seconds: float
    outcome: str  # "answered", "timeout", "closed" (no status before the connection ended)
    body: bytes = b""
    body_bytes: int = 0


def build_http(method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes,
               host: str, content_length: int | None = None, keep_alive: bool = False) -> bytes:
    """The request as bytes; ``content_length`` may lie about ``body`` on purpose."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    names = {k.lower() for k, _ in headers}
    lines += [f"{k}: {v}" for k, v in headers]
    if "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    if not keep_alive and "connection" not in names:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> tuple[bytes, int]:
    kept = b""
    total = 0
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return kept, total
            chunk = await reader.readexactly(size + 2)
            total += size
            if len(kept) < BODY_KEEP:
                kept += chunk[: BODY_KEEP - len(kept)]
    length = headers.get("content-length")
    if length is not None:
        remaining = int(length)
        while remaining > 0:
            chunk = await reader.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
            total += len(chunk)
            if len(kept) < BODY_KEEP:
                kept += chunk[: BODY_KEEP - len(kept)]
        return kept, total
    while total < READ_CAP:
        chunk = await reader.read(1 << 20)
        if not chunk:
            break
        total += len(chunk)
        if len(kept) < BODY_KEEP:
            kept += chunk[: BODY_KEEP - len(kept)]
    return kept, total


async def read_response(reader: asyncio.StreamReader, start: float) -> Answer:
    status_line = await reader.readline()
    first = time.perf_counter() - start
    if not status_line:
        return Answer("", first, "closed")
    parts = status_line.split()
    status = parts[1].decode("latin-1") if len(parts) > 1 else "?"
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body, total = await _read_body(reader, headers)
    return Answer(status, first, "answered", body, total)


async def http_once(port: int, payload: bytes, timeout: float, half_close: bool = False) -> Answer:
    """One request on its own connection. ``half_close`` closes the write side after it, so a
    body shorter than its Content-Length ends instead of waiting for the timeout (the server
    reads that as a disconnect)."""
    start = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            writer.write(payload)
            await writer.drain()
            if half_close and writer.can_write_eof():
                writer.write_eof()
            return await read_response(reader, start)
    except TimeoutError:
        return Answer("", time.perf_counter() - start, "timeout")
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return Answer("", time.perf_counter() - start, "closed")
    finally:
        if writer is not None:
            writer.close()


class KeepAlive:
    """One persistent HTTP/1.1 connection, reopened after an error or a close."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, payload: bytes, timeout: float) -> Answer:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                if self.writer is None or self.reader is None:
                    self.reader, self.writer = await asyncio.open_connection(
                        "127.0.0.1", self.port, limit=1 << 20)
                self.writer.write(payload)
                await self.writer.drain()
                answer = await read_response(self.reader, start)
        except TimeoutError:
            self.close()
            return Answer("", time.perf_counter() - start, "timeout")
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.close()
            return Answer("", time.perf_counter() - start, "closed")
        if answer.outcome != "answered":
            self.close()
        return answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def grpc_channel(target: str, max_bytes: int = 80 << 20) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=[
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes)])


def _status_name(code: grpc.StatusCode | None) -> str:
    return code.name if code is not None else "UNKNOWN"


async def grpc_unary(channel: grpc.aio.Channel, method: str, body: bytes,
                     metadata: Sequence[tuple[str, str]], timeout: float) -> Answer:
    call = channel.unary_unary(method)  # no serializers: the bytes go out as they are
    start = time.perf_counter()
    try:
        reply = await call(body, metadata=tuple(metadata) or None, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        seconds = time.perf_counter() - start
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Answer("", seconds, "timeout")
        detail = (exc.details() or "").encode()[:BODY_KEEP]
        return Answer(_status_name(exc.code()), seconds, "answered", detail, len(detail))
    raw = bytes(reply) if reply is not None else b""
    return Answer("OK", time.perf_counter() - start, "answered", raw[:BODY_KEEP], len(raw))


async def grpc_stream(channel: grpc.aio.Channel, method: str, bodies: Sequence[bytes],
                      metadata: Sequence[tuple[str, str]], timeout: float,
                      client_stream: bool) -> Answer:
    """A streaming call: every message sent, every answer read; status at the end."""
    start = time.perf_counter()
    kept = b""
    total = 0
    try:
        if client_stream:
            call = channel.stream_stream(method)(iter(bodies), metadata=tuple(metadata) or None,
                                                 timeout=timeout)
        else:
            call = channel.unary_stream(method)(bodies[0], metadata=tuple(metadata) or None,
                                                timeout=timeout)
        async for reply in call:
            raw = bytes(reply)
            total += len(raw)
            if len(kept) < BODY_KEEP:
                kept += raw[: BODY_KEEP - len(kept)]
        code = await call.code()
    except grpc.aio.AioRpcError as exc:
        seconds = time.perf_counter() - start
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Answer("", seconds, "timeout")
        detail = (exc.details() or "").encode()[:BODY_KEEP]
        return Answer(_status_name(exc.code()), seconds, "answered", detail, len(detail))
    return Answer(_status_name(code), time.perf_counter() - start, "answered", kept, total)
