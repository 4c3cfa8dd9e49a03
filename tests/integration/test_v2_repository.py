"""Repository index/load/unload: enabled with a token, refused without it (both flavours)."""

from __future__ import annotations

from typing import Any

import pytest
from tritonclient.utils import InferenceServerException

from tests.helpers.server import ServerProcess
from tests.integration.conftest import API_TOKEN
from tests.integration.v2_clients import FLAVOURS, assert_error, make_client

AUTH = {"authorization": f"Bearer {API_TOKEN}"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_load_unload_needs_the_token(flavour: str, v2_server: ServerProcess) -> None:
    c: Any = make_client(flavour, v2_server)
    for headers in (None, {"authorization": "Bearer wrong-token"}):
        with pytest.raises(InferenceServerException) as exc:
            c.unload_model("strings", headers=headers)
        assert_error(exc, flavour, 401)
        with pytest.raises(InferenceServerException) as exc:
            c.get_model_repository_index(headers=headers)
        assert_error(exc, flavour, 401)
    assert c.is_model_ready("strings")

    index = c.get_model_repository_index(headers=AUTH)
    if flavour == "grpc":
        index = [{"name": m.name, "state": m.state} for m in index.models]
    assert {"name": "strings", "state": "READY"} in [{"name": m["name"], "state": m["state"]} for m in index]

    c.unload_model("strings", headers=AUTH)
    assert not c.is_model_ready("strings")
    with pytest.raises(InferenceServerException) as exc:
        c.load_model("strings", headers={"authorization": "Bearer nope"})
    assert_error(exc, flavour, 401)
    c.load_model("strings", headers=AUTH)
    assert c.is_model_ready("strings")
    assert c.is_server_ready()
    c.close()
