"""TorchServe 0.12 ``config.properties`` keys, each mapped to a capserve setting.

Every key has one of three outcomes, listed in docs/torchserve.md: it becomes a capserve setting
(or a per-model batching/worker value), it is ignored with a reason that is logged once, or it
is refused because honouring it would weaken one of capserve's safe defaults (a model fetched
from a URL, TLS silently turned into plain text, model control without a token). With
``enable_envvars_config=true``, ``TS_<KEY>`` environment variables override the file's keys, as
TorchServe does.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from serving.tsconfig.properties import read_properties

log = logging.getLogger(__name__)
MAX_MODELS = 1000
MAX_JSON_CHARS = 1 << 20
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class TsConfigError(ValueError):
    """A config.properties key capserve refuses; the message names the key and why."""


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One model of ``load_models``/``models``: its archive and TorchServe's per-model values."""

    name: str
    mar: str  # archive file name inside the model store
    version: str = ""
    batch_size: int | None = None
    max_batch_delay_ms: int | None = None
    min_workers: int | None = None
    max_workers: int | None = None
    response_timeout_s: float | None = None

    def workers(self, default: int | None) -> int:
        """capserve runs a fixed count: TorchServe's ``minWorkers`` (what it starts with),
        else ``maxWorkers``, else ``default_workers_per_model``, else 1."""
        for value in (self.min_workers, self.max_workers, default):
            if value:
                return value
        return 1

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelPlan:
        return cls(**{k: doc[k] for k in cls.__slots__ if k in doc})


@dataclass
class TsConfig:
    """What a config.properties asks of capserve."""

    path: Path
    settings: dict[str, Any] = field(default_factory=dict)  # Settings field -> value
    model_store: Path | None = None
    load_all: bool = False  # load_models=all: every archive of the store
    models: dict[str, ModelPlan] = field(default_factory=dict)
    default_workers: int | None = None
    envelope: str = ""
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    warnings: list[str] = field(default_factory=list)

    def log_once(self) -> None:
        """Each ignored key once, with its reason, and each warning (the caller logs once:
        the supervisor or the single server process, never every worker)."""
        for key, reason in self.ignored:
            log.info("%s: key '%s' is ignored: %s", self.path.name, key, reason)
        for text in self.warnings:
            log.warning("%s: %s", self.path.name, text)


