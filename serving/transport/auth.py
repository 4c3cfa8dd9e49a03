"""Gate for the model-control APIs (repository index/load/unload) shared by gRPC and HTTP.

Off unless the operator starts the server with ``--enable-model-control``; when an API token
file is configured, every call must also carry ``Authorization: Bearer <token>`` (HTTP header or
gRPC metadata ``authorization``). Both transports call the same check so they cannot drift.

The Host check defends loopback listeners against DNS rebinding: a web page whose name the
attacker re-points at 127.0.0.1 can make the victim's browser send requests to a loopback port,
but with the attacker's name in ``Host``. A listener bound to loopback therefore accepts only
loopback names (``localhost``, ``127.x.y.z``, ``[::1]``) with its own port, plus the hosts the
operator allows.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

from serving.errors import PermissionDenied, Unauthenticated

_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True for loopback names and addresses (``[::1]`` brackets allowed)."""
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None]:
    """``name[:port]`` or ``[v6][:port]`` -> (lower-case name without brackets, port or None);
    raises ``ValueError`` for anything else."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(value)
        port = rest[1:]
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    if not name or (port and not port.isdigit()):
        raise ValueError(value)
    return name, int(port) if port else None


def parse_allowed_hosts(text: str) -> tuple[str, ...]:
    """The ``management_allowed_hosts`` setting: comma-separated ``name`` or ``name:port``."""
    return tuple(h.strip().lower() for h in text.split(",") if h.strip())


class HostCheck:
    """Which ``Host`` headers a listener answers; see the module docstring."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._allowed = tuple(allowed)

    def check(self, host_header: str | None, server: tuple[str, int] | None) -> None:
        """Raise ``PermissionDenied`` naming the Host, or return when the request may go on.

        ``server`` is the (address, port) of the socket the request came in on (ASGI's
        ``scope["server"]``); None, or no port (not a socket), skips the check.
        """
        if server is None or server[1] is None:
            return  # not a socket (an in-process ASGI client): no browser can reach it
        bound, port = server[0], int(server[1])
        if not is_loopback(bound) and not self._allowed:
            return  # exposed on purpose: the token is the defence there
        try:
            name, given = split_host(host_header or "")
        except ValueError:
            raise PermissionDenied(f"Host header {host_header!r} is not allowed") from None
        if is_loopback(name) and given in (port, None if port == 80 else port):
            return
        for allowed in self._allowed:
            a_name, a_port = split_host(allowed)
            if a_name == name and (a_port is None or a_port == (given or 80)):
                return
        raise PermissionDenied(
            f"Host header {host_header!r} is not allowed on this listener ({bound}:{port}); "
            "add it to management_allowed_hosts (CAPSERVE_MANAGEMENT_ALLOWED_HOSTS) if it is "
            "yours"
        )


def check_bearer(authorization: str | None, token: str | None, missing: str) -> None:
    """Raise ``Unauthenticated`` unless ``authorization`` is ``Bearer <token>``; no token
    (None) lets every call through. ``missing`` is the error for a call without one."""
    if token is None:
        return
    scheme, _, credential = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credential:
        raise Unauthenticated(missing)
    # Constant-time comparison: the token must not leak through response timing.
    if not hmac.compare_digest(credential.strip().encode(), token.encode()):
        raise Unauthenticated("invalid API token")


class ModelControlGate:
    def __init__(self, enabled: bool, token: str | None, allowed_hosts: Iterable[str] = ()) -> None:
        self.enabled = enabled
        self._token = token
        self._hosts = HostCheck(allowed_hosts)

    def check(
        self, authorization: str | None, *, host: str | None = None,
        server: tuple[str, int] | None = None,
    ) -> None:
        """Raise the error the client should see, or return when the call is allowed.

        HTTP callers pass the ``Host`` header and ``scope["server"]`` for the Host check;
        gRPC callers pass neither (browsers cannot speak gRPC)."""
        self._hosts.check(host, server)
        if not self.enabled:
            raise PermissionDenied(
                "model control is disabled; start the server with --enable-model-control"
            )
        check_bearer(authorization, self._token,
                     "model control requires 'authorization: Bearer <token>'")
