"""`python -m bench --smoke` end to end, so the benchmark harness cannot rot.

A real capserve on the default store, real `hey` and the asyncio gRPC client against
`/predictions/lenet` and TorchServe's Predictions RPC, the in-process ONNX Runtime/TorchScript
ceiling and the PNG decode rate: the JSON must carry every field and zero errors. No timing is
asserted (this machine is shared); the run is bounded to a few seconds of load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.schema import CeilingRun, DecodeRun, LoadRun, Results, field_names

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_smoke_sitting_writes_complete_results_with_zero_errors(
    default_store: Path, tmp_path: Path
) -> None:
    if shutil.which("hey") is None:
        pytest.skip("hey is not installed (scripts/system-deps.sh installs it)")
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--store", str(default_store),
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=200,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "latest.json").read_text())
    assert set(field_names(Results)) <= set(results)
    assert results["smoke"] is True
    assert results["skipped"] == [], results["skipped"]
    for key, cls in (("load", LoadRun), ("ceiling", CeilingRun), ("decode", DecodeRun)):
        assert results[key], f"no {key} records"
        for record in results[key]:
            assert set(field_names(cls)) <= set(record), (key, record)

    load = results["load"]
    assert {(r["client"], r["endpoint"]) for r in load} == {
        ("hey", "/predictions"), ("grpc_asyncio", "Predictions-grpc")}
    # The default server runs --workers auto; the sweep adds the same hey load on --workers 1.
    assert {r["server"] for r in load} == {"capserve", "capserve-w1"}
    assert [r["client"] for r in load if r["server"] == "capserve-w1"] == ["hey"]
    for run in load:
        assert run["model"] == "lenet"
        # CPU of the server's whole process tree, per request: some CPU was spent on each.
        assert run["server_cpu_us"] is not None and run["server_cpu_us"] > 0, run
        assert run["concurrency"] == 2
        assert run["errors"] == 0, run
        assert run["requests"] > 0 and run["throughput_rps"] > 0, run
        assert 0 < run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"], run
        # Read from capserve's own Prometheus metrics: every executed batch holds >= 1 request.
        assert run["mean_batch_size"] is not None and run["mean_batch_size"] >= 1, run

    ceiling = {(c["runtime"], c["batch"]) for c in results["ceiling"]}
    assert ceiling == {("onnxruntime", 1), ("onnxruntime", 2), ("torchscript", 1),
                       ("torchscript", 2)}
    assert all(c["items_per_s"] > 0 for c in results["ceiling"])
    assert results["decode"][0]["decodes_per_s"] > 0
    assert any(t["target"] == "every run 0 errors" and t["met"] for t in results["targets"])
    assert any(r["kind"] == "capserve/in-process" for r in results["ratios"])

    report = (out / "benchmarks.md").read_text()
    assert "## lenet" in report and "| capserve | hey | /predictions | 2 |" in report
    assert list((out / "img").glob("throughput-lenet.png"))
