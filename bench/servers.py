"""Start and stop the two servers on free loopback ports, and read capserve's batch metrics.

Each server runs in its own process group so stopping it ends the workers it spawned too
(TorchServe's Python workers) and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 40.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Workers that outlive their parent are still in the group we created.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and every descendant alive now."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue  # exited between the listing and the read
        total += times.user + times.system
    return total


def _wait(server: Server, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n"
                               f"{server.log_tail()}")
        if ready():
            return
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"{server.name} was not ready in {timeout:.0f}s:\n{server.log_tail()}")


def start_capserve(store: Path, work: Path, prefix: list[str] | None = None,
                   extra_args: list[str] | None = None, timeout: float = 240.0,
                   name: str = "capserve", tree: Path | None = None) -> Server:
    """``python -m serving`` on free ports; ``prefix`` wraps it (py-spy record -- ...).

    ``tree`` runs the server of another checkout (an A/B of two commits) with this venv.
    """
    http, grpc_port, metrics, management = (free_port() for _ in range(4))
    log_path = work / f"capserve-{http}.log"
    cmd = [*(prefix or []), sys.executable, "-m", "serving", "--model-store", str(store),
           "--http-port", str(http), "--grpc-port", str(grpc_port),
           "--metrics-port", str(metrics), "--management-port", str(management),
           *(extra_args or [])]
    with open(log_path, "wb") as log:
        env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tree or REPO_ROOT,
                                start_new_session=True, env=env)
    server = Server(name, proc, http, grpc_port, metrics, log_path)
    _wait(server, lambda: http_get(server.http + "/v2/health/ready")[0] == 200, timeout)
    logger.info("capserve ready on %s (gRPC %s)", server.http, server.grpc_target)
    return server


def archive_version(mar: Path) -> str:
    with zipfile.ZipFile(mar) as zf:
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
    return str(manifest.get("model", {}).get("modelVersion") or "1.0")


def torchserve_config(store: Path, archives: dict[str, Path], ports: dict[str, int],
                      batch_size: int, delay_ms: int) -> str:
    models = {
        name: {archive_version(mar): {
            "defaultVersion": True, "marName": mar.name, "minWorkers": 1, "maxWorkers": 1,
            "batchSize": batch_size, "maxBatchDelay": delay_ms, "responseTimeout": 120}}
        for name, mar in archives.items()
    }
    lines = [
        f"inference_address=http://127.0.0.1:{ports['inference']}",
        f"management_address=http://127.0.0.1:{ports['management']}",
        f"metrics_address=http://127.0.0.1:{ports['metrics']}",
        f"grpc_inference_port={ports['grpc_inference']}",
        f"grpc_management_port={ports['grpc_management']}",
        "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1",
        f"model_store={store}",
        "load_models=" + ",".join(mar.name for mar in archives.values()),
        "default_workers_per_model=1",
        "disable_token_authorization=true",
        "enable_model_api=false",
        "install_py_dep_per_model=false",
        "models=" + json.dumps(models),
    ]
    return "\n".join(lines) + "\n"


def _workers_ready(management: str, models: list[str]) -> bool:
    for model in models:
        status, body = http_get(f"{management}/models/{model}")
        if status != 200:
            return False
        try:
            described = json.loads(body)
        except ValueError:
            return False
        workers = [w for entry in described for w in entry.get("workers", [])]
        if not workers or any(w.get("status") != "READY" for w in workers):
            return False
    return True


def start_torchserve(store: Path, archives: dict[str, Path], work: Path, batch_size: int,
                     delay_ms: int, timeout: float = 300.0) -> Server:
    """Real TorchServe 0.12 on loopback: token auth off, 1 worker per model."""
    ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc_inference",
                                      "grpc_management")}
    ts_dir = work / "torchserve"
    (ts_dir / "tmp").mkdir(parents=True, exist_ok=True)
    config = ts_dir / "config.properties"
    config.write_text(torchserve_config(store, archives, ports, batch_size, delay_ms))
    log_path = ts_dir / f"torchserve-{ports['inference']}.log"
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        # The handler shim in each archive imports serving.torchserve_handler from the repo.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                    os.environ.get("PYTHONPATH")])),
        # TorchServe keeps its pid file in the temp dir: a private one lets this instance run
        # beside any other TorchServe on the machine.
        "TMPDIR": str(ts_dir / "tmp"),
        "LOG_LOCATION": str(ts_dir / "logs"),
        "METRICS_LOCATION": str(ts_dir / "logs"),
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [str(venv_bin / "torchserve"), "--start", "--foreground", "--ncs",
           "--disable-token-auth", "--model-store", str(store), "--ts-config", str(config),
           "--models", *(f"{name}={mar.name}" for name, mar in archives.items())]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ts_dir, env=env,
                                start_new_session=True)
    server = Server("torchserve", proc, ports["inference"], ports["grpc_inference"],
                    ports["metrics"], log_path)
    management = f"http://127.0.0.1:{ports['management']}"
    _wait(server, lambda: _workers_ready(management, list(archives)), timeout)
    logger.info("TorchServe ready on %s (gRPC %s)", server.http, server.grpc_target)
    return server


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def batch_counters(server: Server, model: str) -> tuple[float, float]:
    """(sum, count) of capserve's ``capserve_batch_size`` histogram for ``model``."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(f"http://127.0.0.1:{server.metrics_port}/metrics")
    if status != 200:
        return float("nan"), float("nan")
    total = count = 0.0
    for family in text_string_to_metric_families(body.decode()):
        if family.name != "capserve_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return total, count
