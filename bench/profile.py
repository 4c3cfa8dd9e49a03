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
from bench.schema import LoadRun

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


def summarise(collapsed: str, top: int = 10, skip_startup: bool = False) -> dict[str, Any]:
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
        if not frames or (skip_startup and any("importlib._bootstrap" in f for f in frames)):
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    packages: collections.Counter[str] = collections.Counter()
    for name, n in own.items():
        packages[_package(name)] += n
    serving_inclusive = collections.Counter(
        {k: v for k, v in inclusive.items() if "(serving/" in k and "__main__" not in k})

    def rows(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [{"function": name, "samples": n, "share": round(n / total, 4) if total else 0.0}
                for name, n in counter.most_common(top)]

    return {"samples": total, "top_self": rows(own), "self_by_package": rows(packages),
            "top_inclusive_serving": rows(serving_inclusive)}


def _package(frame: str) -> str:
    """``func (serving/tasks/images.py)`` -> ``serving.tasks``; ``(PIL/Image.py)`` -> ``PIL``."""
    match = re.search(r"\(([^()]*)\)$", frame)
    path = match.group(1) if match else frame
    parts = [p for p in path.split("/") if p]
    if not parts:
        return frame
    if parts[0] == "serving" and len(parts) > 2:
        return f"serving.{parts[1]}"
    return parts[0].removesuffix(".py")


def profile_lenet(store: Path, work: Path, out_dir: Path, body: Path, model: str,
                  concurrency: int, duration_s: float) -> dict[str, Any]:
    """Profile capserve while hey loads it at ``concurrency``; returns the summary.

    py-spy attaches to the running server, so start-up (imports, model loading) stays out of
    the profile. Where attaching is not permitted (ptrace restrictions), py-spy starts the
    server itself instead and start-up stacks are dropped from the summary.
    """
    spy = py_spy_binary()
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    collapsed = out_dir / f"profile-{model}-c{concurrency}.txt"
    collapsed.unlink(missing_ok=True)
    common = ["record", "--format", "raw", "--rate", "200", "--subprocesses", "--nonblocking",
              "-o", str(collapsed)]
    url_of = "{}/predictions/" + model
    server = servers.start_capserve(store, work)
    mode = "attached to the running server"
    try:
        record = subprocess.Popen(
            [spy, *common, "--pid", str(server.proc.pid), "--duration",
             str(round(duration_s) + 2)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.0)
        if record.poll() is not None and record.returncode != 0:
            detail = record.stdout.read().decode(errors="replace") if record.stdout else ""
            logger.warning("py-spy cannot attach (%s); profiling from launch instead",
                           detail.strip()[:200])
            server.stop()
            return _profile_from_launch(spy, common, store, work, body, model, concurrency,
                                        duration_s, collapsed, url_of)
        run = loadgen.run_hey(url_of.format(server.http), body, concurrency, duration_s,
                              "capserve", model)
        record.wait(timeout=duration_s + 60)
    finally:
        server.stop()
    return _summary(collapsed, run, model, concurrency, duration_s, mode, skip_startup=False)


def _profile_from_launch(spy: str, common: list[str], store: Path, work: Path, body: Path,
                         model: str, concurrency: int, duration_s: float, collapsed: Path,
                         url_of: str) -> dict[str, Any]:
    server = servers.start_capserve(store, work, prefix=[spy, *common, "--"])
    try:
        run = loadgen.run_hey(url_of.format(server.http), body, concurrency, duration_s,
                              "capserve", model)
        _stop_target(server.proc.pid)
        try:
            server.proc.wait(timeout=60)  # py-spy writes the file once its target exits
        except subprocess.TimeoutExpired:
            logger.warning("py-spy did not exit after its target; stopping it")
    finally:
        server.stop()
    return _summary(collapsed, run, model, concurrency, duration_s,
                    "started the server; start-up stacks dropped", skip_startup=True)


def _summary(collapsed: Path, run: LoadRun, model: str, concurrency: int, duration_s: float,
             mode: str, skip_startup: bool) -> dict[str, Any]:
    if not collapsed.exists():
        raise RuntimeError(f"py-spy wrote no profile at {collapsed}")
    summary = summarise(collapsed.read_text(), skip_startup=skip_startup)
    summary.update({
        "file": collapsed.name, "model": model, "concurrency": concurrency,
        "duration_s": duration_s, "throughput_rps_under_profiler": round(run.throughput_rps, 1),
        "errors": run.errors,
        "tool": f"py-spy record --rate 200 --nonblocking --subprocesses, {mode} "
                "(Python frames, idle threads excluded)"})
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
