"""Variable (-1) dims of raw v2 tensors are bounded by the model's own max_side / min_side
parameters, as image sides are (unet fed 1x1x1024x1024 ran for tens of seconds on two cores)."""

from __future__ import annotations

import numpy as np
import pytest

from serving.core.types import InferRequest, Tensor
from serving.core.validation import RequestRules, check_request
from serving.errors import InvalidInput
from serving.generated import model_config_pb2
from serving.store.reader import spec_of


def _rules(**parameters: str) -> RequestRules:
    config = model_config_pb2.ModelConfig(name="unet", max_batch_size=4)
    config.input.add(name="input", data_type=model_config_pb2.TYPE_FP32, dims=[1, -1, -1])
    config.output.add(name="logits", data_type=model_config_pb2.TYPE_FP32, dims=[3, -1, -1])
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return spec_of(config).rules


def _request(*shape: int) -> InferRequest:
    return InferRequest("unet", [Tensor("input", "FP32", shape, np.zeros(shape, np.float32))])


def test_a_variable_dim_over_max_side_is_refused_naming_dim_size_and_limit() -> None:
    rules = _rules(max_side="64")
    with pytest.raises(InvalidInput, match=r"input 'input' dimension 3 is 100, over the limit "
                                           r"of 64 for model 'unet' \(its max_side parameter\)"):
        check_request(rules, _request(1, 1, 32, 100))
    assert check_request(rules, _request(2, 1, 64, 48)).batch_size == 2


def test_a_variable_dim_under_min_side_is_refused() -> None:
    rules = _rules(max_side="64", min_side="8")
    with pytest.raises(InvalidInput, match=r"dimension 2 is 4, under the minimum of 8 .*min_side"):
        check_request(rules, _request(1, 1, 4, 32))
    check_request(rules, _request(1, 1, 8, 8))


def test_fixed_dims_and_models_without_the_parameters_are_unbounded() -> None:
    check_request(_rules(), _request(1, 1, 2000, 3))
    check_request(_rules(max_side="not a number"), _request(1, 1, 700, 700))
