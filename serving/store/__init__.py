"""The model store edge: ``config.pbtxt`` (Triton's ModelConfig message) in, ModelSpec out.

Only this package and the transports' ModelConfig route hold the protobuf message; the core,
batching and backends read the :class:`~serving.core.spec.ModelSpec` built here.
"""

from serving.store.reader import (
    CONFIG_FILE,
    LABELS_FILE,
    config_message,
    read_config,
    read_model_spec,
    spec_of,
)

__all__ = ["CONFIG_FILE", "LABELS_FILE", "config_message", "read_config", "read_model_spec",
           "spec_of"]
