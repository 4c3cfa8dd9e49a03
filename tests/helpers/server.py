"""Start the real server (`python -m serving`) as a subprocess on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.ports import free_port


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    management_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def management_base(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def metric_sum(server: ServerProcess, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` on the server's /metrics (every worker's, when it
    has workers) whose labels include ``labels``."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def http_status(url: str) -> int:
    """The status code of a GET (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def start_server(
    store: Path,
    log_dir: Path,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = 180.0,
) -> ServerProcess:
    """Start a server and wait until it is live (and ready, unless told not to)."""
    ports = [free_port() for _ in range(4)]
    log_path = log_dir / f"server-{ports[0]}.log"
    cmd = [
        sys.executable, "-m", "serving",
        "--model-store", str(store),
        "--http-port", str(ports[0]),
        "--grpc-port", str(ports[1]),
        "--metrics-port", str(ports[2]),
        "--management-port", str(ports[3]),
        *(extra_args or []),
    ]
    # One process unless a test asks for workers: the suite runs beside other servers on few cores.
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "CAPSERVE_WORKERS": "1", **(env or {})}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env)
    server = ServerProcess(proc, ports[0], ports[1], ports[2], ports[3], log_path=log_path)
    route = "/v2/health/ready" if wait_ready else "/v2/health/live"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        if http_status(server.base + route) == 200:
            return server
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not become {'ready' if wait_ready else 'live'}:\n{server.log()}")


@contextlib.contextmanager
def running_server(store: Path, log_dir: Path, **kwargs: object) -> Iterator[ServerProcess]:
    server = start_server(store, log_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
