"""``python -m export CHECKPOINT --name NAME`` (also ``capserve export``).

Exit status: 0 exported; 1 an exporter failed or an artifact failed the parity gate (the store is
untouched); 2 bad input (not a checkpoint, unknown architecture, bad option).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from export.errors import ExportError, ParityFailure
from export.model_config import DEFAULT_MAX_BATCH

PROG = "python -m export"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export a capserve checkpoint to ONNX / TorchScript / pt2 / .mar in a "
                    "Triton-layout model store, after a parity gate against the eager model.",
    )
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by `python -m training`")
    p.add_argument("--name", help="model name in the store (default: the checkpoint's file stem)")
    p.add_argument("--formats", default="onnx,torchscript",
                   help="comma-separated: onnx, torchscript, pt2 (kept beside the ONNX file), "
                        "mar (TorchServe archive). Default: onnx,torchscript")
    p.add_argument("--store", type=Path, default=Path("model_store"), help="model store folder")
    p.add_argument("--version", default="next", help="version number, or 'next' (default)")
    p.add_argument("--max-batch-size", type=int, default=None,
                   help=f"config.pbtxt max_batch_size (default {DEFAULT_MAX_BATCH}, 16 for "
                        "artifacts over 10 MB)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    return p


def emit(lines: Sequence[str], error: bool = False) -> None:
    """Print lines for a user (the CLIs of this package print only through here)."""
    print("\n".join(lines), file=sys.stderr if error else sys.stdout, flush=True)


def _gate_text(gate: object) -> tuple[str, str]:
    from export.parity import ATOL, RTOL, GateResult

    if not isinstance(gate, GateResult):
        return "-", ""
    worst = gate.worst
    text = ""
    if worst is not None:
        label, c = worst
        text = f"{c.max_abs_diff:.2g}/{max(ATOL, RTOL * c.scale):.2g} {c.output}@{label}"
    return ("ok" if gate.passed else "FAIL"), text


def summary_lines(result: object) -> list[str]:
    """One screen: one line per artifact with its worst diff against its bound."""
    from export.pipeline import ExportResult

    assert isinstance(result, ExportResult)
    lines = [f"{'model':<28} {'format':<12} {'gate':<5} {'worst |diff| / bound @ input':<36} "
             f"{'size':>9} {'time':>7}"]
    for a in result.artifacts:
        gate, worst = _gate_text(a.gate)
        lines.append(f"{a.model:<28} {a.fmt:<12} {gate:<5} {worst:<36} "
                     f"{a.bytes / 1e6:>7.2f}MB {a.seconds:>6.1f}s")
        if a.pt2_gate is not None:
            gate, worst = _gate_text(a.pt2_gate)
            lines.append(f"{'':<28} {'pt2':<12} {gate:<5} {worst:<36}")
        if a.note:
            lines.append(f"    note: {a.note}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # Imported here so `--help` and argument errors answer without loading torch.
    from export.pipeline import ExportOptions, export_checkpoint, parse_formats

    name = args.name or args.checkpoint.stem
    try:
        opts = ExportOptions(store=args.store, formats=parse_formats(args.formats),
                             version=args.version, max_batch_size=args.max_batch_size,
                             opset=args.opset)
        result = export_checkpoint(args.checkpoint, name, opts)
    except ParityFailure as exc:
        if exc.result is not None and not args.quiet:
            print("\n".join(summary_lines(exc.result)))
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        print(f"{PROG}: nothing was written to {args.store}", file=sys.stderr)
        return exc.exit_status
    except ExportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    if not args.quiet:
        print("\n".join(summary_lines(result)))
        print(f"exported {name} version {result.version} into {args.store} "
              f"in {result.seconds:.1f} s")
        if "pt2" not in opts.formats and ("torchscript" in opts.formats or "mar" in opts.formats):
            print("note: PyTorch deprecates TorchScript; add pt2 to --formats for the "
                  "torch.export format")
    return 0
