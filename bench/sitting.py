"""One benchmark sitting: ceiling, capserve, TorchServe, profile — then ratios and targets."""

from __future__ import annotations

import datetime
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

from bench import ceiling, grpc_client, loadgen, machine, perf_analyzer, servers
from bench.images import ImageSpec, spec_from_parameters, write_png
from bench.options import Options
from bench.schema import SCHEMA_VERSION, LoadRun, Results, Skipped
from bench.store import BenchStore, ensure_resnet18, prepare_store
from bench.targets import ratios_and_targets

logger = logging.getLogger(__name__)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _attempt(results: Results, part: str, fn: Callable[[], object]) -> object | None:
    """Run one part; a failure is recorded with its reason and the sitting goes on."""
    try:
        return fn()
    except Exception as exc:  # any failure of a part is reported, not fatal
        logger.error("%s failed: %s", part, exc)
        results.skipped.append(Skipped(part, f"{type(exc).__name__}: {str(exc)[:1500]}"))
        return None


def _server_threads(params: dict[str, str]) -> int:
    """The intra-op threads the server gives one instance: the config's, else every core."""
    if params.get("intra_op_thread_count", "").isdigit():
        return int(params["intra_op_thread_count"])
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _ceiling(opts: Options, store: BenchStore, specs: dict[str, ImageSpec],
             results: Results) -> None:
    for model in opts.models:
        threads = _server_threads(store.parameters[model])
        batches = opts.batches
        onnx = store.onnx_path(model)
        if onnx is not None:
            runs = _attempt(results, f"ceiling onnxruntime {model}", functools.partial(
                ceiling.onnxruntime_ceiling, model, onnx, specs[model], batches, threads,
                opts.ceiling_s))
            results.ceiling.extend(runs or [])  # type: ignore[arg-type]
        else:
            results.skipped.append(Skipped(f"ceiling onnxruntime {model}", "no model.onnx"))
        script = store.torchscript_path(model)
        if script is not None:
            runs = _attempt(results, f"ceiling torchscript {model}", functools.partial(
                ceiling.torchscript_ceiling, model, script, specs[model], batches, threads,
                opts.ceiling_s))
            results.ceiling.extend(runs or [])  # type: ignore[arg-type]
        else:
            results.skipped.append(Skipped(f"ceiling torchscript {model}",
                                           f"no {model}_torchscript in the store"))
        decode = _attempt(results, f"png decode {model}", functools.partial(
            ceiling.decode_rate, model, specs[model], max(opts.ceiling_s, 0.5)))
        if decode is not None:
            results.decode.append(decode)  # type: ignore[arg-type]


def _http_runs(opts: Options, server: servers.Server, bodies: dict[str, Path],
               results: Results) -> None:
    """hey / wrk / gRPC Predictions against one server, every model and concurrency."""
    for model in opts.models:
        for conc in opts.concurrency:
            url = f"{server.http}/predictions/{model}"
            drivers: list[tuple[str, Callable[[], LoadRun]]] = []
            if "hey" in opts.clients:
                drivers.append(("hey", functools.partial(
                    loadgen.run_hey, url, bodies[model], conc, opts.duration_s, server.name,
                    model)))
            if "wrk" in opts.clients:
                drivers.append(("wrk", functools.partial(
                    loadgen.run_wrk, url, bodies[model], conc, opts.duration_s, server.name,
                    model, opts.work)))
            if "grpc" in opts.clients:
                drivers.append(("grpc", functools.partial(
                    grpc_client.run, server.grpc_target, model, bodies[model].read_bytes(),
                    conc, opts.duration_s, server.name)))
            for name, drive in drivers:
                _measure(results, server, model, f"{server.name} {name} {model} c={conc}", drive)


def _measure(results: Results, server: servers.Server, model: str, part: str,
             drive: Callable[[], LoadRun]) -> None:
    before = servers.batch_counters(server, model) if server.name.startswith("capserve") else None
    cpu_before = servers.tree_cpu_seconds(server.proc.pid)
    run = _attempt(results, part, drive)
    if not isinstance(run, LoadRun):
        return
    run.server = server.name  # perf_analyzer's records say "capserve" whichever one ran
    if run.requests:
        cpu = servers.tree_cpu_seconds(server.proc.pid) - cpu_before
        run.server_cpu_us = round(cpu * 1e6 / run.requests, 1)
    if before is not None:
        after = servers.batch_counters(server, model)
        executions = after[1] - before[1]
        if executions > 0:
            run.mean_batch_size = round((after[0] - before[0]) / executions, 2)
    results.load.append(run)


