"""Errors of the exporter; the CLI maps each class to an exit status."""

from __future__ import annotations

from typing import Any


class ExportError(Exception):
    """Base class: an export that did not happen. ``exit_status`` is what the CLI returns."""

    exit_status = 1


class InvalidInput(ExportError):
    """The user's input is wrong (not a checkpoint, unknown architecture, bad option)."""

    exit_status = 2


class ParityFailure(ExportError):
    """An exported artifact does not compute what the eager module computes.

    ``result`` is the export's result (an ``export.pipeline.ExportResult``) when known, so the CLI
    can still print the numbers of the failed gate.
    """

    exit_status = 1

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class ExportFailed(ExportError):
    """An exporter (ONNX, TorchScript, torch.export, model archiver) raised."""

    exit_status = 1
