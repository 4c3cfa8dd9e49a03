"""`bench/gpu.sh` run with `--device cpu` so the GPU harness cannot rot between GPU sittings:
the served models load with their `model_warmup`, every path answers with zero errors, and the
GPU section lands between its markers in the report without touching the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_gpu_harness_on_cpu_writes_its_section(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nkept text\n")
    proc = subprocess.run(
        ["bash", "bench/gpu.sh", "--device", "cpu", "--models", "resnet50", "--batches", "1,2",
         "--dtypes", "fp32", "--seconds", "0.2", "--concurrency", "1,2",
         "--out", str(tmp_path / "out"), "--docs", str(docs), "--img-dir", str(tmp_path / "img")],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
        env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (raw,) = (tmp_path / "out").glob("gpu-*.json")
    result = json.loads(raw.read_text())
    assert result["warmup_batches"] == [1, 2]
    assert set(result["load_seconds"]) >= {"resnet50_fp32"}
    paths = {(r["path"], r["batch"]) for r in result["runs"] if r["dtype"] == "fp32"}
    for path in ("in-process, input on GPU", "in-process, numpy in/out", "capserve core",
                 "capserve gRPC"):
        assert {(path, 1), (path, 2)} <= paths, path
    assert all(r["errors"] == 0 and r["items_per_s"] > 0 for r in result["runs"])
    # The wire columns: a client in another process, MiB/s beside items/s; with perf_analyzer
    # found, system shared memory too (without one, the report says why it is missing).
    wire = [r for r in result["runs"] if r["path"] in ("capserve gRPC", "capserve system shm")]
    assert all(r["client"] in ("perf_analyzer", "python gRPC client") and r["mib_per_s"] > 0
               for r in wire), wire
    if any(r["client"] == "perf_analyzer" for r in wire):
        assert {("capserve system shm", 1), ("capserve system shm", 2)} <= paths
    else:
        assert any("capserve system shm" in s["part"] for s in result["skipped"])
    served = [r for r in result["runs"] if r["path"] == "capserve core" and r["concurrency"] == 1
              and r["dtype"] == "fp32"]
    assert [r["mean_batch_size"] for r in served] == [1, 2]  # one caller: batches as sent
    text = docs.read_text()
    assert "kept text" in text and "### resnet50 fp32" in text and "Reading:" in text
    assert text.index("<!-- gpu-results:begin -->") < text.index("<!-- gpu-results:end -->")
