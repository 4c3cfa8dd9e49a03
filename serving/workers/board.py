"""How busy each worker is, in one small file every worker of a supervisor maps.

The kernel gives each connection to one worker, and an HTTP/2 client (tritonclient's gRPC
client, perf_analyzer) sends everything over one connection: without help every request of
such a client runs on one worker while the others idle. With the board, a worker sees the
others' load and hands a request to a less busy one (``serving/transport/grpc_peers.py``).

Layout: two signed 64-bit words per worker, ``[open, running]``. ``open`` is 1 while the
worker takes requests from its peers (it serves and is not draining), ``running`` the
requests inside its core now. Each word has one writer: the worker itself (the supervisor
resets the slot of a worker that died), so nothing needs a lock; a reader sees a value at
most one update old, which is all a load balancer needs.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

_WORDS = 2  # per worker: open, running
_WORD = 8
BOARD_FILE = "load.board"


def board_path(rundir: str | Path) -> Path:
    return Path(rundir) / BOARD_FILE


class LoadBoard:
    """A view of the board file; ``create`` (the supervisor) then ``attach`` (each worker)."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size == 0 or size % (_WORDS * _WORD):
                raise ValueError(f"{path} is not a load board ({size} bytes)")
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._words = memoryview(self._map).cast("q")
        self.slots = size // (_WORDS * _WORD)

    @staticmethod
    def create(path: Path, slots: int) -> None:
        """A board of ``slots`` closed, idle workers (mode 0600: only this user's workers)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(_WORDS * _WORD * slots))
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, path: Path) -> LoadBoard:
        return cls(path)

    def set_open(self, slot: int, is_open: bool) -> None:
        self._words[slot * _WORDS] = 1 if is_open else 0

    def reset(self, slot: int) -> None:
        """A worker that is gone: closed, nothing running."""
        self._words[slot * _WORDS] = 0
        self._words[slot * _WORDS + 1] = 0

    def add_running(self, slot: int, delta: int) -> None:
        """Only the worker of ``slot`` calls this (one writer per word)."""
        index = slot * _WORDS + 1
        self._words[index] = max(0, self._words[index] + delta)

    def running(self, slot: int) -> int:
        return int(self._words[slot * _WORDS + 1])

    def is_open(self, slot: int) -> bool:
        return self._words[slot * _WORDS] == 1

    def close(self) -> None:
        self._words.release()
        self._map.close()
