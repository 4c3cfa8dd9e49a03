"""The reliability sections. Each starts its own server(s), measures, stops them, and returns a
Section: its figures and, for every target of issue 12, the measured value and met / missed."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.reliability import clients, corpus, fuzz, load, models, server
from bench.reliability.options import Options

logger = logging.getLogger(__name__)


@dataclass
class Target:
    name: str
    threshold: str
    measured: str
    met: bool | None  # None: could not be measured

    def to_json(self) -> dict[str, Any]:
        return {"target": self.name, "threshold": self.threshold, "measured": self.measured,
                "met": self.met}


@dataclass
class Section:
    name: str
    targets: list[Target] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "targets": [t.to_json() for t in self.targets],
                "figures": self.figures, "skipped": self.skipped, "error": self.error}


def _mb(n: int) -> float:
    return round(n / 2**20, 1)


def _token_file(work: Path) -> tuple[str, Path]:
    token = secrets.token_hex(16)
    path = work / "token"
    path.write_text(token + "\n")
    os.chmod(path, 0o600)
    return token, path


def _lenet_store(opts: Options, work: Path) -> Path:
    store = work / "store"
    if not store.exists():
        models.copy_models(opts.store, store, [opts.load_model])
    return store


def _lenet_request(opts: Options, srv: server.RelServer, batch: int) -> bytes:
    return load.v2_binary_request(opts.load_model, "input", batch, f"127.0.0.1:{srv.http_port}")


# ------------------------------------------------------------------ corpus

def corpus_section(opts: Options) -> Section:
    work = opts.work / "corpus"
    work.mkdir(parents=True, exist_ok=True)
    token, token_path = _token_file(work)
    args = ["--enable-model-control", "--api-token-file", str(token_path),
            "--shutdown-grace-seconds", "5"]
    names = sorted(p.name for p in opts.store.iterdir() if (p / "config.pbtxt").is_file())

    def restart() -> server.RelServer:
        return server.start(opts.store, work, args, memory_mb=opts.memory_mb,
                            rss_kill_mb=opts.rss_kill_mb)

    srv = restart()
    try:
        ctx = fuzz.discover(srv.http, names, token)
        cases = corpus.generate(opts.seed, opts.corpus_size, ctx)
        result, srv = asyncio.run(fuzz.run_corpus(cases, srv, restart, opts.concurrency,
                                                  opts.request_timeout))
    finally:
        srv.stop()
    data = result.to_json()
    section = Section("Malformed-request corpus", figures=data)
    surfaces = sorted({k.split("/")[0] for k in data["kinds"]})
    data["surfaces"] = surfaces
    section.targets = [
        Target("cases sent", ">= 10,000", f"{result.cases:,}", result.cases >= 10_000),
        Target("crashes (server process died)", "0", str(len(result.crashes)),
               not result.crashes),
        Target("5xx answers (500/502/504, INTERNAL/UNKNOWN/DATA_LOSS)", "0",
               f"{data['failures_5xx']} over {len(result.failing_kinds())} kinds",
               data["failures_5xx"] == 0),
        Target("requests with no answer in the per-request timeout", "0",
               str(data["timeouts"]), data["timeouts"] == 0),
        Target("p99 answer time", "reported", f"{data['p99_answer_ms']:.1f} ms", None),
        Target("RSS before / after / peak", "reported",
               f"{data['rss_before_mb']:.0f} / {data['rss_after_mb']:.0f} / "
               f"{data['rss_peak_mb']:.0f} MB", None),
    ]
    return section


# ------------------------------------------------------------------ overload

async def _capacity(opts: Options, srv: server.RelServer, payload: bytes) -> float:
    stop = asyncio.Event()
    task = asyncio.create_task(load.closed_loop(srv.http_port, [payload], 16, stop, 30.0))
    await asyncio.sleep(opts.capacity_seconds)
    stop.set()
    run = await task
    return run.rate("200")


def overload_section(opts: Options) -> Section:
    work = opts.work / "overload"
    store = models.copy_models(opts.store, work / "store", [opts.overload_model])
    srv = server.start(store, work, ["--shutdown-grace-seconds", "5"],
                       memory_mb=opts.memory_mb, rss_kill_mb=opts.rss_kill_mb)
    try:
        payload = load.v2_binary_request(opts.overload_model, "input", opts.overload_batch,
                                         f"127.0.0.1:{srv.http_port}", output="")
        capacity = asyncio.run(_capacity(opts, srv, payload))
        time.sleep(1.0)
        rss_before = srv.usage().rss_bytes
        rate = capacity * 10
        peak = [rss_before]
        stop_sampling = False

        def sample_rss() -> None:
            while not stop_sampling:
                peak[0] = max(peak[0], srv.usage().rss_bytes)
                time.sleep(0.5)

        import threading

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        run = asyncio.run(load.open_loop(srv.http_port, payload, rate, opts.overload_seconds,
                                         timeout=opts.overload_timeout,
                                         max_connections=opts.max_connections,
                                         hang_after=opts.hang_after))
        stop_sampling = True
        sampler.join()
        alive = srv.alive()
        after = srv.usage()
        probe = asyncio.run(clients.http_once(srv.http_port, load.v2_binary_request(
            opts.overload_model, "input", 1, f"127.0.0.1:{srv.http_port}", output=""), 30.0))
    finally:
        code = srv.stop()
    rejected = [s.seconds for s in run.samples if s.status in ("503", "429")]
    p99_reject = fuzz.percentile(rejected, 99) * 1e3
    sent = len(run.samples) + run.hung
    offered = sent / run.seconds if run.seconds else 0.0
    growth = (peak[0] - rss_before) / rss_before if rss_before else float("nan")
    figures: dict[str, Any] = {
        "model": opts.overload_model, "capacity_rps": round(capacity, 1),
        "batch": opts.overload_batch,
        "target_rate_rps": round(rate, 1), "offered_rps": round(offered, 1),
        "offered_multiple": round(offered / capacity, 2) if capacity else None,
        "skipped_by_client": run.skipped, "seconds": round(run.seconds, 1),
        "statuses": run.statuses(), "unanswered_at_stop": run.unanswered_at_stop,
        "hung_after_stop": run.hung, "rss_before_mb": _mb(rss_before), "rss_peak_mb": _mb(peak[0]),
        "rss_after_mb": _mb(after.rss_bytes), "p99_rejection_ms": p99_reject,
        "rejections": len(rejected), "ok_p99_ms": fuzz.percentile(
            [s.seconds for s in run.samples if s.status == "200"], 99) * 1e3,
        "examples": run.examples, "alive_after": alive, "probe_after": probe.status or probe.outcome, "exit_code": code,
    }
    section = Section("Overload at 10x capacity", figures=figures)
    section.targets = [
        Target("offered load", ">= 10x capacity",
               f"{figures['offered_multiple']}x of {capacity:.0f} req/s ({opts.overload_model}, "
               f"batch {opts.overload_batch}) for {run.seconds:.0f} s",
               bool(figures["offered_multiple"] and figures["offered_multiple"] >= 9.5)),
        Target("RSS bound (peak over RSS before the load)", "< +25 %",
               f"{_mb(rss_before)} -> {_mb(peak[0])} MB ({growth * 100:+.1f} %)", growth < 0.25),
        Target("time to 503/UNAVAILABLE, p99", "< 10 ms",
               f"{p99_reject:.1f} ms over {len(rejected)} rejections" if rejected
               else "no 503 at all", bool(rejected) and p99_reject < 10.0),
        Target(f"hung requests {opts.hang_after:.0f} s after the load stopped", "0",
               str(run.hung), run.hung == 0),
        Target("server answers after the load", "200", figures["probe_after"],
               figures["probe_after"] == "200"),
    ]
    return section


# ------------------------------------------------------------------ SIGTERM under load

def sigterm_section(opts: Options) -> Section:
    work = opts.work / "sigterm"
    grace = 5
    srv = server.start(_lenet_store(opts, work), work, ["--shutdown-grace-seconds", str(grace)],
                       memory_mb=opts.memory_mb, rss_kill_mb=opts.rss_kill_mb)
    payload = _lenet_request(opts, srv, 1)  # builds bytes only: cannot fail

    async def drive() -> tuple[load.LoadRun, float, float]:
        stop = asyncio.Event()
        task = asyncio.create_task(load.closed_loop(srv.http_port, [payload], 16, stop, 30.0))
        await asyncio.sleep(opts.sigterm_load_seconds)
        signalled = time.monotonic()
        srv.signal(signal.SIGTERM)
        while srv.alive() and time.monotonic() - signalled < grace + 30:
            await asyncio.sleep(0.05)
        exit_after = time.monotonic() - signalled
        stop.set()
        run = await task
        return run, exit_after, signalled

    try:
        run, exit_after, _ = asyncio.run(drive())
    finally:
        code = srv.stop()
    statuses = run.statuses()
    lost = {s: n for s, n in statuses.items() if s not in ("200", "503", "closed", "timeout")}
    timeouts = statuses.get("timeout", 0)
    figures = {"statuses": statuses, "exit_code": code, "exit_seconds": round(exit_after, 2),
               "grace_seconds": grace, "lost": lost, "examples": run.examples}
    section = Section("SIGTERM under load", figures=figures)
    section.targets = [
        Target("accepted requests lost (a status other than 200 or 503)", "0",
               str(sum(lost.values())) + (f" {lost}" if lost else ""), not lost),
        Target("requests left without an answer (timeout)", "0", str(timeouts), timeouts == 0),
        Target("exit code and time after SIGTERM", f"reported (grace {grace} s)",
               f"exit {code} after {exit_after:.1f} s", None),
    ]
    return section


# ------------------------------------------------------------------ hot version swap

def swap_section(opts: Options) -> Section:
    work = opts.work / "swap"
    store = _lenet_store(opts, work)
    token, token_path = _token_file(work)
    srv = server.start(store, work, ["--enable-model-control", "--api-token-file",
                                     str(token_path), "--shutdown-grace-seconds", "5"],
                       memory_mb=opts.memory_mb, rss_kill_mb=opts.rss_kill_mb)
    payload = _lenet_request(opts, srv, 1)
    model = opts.load_model

    async def drive() -> tuple[load.LoadRun, clients.Answer, clients.Answer]:
        stop = asyncio.Event()
        task = asyncio.create_task(load.closed_loop(srv.http_port, [payload], 8, stop, 30.0))
        await asyncio.sleep(opts.swap_seconds / 2)
        shutil.copytree(store / model / "1", store / model / "2")
        request = clients.build_http("POST", f"/v2/repository/models/{model}/load",
                                     (("Authorization", f"Bearer {token}"),), b"",
                                     f"127.0.0.1:{srv.http_port}")
        loaded = await clients.http_once(srv.http_port, request, 120.0)
        await asyncio.sleep(opts.swap_seconds / 2)
        stop.set()
        run = await task
        ready = await clients.http_once(srv.http_port, clients.build_http(
            "GET", f"/v2/models/{model}/versions/2/ready", (), b"",
            f"127.0.0.1:{srv.http_port}"), 10.0)
        return run, loaded, ready

    try:
        run, loaded, ready = asyncio.run(drive())
    finally:
        srv.stop()
    statuses = run.statuses()
    errors = sum(n for s, n in statuses.items() if s != "200")
    figures = {"statuses": statuses, "examples": run.examples,
               "load_status": loaded.status or loaded.outcome,
               "load_seconds": round(loaded.seconds, 2),
               "load_answer": loaded.body[:200].decode(errors="replace"),
               "version_2_ready": ready.status}
    section = Section("Hot version swap under load", figures=figures)
    section.targets = [
        Target("errors during the swap", "0", f"{errors} of {len(run.samples)}", errors == 0),
        Target("version 2 loaded and ready", "200", f"load {figures['load_status']}, "
               f"ready {ready.status or ready.outcome}", loaded.status == "200" and
               ready.status == "200"),
    ]
    return section


# ------------------------------------------------------------------ stuck backend

def stuck_section(opts: Options) -> Section:
    work = opts.work / "stuck"
    store = work / "store"
    if not (store / "stuck").exists():
        models.write_stuck_model(store / "stuck")
    grace = 3
    srv = server.start(store, work, ["--shutdown-grace-seconds", str(grace)],
                       memory_mb=opts.memory_mb, rss_kill_mb=opts.rss_kill_mb)
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0]}]}'
    request = clients.build_http("POST", "/v2/models/stuck/infer",
                                 (("Content-Type", "application/json"),), body,
                                 f"127.0.0.1:{srv.http_port}")

    async def drive() -> tuple[float, list[clients.Answer]]:
        calls = [asyncio.create_task(clients.http_once(srv.http_port, request, grace + 40))
                 for _ in range(3)]
        await asyncio.sleep(1.5)
        signalled = time.monotonic()
        srv.signal(signal.SIGTERM)
        while srv.alive() and time.monotonic() - signalled < grace + 30:
            await asyncio.sleep(0.05)
        exit_after = time.monotonic() - signalled
        answers = await asyncio.gather(*calls)
        return exit_after, list(answers)

    try:
        exit_after, answers = asyncio.run(drive())
        exited = not srv.alive()
    finally:
        code = srv.stop()
    figures: dict[str, Any] = {"exit_seconds": round(exit_after, 2), "grace_seconds": grace,
               "exited_by_itself": exited, "exit_code": code,
               "answers": [a.status or a.outcome for a in answers]}
    section = Section("Stuck backend", figures=figures)
    section.targets = [
        Target("SIGTERM exit with an execution that never ends", f"<= grace + 5 s = {grace + 5} s",
               f"{exit_after:.1f} s" + ("" if exited else " (did not exit: killed)"),
               exited and exit_after <= grace + 5),
        Target("what the requests on the stuck model got", "reported",
               ", ".join(figures["answers"]), None),
    ]
    return section


# ------------------------------------------------------------------ soak

def _soak_payloads(opts: Options, srv: server.RelServer, token: str) -> list[bytes]:
    """Valid requests of both dialects with some malformed ones between them."""
    host = f"127.0.0.1:{srv.http_port}"
    good = [_lenet_request(opts, srv, 1), _lenet_request(opts, srv, 8)]
    from bench.reliability import images

    png = dict(images.valid_images())["png-L"]
    good.append(clients.build_http("POST", f"/predictions/{opts.load_model}",
                                   (("Content-Type", "image/png"),), png, host, keep_alive=True))
    ctx = corpus.Context([corpus.ModelInfo(opts.load_model, "input", "FP32", (1, 28, 28), 32)],
                         token, list(images.valid_images()), [])
    bad = []
    for case in corpus.generate(opts.seed + 1, 400, ctx):
        # Framing cases close or confuse a keep-alive connection: the corpus covers them.
        if case.transport == "http" and case.port == "http" and case.content_length is None \
                and not case.kind.startswith("http/") and len(case.body) < 200_000:
            bad.append(clients.build_http(case.method, case.path, case.headers, case.body, host,
                                          keep_alive=True))
    out: list[bytes] = []
    for i in range(max(len(bad), 40)):
        out.extend(good)
        if bad:
            out.append(bad[i % len(bad)])
    return out


def soak_section(opts: Options) -> Section:
    work = opts.work / "soak"
    srv = server.start(_lenet_store(opts, work), work, ["--shutdown-grace-seconds", "5"],
                       memory_mb=opts.memory_mb, rss_kill_mb=opts.rss_kill_mb)
    warm = max(5.0, min(60.0, opts.soak_seconds * 0.1))
    samples: list[dict[str, float]] = []

    async def phase(seconds: float) -> load.LoadRun:
        stop = asyncio.Event()
        task = asyncio.create_task(load.closed_loop(srv.http_port, payloads, 4, stop, 30.0))
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(min(5.0, seconds))
            u = srv.usage()
            samples.append({"t": round(time.monotonic() - t0, 1), "rss_mb": _mb(u.rss_bytes),
                            "fds": u.fds})
        stop.set()
        return await task

    try:
        payloads = _soak_payloads(opts, srv, "x")
        asyncio.run(phase(warm))
        time.sleep(2.0)
        base = srv.usage()
        run = asyncio.run(phase(opts.soak_seconds))
        time.sleep(2.0)
        final = srv.usage()
        alive = srv.alive()
    finally:
        srv.stop()
    growth = (final.rss_bytes - base.rss_bytes) / base.rss_bytes
    statuses = run.statuses()
    figures = {"seconds": round(run.seconds, 1), "requests": len(run.samples),
               "statuses": statuses, "examples": run.examples, "rss_base_mb": _mb(base.rss_bytes),
               "rss_final_mb": _mb(final.rss_bytes), "rss_growth_pct": round(growth * 100, 2),
               "fds_base": base.fds, "fds_final": final.fds, "alive": alive,
               "samples": samples[-40:]}
    failures = sum(n for s, n in statuses.items() if fuzz.is_failure(s) or s == "timeout")
    section = Section(f"Soak ({run.seconds:.0f} s)", figures=figures)
    section.targets = [
        Target("RSS growth (after warm-up -> end, both at rest)", "< 5 %",
               f"{_mb(base.rss_bytes)} -> {_mb(final.rss_bytes)} MB ({growth * 100:+.2f} %)",
               growth < 0.05),
        Target("open descriptors growth", "0", f"{base.fds} -> {final.fds}",
               final.fds <= base.fds),
        Target("5xx or unanswered during the soak", "0", str(failures), failures == 0),
    ]
    return section


# ------------------------------------------------------------------ worker killed

def workers_section(opts: Options) -> Section:
    if "--workers" not in server.server_flags():
        return Section("Worker killed under load",
                       skipped="the server does not accept --workers yet (python -m serving "
                               "--help); rerun once the multi-core issue has landed")
    work = opts.work / "workers"
    srv = server.start(_lenet_store(opts, work), work, ["--workers", "2",
                                                        "--shutdown-grace-seconds", "5"],
                       memory_mb=opts.memory_mb, rss_kill_mb=opts.rss_kill_mb)
    payload = _lenet_request(opts, srv, 1)

    async def drive() -> tuple[load.LoadRun, int, float]:
        stop = asyncio.Event()
        task = asyncio.create_task(load.closed_loop(srv.http_port, [payload], 8, stop, 30.0))
        await asyncio.sleep(2.0)
        killed = 0
        with_children = psutil.Process(srv.proc.pid).children(recursive=False)
        workers = [p for p in with_children if "serving" in " ".join(p.cmdline())]
        if workers:
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
        kill_at = time.perf_counter()
        await asyncio.sleep(opts.worker_seconds)
        stop.set()
        return await task, killed, kill_at

    try:
        usage_before = srv.usage()
        run, killed, _ = asyncio.run(drive())
        alive = srv.alive()
        usage_after = srv.usage()
    finally:
        srv.stop()
    statuses = run.statuses()
    errors = sum(n for s, n in statuses.items() if s not in ("200", "503"))
    tail = [s for s in run.samples if s.sent > run.seconds - 2.0]
    tail_ok = sum(1 for s in tail if s.status == "200")
    figures = {"killed_pid": killed, "statuses": statuses, "examples": run.examples, "supervisor_alive": alive,
               "processes_before": usage_before.processes, "processes_after": usage_after.processes,
               "rss_before_mb": _mb(usage_before.rss_bytes),
               "rss_after_mb": _mb(usage_after.rss_bytes), "ok_in_last_2s": tail_ok}
    section = Section("Worker killed under load", figures=figures)
    section.targets = [
        Target("a worker process found and killed", "yes", str(killed or "none"), bool(killed)),
        Target("server keeps serving (200s in the last 2 s)", "> 0", str(tail_ok), tail_ok > 0),
        Target("errors other than 503 (at most the killed worker's in-flight requests)",
               "<= 8", str(errors), errors <= 8),
    ]
    return section


SECTIONS = {
    "corpus": corpus_section, "overload": overload_section, "sigterm": sigterm_section,
    "swap": swap_section, "stuck": stuck_section, "soak": soak_section,
    "workers": workers_section,
}
