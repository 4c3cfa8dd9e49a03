"""config.properties keys: mapped to settings, ignored with a reason, or refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from serving.tsconfig.config import TsConfigError, load_ts_config
from serving.tsconfig.properties import parse_properties

KSERVE = """\
inference_address=http://0.0.0.0:8085
management_address=http://0.0.0.0:8085
metrics_address=http://0.0.0.0:8082
grpc_inference_port=7070
grpc_management_port=7071
enable_metrics_api=true
metrics_format=prometheus
number_of_netty_threads=4
job_queue_size=10
enable_envvars_config=true
install_py_dep_per_model=true
model_store=/mnt/models/model-store
model_snapshot={"name":"startup.cfg","modelCount":1,"models":{"mnist":{"1.0":{"defaultVersion":\
true,"marName":"mnist.mar","minWorkers":1,"maxWorkers":5,"batchSize":4,"maxBatchDelay":10,\
"responseTimeout":120}}}}
"""


def _cfg(tmp_path: Path, text: str, env: dict[str, str] | None = None,
         token: str | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.properties"
    path.write_text(text)
    return load_ts_config(path, env or {}, token_file=token)


def test_properties_syntax() -> None:
    values = parse_properties("# c\n! c\na = 1\nb: two\nc three\nd=x\\\n   y\ne=\\u0041\\t\n")
    assert values == {"a": "1", "b": "two", "c": "three", "d": "xy", "e": "A\t"}


def test_kserve_default_config_maps(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, KSERVE)
    assert cfg.settings["host"] == "0.0.0.0"
    assert cfg.settings["http_port"] == 8085
    assert cfg.settings["grpc_port"] == 7070
    assert cfg.settings["metrics_port"] == 8082
    assert cfg.settings["default_max_queue_size"] == 10
    # management shares the inference port and would face the network without a token
    assert "management_port" not in cfg.settings and "management_host" not in cfg.settings
    plan = cfg.models["mnist"]
    assert (plan.mar, plan.version, plan.batch_size, plan.max_batch_delay_ms) == (
        "mnist.mar", "1.0", 4, 10)
    assert plan.workers(None) == 1 and plan.response_timeout_s == 120
    ignored = dict(cfg.ignored)
    assert "requirements.txt is never installed" in ignored["install_py_dep_per_model"]
    assert "Netty" in ignored["number_of_netty_threads"]


def test_ignored_keys_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(tmp_path, "vmargs=-Xmx1g\nmade_up_key=1\n")
    with caplog.at_level(logging.INFO):
        cfg.log_once()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("'vmargs' is ignored: capserve runs no JVM" in m for m in lines) == 1
    assert any("'made_up_key' is ignored: not a TorchServe 0.12 key" in m for m in lines)


@pytest.mark.parametrize("text, words", [
    ("load_models=squeezenet=https://example.com/s.mar\n", "never fetches models from URLs"),
    ('models={"m": {"1.0": {"marName": "s3://bucket/m.mar"}}}\n', "never fetches"),
    ("allowed_urls=file://.*|http(s)?://.*\n", "never fetches"),
    ("inference_address=https://0.0.0.0:8443\n", "does not serve TLS"),
    ("keystore=src/test/resources/keystore.p12\n", "TLS"),
    ("enable_grpc_ssl=true\n", "gRPC TLS"),
    ("enable_model_api=true\n", "--api-token-file"),
    ("model_store=s3://bucket/store\n", "local directory"),
    ("load_models=../../etc/x.mar\n", "not a file name in the model store"),
    ("grpc_inference_port=many\n", "must be an integer"),
])
def test_unsafe_keys_refused(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(TsConfigError, match="config.properties") as err:
        _cfg(tmp_path, text)
    assert words in str(err.value)


def test_model_api_with_token_is_model_control(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "enable_model_api=true\nmanagement_address=http://0.0.0.0:9081\n",
               token="/run/token")
    assert cfg.settings["enable_model_control"] is True
    assert cfg.settings["management_host"] == "0.0.0.0"


def test_envvars_override_file(tmp_path: Path) -> None:
    env = {"TS_INFERENCE_ADDRESS": "http://127.0.0.1:9999", "TS_VMARGS": "-Xmx1g"}
    cfg = _cfg(tmp_path, "enable_envvars_config=true\ninference_address=http://1.2.3.4:80\n", env)
    assert (cfg.settings["host"], cfg.settings["http_port"]) == ("127.0.0.1", 9999)
    assert ("vmargs (from TS_VMARGS)", "capserve runs no JVM") in cfg.ignored
    off = _cfg(tmp_path, "inference_address=http://1.2.3.4:80\n", env)
    assert off.settings["http_port"] == 80  # TS_* only with enable_envvars_config=true


def test_load_models_and_models_merge(tmp_path: Path) -> None:
    models = {"lenet": {"1.0": {"batchSize": 8, "maxBatchDelay": 5, "minWorkers": 2}}}
    cfg = _cfg(tmp_path, f"load_models=lenet=lenet.mar,unet.mar\nmodels={json.dumps(models)}\n"
               "default_workers_per_model=3\ndefault_response_timeout=30\n"
               "service_envelope=kservev2\n")
    assert cfg.models["lenet"].batch_size == 8 and cfg.models["lenet"].workers(3) == 2
    assert cfg.models["unet"].mar == "unet.mar" and cfg.models["unet"].workers(3) == 3
    assert cfg.settings["execution_timeout_seconds"] == 30.0
    assert cfg.envelope == "kservev2"
