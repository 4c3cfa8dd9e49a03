"""Servers for the reliability runs: started on free loopback ports under a memory ceiling.

A hostile request that makes an unfixed server allocate gigabytes must not take the machine
down with it: the server runs with an address-space limit (its allocation fails instead) and a
sampler thread kills it when the resident size of its process tree passes a second bound.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.servers import REPO_ROOT, free_port, http_get


@dataclass
class Usage:
    rss_bytes: int
    fds: int
    processes: int


def tree_usage(pid: int) -> Usage:
    """RSS and open descriptors summed over a process and all its children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return Usage(0, 0, 0)
    rss = fds = alive = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss
            fds += proc.num_fds()
            alive += 1
    return Usage(rss, fds, alive)


@dataclass
class RelServer:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    management_port: int
    log_path: Path
    rss_kill_bytes: int
    killed_for_memory: bool = False
    peak_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def usage(self) -> Usage:
        return tree_usage(self.proc.pid)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def watch_memory(self) -> None:
        """Kill the whole group when its RSS passes the bound; remember the peak."""
        while not self._stop.wait(0.05) and self.alive():
            rss = self.usage().rss_bytes
            self.peak_rss = max(self.peak_rss, rss)
            if rss > self.rss_kill_bytes:
                self.killed_for_memory = True
                self.kill()
                return

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self, timeout: float = 40.0) -> int:
        self._stop.set()
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait()
        # Workers that outlive their parent are still in the group created for it.
        self.kill()
        return int(self.proc.returncode if self.proc.returncode is not None else -1)


def _limits(address_space: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def start(store: Path, work: Path, extra_args: list[str] | None = None,
          memory_mb: int = 12288, rss_kill_mb: int = 3072, timeout: float = 180.0,
          env: dict[str, str] | None = None) -> RelServer:
    """``python -m serving`` on free ports, waiting until ready (or raising with its log)."""
    http, grpc_port, metrics, management = (free_port() for _ in range(4))
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / f"capserve-{http}.log"
    cmd = [sys.executable, "-m", "serving", "--model-store", str(store),
           "--http-port", str(http), "--grpc-port", str(grpc_port),
           "--metrics-port", str(metrics), "--management-port", str(management),
           *(extra_args or [])]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    address_space = memory_mb << 20
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                env=full_env, start_new_session=True,
                                preexec_fn=lambda: _limits(address_space))
    server = RelServer(proc, http, grpc_port, metrics, management, log_path, rss_kill_mb << 20)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"capserve exited with {proc.returncode}:\n{server.log_tail()}")
        if http_get(server.http + "/v2/health/ready", timeout=2)[0] == 200:
            # The bound is growth over what the ready server holds: a store of many models
            # served by several workers starts large.
            server.rss_kill_bytes += server.usage().rss_bytes
            threading.Thread(target=server.watch_memory, daemon=True).start()
            return server
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"capserve was not ready in {timeout:.0f}s:\n{server.log_tail()}")


@contextlib.contextmanager
def running(store: Path, work: Path, **kwargs: object) -> Iterator[RelServer]:
    server = start(store, work, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def server_flags() -> str:
    """The server's --help text (which flags this build accepts)."""
    out = subprocess.run([sys.executable, "-m", "serving", "--help"], capture_output=True,
                         text=True, cwd=REPO_ROOT, timeout=60)
    return out.stdout
