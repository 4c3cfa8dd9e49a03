"""Ratios capserve/TorchServe and capserve/in-process, and the issue's targets, met or missed."""

from __future__ import annotations

from typing import Any

from bench.schema import CeilingRun, LoadRun, Results

# The same client against both servers; these are the pairs the ratios compare.
_PAIRED = (("hey", "/predictions"), ("wrk", "/predictions"), ("grpc_asyncio", "Predictions-grpc"))


def _find(load: list[LoadRun], server: str, model: str, client: str, conc: int,
          endpoint: str | None = None) -> LoadRun | None:
    return next((r for r in load if r.server == server and r.model == model
                 and r.client == client and r.concurrency == conc
                 and (endpoint is None or r.endpoint == endpoint)), None)


def _ceiling_for(ceil: list[CeilingRun], runtime: str, model: str, conc: int) -> CeilingRun | None:
    """The in-process run at batch == concurrency, else the largest batch below it."""
    runs = sorted((c for c in ceil if c.runtime == runtime and c.model == model),
                  key=lambda c: c.batch)
    below = [c for c in runs if c.batch <= conc]
    return below[-1] if below else (runs[0] if runs else None)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b and a == a and b == b else None


def ratios_and_targets(results: Results) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ratios: list[dict[str, Any]] = []
    for run in results.load:
        if run.server != "capserve":
            continue
        if (run.client, run.endpoint) in _PAIRED:
            peer = _find(results.load, "torchserve", run.model, run.client, run.concurrency)
            if peer is not None and not run.errors and not peer.errors:
                ratios.append({
                    "kind": "capserve/torchserve", "model": run.model, "client": run.client,
                    "concurrency": run.concurrency,
                    "throughput": _ratio(run.throughput_rps, peer.throughput_rps),
                    "p50": _ratio(run.p50_ms, peer.p50_ms),
                })
        ceil = _ceiling_for(results.ceiling, "onnxruntime", run.model, run.concurrency)
        if ceil is not None and not run.errors and run.client in ("hey", "wrk", "perf_analyzer"):
            ratios.append({
                "kind": "capserve/in-process", "model": run.model, "client": run.client,
                "endpoint": run.endpoint, "concurrency": run.concurrency,
                "ceiling": f"onnxruntime batch {ceil.batch}",
                "throughput": _ratio(run.throughput_rps, ceil.items_per_s),
            })
    return ratios, _targets(results)


def _target(name: str, threshold: str, runs: list[LoadRun | CeilingRun | None],
            value: Any, passes: Any, detail: str) -> dict[str, Any]:
    """A target row; runs with errors make their numbers invalid, so the target is missed."""
    if any(r is None for r in runs):
        return {"target": name, "threshold": threshold, "measured": None, "met": None,
                "detail": "not measured"}
    measured = value()
    errors = sum(r.errors for r in runs if isinstance(r, LoadRun))
    met = measured is not None and passes(measured) and errors == 0
    if errors:
        detail += f" (those runs had {errors} errors)"
    return {"target": name, "threshold": threshold, "measured": measured, "met": met,
            "detail": detail}


def _targets(results: Results) -> list[dict[str, Any]]:
    load = results.load
    out = []
    cap = _find(load, "capserve", "lenet", "hey", 32)
    ts = _find(load, "torchserve", "lenet", "hey", 32)
    out.append(_target(
        "lenet /predictions c=32 throughput vs TorchServe", ">= 5x", [cap, ts],
        lambda: _ratio(cap.throughput_rps, ts.throughput_rps),  # type: ignore[union-attr]
        lambda v: v >= 5.0,
        f"capserve {cap.throughput_rps:.0f} req/s, TorchServe {ts.throughput_rps:.0f} req/s"
        if cap and ts else ""))
    cap = _find(load, "capserve", "lenet", "hey", 1)
    ts = _find(load, "torchserve", "lenet", "hey", 1)
    out.append(_target(
        "lenet /predictions c=1 p50 vs TorchServe", "<= 0.1x", [cap, ts],
        lambda: _ratio(cap.p50_ms, ts.p50_ms),  # type: ignore[union-attr]
        lambda v: v <= 0.1,
        f"capserve {cap.p50_ms:.2f} ms, TorchServe {ts.p50_ms:.2f} ms" if cap and ts else ""))
    cap = _find(load, "capserve", "resnet18", "hey", 32)
    ceil = next((c for c in results.ceiling if c.runtime == "onnxruntime"
                 and c.model == "resnet18" and c.batch == 32), None)
    out.append(_target(
        "resnet18 /predictions c=32 vs in-process ONNX Runtime batch 32", ">= 0.9x", [cap, ceil],
        lambda: _ratio(cap.throughput_rps, ceil.items_per_s),  # type: ignore[union-attr]
        lambda v: v >= 0.9,
        f"capserve {cap.throughput_rps:.1f} req/s, in-process {ceil.items_per_s:.1f} items/s"
        if cap and ceil else ""))
    out.extend(_worker_targets(load))
    errors = results.total_errors()
    out.append({"target": "every run 0 errors", "threshold": "0", "measured": float(errors),
                "met": errors == 0 and bool(load),
                "detail": f"{len(load)} load runs, {len(results.skipped)} parts skipped"})
    return out


def _worker_targets(load: list[LoadRun]) -> list[dict[str, Any]]:
    """The multi-core targets: auto workers against one process, and CPU per request."""
    auto = _find(load, "capserve", "lenet", "perf_analyzer", 32, "v2-grpc")
    one = _find(load, "capserve-w1", "lenet", "perf_analyzer", 32, "v2-grpc")
    rows = [_target(
        "lenet v2-grpc perf_analyzer c=32: --workers auto vs --workers 1", ">= 1.5x",
        [auto, one], lambda: _ratio(auto.throughput_rps, one.throughput_rps),  # type: ignore[union-attr]
        lambda v: v >= 1.5,
        f"auto {auto.throughput_rps:.0f} infer/s, one process {one.throughput_rps:.0f} infer/s"
        if auto and one else "")]
    cap = _find(load, "capserve", "lenet", "hey", 32)
    ts = _find(load, "torchserve", "lenet", "hey", 32)
    rows.append(_target(
        "lenet /predictions c=32 throughput vs TorchServe (workers auto)", ">= 3x", [cap, ts],
        lambda: _ratio(cap.throughput_rps, ts.throughput_rps),  # type: ignore[union-attr]
        lambda v: v >= 3.0,
        f"capserve {cap.throughput_rps:.0f} req/s, TorchServe {ts.throughput_rps:.0f} req/s"
        if cap and ts else ""))
    rows.append(_target(
        "lenet /predictions c=32 server CPU per request vs TorchServe", "<= 0.25x", [cap, ts],
        lambda: _ratio(cap.server_cpu_us or 0.0, ts.server_cpu_us or 0.0),  # type: ignore[union-attr]
        lambda v: v <= 0.25,
        f"capserve {cap.server_cpu_us} us, TorchServe {ts.server_cpu_us} us of server CPU"
        if cap and ts else ""))
    return rows
