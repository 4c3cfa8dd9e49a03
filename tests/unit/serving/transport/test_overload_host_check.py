"""The Host check that keeps DNS-rebinding pages off loopback listeners (management, model
control): loopback names with the bound port pass, anything else is 403 naming the Host."""

from __future__ import annotations

import pytest

from serving.errors import PermissionDenied
from serving.transport.auth import HostCheck, ModelControlGate, parse_allowed_hosts

LOOPBACK = ("127.0.0.1", 8081)


@pytest.mark.parametrize("host", ["localhost:8081", "127.0.0.1:8081", "127.1.2.3:8081",
                                  "[::1]:8081", "LOCALHOST:8081"])
def test_loopback_names_with_the_bound_port_pass(host: str) -> None:
    HostCheck().check(host, LOOPBACK)


@pytest.mark.parametrize("host", ["evil.example:8081", "evil.example", "localhost:9999",
                                  "localhost", "127.0.0.1.evil.example:8081", "", None,
                                  "localhost:80:81", "[::1"])
def test_other_hosts_are_refused_with_a_message_naming_them(host: str | None) -> None:
    with pytest.raises(PermissionDenied, match="Host header") as exc:
        HostCheck().check(host, LOOPBACK)
    assert repr(host) in str(exc.value)


def test_operator_allowed_hosts_pass() -> None:
    check = HostCheck(parse_allowed_hosts(" admin.internal , ops.internal:9000 "))
    check.check("admin.internal:8081", LOOPBACK)
    check.check("ops.internal:9000", LOOPBACK)
    with pytest.raises(PermissionDenied):
        check.check("ops.internal:8081", LOOPBACK)


def test_a_listener_exposed_on_purpose_is_not_host_checked_unless_hosts_are_listed() -> None:
    HostCheck().check("anything.example:8081", ("0.0.0.0", 8081))
    with pytest.raises(PermissionDenied):
        HostCheck(["admin.internal"]).check("anything.example:8081", ("0.0.0.0", 8081))
    HostCheck().check("evil.example", None)  # not a socket (in-process test clients)


def test_model_control_gate_checks_the_host_before_the_token() -> None:
    gate = ModelControlGate(True, "secret")
    with pytest.raises(PermissionDenied, match="evil.example"):
        gate.check("Bearer secret", host="evil.example:8000", server=("127.0.0.1", 8000))
    gate.check("Bearer secret", host="localhost:8000", server=("127.0.0.1", 8000))
    gate.check("Bearer secret")  # gRPC: no Host
