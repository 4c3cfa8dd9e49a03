"""Register urls a client can send: every one the store cannot hold is a 400 naming why (long
names, NUL bytes and link loops were server errors from the file system)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.archives.store import ModelStoreAccess
from serving.errors import InvalidInput


@pytest.fixture
def access(tmp_path: Path) -> ModelStoreAccess:
    store = tmp_path / "store"
    (store / "m").mkdir(parents=True)
    (store / "m" / "config.pbtxt").write_text("")
    os.symlink("loop", store / "loop")
    return ModelStoreAccess(store, tmp_path / "cache")


@pytest.mark.parametrize(("url", "says"), [
    ("a" * 5000, "5000 characters, over the limit of 4096"),
    ("a" * 300 + ".mar", "cannot be looked up in the model store: File name too long"),
    ("c" * 256, "cannot be looked up in the model store: File name too long"),
    ("m\x00", "contains a NUL character"),
    ("file:///x%00y.mar", "contains a NUL character"),
    ("loop", "loop of symbolic links"),
    ("nope.mar", "does not exist in the model store"),
    ("../etc", "outside the model store"),
])
def test_odd_urls_are_refused_with_the_reason(access: ModelStoreAccess, url: str,
                                              says: str) -> None:
    with pytest.raises(InvalidInput, match=says) as caught:
        access.register(url)
    assert len(caught.value.message) < 600


def test_a_model_directory_still_registers(access: ModelStoreAccess) -> None:
    assert access.register("m") == "m"
    assert access.register(str(access.store / "m")) == "m"
