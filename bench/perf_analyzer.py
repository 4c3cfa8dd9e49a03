"""perf_analyzer (from the tritonclient 2.41.0 wheel) against capserve's v2 gRPC and HTTP.

The binary is taken from the wheel: ``pip download tritonclient==2.41.0`` and unzip its
``data/bin/perf_analyzer``; it links ``libb64.so.0d`` (Debian ``libb64-0d``) and
``libcudart.so.12`` (PyPI ``nvidia-cuda-runtime-cu12``, unzipped beside it; no GPU is used).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from bench.schema import LoadRun

logger = logging.getLogger(__name__)

_PA_MEMBER = "tritonclient-2.41.0.data/data/bin/perf_analyzer"
_CUDART_DIR = "nvidia/cuda_runtime/lib"


class PerfAnalyzerError(RuntimeError):
    pass


def _download(cache: Path, requirement: str) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(cache.glob(f"{name}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "-d", str(cache), requirement], check=True)
        found = sorted(cache.glob(f"{name}-*.whl"))
    if not found:
        raise PerfAnalyzerError(f"pip download {requirement} left no wheel in {cache}")
    return found[-1]


def ensure_perf_analyzer(cache: Path) -> tuple[Path, Path]:
    """(binary, directory holding libcudart.so.12), downloading the two wheels once."""
    binary = cache / "pa" / _PA_MEMBER
    cudart = cache / "cudart" / _CUDART_DIR
    if not binary.exists():
        wheel = _download(cache, "tritonclient==2.41.0")
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(_PA_MEMBER, cache / "pa")
        binary.chmod(0o755)
    if not (cudart / "libcudart.so.12").exists():
        wheel = _download(cache, "nvidia-cuda-runtime-cu12")
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if member.startswith(_CUDART_DIR):
                    zf.extract(member, cache / "cudart")
    return binary, cudart


def parse_csv(text: str) -> dict[str, float]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise PerfAnalyzerError("perf_analyzer wrote an empty CSV")
    row = rows[-1]
    return {
        "rps": float(row["Inferences/Second"]),
        "p50": float(row["p50 latency"]) / 1e3,
        "p90": float(row["p90 latency"]) / 1e3,
        "p99": float(row["p99 latency"]) / 1e3,
    }


def run(binary: Path, cudart: Path, url: str, protocol: str, model: str, concurrency: int,
        duration_s: float, work: Path) -> LoadRun:
    """One perf_analyzer run at one concurrency; any failed request makes it exit non-zero."""
    out_csv = work / f"pa-{model}-{protocol}-c{concurrency}.csv"
    interval_ms = max(500, int(duration_s * 1000 / 3))
    cmd = [str(binary), "-m", model, "-u", url, "-i", protocol, "-b", "1",
           "--concurrency-range", f"{concurrency}:{concurrency}",
           "--measurement-interval", str(interval_ms), "--max-trials", "6",
           "--stability-percentage", "100", "-f", str(out_csv)]
    env = {**os.environ,
           "LD_LIBRARY_PATH": f"{cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":")}
    logger.info("perf_analyzer %s c=%d -> %s", protocol, concurrency, url)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=duration_s * 8 + 120)
    if proc.returncode != 0 or not out_csv.exists():
        raise PerfAnalyzerError(
            f"perf_analyzer exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    parsed = parse_csv(out_csv.read_text())
    count = re.search(r"Request count:\s*(\d+)", proc.stdout)
    requests = int(count.group(1)) if count else 0
    endpoint = "v2-grpc" if protocol == "grpc" else "v2-http-binary"
    return LoadRun(server="capserve", model=model, client="perf_analyzer", endpoint=endpoint,
                   concurrency=concurrency, duration_s=interval_ms / 1e3, requests=requests,
                   errors=0, throughput_rps=parsed["rps"], p50_ms=parsed["p50"],
                   p90_ms=parsed["p90"], p99_ms=parsed["p99"],
                   note="last stable measurement window")
