"""Gate for the model-control APIs (repository index/load/unload) shared by gRPC and HTTP.

Off unless the operator starts the server with ``--enable-model-control``; when an API token
file is configured, every call must also carry ``Authorization: Bearer <token>`` (HTTP header or
gRPC metadata ``authorization``). Both transports call the same check so they cannot drift.
"""

from __future__ import annotations

import hmac

from serving.errors import PermissionDenied, Unauthenticated


class ModelControlGate:
    def __init__(self, enabled: bool, token: str | None) -> None:
        self.enabled = enabled
        self._token = token

    def check(self, authorization: str | None) -> None:
        """Raise the error the client should see, or return when the call is allowed."""
        if not self.enabled:
            raise PermissionDenied(
                "model control is disabled; start the server with --enable-model-control"
            )
        if self._token is None:
            return
        scheme, _, credential = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("model control requires 'authorization: Bearer <token>'")
        # Constant-time comparison: the token must not leak through response timing.
        if not hmac.compare_digest(credential.strip().encode(), self._token.encode()):
            raise Unauthenticated("invalid API token")
