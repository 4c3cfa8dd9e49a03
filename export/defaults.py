"""``python -m export.defaults --checkpoints checkpoints --store model_store [--force]``.

Exports every default checkpoint present (lenet, capsnet (+ capsnet_decoder), unet,
style_mosaic, and the lecture-scale alexnet, vgg, googlenet) to ONNX + TorchScript + ``.mar``,
in one process so torch, the ONNX exporter and ONNX Runtime are loaded once. A model whose store entries were all exported from the same
checkpoint file (``source_sha256``) is skipped unless ``--force``; a changed checkpoint is
exported as a new version. ``make store`` / ``make serve`` and the test suite's
``default_store`` fixture run it.

Exit status: 0 when every present checkpoint is in the store, 1 when an export failed or no
default checkpoint was found, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format

from export.cli import emit, summary_lines
from export.errors import ExportError, ParityFailure
from export.mar import TASK_FILE
from export.model_config import parse_config

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("lenet", "capsnet", "unet", "style_mosaic", "alexnet", "vgg", "googlenet")
FORMATS = ("onnx", "torchscript", "mar")
MAX_BATCH_SIZE = 32


def _exported_sha(entry: Path) -> str:
    """The source_sha256 an exported store entry records ("" when missing or unreadable)."""
    try:
        if entry.suffix == ".mar":
            with zipfile.ZipFile(entry) as zf:
                return str(json.loads(zf.read(TASK_FILE)).get("source_sha256", ""))
        config = parse_config((entry / "config.pbtxt").read_text())
        return config.parameters["source_sha256"].string_value
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, text_format.ParseError):
        return ""


def up_to_date(store: Path, name: str, checkpoint: Path) -> bool:
    """Every store entry of ``name`` (ONNX, TorchScript, .mar, a capsule model's decoder) exists
    and was exported from this very checkpoint file."""
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    entries = [store / name, store / f"{name}_torchscript", store / f"{name}.mar"]
    try:
        decoder = parse_config((store / name / "config.pbtxt").read_text()).parameters.get("decoder_model")
    except (OSError, text_format.ParseError):
        return False
    if decoder is not None and decoder.string_value:
        entries.append(store / decoder.string_value)
    return all(_exported_sha(e) == sha for e in entries)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.defaults",
                                description="Export the default checkpoints into the model store.")
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--force", action="store_true",
                   help="export even when the store has the model (as a new version)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated checkpoint names (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    found = [n for n in names if (args.checkpoints / f"{n}.pt").is_file()]
    if not found:
        emit([f"export.defaults: no default checkpoint ({', '.join(names)}) in {args.checkpoints}; "
              "`make models` trains them"], error=True)
        return 1
    todo = [n for n in found
            if args.force or not up_to_date(args.store, n, args.checkpoints / f"{n}.pt")]
    for n in sorted(set(found) - set(todo), key=found.index):
        emit([f"{n}: already in {args.store} from this checkpoint, skipped "
              "(--force exports a new version)"])
    if not todo:
        return 0

    from export.pipeline import ExportOptions, export_checkpoint

    opts = ExportOptions(store=args.store, formats=FORMATS, max_batch_size=MAX_BATCH_SIZE)
    start, failed = time.perf_counter(), []
    for n in todo:
        try:
            result = export_checkpoint(args.checkpoints / f"{n}.pt", n, opts)
        except ParityFailure as exc:
            if exc.result is not None:
                emit(summary_lines(exc.result))
            emit([f"{n}: {exc}"], error=True)
            failed.append(n)
            continue
        except ExportError as exc:
            emit([f"{n}: {exc}"], error=True)
            failed.append(n)
            continue
        emit(summary_lines(result)[1:] if n != todo[0] else summary_lines(result))
    emit([f"export.defaults: {len(todo) - len(failed)}/{len(todo)} exported into {args.store} "
          f"in {time.perf_counter() - start:.1f} s" + (f"; FAILED: {', '.join(failed)}" if failed else "")])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