def _perf_analyzer_runs(opts: Options, server: servers.Server, results: Results) -> None:
    tool = _attempt(results, "perf_analyzer binary",
                    functools.partial(perf_analyzer.ensure_perf_analyzer, opts.cache))
    if not isinstance(tool, tuple):
        return
    binary: Path = tool[0]
    cudart: Path = tool[1]
    for model in opts.models:
        for protocol, url in (("grpc", server.grpc_target), ("http", server.http[7:])):
            for conc in opts.concurrency:
                _measure(results, server, model, f"perf_analyzer {protocol} {model} c={conc}",
                         functools.partial(perf_analyzer.run, binary, cudart, url, protocol,
                                           model, conc, opts.duration_s, opts.work))


def _workers_sweep(opts: Options, store: BenchStore, bodies: dict[str, Path],
                   results: Results) -> None:
    """The same lenet loads on ``--workers 1`` (server "capserve-w1"), beside the ``auto``
    runs above: what the extra processes buy on this machine, in the same sitting."""
    conc = max(opts.concurrency)
    single = _attempt(results, "capserve --workers 1 start", lambda: servers.start_capserve(
        store.capserve_store, opts.work, extra_args=["--workers", "1"], name="capserve-w1"))
    if not isinstance(single, servers.Server):
        return
    sweep = Options(**{**opts.__dict__, "models": ["lenet"], "concurrency": [conc],
                       "clients": [c for c in opts.clients if c == "hey"] or ["hey"]})
    with servers.running(single):
        _http_runs(sweep, single, bodies, results)
        if "perf_analyzer" in opts.clients:
            _perf_analyzer_runs(sweep, single, results)


def run_sitting(opts: Options) -> Results:
    opts.work.mkdir(parents=True, exist_ok=True)
    results = Results(
        schema_version=SCHEMA_VERSION, started=_now(), finished="", smoke=opts.smoke,
        machine=machine.machine_info(), versions={},
        settings={"models": opts.models, "concurrency": opts.concurrency,
                  "duration_s": opts.duration_s, "ceiling_batches": opts.batches,
                  "ceiling_s": opts.ceiling_s, "clients": opts.clients,
                  "capserve_max_batch": opts.capserve_max_batch,
                  "torchserve_batch": opts.torchserve_batch, "max_delay_ms": opts.max_delay_ms,
                  "torchserve_workers_per_model": 1, "store": str(opts.store),
                  "capserve_workers": "auto", "workers_sweep": opts.workers_sweep},
    )
    extra = []
    if "resnet18" in opts.models:
        # Cached beside the default results (not under --out) so every sitting reuses it.
        extra.append(ensure_resnet18(servers.REPO_ROOT / "bench" / "results" / "cache",
                                     opts.capserve_max_batch))
    store = prepare_store(opts.store, opts.work, opts.models, opts.capserve_max_batch,
                          opts.max_delay_ms * 1000, extra)
    specs = {m: spec_from_parameters(store.parameters[m]) for m in opts.models}
    bodies = {m: write_png(opts.work / f"{m}.png", specs[m]) for m in opts.models}

    _ceiling(opts, store, specs, results)

    capserve = servers.start_capserve(store.capserve_store, opts.work,
                                      extra_args=["--workers", "auto"])
    with servers.running(capserve):
        _http_runs(opts, capserve, bodies, results)
        if "perf_analyzer" in opts.clients:
            _perf_analyzer_runs(opts, capserve, results)

    if opts.workers_sweep and "lenet" in opts.models:
        _workers_sweep(opts, store, bodies, results)

    if opts.torchserve:
        archives = {m: store.archives[m] for m in opts.models if m in store.archives}
        for missing in sorted(set(opts.models) - set(archives)):
            results.skipped.append(Skipped(f"torchserve {missing}", f"no {missing}.mar"))
        if archives:
            ts = _attempt(results, "torchserve start", lambda: servers.start_torchserve(
                store.torchserve_store, archives, opts.work, opts.torchserve_batch,
                opts.max_delay_ms))
            if isinstance(ts, servers.Server):
                with servers.running(ts):
                    ts_opts = Options(**{**opts.__dict__, "models": list(archives),
                                         "clients": [c for c in opts.clients
                                                     if c != "perf_analyzer"]})
                    _http_runs(ts_opts, ts, bodies, results)

    if opts.profile and "lenet" in opts.models:
        from bench.profile import profile_lenet

        summary = _attempt(results, "py-spy profile", lambda: profile_lenet(
            store.capserve_store, opts.work, opts.out, bodies["lenet"], "lenet",
            max(opts.concurrency), opts.profile_s))
        if isinstance(summary, dict):
            results.profile = summary

    results.versions = machine.versions(
        perf_analyzer="perf_analyzer" if "perf_analyzer" in opts.clients else None)
    results.ratios, results.targets = ratios_and_targets(results)
    results.finished = _now()
    return results
