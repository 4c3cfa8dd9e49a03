"""TorchServe model archives (``model_store/NAME.mar``).

Members: the TorchScript ``model.pt`` (serializedFile); ``capserve_handler.py``, a shim that hands
every request to ``serving.torchserve_handler.CapserveHandler`` (export never imports serving;
capserve recognises the shim by name and never runs it); ``capserve_task.json`` (the config.pbtxt
parameters plus inputs, outputs and max_batch_size, so capserve can serve the archive without a
config.pbtxt); ``index_to_name.json`` (TorchServe's label format); ``model-config.yaml`` (TorchServe
worker/batching settings); and ``MAR-INF/MANIFEST.json``.

The installed ``torch-model-archiver`` builds the zip. It is run in a child process with a private
TMPDIR: the archiver stages files in ``$TMPDIR/<model name>`` and deletes that folder first, so
two exports of the same name in one temp dir would clobber each other. Without the package the
same layout is written directly.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from export.errors import ExportFailed
from export.model_config import batch_elements
from export.spec import ModelSpec

logger = logging.getLogger(__name__)

HANDLER_FILE = "capserve_handler.py"
TASK_FILE = "capserve_task.json"
LABELS_FILE = "index_to_name.json"
CONFIG_FILE = "model-config.yaml"
ARCHIVE_VERSION = "1.0"

HANDLER_SOURCE = '''\
"""TorchServe entry point of a capserve archive: every call goes to CapserveHandler."""

from serving.torchserve_handler import CapserveHandler

_handler = None


def handle(data, context):
    global _handler
    if _handler is None:
        _handler = CapserveHandler()
        _handler.initialize(context)
    if data is None:  # TorchServe's load-time call
        return None
    return _handler.handle(data, context)
'''

MODEL_CONFIG_YAML = """\
minWorkers: 1
maxWorkers: 1
batchSize: 8
maxBatchDelay: 5
responseTimeout: 120
"""


def task_document(spec: ModelSpec, max_batch_size: int) -> dict[str, object]:
    doc: dict[str, object] = dict(spec.parameters)
    doc["inputs"] = [t.as_json() for t in spec.inputs]
    doc["outputs"] = [t.as_json() for t in spec.outputs]
    doc["max_batch_size"] = max_batch_size
    elements = batch_elements(spec, max_batch_size)
    if elements:  # a scalar of the task document becomes a config parameter when served
        doc["max_batch_elements"] = str(elements)
    return doc


def _write_members(folder: Path, spec: ModelSpec, max_batch_size: int) -> list[Path]:
    files = [folder / HANDLER_FILE, folder / TASK_FILE, folder / CONFIG_FILE]
    files[0].write_text(HANDLER_SOURCE)
    files[1].write_text(json.dumps(task_document(spec, max_batch_size), indent=2) + "\n")
    files[2].write_text(MODEL_CONFIG_YAML)
    if spec.labels:
        labels = folder / LABELS_FILE
        labels.write_text(json.dumps({str(i): n for i, n in enumerate(spec.labels)}, indent=2) + "\n")
        files.append(labels)
    return files


def build_mar(name: str, model_pt: Path, spec: ModelSpec, max_batch_size: int, out_dir: Path
              ) -> tuple[Path, str]:
    """Write ``out_dir/NAME.mar`` (the caller moves it into the store); returns it and the tool."""
    with tempfile.TemporaryDirectory(prefix="capserve-mar-") as tmp:
        work = Path(tmp)
        members = work / "members"
        members.mkdir()
        files = _write_members(members, spec, max_batch_size)
        extra = [f for f in files if f.name not in (HANDLER_FILE, CONFIG_FILE)]
        if importlib.util.find_spec("model_archiver") is not None:
            _run_archiver(name, model_pt, members, extra, work, out_dir)
            tool = "torch-model-archiver"
        else:
            tool = "capserve zip writer"
            logger.info("torch-model-archiver is not installed; writing %s.mar directly", name)
            _write_zip(name, model_pt, files, out_dir / f"{name}.mar")
    target = out_dir / f"{name}.mar"
    if not target.is_file():
        raise ExportFailed(f"{name}: model archiver produced no {target.name}")
    return target, tool


def _run_archiver(name: str, model_pt: Path, members: Path, extra: list[Path], work: Path,
                  out_dir: Path) -> None:
    private_tmp = work / "tmp"
    private_tmp.mkdir()
    cmd = [
        sys.executable, "-m", "model_archiver.model_packaging",
        "--model-name", name, "--version", ARCHIVE_VERSION,
        "--serialized-file", str(model_pt), "--handler", str(members / HANDLER_FILE),
        "--extra-files", ",".join(str(p) for p in extra),
        "--config-file", str(members / CONFIG_FILE),
        "--export-path", str(out_dir), "--force",
    ]
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExportFailed(f"{name}: torch-model-archiver failed (exit {proc.returncode}): {tail[0]}")


def _write_zip(name: str, model_pt: Path, files: list[Path], target: Path) -> None:
    manifest = {
        "createdOn": dt.datetime.now().strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": "python",
        "model": {"modelName": name, "serializedFile": "model.pt", "handler": HANDLER_FILE,
                  "modelVersion": ARCHIVE_VERSION, "configFile": CONFIG_FILE},
        "archiverVersion": "capserve",
    }
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(model_pt, "model.pt")
        for f in files:
            zf.write(f, f.name)
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest, indent=2))
