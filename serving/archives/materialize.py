"""Turn a ``.mar`` archive into a Triton-layout model directory the repository can load.

``<cache>/<name>-<sha256 prefix>/<name>/config.pbtxt``, ``labels.txt`` and ``<version>/model.pt``
(or ``model.onnx``). The config comes from the archive's ``capserve_task.json`` (written by the
exporter: the config.pbtxt parameters plus inputs/outputs/max_batch_size), or, for archives made
for TorchServe's own ``image_classifier``/``image_segmenter``, from those handlers' conventions.
The directory is built beside its final place and renamed in one step, keyed by the archive's
hash, so a changed archive never reuses a stale extraction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from serving.archives.mar import (
    BUILTIN_HANDLERS,
    NOT_PARAMETERS,
    TASK_FILE,
    ArchiveError,
    ArchiveLimits,
    Manifest,
    labels_from_index,
    safe_extract,
)
from serving.archives.task_doc import check_task_document
from serving.errors import ServingError
from serving.generated import model_config_pb2 as pb

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_IMAGENET = {"mean": "0.485,0.456,0.406", "std": "0.229,0.224,0.225"}


def materialize_archives(store: Path, cache_dir: Path, limits: ArchiveLimits | None = None,
                         allow_archive_code: bool = False) -> list[tuple[str, Path]]:
    """Each ``store/*.mar`` without a same-named Triton directory, as a Triton-layout model
    directory under ``cache_dir``: ``[(model name, model dir)]`` (see ``materialize``)."""
    limits = limits or ArchiveLimits()
    found = []
    for mar in sorted(store.glob("*.mar")):
        name = mar.stem
        if (store / name).is_dir():
            continue  # the Triton directory of the same model wins
        if allow_archive_code and _own_handler(mar, limits):
            continue  # served by handler processes (serving.handlers), not a backend
        try:
            found.append((name, materialize(mar, cache_dir, limits, allow_archive_code, name)))
        except ServingError as exc:
            log.error("archive %s is not served: %s", mar.name, exc)
        except Exception:  # one bad archive never stops the rest of the store from serving
            log.exception("archive %s is not served", mar.name)
    return found


def _own_handler(mar: Path, limits: ArchiveLimits) -> bool:
    from serving.handlers.archive import runs_own_handler

    try:
        return runs_own_handler(mar, limits) is not None
    except ServingError:
        return False  # materialize() refuses it with the reason


def materialize(mar: Path, cache_dir: Path, limits: ArchiveLimits | None = None,
                allow_archive_code: bool = False, name: str = "",
                batching: Mapping[str, int] | None = None) -> Path:
    """The model directory for ``mar`` (built once per archive content and ``batching``:
    ``max_batch_size``, ``max_queue_delay_microseconds`` and ``instances`` that replace the
    defaults, as a TorchServe config.properties asks)."""
    limits = limits or ArchiveLimits()
    name = name or mar.stem
    if not _NAME.match(name):
        raise ArchiveError(f"'{name}' is not a valid model name")
    digest = _sha256(mar, json.dumps(dict(batching or {}), sort_keys=True))[:16]
    root = cache_dir / f"{name}-{digest}"
    if (root / name / "config.pbtxt").is_file():
        return root / name
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{name}-{digest}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        extracted = tmp / "extracted"
        extracted.mkdir()
        try:
            manifest = safe_extract(mar, extracted, limits)
            _build(name, manifest, extracted, tmp / name, allow_archive_code, mar.name,
                   limits, batching or {})
        except ArchiveError:
            raise
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
                NotImplementedError, RuntimeError, zipfile.BadZipFile, zlib.error) as exc:
            # Hostile or broken archives (duplicate members, bad CRCs, odd JSON) must be
            # refused with a reason, never take the server down.
            raise ArchiveError(f"{mar.name}: unreadable archive ({type(exc).__name__}: {exc})"
                               ) from None
        shutil.rmtree(extracted)
        try:
            os.replace(tmp, root)
        except OSError:  # another process won the race with the same content
            if not (root / name / "config.pbtxt").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("archive %s materialised as model '%s' in %s", mar.name, name, root / name)
    return root / name


def _sha256(path: Path, salt: str = "{}") -> str:
    digest = hashlib.sha256()
    if salt != "{}":  # archives without overrides keep the digest they always had
        digest.update(salt.encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _build(name: str, manifest: Manifest, src: Path, model_dir: Path, allow_code: bool,
           archive: str, limits: ArchiveLimits, batching: Mapping[str, int]) -> None:
    handler = manifest.handler_name
    if handler not in BUILTIN_HANDLERS:
        if not allow_code:
            raise ArchiveError(
                f"{archive}: handler '{manifest.handler}' is Python code inside the archive; "
                "capserve never runs archive code (built-in handlers: capserve_handler.py, "
                "image_classifier, image_segmenter). --allow-archive-code (UNSAFE: the "
                "archive's code runs with the server's rights) runs its handler in handler "
                f"processes, or serves it with the built-in pipeline of its {TASK_FILE}")
        log.warning("%s: custom handler %s accepted by --allow-archive-code; serving with "
                    "the built-in pipeline, the handler's code is not run", archive, handler)
    labels = _labels(src, archive, limits)
    task_path = src / TASK_FILE
    if task_path.is_file():
        try:
            task: dict[str, Any] = json.loads(_small_file(task_path, archive, limits))
        except ValueError as exc:
            raise ArchiveError(f"{archive}: {TASK_FILE} is not JSON: {exc}") from None
        check_task_document(task, archive)
    elif BUILTIN_HANDLERS.get(handler):
        task = _torchserve_default(BUILTIN_HANDLERS[handler], len(labels))
    else:
        raise ArchiveError(f"{archive}: no {TASK_FILE}, so capserve cannot tell the model's "
                           "task, inputs and outputs")
    serialized = manifest.serialized_file or "model.pt"
    source = _member_path(src, serialized, archive)
    if not source.is_file():
        raise ArchiveError(f"{archive}: serializedFile '{serialized}' is not in the archive")
    onnx = serialized.endswith(".onnx")
    version = _version(manifest.model_version)
    (model_dir / version).mkdir(parents=True)
    artifact = "model.onnx" if onnx else "model.pt"
    shutil.move(str(source), model_dir / version / artifact)
    side = _member_path(src, serialized + ".data", archive)
    if onnx and side.is_file():
        shutil.move(str(side), model_dir / version / "model.onnx.data")
    if labels:
        (model_dir / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    platform = "onnxruntime_onnx" if onnx else "pytorch_libtorch"
    (model_dir / "config.pbtxt").write_text(config_text(name, platform, task, bool(labels),
                                                        batching))


def _member_path(src: Path, name: str, archive: str) -> Path:
    """``name`` from the manifest as a path that stays inside the extracted archive."""
    root = src.resolve()
    path = (src / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(root) or path == root:
        raise ArchiveError(f"{archive}: manifest names '{name}', which is not a member of "
                           "the archive")
    return path


def _small_file(path: Path, archive: str, limits: ArchiveLimits) -> str:
    size = path.stat().st_size
    if size > limits.max_json_bytes:
        raise ArchiveError(f"{archive}: {path.name} is {size} bytes, over the limit of "
                           f"{limits.max_json_bytes}")
    return path.read_text()


def _labels(src: Path, archive: str, limits: ArchiveLimits) -> list[str]:
    path = src / "index_to_name.json"
    if not path.is_file():
        return []
    try:
        return labels_from_index(json.loads(_small_file(path, archive, limits)),
                                 limits.max_labels)
    except (ValueError, TypeError) as exc:
        raise ArchiveError(f"{archive}: index_to_name.json is not a label map: {exc}") from None


def _version(text: str) -> str:
    try:
        value = int(float(text))
    except ValueError:
        return "1"
    return str(value) if value >= 1 else "1"


def _torchserve_default(task: str, num_labels: int) -> dict[str, Any]:
    """TorchServe's image_classifier/segmenter conventions: RGB 224, ImageNet normalisation."""
    if task == "classification":
        return {"task": task, "input_color": "RGB", "input_height": "224",
                "input_width": "224", "resize": "keep_aspect_crop",
                "output_semantics": "logits", **_IMAGENET, "max_batch_size": 8,
                "inputs": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 224, 224]}],
                "outputs": [{"name": "logits", "data_type": "TYPE_FP32",
                             "dims": [num_labels or -1]}]}
    return {"task": task, "input_color": "RGB", "resize": "none",
            "output_semantics": "mask_logits", **_IMAGENET, "max_batch_size": 8,
            "inputs": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}],
            "outputs": [{"name": "out", "data_type": "TYPE_FP32", "dims": [-1, -1, -1]}]}


_DTYPES = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
           "FP16", "FP32", "FP64", "STRING", "BF16"}
_FORMATS = {"FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"}


def _dtype(value: Any) -> str:
    text = str(value or "FP32").upper().removeprefix("TYPE_")
    text = "STRING" if text == "BYTES" else text
    if text not in _DTYPES:  # never paste archive text into config.pbtxt unchecked
        raise ArchiveError(f"{TASK_FILE}: unknown data type {value!r}")
    return f"TYPE_{text}"


def _dims(spec: dict[str, Any]) -> list[int]:
    return [int(d) for d in spec.get("dims", spec.get("shape", []))]


def _input(spec: dict[str, Any]) -> pb.ModelInput:
    fmt = str(spec.get("format") or "FORMAT_NONE")
    if fmt not in _FORMATS:
        raise ArchiveError(f"{TASK_FILE}: unknown tensor format {spec['format']!r}")
    return pb.ModelInput(name=str(spec["name"]), dims=_dims(spec), format=fmt,
                         data_type=_dtype(spec.get("data_type", spec.get("datatype"))))


def _output(spec: dict[str, Any], label_file: bool) -> pb.ModelOutput:
    return pb.ModelOutput(name=str(spec["name"]), dims=_dims(spec),
                          data_type=_dtype(spec.get("data_type", spec.get("datatype"))),
                          label_filename="labels.txt" if label_file else "")


def config_text(name: str, platform: str, task: dict[str, Any], has_labels: bool,
                batching: Mapping[str, int] | None = None) -> str:
    """config.pbtxt (the ModelConfig message in protobuf text format, as export writes it) with
    the project's default batching, or the ``batching`` values given (a model without a batch
    dimension keeps none)."""
    batching = batching or {}
    try:
        inputs, outputs = task["inputs"], task["outputs"]
        max_batch = int(task.get("max_batch_size", 32))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchiveError(f"{TASK_FILE} lacks inputs/outputs/max_batch_size ({exc})") from None
    if max_batch > 0 and batching.get("max_batch_size"):
        max_batch = int(batching["max_batch_size"])
    cfg = pb.ModelConfig(name=name, platform=platform, max_batch_size=max_batch)
    cfg.input.extend(_input(i) for i in inputs)
    label_output = {"classification": 0, "capsule_classification": "lengths"}.get(
        str(task.get("task", "")))
    for idx, out in enumerate(outputs):
        # The classifying output points at labels.txt (Triton's classification extension).
        wants_labels = has_labels and (bool(out.get("label_filename"))
                                       or label_output in (idx, out.get("name")))
        cfg.output.append(_output(out, wants_labels))
    if max_batch > 0:
        delay = int(batching.get("max_queue_delay_microseconds", 2000))
        cfg.dynamic_batching.max_queue_delay_microseconds = delay
    cfg.instance_group.add(count=max(1, int(batching.get("instances", 1))),
                           kind=pb.ModelInstanceGroup.KIND_CPU)
    for key, value in task.items():
        if key not in NOT_PARAMETERS and not isinstance(value, dict | list):
            cfg.parameters[str(key)].string_value = str(value)
    return text_format.MessageToString(cfg)
