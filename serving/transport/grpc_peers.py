"""ModelInfer handed to a less busy worker of the same supervisor.

An HTTP/2 client multiplexes every call over one connection, and the kernel gives a connection
to one worker: perf_analyzer or a tritonclient gRPC client at any concurrency would keep one
worker busy and leave the rest idle. So before running a request, a worker looks at the load
board (``serving/workers/board.py``) and, when another open worker runs fewer requests than it
does, sends it the request's bytes as received over that worker's Unix socket (a gRPC server on
the same servicer) and relays its answer's bytes. A forwarded request is never forwarded again.

What is forwarded is the message itself: the tensors of a shared-memory request stay in the
client's region (every worker maps the same registrations), a wire request's bytes cross the
socket once. A peer that cannot take the request (gone, draining) says so before any work, by
answering without the "taken" marker; the request then runs here, so nothing accepted is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from grpc import aio

from serving.transport.errors import error_from_grpc

logger = logging.getLogger(__name__)

FORWARDED_KEY = "capserve-forwarded"  # request metadata on a forwarded call: the sender's id
TAKEN_KEY = "capserve-taken"  # initial metadata of a peer that admitted a forwarded call
WORKER_KEY = "capserve-worker"  # trailing metadata of every worker's answer: who ran it
_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_PASSED_ON = ("traceparent", "tracestate")  # request metadata the peer should see too


class Board(Protocol):
    slots: int

    def is_open(self, slot: int) -> bool: ...

    def running(self, slot: int) -> int: ...


def peer_socket(rundir: str, slot: int) -> str:
    return f"{rundir}/grpc-{slot}.sock"


class PeerForwarder:
    """Chooses a peer for a request and forwards it; one per worker process."""

    def __init__(self, board: Board, me: int, rundir: str, max_message_bytes: int) -> None:
        self._board = board
        self.me = me
        self._rundir = rundir
        self._options = [("grpc.max_send_message_length", max_message_bytes),
                         ("grpc.max_receive_message_length", max_message_bytes)]
        # Sent and not yet taken: the peer's own count does not show them yet.
        self._in_transit = [0] * board.slots
        self._channels: dict[int, aio.Channel] = {}
        self._marker = ((FORWARDED_KEY, str(me)),)

    def choose(self) -> int | None:
        """The open peer running the fewest requests, if it runs fewer than this worker."""
        board = self._board
        best, best_load = None, board.running(self.me)
        for slot in range(board.slots):
            if slot == self.me or not board.is_open(slot):
                continue
            load = board.running(slot) + self._in_transit[slot]
            if load < best_load:
                best, best_load = slot, load
        return best

    def _call(self, slot: int) -> aio.UnaryUnaryMultiCallable:
        channel = self._channels.get(slot)
        if channel is None:
            channel = aio.insecure_channel(f"unix:{peer_socket(self._rundir, slot)}",
                                           options=self._options)
            self._channels[slot] = channel
        return channel.unary_unary(_METHOD)  # bytes in, bytes out

    async def forward(self, slot: int, data: bytes, timeout: float | None,
                      metadata: Sequence[tuple[str, str | bytes]] = ()) -> bytes | None:
        """The peer's answer as serialized bytes; ``None`` when it did not take the request.

        An error the peer answered is raised as that same status and message.
        """
        passed = tuple((k, v) for k, v in metadata if k in _PASSED_ON)
        self._in_transit[slot] += 1
        call = self._call(slot)(data, timeout=timeout, metadata=self._marker + passed)
        try:
            taken = any(k == TAKEN_KEY for k, _ in (await call.initial_metadata() or ()))
        finally:
            self._in_transit[slot] -= 1
        try:
            answer: bytes = await call
            return answer
        except aio.AioRpcError as exc:
            if not taken:  # refused before any work (gone, draining): run it here
                logger.debug("worker %d did not take a forwarded request: %s", slot,
                             exc.details())
                return None
            raise error_from_grpc(exc.code(), exc.details() or "") from None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()


def taken_metadata(me: int) -> tuple[tuple[str, str], ...]:
    return ((TAKEN_KEY, "1"), (WORKER_KEY, str(me)))


def is_forwarded(metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
    return any(k == FORWARDED_KEY for k, _ in metadata or ())

