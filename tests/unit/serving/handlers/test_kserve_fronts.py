"""What the KServe fronts of custom-handler models accept and refuse before a handler runs."""

from __future__ import annotations

import base64
import json

import pytest

from serving.core.validation import DEFAULT_LIMITS
from serving.errors import InvalidInput
from serving.handlers.http import check_v2_body, v1_body

PNG = base64.b64encode(b"\x89PNG fake").decode()


@pytest.mark.parametrize("instance", [{"b64": PNG}, {"data": {"b64": PNG}}])
def test_v1_b64_instances_become_the_data_string_vision_handlers_decode(
        instance: dict[str, object]) -> None:
    doc = json.loads(v1_body(json.dumps({"instances": [instance, {"data": "x"}]}).encode()))
    assert doc["instances"] == [{"data": PNG}, {"data": "x"}]


def test_v1_body_without_b64_is_handed_over_unchanged() -> None:
    body = b'{"instances": [{"data": "abc"}], "parameters": {"k": 1}}'
    assert v1_body(body) is body


@pytest.mark.parametrize("body, words", [
    (b'{"instances": []}', 'non-empty list "instances"'),
    (b'{"inputs": [1]}', 'non-empty list "instances"'),
    (b"[1, 2", "not valid JSON"),
    (b'{"instances": [{"b64": "@@@"}]}', "instance 0 field 'b64' is not valid base64"),
])
def test_bad_v1_bodies_are_refused_naming_the_field(body: bytes, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        v1_body(body)


def test_v2_body_of_nested_rows_matching_its_shape_passes() -> None:
    check_v2_body(json.dumps({"inputs": [
        {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
        {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["text"]}]}).encode(),
        DEFAULT_LIMITS)


@pytest.mark.parametrize("item, words", [
    ({"shape": [1], "datatype": "FP32", "data": [1]}, "needs a string 'name'"),
    ({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}, "non-negative integers"),
    ({"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}, "non-number"),
    ({"name": "x", "shape": [1], "datatype": "FP32"}, "non-empty list 'data'"),
])
def test_bad_v2_inputs_are_refused_naming_the_field(item: dict[str, object],
                                                    words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        check_v2_body(json.dumps({"inputs": [item]}).encode(), DEFAULT_LIMITS)
