"""A small progress bar on stderr: count, rate, elapsed and ETA, redrawn at most 5 times a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total: int, desc: str, stream: TextIO | None = None, width: int = 24) -> None:
        self.total, self.desc, self.width = max(total, 1), desc, width
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.start = self._last = time.monotonic()
        self.postfix = ""

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.count += n
        if postfix:
            self.postfix = postfix
        now = time.monotonic()
        if now - self._last >= 0.2 or self.count >= self.total:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else 0.0
        filled = int(self.width * self.count / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.desc} [{bar}] {self.count}/{self.total} {rate:.1f} it/s "
                          f"{_clock(elapsed)}<{_clock(eta)} {self.postfix}")
        self.stream.flush()

    def close(self) -> None:
        if self.count < self.total or self.count == 0:
            self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()