# -- keys ignored on purpose, with the reason logged -----------------------------------------
_IGNORED = {
    "number_of_netty_threads": "capserve's HTTP server has no Netty thread pools",
    "netty_client_threads": "capserve's HTTP server has no Netty thread pools",
    "async_logging": "capserve logs with Python logging (--log-format)",
    "vmargs": "capserve runs no JVM",
    "metrics_format": "metrics are always Prometheus text on the metrics port",
    "metrics_mode": "metrics are always Prometheus text on the metrics port",
    "metrics_config": "capserve's metrics are fixed (ts_* request metrics included)",
    "enable_metrics_api": "the metrics port is always served",
    "metric_time_interval": "host metrics are not collected",
    "disable_system_metrics": "host metrics are not collected",
    "system_metrics_cmd": "host metrics are not collected",
    "model_metrics_auto_detect": "capserve's metrics are fixed",
    "number_of_gpu": "capserve uses the visible GPUs (--device, CUDA_VISIBLE_DEVICES)",
    "install_py_dep_per_model": "an archive's requirements.txt is never installed",
    "cors_allowed_origin": "capserve sends no CORS headers",
    "cors_allowed_methods": "capserve sends no CORS headers",
    "cors_allowed_headers": "capserve sends no CORS headers",
    "decode_input_request": "capserve decodes requests by their content type",
    "default_service_handler": "archives are served by their own handler or a built-in task",
    "unregister_model_timeout": "unload waits model_close_timeout_seconds",
    "blacklist_env_vars": "handler processes get the server's environment",
    "initial_worker_port": "handler processes talk over private socket pairs, not ports",
    "initial_distribution_port": "capserve has no distributed (torchrun) workers",
    "model_server_home": "not needed: archives are read from the model store",
    "use_native_io": "no Netty transport",
    "io_ratio": "no Netty transport",
    "prefer_direct_buffer": "no Netty transport",
    "workflow_store": "workflows are not supported",
    "limit_max_image_pixels": "images are always bounded by max_image_pixels",
    "default_startup_timeout": "model loads are bounded by model_load_timeout_seconds",
    "token_expiration_min": "capserve's token is a file the operator rotates",
    "cpu_launcher_enable": "workers are pinned with --pin-workers",
    "cpu_launcher_args": "workers are pinned with --pin-workers",
    "ipex_enable": "Intel extensions are not used",
    "ipex_gpu_enable": "Intel extensions are not used",
    "cpp_log_config": "no C++ backend",
    "torchelastic_ts": "no torchrun workers",
    "ts_header_key_sequence_id": "no sequence batching",
    "ts_header_key_sequence_start": "no sequence batching",
    "ts_header_key_sequence_end": "no sequence batching",
    "ts_open_inference_protocol": "the KServe v2 (open inference) API is always served",
    "grpc_management_port": "TorchServe's gRPC management service shares the gRPC port",
    "grpc_management_address": "TorchServe's gRPC management service shares the gRPC port",
    "use_env_allowed_urls": "models are never fetched from URLs",
    "keystore_type": "TLS is not served (terminate it in front of capserve)",
    "tsConfigFile": "already reading this file",
}
_TLS_KEYS = ("keystore", "keystore_pass", "private_key_file", "certificate_file")
_ENVELOPES = {"": "", "body": "", "json": "", "kserve": "kserve", "kservev2": "kservev2"}


def _int(key: str, value: str, low: int = 0) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise TsConfigError(f"key '{key}' must be an integer, got {value[:80]!r}") from None
    if number < low:
        raise TsConfigError(f"key '{key}' must be at least {low}, got {number}")
    return number


