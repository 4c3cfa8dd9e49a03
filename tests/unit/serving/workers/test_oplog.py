"""The supervisor's control log: what a replacement worker replays stays as short as the state
it describes, and region names are one namespace over system and CUDA regions."""

from __future__ import annotations

import pytest

from serving.errors import AlreadyExists
from serving.workers.oplog import ControlLog


def _ops(log: ControlLog) -> list[tuple[str, ...]]:
    """(op, name), and the version of a scale or default version, per entry in order."""
    return [(e["op"], e["params"]["name"]) + ((e["params"]["version"],)
            if e["op"] in ("scale", "set_default") else ()) for e in log.entries]


def test_unregistering_removes_the_registrations_it_ends() -> None:
    log = ControlLog()
    log.record("load", {"name": "lenet", "model_dir": ""})
    for name in ("a", "b"):
        log.record("shm_register", {"name": name, "key": "/k", "offset": 0, "byte_size": 8})
    log.record("cuda_register", {"name": "g", "raw_handle": "AA==", "device_id": 0,
                                 "byte_size": 8})
    log.record("shm_unregister", {"name": "a"})
    assert _ops(log) == [("load", "lenet"), ("shm_register", "b"), ("cuda_register", "g")]
    log.record("cuda_unregister", {"name": "b"})  # "b" is a system region: not this kind's
    assert ("shm_register", "b") in _ops(log)
    log.record("shm_unregister", {"name": ""})  # every system region; the CUDA one stays
    assert _ops(log) == [("load", "lenet"), ("cuda_register", "g")]
    log.record("cuda_unregister", {"name": ""})
    assert _ops(log) == [("load", "lenet")]


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


def _scale(name: str, version: str, instances: int) -> dict[str, object]:
    return {"name": name, "version": version, "instances": instances, "previous": 1}


def test_reloading_a_model_again_and_again_keeps_the_log_short() -> None:
    log = ControlLog()
    for i in range(1000):
        log.record("load", {"name": "lenet", "model_dir": "/store/lenet"})
        log.record("scale", _scale("lenet", "1", 1 + i % 3))
        log.record("load", {"name": "other", "model_dir": "/store/other"})
        if i % 2:
            log.record("unload", {"name": "other"})
    assert _ops(log) == [("load", "lenet"), ("scale", "lenet", "1"), ("unload", "other")]
    assert log.entries[1]["params"]["instances"] == 1 + 999 % 3  # the last count wins


def test_a_load_resets_instance_counts_and_later_counts_replace_earlier_ones() -> None:
    log = ControlLog()
    log.record("scale", _scale("m", "1", 3))
    log.record("scale", _scale("m", "2", 2))
    log.record("scale", _scale("m", "1", 4))  # replaces the first, keeps version 2's
    assert _ops(log) == [("scale", "m", "2"), ("scale", "m", "1")]
    log.record("scale", _scale("n", "1", 2))
    log.record("load", {"name": "m", "model_dir": "/store/m"})  # every version rebuilt
    assert _ops(log) == [("scale", "n", "1"), ("load", "m")]


def test_loads_stay_while_a_default_version_needs_them() -> None:
    """A default version is replayed where it was set: the model must be loaded by then on a
    replacement that did not load it at start, so the loads before it stay."""
    log = ControlLog()
    log.record("load", {"name": "m", "model_dir": "/store/m"})
    log.record("set_default", {"name": "m", "version": "2"})
    log.record("scale", _scale("m", "2", 3))
    log.record("load", {"name": "m", "model_dir": "/store/m"})
    log.record("set_default", {"name": "m", "version": "1"})  # replaces the first default
    assert _ops(log) == [("load", "m"), ("load", "m"), ("set_default", "m", "1")]
