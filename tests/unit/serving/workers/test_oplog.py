"""The supervisor's control log: what a replacement worker replays stays as short as the state
it describes, and region names are one namespace over system and CUDA regions."""

from __future__ import annotations

import pytest

from serving.errors import AlreadyExists
from serving.workers.oplog import ControlLog


def _names(log: ControlLog) -> list[tuple[str, str]]:
    return [(e["op"], e["params"]["name"]) for e in log.entries]


def test_unregistering_removes_the_registrations_it_ends() -> None:
    log = ControlLog()
    log.record("load", {"name": "lenet", "model_dir": ""})
    for name in ("a", "b"):
        log.record("shm_register", {"name": name, "key": "/k", "offset": 0, "byte_size": 8})
    log.record("cuda_register", {"name": "g", "raw_handle": "AA==", "device_id": 0,
                                 "byte_size": 8})
    log.record("shm_unregister", {"name": "a"})
    assert _names(log) == [("load", "lenet"), ("shm_register", "b"), ("cuda_register", "g")]
    log.record("cuda_unregister", {"name": "b"})  # "b" is a system region: not this kind's
    assert ("shm_register", "b") in _names(log)
    log.record("shm_unregister", {"name": ""})  # every system region; the CUDA one stays
    assert _names(log) == [("load", "lenet"), ("cuda_register", "g")]
    log.record("cuda_unregister", {"name": ""})
    assert _names(log) == [("load", "lenet")]


@pytest.mark.parametrize(("first", "second"), [
    ("shm_register", "shm_register"), ("shm_register", "cuda_register"),
    ("cuda_register", "shm_register"), ("cuda_register", "cuda_register"),
])
def test_a_registered_name_is_refused_for_either_kind(first: str, second: str) -> None:
    log = ControlLog()
    log.record(first, {"name": "r"})
    refusal = log.refusal(second, {"name": "r"})
    assert isinstance(refusal, AlreadyExists) and "'r' already in manager" in refusal.message
    assert log.refusal(second, {"name": "other"}) is None
    assert log.refusal("load", {"name": "r"}) is None  # a model may share a region's name


def test_what_a_refused_operation_is_undone_with() -> None:
    assert ControlLog.undo("load", {"name": "m", "model_dir": "/x"}) == ("unload", {"name": "m"})
    assert ControlLog.undo("scale", {"name": "m", "version": "1", "instances": 3,
                                     "previous": 1}) == \
        ("scale", {"name": "m", "version": "1", "instances": 1, "previous": 1})
    assert ControlLog.undo("cuda_register", {"name": "g", "raw_handle": "AA=="}) == \
        ("cuda_unregister", {"name": "g"})
    assert ControlLog.undo("shm_register", {"name": "s"}) == ("shm_unregister", {"name": "s"})
    assert ControlLog.undo("unload", {"name": "m"}) is None  # nothing to take back