def _bool(key: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise TsConfigError(f"key '{key}' must be true or false, got {value[:80]!r}")


def parse_address(key: str, value: str) -> tuple[str, int]:
    """``http://host:port`` as TorchServe writes its addresses."""
    parts = urlsplit(value.strip())
    if parts.scheme == "https":
        raise TsConfigError(f"key '{key}' asks for HTTPS ({value}); capserve does not serve "
                            "TLS, and serving plain HTTP instead would be a silent downgrade: "
                            "terminate TLS in front of capserve and give an http:// address")
    if parts.scheme != "http" or not parts.hostname:
        raise TsConfigError(f"key '{key}' must be an address like http://127.0.0.1:8080, got "
                            f"{value[:120]!r}")
    try:
        port = parts.port
    except ValueError:
        raise TsConfigError(f"key '{key}' has an invalid port: {value[:120]!r}") from None
    if port is None:
        raise TsConfigError(f"key '{key}' must name a port: {value[:120]!r}")
    return parts.hostname, port


def _archive_name(key: str, text: str) -> str:
    """A ``.mar`` file name inside the store: never a URL, never a path out of the store."""
    if _SCHEME.match(text) and not re.match(r"^[A-Za-z]:[\\/]", text):
        raise TsConfigError(f"key '{key}' names a remote model '{text[:120]}': capserve never "
                            "fetches models from URLs; copy the archive into the model store "
                            "and name its file")
    if "/" in text or "\\" in text or text in ("", ".", "..") or "\0" in text:
        raise TsConfigError(f"key '{key}' names '{text[:120]}', which is not a file name in "
                            "the model store")
    return text


def _json(key: str, value: str) -> Any:
    if len(value) > MAX_JSON_CHARS:
        raise TsConfigError(f"key '{key}' holds {len(value)} characters of JSON, over the limit "
                            f"of {MAX_JSON_CHARS}")
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise TsConfigError(f"key '{key}' is not valid JSON: {exc}") from None


def _pick_version(key: str, name: str, versions: Any, cfg: TsConfig) -> tuple[str, dict[str, Any]]:
    if not isinstance(versions, dict) or not versions:
        raise TsConfigError(f"key '{key}': model '{name}' must map versions to settings")
    chosen = [v for v, s in versions.items() if isinstance(s, dict) and s.get("defaultVersion")]
    version = chosen[0] if chosen else sorted(versions, key=_version_key)[-1]
    if len(versions) > 1:
        cfg.warnings.append(f"model '{name}': capserve serves one archive per model; version "
                            f"{version} is served, {', '.join(v for v in versions if v != version)}"
                            " are not")
    doc = versions[version]
    if not isinstance(doc, dict):
        raise TsConfigError(f"key '{key}': model '{name}' version {version} is not an object")
    return str(version), doc


def _version_key(text: str) -> tuple[float, str]:
    try:
        return float(text), text
    except ValueError:
        return 0.0, text


_PLAN_KEYS = {"batchSize": "batch_size", "maxBatchDelay": "max_batch_delay_ms",
              "minWorkers": "min_workers", "maxWorkers": "max_workers",
              "responseTimeout": "response_timeout_s"}
_PLAN_IGNORED = {"defaultVersion", "marName", "startupTimeout", "jobQueueSize", "parallelType",
                 "deviceType", "deviceIds", "parallelLevel", "runtimeType", "useJobTicket",
                 "maxRetryTimeoutInSec", "clientTimeoutInMills", "continuousBatching",
                 "sequenceMaxIdleMSec", "maxNumSequence", "maxSequenceJobQueueSize"}


def _models(key: str, value: str, cfg: TsConfig) -> None:
    doc = _json(key, value)
    if key == "model_snapshot":
        doc = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(doc, dict):
        raise TsConfigError(f"key '{key}' must be a JSON object of models")
    if len(doc) > MAX_MODELS:
        raise TsConfigError(f"key '{key}' lists {len(doc)} models, over the limit of {MAX_MODELS}")
    for name, versions in doc.items():
        version, spec = _pick_version(key, str(name), versions, cfg)
        values: dict[str, Any] = {}
        for field_name, attr in _PLAN_KEYS.items():
            if field_name in spec:
                values[attr] = _int(f"{key}.{name}.{field_name}", str(spec[field_name]))
        for other in sorted(set(spec) - set(_PLAN_KEYS) - _PLAN_IGNORED):
            cfg.ignored.append((f"{key}.{name}.{other}", "not a TorchServe 0.12 model setting "
                                "capserve knows"))
        for other in sorted(set(spec) & (_PLAN_IGNORED - {"defaultVersion", "marName"})):
            cfg.ignored.append((f"{key}.{name}.{other}", "capserve has no such per-model "
                                "setting"))
        mar = _archive_name(f"{key}.{name}.marName", str(spec.get("marName") or f"{name}.mar"))
        old = cfg.models.get(str(name))
        cfg.models[str(name)] = ModelPlan(name=str(name), mar=mar, version=version, **{
            **({k: getattr(old, k) for k in _PLAN_KEYS.values()
                if getattr(old, k) is not None} if old else {}), **values})


def _load_models(key: str, value: str, cfg: TsConfig) -> None:
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if item.lower() == "all":
            cfg.load_all = True
            continue
        name, sep, mar = item.partition("=")
        if not sep:
            mar = name if name.endswith(".mar") else f"{name}.mar"
            name = mar.removesuffix(".mar")
        _archive_name(key, mar)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name):
            raise TsConfigError(f"key '{key}': '{name[:120]}' is not a valid model name")
        old = cfg.models.get(name)
        cfg.models[name] = ModelPlan(name=name, mar=mar) if old is None else old


