"""A py-spy profile of capserve's hot path under load, and its top costs.

py-spy starts the server itself (``py-spy record -- python -m serving ...``), so no ptrace
permission on a running process is needed; it writes collapsed stacks when the server exits.
"""

from __future__ import annotations

import collections
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import loadgen, servers

logger = logging.getLogger(__name__)

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _frame_key(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    # Keep the path from the package root on so the report reads "serving/..." or "PIL/...".
    for marker in ("site-packages/", "/main/", "python3.11/", "python3.12/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('func')} ({path})"


def summarise(collapsed: str, top: int = 10) -> dict[str, Any]:
    """Top functions by own (self) samples and by inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        count = int(match.group("count"))
        frames = [_frame_key(f) for f in match.group("stack").split(";") if f]
        # The first frame is py-spy's process/thread label, not code.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def rows(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [{"function": name, "samples": n, "share": round(n / total, 4) if total else 0.0}
                for name, n in counter.most_common(top)]

    return {"samples": total, "top_self": rows(own), "top_inclusive": rows(inclusive)}


def profile_lenet(store: Path, work: Path, out_dir: Path, body: Path, model: str,
                  concurrency: int, duration_s: float) -> dict[str, Any]:
    """Run capserve under py-spy, load it with hey at ``concurrency``, return the summary."""
    spy = py_spy_binary()
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    collapsed = out_dir / f"profile-{model}-c{concurrency}.txt"
    prefix = [spy, "record", "--format", "raw", "--rate", "200", "--subprocess",
              "--nonblocking", "-o", str(collapsed), "--"]
    server = servers.start_capserve(store, work, prefix=prefix)
    try:
        run = loadgen.run_hey(f"{server.http}/predictions/{model}", body, concurrency,
                              duration_s, "capserve", model)
        _stop_target(server.proc.pid)
        try:
            server.proc.wait(timeout=60)  # py-spy writes the file once its target exits
        except subprocess.TimeoutExpired:
            logger.warning("py-spy did not exit after its target; stopping it")
    finally:
        server.stop()
    if not collapsed.exists():
        raise RuntimeError(f"py-spy wrote no profile:\n{server.log_tail()}")
    summary = summarise(collapsed.read_text())
    summary.update({"file": collapsed.name, "model": model, "concurrency": concurrency,
                    "duration_s": duration_s, "throughput_rps_under_profiler":
                        round(run.throughput_rps, 1), "errors": run.errors,
                    "tool": "py-spy record --rate 200 --nonblocking (Python frames, idle excluded)"})
    return summary


def _stop_target(spy_pid: int) -> None:
    """SIGTERM the server py-spy started (its child), so py-spy flushes and exits."""
    import psutil

    try:
        children = psutil.Process(spy_pid).children()
    except psutil.NoSuchProcess:
        return
    for child in children:
        child.send_signal(signal.SIGTERM)
    psutil.wait_procs(children, timeout=40)
    time.sleep(0.5)
