"""veil.config: TOML config files under flags and VEIL_ variables, and `veil config show`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from veil.config import (
    ConfigFileError,
    GatewaySettings,
    NodeSettings,
    load_settings,
    masked_settings,
)

VEIL = [sys.executable, "-m", "veil.cli"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_flags_beat_variables_beat_the_file_beats_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(
        tmp_path / "gw.toml", 'port = 9001\nlog_format = "json"\nlock_timeout_seconds = 7\n'
    )
    monkeypatch.delenv("VEIL_PORT", raising=False)
    from_file = load_settings(GatewaySettings, config)
    assert (from_file.port, from_file.log_format, from_file.lock_timeout_seconds) == (
        9001,
        "json",
        7,
    )
    assert from_file.host == GatewaySettings().host  # not in the file: the default
    assert isinstance(from_file, GatewaySettings)
    monkeypatch.setenv("VEIL_PORT", "9002")
    assert load_settings(GatewaySettings, config).port == 9002
    assert load_settings(GatewaySettings, config, port=9003, host=None).port == 9003


def test_a_node_file_sets_lists_and_paths(tmp_path: Path) -> None:
    config = write(
        tmp_path / "node.toml",
        f'data_dir = "{tmp_path / "data"}"\ngateway_keys = ["a", "b"]\nembedded = false\n',
    )
    settings = load_settings(NodeSettings, config)
    assert settings.data_dir == tmp_path / "data"
    assert settings.gateway_keys == ["a", "b"] and settings.embedded is False


def test_unknown_names_missing_files_and_bad_toml_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="unknown settings: prot"):
        load_settings(GatewaySettings, write(tmp_path / "typo.toml", "prot = 1\n"))
    with pytest.raises(ConfigFileError, match="does not exist"):
        load_settings(GatewaySettings, tmp_path / "absent.toml")
    with pytest.raises(ConfigFileError, match="not valid TOML"):
        load_settings(GatewaySettings, write(tmp_path / "broken.toml", "port = \n"))
    with pytest.raises(ValidationError):
        load_settings(GatewaySettings, write(tmp_path / "range.toml", "lock_timeout_seconds = 0\n"))


def test_secrets_are_masked() -> None:
    settings = GatewaySettings(
        database_url="postgresql+asyncpg://veil:hunter2@db:5432/veil",
        redis_url="redis://:s3cret@127.0.0.1:6379/0",
    )
    shown = json.dumps(masked_settings(settings), default=str)
    assert "hunter2" not in shown and "s3cret" not in shown
    assert "postgresql+asyncpg://veil:***@db:5432/veil" in shown


def test_veil_config_show_prints_the_effective_settings(tmp_path: Path) -> None:
    config = write(
        tmp_path / "gw.toml", 'port = 9001\nredis_url = "redis://:s3cret@127.0.0.1:6379/0"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env["VEIL_LOG_FORMAT"] = "json"
    shown = subprocess.run(
        [*VEIL, "config", "show", "gateway", "--config", str(config), "--json"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    effective = json.loads(shown.stdout)
    assert effective["port"] == 9001 and effective["log_format"] == "json"
    assert effective["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    typo = subprocess.run(
        [*VEIL, "config", "show", "node", "--config", str(write(tmp_path / "t.toml", "x = 1\n"))],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert typo.returncode == 2 and "unknown settings: x" in typo.stderr
    assert "Traceback" not in typo.stderr
