"""Training tests run on one thread: the machine's cores are shared with the rest of the suite."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
