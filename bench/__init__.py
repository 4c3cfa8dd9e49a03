"""Benchmarks: capserve against TorchServe and the in-process ceiling (`python -m bench`).

Nothing here runs at import time; `bench.cli.main` is the entry point.
"""