def _address(setting_host: str, setting_port: str) -> Callable[[str, str, TsConfig], None]:
    def apply(key: str, value: str, cfg: TsConfig) -> None:
        host, port = parse_address(key, value)
        cfg.settings[setting_port] = port
        if setting_host == "management_host" and host not in _LOOPBACK and not _token(cfg):
            cfg.warnings.append(f"'{key}={value}' would open the management API to the network "
                                "without a token; it stays on 127.0.0.1 (give --api-token-file "
                                "and --management-host to expose it)")
            return
        if setting_host:
            cfg.settings[setting_host] = host
    return apply


def _token(cfg: TsConfig) -> bool:
    return cfg.settings.get("api_token_file") is not None


def _metrics_address(key: str, value: str, cfg: TsConfig) -> None:
    host, port = parse_address(key, value)
    cfg.settings["metrics_port"] = port
    if host != cfg.settings.get("host", host):
        cfg.warnings.append(f"'{key}' binds {host}, but capserve's metrics share the inference "
                            f"address {cfg.settings.get('host')}")


def _grpc_address(key: str, value: str, cfg: TsConfig) -> None:
    if value.strip() != cfg.settings.get("host", value.strip()):
        cfg.warnings.append(f"'{key}={value}' differs from the inference address; capserve's "
                            "gRPC port binds the inference address")


def _setting(name: str, convert: Callable[[str, str], Any]) -> Callable[[str, str, TsConfig], None]:
    def apply(key: str, value: str, cfg: TsConfig) -> None:
        cfg.settings[name] = convert(key, value)
    return apply


def _store(key: str, value: str, cfg: TsConfig) -> None:
    text = value.strip()
    if _SCHEME.match(text) and not text.startswith("file:"):
        raise TsConfigError(f"key '{key}' is a URL ({text[:120]}); the model store must be a "
                            "local directory")
    cfg.model_store = Path(text.removeprefix("file://").removeprefix("file:"))


def _allowed_urls(key: str, value: str, cfg: TsConfig) -> None:
    for pattern in (p.strip() for p in value.split(",")):
        rest = pattern.lower().replace("file://", "")
        if "://" in rest or "http" in rest:
            raise TsConfigError(f"key '{key}' allows '{pattern[:120]}': capserve never fetches "
                                "models from URLs; remove the key (register loads archives "
                                "already in the model store)")
    cfg.ignored.append((key, "only file URLs were listed, and register never fetches anyway"))


def _envelope(key: str, value: str, cfg: TsConfig) -> None:
    text = value.strip().lower()
    if text not in _ENVELOPES:
        raise TsConfigError(f"key '{key}' must be kserve or kservev2 (or body/json), got "
                            f"{value[:80]!r}")
    cfg.envelope = _ENVELOPES[text]


def _model_api(key: str, value: str, cfg: TsConfig) -> None:
    if _bool(key, value):
        cfg.settings["enable_model_control"] = True


def _token_auth(key: str, value: str, cfg: TsConfig) -> None:
    cfg.ignored.append((key, "inference is open on the listen address and management needs "
                        "--api-token-file when model control is on, whatever this says"))


def _response_timeout(key: str, value: str, cfg: TsConfig) -> None:
    cfg.settings["execution_timeout_seconds"] = float(_int(key, value, 1))


def _default_workers(key: str, value: str, cfg: TsConfig) -> None:
    cfg.default_workers = _int(key, value, 1)


def _tls(key: str, value: str, cfg: TsConfig) -> None:
    if value.strip():
        raise TsConfigError(f"key '{key}' configures TLS, which capserve does not serve; "
                            "terminate TLS in front of capserve and remove the key")


def _grpc_ssl(key: str, value: str, cfg: TsConfig) -> None:
    if _bool(key, value):
        raise TsConfigError(f"key '{key}=true' asks for gRPC TLS, which capserve does not "
                            "serve; terminate TLS in front of capserve")


