"""Batch and queue policy read from config.pbtxt text."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from serving.batching import QueuePolicy, policy_from_config
from serving.batching.policy import BatchConfig
from serving.errors import InvalidInput
from serving.generated import model_config_pb2
from serving.store.reader import batch_config


def parse(text: str) -> BatchConfig:
    return batch_config(text_format.Parse(text, model_config_pb2.ModelConfig()))


def test_full_dynamic_batching_block_is_read() -> None:
    policy = policy_from_config(parse("""
        max_batch_size: 16
        dynamic_batching {
          preferred_batch_size: [8, 4]
          max_queue_delay_microseconds: 500
          priority_levels: 3
          default_priority_level: 2
          default_queue_policy { max_queue_size: 10 default_timeout_microseconds: 100
                                 allow_timeout_override: true }
          priority_queue_policy { key: 1 value: { max_queue_size: 2 } }
        }"""))
    assert policy.dynamic and policy.max_batch_size == 16
    assert policy.preferred_batch_sizes == (4, 8) and policy.max_queue_delay_us == 500
    assert [policy.level_for(p) for p in (0, 1, 2, 3, 4)] == [1, 0, 1, 2, 1]
    assert policy.queue_policy(0) == QueuePolicy(max_queue_size=2)
    assert policy.queue_policy(1).max_queue_size == 10
    assert policy.queue_policy(2).timeout_us(50) == 50
    assert policy.queue_policy(2).timeout_us(500) == 100, "a request may only lower the timeout"


def test_no_dynamic_batching_block_means_one_request_per_run() -> None:
    policy = policy_from_config(parse("max_batch_size: 8"))
    assert not policy.dynamic and policy.max_batch_size == 8


def test_model_without_batch_dim_never_batches() -> None:
    policy = policy_from_config(parse("max_batch_size: 0 dynamic_batching {}"))
    assert not policy.dynamic


@pytest.mark.parametrize(("text", "message"), [
    ("max_batch_size: 4 dynamic_batching { preferred_batch_size: 8 }", "preferred_batch_size 8"),
    ("max_batch_size: 4 dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
     "default_priority_level"),
])
def test_invalid_settings_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy_from_config(parse(text))


def test_negative_timeout_is_invalid() -> None:
    with pytest.raises(InvalidInput):
        QueuePolicy(allow_timeout_override=True).timeout_us(-1)


def test_max_batch_elements_is_read_from_the_parameters() -> None:
    text = 'max_batch_size: 8 dynamic_batching {} parameters { key: "max_batch_elements" ' \
           'value { string_value: " 4096 " } }'
    assert policy_from_config(parse(text)).max_batch_elements == 4096
    assert policy_from_config(parse("max_batch_size: 8 dynamic_batching {}")) \
        .max_batch_elements == 0


@pytest.mark.parametrize("value", ["-5", "1e6", "lots", "9" * 19])
def test_a_malformed_max_batch_elements_is_refused_naming_it(value: str) -> None:
    text = f'max_batch_size: 8 parameters {{ key: "max_batch_elements" ' \
           f'value {{ string_value: "{value}" }} }}'
    with pytest.raises(ValueError, match="max_batch_elements must be a non-negative integer"):
        parse(text)
