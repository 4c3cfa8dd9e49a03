"""Overload refusals before any decoding: ``refuse_if_full`` raises QueueFull (and counts a
rejected request) when the serving version's queue is full, and stays out of the way otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.core.service import InferenceService
from serving.errors import QueueFull
from tests.unit.serving.core.test_core_service import with_service


def test_a_full_queue_is_refused_before_decoding(tiny_store: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(s: InferenceService) -> None:
        s.refuse_if_full("tiny")  # room: nothing happens
        batcher = s._repo.resolve("tiny").batcher
        monkeypatch.setattr(batcher, "queue_full", lambda: True)
        before = s.model_statistics("tiny")[0]
        with pytest.raises(QueueFull, match="Exceeds maximum queue size"):
            s.refuse_if_full("tiny", "1")
        after = s.model_statistics("tiny")[0]
        assert after.fail.count == before.fail.count + 1  # counted as a failed request
        s.refuse_if_full("nope")  # unknown names and odd versions answer on their own path
        s.refuse_if_full("tiny", "9" * 40)

    with_service(tiny_store, body)
