"""perf_analyzer (the binary of the tritonclient 2.41.0 wheel) completes short runs over gRPC and HTTP.

The test fetches what it needs with pip into ``.venv/cache/`` (the wheel, and libcudart.so.12
from nvidia-cuda-runtime-cu12, which the binary links even on CPU) and skips, saying why, when
that is impossible or Debian's libb64-0d is missing. ``CAPSERVE_PERF_ANALYZER`` names a binary
to use instead, with the libraries it links in its folder (bench/device/check.sh, offline).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server import ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".venv" / "cache"
PA_MEMBER = "tritonclient-2.41.0.data/data/bin/perf_analyzer"


def _pip_download(requirement: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(CACHE.glob(f"{name}-*.whl"))
    if not found:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE), requirement],
            capture_output=True, text=True, timeout=300,
        )
        found = sorted(CACHE.glob(f"{name}-*.whl"))
        if proc.returncode != 0 or not found:
            pytest.skip(f"cannot download {requirement} for perf_analyzer: {proc.stderr.strip()[-300:]}")
    return found[-1]


def _extract(wheel: Path, member_suffix: str, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        member = next((m for m in zf.namelist() if m.endswith(member_suffix)), None)
        if member is None:
            pytest.skip(f"{wheel.name} has no {member_suffix}")
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / Path(member).name
        if not target.exists():
            target.write_bytes(zf.read(member))
    return target


@pytest.fixture(scope="module")
def perf_analyzer() -> tuple[Path, dict[str, str]]:
    given = os.environ.get("CAPSERVE_PERF_ANALYZER")  # a binary with its libraries beside it
    if given:
        binary, libs = Path(given), Path(given).parent
    else:
        binary = _extract(_pip_download("tritonclient==2.41.0"), PA_MEMBER, CACHE / "perf_analyzer")
        binary.chmod(0o755)
        libs = _extract(_pip_download("nvidia-cuda-runtime-cu12"), "/libcudart.so.12",
                        CACHE / "perf_analyzer_libs").parent
    env = {**os.environ, "LD_LIBRARY_PATH": f"{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env)
    missing = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
    if missing:
        pytest.skip(f"perf_analyzer needs {', '.join(missing)} (Debian libb64-0d: make system-deps)")
    return binary, env


@pytest.fixture(scope="module")
def lenet_server(
    request: pytest.FixtureRequest, tiny_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, str]]:
    """lenet of the default store; the LeNet-shaped tiny model while no lenet checkpoint exists."""
    if os.environ.get("CAPSERVE_TEST_STORE") or (ROOT / "checkpoints" / "lenet.pt").exists():
        store, model = request.getfixturevalue("default_store"), "lenet"
    else:
        store, model = tiny_store, "classifier"
    server = start_server(store, tmp_path_factory.mktemp("pa"))
    yield server, model
    server.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_short_run(
    perf_analyzer: tuple[Path, dict[str, str]], lenet_server: tuple[ServerProcess, str], protocol: str
) -> None:
    binary, env = perf_analyzer
    server, model = lenet_server
    url = server.grpc_url if protocol == "grpc" else server.http_url
    cmd = [str(binary), "-m", model, "-u", url, "-i", protocol, "--concurrency-range", "1:2",
           "--measurement-interval", "1000", "--stability-percentage", "1000", "--max-trials", "6"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Concurrency: 2, throughput:" in out, out
    # perf_analyzer read our ModelStatistics (server-side section) without complaint.
    assert "Server:" in out and "Inference count:" in out, out
