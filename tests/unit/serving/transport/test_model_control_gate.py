from __future__ import annotations

import pytest

from serving.errors import PermissionDenied, Unauthenticated
from serving.transport.auth import ModelControlGate


def test_disabled_refuses() -> None:
    with pytest.raises(PermissionDenied, match="--enable-model-control"):
        ModelControlGate(False, "t").check("Bearer t")


def test_token_required_when_set() -> None:
    gate = ModelControlGate(True, "s3cret")
    gate.check("Bearer s3cret")
    for bad in (None, "", "Bearer", "Bearer wrong", "Basic s3cret"):
        with pytest.raises(Unauthenticated):
            gate.check(bad)


def test_no_token_file_allows() -> None:
    ModelControlGate(True, None).check(None)
