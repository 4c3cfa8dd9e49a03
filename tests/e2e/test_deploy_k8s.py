"""deploy/k8s/: schema-valid (kubernetes-validate, strict) and consistent with itself and the server.

KServe's ServingRuntime and InferenceService have no schema bundled with kubernetes-validate;
they are checked structurally here: required fields, and that the InferenceService can only
be placed on the capserve runtime (format, protocol, runtime name, storage).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
KSERVE_KINDS = {("serving.kserve.io/v1alpha1", "ServingRuntime"),
                ("serving.kserve.io/v1beta1", "InferenceService")}


TORCHSERVE = K8S / "kserve-torchserve"  # its own pair, checked by the tests at the end


def _documents(under: Path = K8S) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(under.rglob("*.yaml")):
        if under == K8S and TORCHSERVE in path.parents:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for _, doc in _documents():
        assert doc["kind"] not in found, f"two {doc['kind']}s; the checks below assume one"
        found[doc["kind"]] = doc
    return found


def test_kubernetes_validate_strict() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    version = kv.latest_version()
    checked = structural = 0
    for path, doc in _documents():
        try:
            kv.validate(doc, version, strict=True)
            checked += 1
        except kv.SchemaNotFoundError:
            assert (doc["apiVersion"], doc["kind"]) in KSERVE_KINDS, f"{path}: no schema"
            structural += 1
        except kv.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {exc.message} at {list(exc.path)}")
    assert checked >= 6 and structural == 2


def _container(spec: dict[str, Any]) -> dict[str, Any]:
    return dict(spec["containers"][0])


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _parse(argv: list[str]) -> dict[str, Any]:
    from serving.__main__ import parse_args

    return parse_args(argv)


def test_deployment_probes_ports_and_command(docs: dict[str, dict[str, Any]]) -> None:
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    c = _container(pod)
    assert c["command"] == ["python3", "-m", "serving"]
    args = _parse(c["args"])
    assert args["host"] == "0.0.0.0"
    store_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == args["model_store"])
    assert store_mount["readOnly"] is True
    env = _env(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(env["CAPSERVE_HTTP_PORT"]), "grpc": int(env["CAPSERVE_GRPC_PORT"]),
                     "metrics": int(env["CAPSERVE_METRICS_PORT"])}
    assert env["CAPSERVE_MANAGEMENT_HOST"] == "127.0.0.1", "management is not exposed"
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # preStop: keep serving while endpoints drop the pod, then SIGTERM drains within the grace.
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and 1 <= int(pre_stop[1]) <= 15
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + float(
        env["CAPSERVE_SHUTDOWN_GRACE_SECONDS"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile_user = re.findall(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)[-1]
    assert pod["securityContext"]["runAsUser"] == int(dockerfile_user)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == env["CAPSERVE_METRICS_PORT"]


def test_selectors_and_targets_line_up(docs: dict[str, dict[str, Any]]) -> None:
    dep = docs["Deployment"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] < dep["spec"]["replicas"]
    named = {p["name"] for p in _container(dep["spec"]["template"]["spec"])["ports"]}
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} <= named
    claim = dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]


def test_hpa_scales_on_metrics_the_adapter_serves(docs: dict[str, dict[str, Any]]) -> None:
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    dep = docs["Deployment"]
    assert hpa["scaleTargetRef"] == {"apiVersion": dep["apiVersion"], "kind": "Deployment",
                                     "name": dep["metadata"]["name"]}
    assert hpa["minReplicas"] >= 2, "one replica can drain while another serves"
    adapter = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["rules"]
    served = {r["name"]["as"]: r for r in adapter}
    contract = (ROOT / "docs/architecture.md").read_text()
    for metric in hpa["metrics"]:
        assert metric["type"] == "Pods"
        name = metric["pods"]["metric"]["name"]
        assert name in served, f"HPA metric {name} is not served by the adapter"
        series = re.match(r"\w+", served[name]["seriesQuery"])
        assert series and f"`{re.sub(r'_bucket$', '', series.group(0))}`" in contract, series
        assert set(served[name]["resources"]["overrides"]) == {"namespace", "pod"}


def test_kserve_runtime_and_inference_service(docs: dict[str, dict[str, Any]]) -> None:
    rt, isvc = docs["ServingRuntime"], docs["InferenceService"]
    for doc in (rt, isvc):
        assert doc["metadata"]["name"] and isinstance(doc["spec"], dict)
    spec = rt["spec"]
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    c = _container(spec)
    assert c["name"] == "kserve-container"
    args = _parse(c["args"])
    assert args["model_store"] == "/mnt/models", "where KServe's storage initializer writes"
    assert args["host"] == "0.0.0.0"
    assert [p["containerPort"] for p in c["ports"]] == [args["http_port"]]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == args["http_port"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"

    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == rt["metadata"]["name"]
    assert model["protocolVersion"] in spec["protocolVersions"]
    assert model["modelFormat"]["name"] in formats
    claim = re.match(r"pvc://([^/]+)/", model["storageUri"])
    assert claim and claim.group(1) == docs["PersistentVolumeClaim"]["metadata"]["name"]


# -- the TorchServe runtime (modelFormat pytorch) and a TorchServe user's InferenceService -----
# KSERVE_CRD_DIR: a folder with KServe's CRD files (serving.kserve.io_servingruntimes.yaml and
# serving.kserve.io_inferenceservices.yaml from its kserve-crd chart); no registry package
# ships them, so without it the schema check is skipped and the structural checks remain.


def _torchserve_docs() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for _, doc in _documents(TORCHSERVE)}


def test_torchserve_runtime_replaces_kserve_torchserve() -> None:
    docs = _torchserve_docs()
    rt, isvc = docs["ServingRuntime"], docs["InferenceService"]
    spec = rt["spec"]
    assert {"v1", "v2"} <= set(spec["protocolVersions"])
    (fmt,) = spec["supportedModelFormats"]
    assert fmt["name"] == "pytorch" and fmt["autoSelect"] is True
    assert fmt["priority"] > 2, "above KServe's own kserve-torchserve runtime (priority 2)"
    c = _container(spec)
    model = isvc["spec"]["predictor"]["model"]
    # The InferenceService's args are appended to the runtime's: they must parse together.
    args = _parse([*c["args"], *model.get("args", [])])
    assert args["model_store"] == "/mnt/models" and args["host"] == "0.0.0.0"
    assert [p["containerPort"] for p in c["ports"]] == [args["http_port"]]
    assert model["modelFormat"]["name"] == fmt["name"]
    assert model["protocolVersion"] in spec["protocolVersions"]
    assert "runtime" not in model, "a user's spec names no runtime: auto-selection places it"


def test_torchserve_kserve_layout_is_what_the_server_reads(tmp_path: Path) -> None:
    from serving.tsconfig.layout import kserve_config

    (tmp_path / "config").mkdir()
    (tmp_path / "model-store").mkdir()
    (tmp_path / "config" / "config.properties").write_text("load_models=all\n")
    assert kserve_config(tmp_path) == tmp_path / "config" / "config.properties"


def _crd_schema(crd_dir: Path, plural: str, version: str) -> dict[str, Any]:
    text = (crd_dir / f"serving.kserve.io_{plural}.yaml").read_text()
    text = re.sub(r"^\{\{.*\}\}\s*$", "", text, flags=re.M)  # helm chart template lines
    crd = next(d for d in yaml.safe_load_all(text) if d and d.get("kind") ==
               "CustomResourceDefinition")
    entry = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    return dict(entry["schema"]["openAPIV3Schema"])


def _closed(schema: Any) -> Any:
    """The CRD schema with unknown fields refused, as the API server prunes/refuses them."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and not out.get(
                "x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@pytest.mark.parametrize("kind, plural, version", [
    ("ServingRuntime", "servingruntimes", "v1alpha1"),
    ("InferenceService", "inferenceservices", "v1beta1")])
def test_torchserve_pair_against_kserve_crds(kind: str, plural: str, version: str) -> None:
    import os

    jsonschema = pytest.importorskip("jsonschema")
    crd_dir = os.environ.get("KSERVE_CRD_DIR")
    if not crd_dir:
        pytest.skip("KSERVE_CRD_DIR is not set (a folder with KServe's CRD yaml files)")
    doc = _torchserve_docs()[kind]
    schema = _closed(_crd_schema(Path(crd_dir), plural, version))
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(body))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
