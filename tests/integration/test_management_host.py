"""DNS rebinding: the loopback management API answers only requests whose Host is a loopback
name with its port (the real server, one process for the module)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server import ServerProcess, start_server


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tiny_store, tmp_path_factory.mktemp("host-logs"),
                        env={"CAPSERVE_MANAGEMENT_ALLOWED_HOSTS": "admin.internal"})
    try:
        yield proc
    finally:
        proc.stop()


def get(server: ServerProcess, host: str, path: str = "/models") -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.management_port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_a_rebinding_page_gets_403_naming_its_host(server: ServerProcess) -> None:
    port = server.management_port
    for host in ("evil.example", f"evil.example:{port}", "localhost:1"):
        status, body = get(server, host)
        assert status == 403, (host, body)
        assert host in str(body["message"]) and body["type"] == "PermissionDeniedException"
    status, _ = get(server, f"evil.example:{port}", "/models/simple")
    assert status == 403, "no route leaks past the check (describe shows store paths)"


def test_loopback_names_and_allowed_hosts_are_served(server: ServerProcess) -> None:
    port = server.management_port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"admin.internal:{port}"):
        status, body = get(server, host)
        assert status == 200, (host, body)
        assert {m["modelName"] for m in body["models"]} >= {"simple", "slow"}  # type: ignore[index, union-attr]
