"""`capserve` dispatch and `python -m serving` flags (flags override CAPSERVE_* env)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.__main__ import parse_args
from serving.settings import Settings

ROOT = Path(__file__).resolve().parents[4]


def test_flags_override_env_and_unset_flags_keep_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSERVE_HTTP_PORT", "9100")
    monkeypatch.setenv("CAPSERVE_GRPC_PORT", "9101")
    overrides = parse_args(["--http-port", "9200", "--enable-model-control"])
    assert overrides == {"http_port": 9200, "enable_model_control": True}
    settings = Settings(**overrides)
    assert (settings.http_port, settings.grpc_port, settings.host) == (9200, 9101, "127.0.0.1")


def test_cli_dispatches_to_the_package_in_a_new_process() -> None:
    out = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "--shutdown-grace-seconds" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "serving.cli", "frobnicate"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "serving", "--model-store", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "is not a directory" in out.stderr


def test_model_control_without_a_token_file_is_refused(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from serving.__main__ import main

    assert main(["--model-store", str(tmp_path), "--enable-model-control"]) == 2
    assert "--api-token-file" in capsys.readouterr().err


def test_every_user_setting_has_a_flag() -> None:
    """Limits and timeouts added to Settings are flags too, parsed with the setting's type."""
    from serving.__main__ import _INTERNAL
    from serving.settings import Settings

    for name, info in Settings.model_fields.items():
        if name in _INTERNAL:
            continue
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool and info.default is True:  # on by default: --no-<name>
            assert parse_args(["--no-" + flag[2:]]) == {name: False}, name
            continue
        if info.annotation is bool:
            assert parse_args([flag]) == {name: True}, name
            continue
        samples = {"log_format": "json", "log_level": "DEBUG", "device": "cpu"}
        value = samples.get(name) or {int: "7", float: "2.5"}.get(info.annotation, "x")  # type: ignore[arg-type]
        parsed = parse_args([flag, value])
        assert list(parsed) == [name], (name, parsed)
        if info.annotation in (int, float):
            assert parsed[name] == info.annotation(value), name


def test_workers_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.settings import Settings

    assert Settings(**parse_args(["--workers", "3"])).workers == "3"
    monkeypatch.setenv("CAPSERVE_WORKERS", "auto")
    assert Settings().workers == "auto"
    with pytest.raises(ValueError, match="workers must be auto or a count"):
        Settings(workers="0")
