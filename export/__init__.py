"""Checkpoint -> ONNX / TorchScript / pt2 / ``.mar`` artifacts in a Triton-layout model store.

``python -m export CHECKPOINT --name NAME`` exports one checkpoint; ``python -m export.defaults``
exports the default checkpoints. Every artifact passes a parity gate against the eager module
before anything is written to the store.
"""
