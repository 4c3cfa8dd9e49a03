"""``python -m export.defaults --checkpoints checkpoints --store model_store [--force]``.

Exports every default checkpoint present (lenet, capsnet (+ capsnet_decoder), unet,
style_mosaic) to ONNX + TorchScript + ``.mar``, in one process so torch, the ONNX exporter and
ONNX Runtime are loaded once. A model whose store entries already exist is skipped unless
``--force`` (which adds a new version). ``make store`` / ``make serve`` and the test suite's
``default_store`` fixture run it.

Exit status: 0 when every present checkpoint is in the store, 1 when an export failed or no
default checkpoint was found, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from export.cli import emit, summary_lines
from export.errors import ExportError, ParityFailure

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("lenet", "capsnet", "unet", "style_mosaic")
FORMATS = ("onnx", "torchscript", "mar")
MAX_BATCH_SIZE = 32


def expected_entries(store: Path, name: str, capsule: bool) -> list[Path]:
    entries = [store / name, store / f"{name}_torchscript", store / f"{name}.mar"]
    if capsule:
        entries.append(store / f"{name}_decoder")
    return entries


def _present(store: Path, name: str) -> bool:
    entries = expected_entries(store, name, capsule=name == "capsnet")
    return all((e / "config.pbtxt").is_file() if e.suffix != ".mar" else e.is_file()
               for e in entries)


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
    todo = [n for n in found if args.force or not _present(args.store, n)]
    for n in sorted(set(found) - set(todo), key=found.index):
        emit([f"{n}: already in {args.store}, skipped (--force exports a new version)"])
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
