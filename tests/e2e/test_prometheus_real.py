"""A real Prometheus scrapes a real capserve with the project's own configuration and rules.

Debian's `prometheus` binary runs on a free loopback port with deploy/prometheus/prometheus.yml,
rewritten only where a test must differ: the capserve target (the test server's metrics port),
1 s scrape and evaluation intervals, and absolute rule-file paths. The server runs two worker
processes on a store holding only the model under test (each worker loads it). The test sends
v2 inference requests and polls the query API until capserve's and Triton's request counters and
the recording rules show them, and checks that every worker's gauges arrive with their `worker`
label. Last, every query of both Grafana dashboards runs against what was scraped.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.ports import free_port
from tests.helpers.server import ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy/prometheus"
DASHBOARDS = ROOT / "deploy/grafana/dashboards"
MODEL = "lenet"
WORKERS = 2


def _prometheus_config(metrics_port: int, prom_port: int) -> dict[str, Any]:
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["evaluation_interval"] = "1s"
    cfg["rule_files"] = [str((PROM_DIR / f).resolve()) for f in cfg["rule_files"]]
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    assert "capserve" in jobs, "prometheus.yml lost its capserve job"
    jobs["capserve"]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
    # TorchServe is not part of this test; its target would only be down.
    cfg["scrape_configs"] = [jobs["capserve"], jobs["prometheus"]]
    return dict(cfg)


@pytest.fixture
def server(default_store: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    # Only the model under test: every worker loads the whole store.
    store = tmp_path / "store"
    shutil.copytree(default_store / MODEL, store / MODEL)
    srv = start_server(store, tmp_path,
                       env={"OMP_NUM_THREADS": "1", "CAPSERVE_WORKERS": str(WORKERS)})
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def prometheus(server: ServerProcess, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package prometheus; make system-deps)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(_prometheus_config(server.metrics_port, port)))
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _get(f"{base}/-/ready") is not None, 30, "prometheus ready", proc, log_path)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bytes(resp.read())
    except (urllib.error.URLError, OSError):
        return None


def _wait(ok: Callable[[], bool], timeout: float, what: str,
          proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited:\n{log.read_text() if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f":\n{log.read_text()}" if log else ""))
        time.sleep(0.25)


def _results(base: str, promql: str) -> list[dict[str, Any]]:
    """Instant query -> its samples, each {"metric": labels, "value": [time, text]}."""
    raw = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    if raw is None:
        return []
    body = json.loads(raw)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _query(base: str, promql: str) -> dict[str, float]:
    """Instant query -> {model label (or ''): value}."""
    return {r["metric"].get("model", ""): float(r["value"][1]) for r in _results(base, promql)}


def _workers(base: str, promql: str) -> set[str]:
    """The `worker` labels of a query's samples."""
    return {r["metric"].get("worker", "") for r in _results(base, promql)}


def _shows(base: str, promql: str, value: float) -> bool:
    return _query(base, promql).get(MODEL) == value


def _infer(server: ServerProcess, shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": [0.5] * n}]}
    req = urllib.request.Request(f"{server.base}/v2/models/{MODEL}/infer",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_prometheus_scrapes_requests_and_records_rules(server: ServerProcess,
                                                       prometheus: str) -> None:
    _wait(lambda: _query(prometheus, 'up{job="capserve"}').get("") == 1.0, 30,
          "the first capserve scrape")
    # Two bursts with a scrape between them: rate() needs a counter to rise between samples,
    # and a series first seen at its final value shows no rise. Each burst has one request
    # with the wrong shape, which is refused and must count as a failure of that model.
    ok_total = f'sum by (model) (capserve_request_success_total{{job="capserve",model="{MODEL}"}})'
    failed = f'sum by (model) (capserve_request_failure_total{{model="{MODEL}",reason="invalid"}})'
    # Triton's names for the same requests: an invalid request is Triton's reason OTHER.
    nv_ok = f'sum by (model) (nv_inference_request_success{{job="capserve",model="{MODEL}"}})'
    nv_failed = f'sum by (model) (nv_inference_request_failure{{model="{MODEL}",reason="OTHER"}})'
    sent_ok = sent_bad = 0
    for burst in (5, 10):
        for _ in range(burst):
            assert _infer(server, [1, 1, 28, 28]) == 200
        assert _infer(server, [1, 3, 28, 28]) == 400
        sent_ok, sent_bad = sent_ok + burst, sent_bad + 1
        _wait(partial(_shows, prometheus, ok_total, sent_ok), 20,
              f"{sent_ok} successful requests in Prometheus")
        _wait(partial(_shows, prometheus, failed, sent_bad), 20,
              f"{sent_bad} refused requests in Prometheus")
        _wait(partial(_shows, prometheus, nv_ok, sent_ok), 20,
              f"{sent_ok} successful requests under Triton's name")
        _wait(partial(_shows, prometheus, nv_failed, sent_bad), 20,
              f"{sent_bad} refused requests under Triton's name")

    rate = f'model:capserve_requests:rate1m{{model="{MODEL}"}}'
    _wait(lambda: _query(prometheus, rate).get(MODEL, 0.0) > 0, 20, "the request-rate rule")
    ratio = f'model:capserve_request_errors:ratio_rate5m{{model="{MODEL}"}}'
    _wait(lambda: 0 < _query(prometheus, ratio).get(MODEL, 0.0) < 0.5, 20, "the error-ratio rule")
    p95 = f'model:capserve_request_duration_seconds:p95_5m{{model="{MODEL}"}}'
    _wait(lambda: _query(prometheus, p95).get(MODEL, 0.0) > 0, 20, "the p95 latency rule")
    queue_us = f'model:nv_inference_queue_duration_us:mean_5m{{model="{MODEL}"}}'
    _wait(lambda: _query(prometheus, queue_us).get(MODEL, 0.0) > 0, 20,
          "the Triton queue-time rule")
    # Every worker's gauges, told apart by `worker`, as the dashboard's per-worker panels read
    # them (resident memory only of capserve's processes, not Prometheus's own).
    every = {str(i) for i in range(WORKERS)}
    assert _query(prometheus, 'sum(capserve_workers_ready{job="capserve"})') == {"": WORKERS}
    assert _workers(prometheus, 'capserve_inflight_requests{job="capserve"}') == every
    rss = ('max by (instance, worker) (process_resident_memory_bytes '
           'and on (instance, worker) capserve_inflight_requests)')
    assert _workers(prometheus, rss) == every
    _check_dashboards(prometheus)
    # The alert rules were loaded and evaluate; nothing is firing for a healthy server.
    rules = json.loads(_get(f"{prometheus}/api/v1/rules") or b"{}")["data"]["groups"]
    alerts = {r["name"]: r for g in rules for r in g["rules"] if r["type"] == "alerting"}
    assert {"CapserveHighErrorRatio", "CapserveDown", "CapserveModelNotReady"} <= set(alerts)
    assert alerts["CapserveDown"]["health"] == "ok" and alerts["CapserveDown"]["state"] == "inactive"


def _dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL with Grafana's variables filled in) of every query."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
                out.append((path.name, panel["title"], expr))
    return out


def _must_show_data(title: str) -> bool:
    # No GPU here and no worker exited: those panels are rightly empty.
    return "GPU" not in title and "exits" not in title


def _check_dashboards(prometheus: str) -> None:
    queries = _dashboard_queries()
    assert {d for d, _, _ in queries} == {"capserve.json", "triton.json"}
    empty = [(d, t, e) for d, t, e in queries if _must_show_data(t) and not _results(prometheus, e)]
    assert not empty, f"panels without data: {empty}"