_APPLY: dict[str, Callable[[str, str, TsConfig], None]] = {
    "inference_address": _address("host", "http_port"),
    "management_address": _address("management_host", "management_port"),
    "metrics_address": _metrics_address,
    "grpc_inference_port": _setting("grpc_port", lambda k, v: _int(k, v)),
    "grpc_inference_address": _grpc_address,
    "model_store": _store,
    "load_models": _load_models,
    "models": _models,
    "model_snapshot": _models,
    "service_envelope": _envelope,
    "max_request_size": _setting("max_request_bytes", lambda k, v: _int(k, v, 1)),
    "max_response_size": _setting("max_response_bytes", lambda k, v: _int(k, v, 1)),
    "job_queue_size": _setting("default_max_queue_size", lambda k, v: _int(k, v, 1)),
    "default_response_timeout": _response_timeout,
    "default_workers_per_model": _default_workers,
    "enable_model_api": _model_api,
    "disable_token_authorization": _token_auth,
    "allowed_urls": _allowed_urls,
    "enable_grpc_ssl": _grpc_ssl,
    **{key: _tls for key in _TLS_KEYS},
}
# Applied first, because other keys read what they set (the token decides the management host).
_ORDER = ("enable_envvars_config", "inference_address")


def known_keys() -> set[str]:
    return set(_APPLY) | set(_IGNORED) | {"enable_envvars_config"}


def merged_values(path: Path, environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The file's keys, overridden by ``TS_<KEY>`` variables when the file (or the
    environment) sets ``enable_envvars_config=true``; returns the keys that came from there."""
    values = read_properties(path)
    enabled = environ.get("TS_ENABLE_ENVVARS_CONFIG", values.get("enable_envvars_config", ""))
    from_env = []
    if enabled.strip().lower() == "true":
        for name, value in environ.items():
            if name.startswith("TS_") and name != "TS_CONFIG_FILE":
                key = name[3:].lower()
                # TorchServe keeps the key's case as it is spelt in ConfigManager.
                key = {"tsconfigfile": "tsConfigFile"}.get(key, key)
                values[key] = value
                from_env.append(key)
    return values, from_env


def _separate_ports(cfg: TsConfig) -> None:
    """KServe's TorchServe config puts management on the inference port; capserve serves
    management on a listener of its own, so it keeps its own port then."""
    ports = cfg.settings
    for key in ("management_port", "metrics_port"):
        if key in ports and ports[key] == ports.get("http_port"):
            cfg.warnings.append(f"{key.split('_')[0]} shares the inference port {ports[key]} in "
                                f"the file; capserve serves it on its own port ({key}'s default "
                                "or flag)")
            del ports[key]


def load_ts_config(path: Path, environ: Mapping[str, str],
                   token_file: str | None = None) -> TsConfig:
    """Read and map ``path``; ``TsConfigError`` for a key capserve refuses."""
    values, from_env = merged_values(path, environ)
    cfg = TsConfig(path=path)
    if token_file:
        cfg.settings["api_token_file"] = token_file
    keys = sorted(values, key=lambda k: (k not in _ORDER, _ORDER.index(k) if k in _ORDER else 0))
    for key in keys:
        value = values[key]
        where = f"{key} (from TS_{key.upper()})" if key in from_env else key
        if key == "enable_envvars_config":
            _bool(key, value)
        elif key in _APPLY:
            try:
                _APPLY[key](key, value, cfg)
            except TsConfigError as exc:
                raise TsConfigError(f"{path}: {exc}") from None
        elif key in _IGNORED:
            cfg.ignored.append((where, _IGNORED[key]))
        else:
            cfg.ignored.append((where, "not a TorchServe 0.12 key capserve knows"))
    _separate_ports(cfg)
    if cfg.settings.get("enable_model_control") and not token_file:
        raise TsConfigError(f"{path}: enable_model_api=true would let anyone who reaches the "
                            "management API load and unload models; give --api-token-file (a "
                            "0600 file with the bearer token) or remove the key")
    return cfg
