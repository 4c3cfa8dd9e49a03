"""Every task kind the spec admits has a renderer, and no renderer is unreachable."""

from __future__ import annotations

from serving.tasks.kinds import TASKS
from serving.tasks.spec import FULLY_CONVOLUTIONAL, TaskSpec


def test_spec_kinds_and_renderers_are_the_same_set() -> None:
    assert set(TASKS) == set(FULLY_CONVOLUTIONAL)


def test_fully_convolutional_kinds_default_to_no_resize() -> None:
    for kind, fully_convolutional in FULLY_CONVOLUTIONAL.items():
        spec = TaskSpec.from_parameters("m", {"task": kind})
        assert spec.resize == ("none" if fully_convolutional else "exact"), kind
