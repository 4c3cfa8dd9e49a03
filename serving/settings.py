"""Server settings: command-line flags and ``CAPSERVE_*`` environment variables.

Every listener binds 127.0.0.1 unless told otherwise; model control and archive code are off.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.backends.devices import check_device


def _default_image_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CAPSERVE_", use_attribute_docstrings=True, extra="ignore",
        protected_namespaces=(),
    )

    workers: str = "auto"
    """Serving processes: ``auto`` (one per usable core on CPU, one per visible GPU on CUDA) or
    a count. ``1`` is one process with no supervisor."""
    pin_workers: bool = False
    """Pin each worker process to its own share of the cores (``sched_setaffinity``)."""
    peer_forwarding: bool = True
    """With several workers: a worker that runs more requests than another hands it gRPC
    inference requests (one HTTP/2 connection, which the kernel gives to one worker, then still
    uses every worker). Off: each connection's requests run on the worker that accepted it."""
    model_store: Path = Path("model_store")
    """Triton-layout model repository to serve (``<model>/config.pbtxt``, ``<model>/<version>/``)."""
    host: str = "127.0.0.1"
    """Address every inference and metrics listener binds."""
    http_port: int = Field(default=8000, ge=0, le=65535)
    """HTTP port (KServe v2, Triton extensions, TorchServe inference paths); 0 picks a free one."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port (Triton GRPCInferenceService, TorchServe inference, grpc.health.v1)."""
    metrics_port: int = Field(default=8002, ge=0, le=65535)
    """Prometheus metrics port (``/metrics``)."""
    management_port: int = Field(default=8081, ge=0, le=65535)
    """TorchServe management API port."""
    management_host: str = "127.0.0.1"
    """Address the management listener binds (kept separate so it can stay private)."""
    device: str = "auto"
    """Where models run: ``auto`` (CUDA when a GPU is present), ``cpu``, ``cuda`` or ``cuda:N``."""
    enable_model_control: bool = False
    """Allow loading and unloading models through the APIs (off: the store is fixed at start)."""
    api_token_file: Path | None = None
    """File holding the bearer token for model control and management; must be mode 0600."""
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest HTTP request body accepted, in bytes."""
    grpc_max_message_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest gRPC message received or sent, in bytes."""
    heap_buffer_mib: int = Field(default=80, ge=0, le=512)
    """Allocations up to this many MiB come from glibc's heap and are reused when freed, not
    mapped and unmapped per request (a 37 MiB tensor otherwise page-faults in each copy); a
    process keeps at most twice this much freed memory. 0: glibc's defaults."""
    max_image_pixels: int = Field(default=25_000_000, gt=0)
    """Largest decoded image (width x height) an image endpoint accepts, in pixels (25 M: a
    24 MP photo; decoding and converting one costs up to about 9 bytes a pixel)."""
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    """On SIGTERM: seconds to let queued and running requests finish before stopping."""
    log_format: Literal["text", "json"] = "text"
    """Log line format."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Lowest level that is logged."""
    allow_archive_code: bool = False
    """UNSAFE: accept ``.mar`` archives whose handler is custom Python. They are served with the
    built-in pipeline of their ``capserve_task.json``; the archive's code itself is never run."""
    image_workers: int = Field(default_factory=_default_image_workers, ge=1)
    """Threads that decode and resize images for the image endpoints."""

    # -- set by the supervisor for its worker processes, not by users ------------------------
    worker_id: int = Field(default=-1, ge=-1)
    """This process's worker number under a supervisor (-1: no supervisor)."""
    worker_cores: int = Field(default=0, ge=0)
    """Cores this worker may use for intra-op threads (0: every usable core)."""
    worker_cpus: str = ""
    """CPUs this worker is pinned to, comma-separated (empty: not pinned)."""
    archive_cache_dir: Path | None = None
    """Folder where the store's ``.mar`` archives are already materialised (shared by the
    workers and owned by the supervisor; None: this process extracts into its own)."""
    peer_dir: str = ""
    """The supervisor's run folder: the workers' load board and their peer gRPC sockets
    (empty: no peers)."""

    # -- limits on what clients send (the hostile-input work adds its fields below) -----------
    default_max_queue_size: int = Field(default=0, ge=0)
    """Queue bound of a model whose config sets no ``max_queue_size``, in requests; 0:
    automatic, 4 x max_batch_size x instances within [64, 1024] queued batch items (a request
    of batch 32 counts 32). A full queue answers 503/UNAVAILABLE at once."""
    default_queue_timeout_seconds: float = Field(default=30.0, ge=0)
    """Longest a request waits in a queue whose config sets no ``default_timeout_microseconds``
    (then 503/UNAVAILABLE "Request timeout expired"); 0: no default timeout."""
    execution_timeout_seconds: float = Field(default=60.0, ge=0)
    """A batch running longer fails its requests (503) and its instance counts as stuck: server
    liveness and readiness are false until the call returns; 0: no execution watchdog."""
    model_load_timeout_seconds: float = Field(default=600.0, gt=0)
    """Longest a model version may take to load (backends and warm-up); then it is UNAVAILABLE."""
    model_close_timeout_seconds: float = Field(default=30.0, ge=0)
    """Longest an unloaded or replaced version may take to finish its requests; then they fail
    and its threads are abandoned (logged)."""
    max_model_instances: int = Field(default=16, ge=1, le=256)
    """Most instances one model version may run (``instance_group`` count, management scale)."""
    grpc_stream_max_inflight: int = Field(default=64, ge=1)
    """Requests of one ModelStreamInfer stream in flight at once; the stream is not read further
    until one is answered (backpressure)."""
    management_allowed_hosts: str = ""
    """Comma-separated extra ``Host`` header values the management API accepts (``name`` or
    ``name:port``). A loopback-bound management API accepts only loopback names by default."""
    max_tensor_dims: int = Field(default=16, ge=1, le=64)
    """Most dimensions an input tensor of a v2 inference request may have (HTTP and gRPC)."""
    max_request_elements: int = Field(default=4 * 1024 * 1024, gt=0)
    """Most tensor elements one v2 inference request may carry, all inputs together, checked
    from the shapes before any data is decoded (4M: a batch of 5 RGB 512x512 images, or a
    2048x2048 single-channel one). Bounds what variable (-1) dims let a client ask a model to
    compute; 400/INVALID_ARGUMENT naming the input otherwise."""
    max_request_string_elements: int = Field(default=64 * 1024, gt=0)
    """Most BYTES elements one v2 inference request may carry; each becomes a Python object
    decoded one at a time, so this is far below ``max_request_elements``."""
    max_response_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest v2 HTTP inference response body (before compression), in bytes; over it the
    request fails with 400 naming this setting. gRPC answers are bounded by
    ``grpc_max_message_bytes``."""
    max_mask_json_values: int = Field(default=4 * 1024 * 1024, gt=0)
    """Most numbers in the segmentation JSON answers of one request, shared by its images: a
    larger mask comes back at a reduced size of the same aspect ratio (``scaled_from`` names
    the image's size); probabilities over it are refused with 413. PNG masks are not capped."""
    max_request_image_pixels: int = Field(default=50_000_000, gt=0)
    """Most pixels all images of one image request may have together (each image is also
    bounded by ``max_image_pixels``); checked from the decoders' sizes before decoding, 413."""
    http_max_concurrency: int = Field(default=2048, ge=1)
    """Connections plus open requests an HTTP listener serves at once; past it uvicorn answers
    503 at once instead of accepting more work (its ``limit_concurrency``)."""
    ts_config: Path | None = None
    """TorchServe ``config.properties`` to read (docs/torchserve.md has the key table); found
    by itself when ``model_store`` is a KServe storage root (``config/config.properties``)."""
    handler_response_timeout_seconds: float = Field(default=120.0, gt=0)
    """Longest a custom handler (``--allow-archive-code``) may take for one batch when the
    TorchServe config gives no ``responseTimeout``; then its handler process is restarted and
    the batch fails."""
    handler_start_timeout_seconds: float = Field(default=120.0, gt=0)
    """Longest a handler process may take to import and ``initialize`` its handler."""
    max_handler_response_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest answer a custom handler may return for one batch; a larger one fails the batch
    and restarts the handler process."""

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, value: str) -> str:
        value = str(value).strip().lower()
        if value == "auto" or (value.isdigit() and 1 <= int(value) <= 256):
            return value
        raise ValueError(f"workers must be auto or a count from 1 to 256, got {value!r}")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return check_device(value)  # the backends' own parser: one spelling of the rule

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def api_token(self) -> str | None:
        """The API token, or None when no token file is set.

        Raises ``ValueError`` when the file is missing, empty, or readable by group or others.
        """
        if self.api_token_file is None:
            return None
        path = self.api_token_file
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise ValueError(f"cannot read API token file {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(
                f"API token file {path} is accessible by group or others (mode "
                f"{stat.S_IMODE(mode):04o}); it must be 0600: chmod 600 {path}"
            )
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"API token file {path} is empty")
        return token
