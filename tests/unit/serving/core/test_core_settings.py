"""Settings from the environment, and the API token file rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.settings import Settings


def test_defaults_match_the_documented_table(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.host, s.http_port, s.grpc_port, s.metrics_port, s.management_port) == (
        "127.0.0.1", 8000, 8001, 8002, 8081)
    assert s.device == "auto" and not s.enable_model_control and not s.allow_archive_code
    assert s.max_request_bytes == s.grpc_max_message_bytes == 67108864
    assert s.max_image_pixels == 25_000_000 and s.max_request_image_pixels == 50_000_000
    assert s.shutdown_grace_seconds == 30
    assert s.api_token() is None
    assert all(f.description for f in Settings.model_fields.values()), "every field documented"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSERVE_HTTP_PORT", "9100")
    monkeypatch.setenv("CAPSERVE_DEVICE", "CUDA:1")
    monkeypatch.setenv("CAPSERVE_ENABLE_MODEL_CONTROL", "true")
    monkeypatch.setenv("CAPSERVE_LOG_LEVEL", "debug")
    s = Settings()
    assert (s.http_port, s.device, s.enable_model_control, s.log_level) == (
        9100, "cuda:1", True, "DEBUG")
    monkeypatch.setenv("CAPSERVE_DEVICE", "tpu")
    with pytest.raises(ValidationError, match="device must be"):
        Settings()


def test_api_token_file_must_be_private(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o644)
    with pytest.raises(ValueError, match=r"mode 0644\); it must be 0600"):
        Settings(api_token_file=token).api_token()
    token.chmod(0o600)
    assert Settings(api_token_file=token).api_token() == "s3cret"
    token.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        Settings(api_token_file=token).api_token()
    with pytest.raises(ValueError, match="cannot read API token file"):
        Settings(api_token_file=tmp_path / "missing").api_token()
