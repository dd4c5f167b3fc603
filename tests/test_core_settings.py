from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import Field

from llmsvc.core.settings import (
    BaseServiceSettings,
    CommaList,
    SettingsError,
    build_parser,
    settings_from_values,
    split_passthrough,
)


class Demo(BaseServiceSettings):
    port: int = Field(default=8080, ge=1, le=65535, description="TCP port.")
    interval: float = Field(default=30.0, gt=0, description="Seconds.")
    keys: CommaList = Field(default_factory=list, description="Comma list.")
    verbose: bool = Field(default=False, description="More output.")


def parse(argv: list[str]) -> Demo:
    ns = build_parser(Demo, prog="demo").parse_args(argv)
    return settings_from_values(Demo, vars(ns))


def test_defaults_env_and_flags_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse([]).port == 8080
    monkeypatch.setenv("LLMSVC_PORT", "9000")
    monkeypatch.setenv("LLMSVC_KEYS", "a, b,c")
    assert parse([]).port == 9000
    assert parse([]).keys == ["a", "b", "c"]
    assert parse(["--port", "9100"]).port == 9100  # a flag wins over the environment
    assert parse(["--keys", "x"]).keys == ["x"]


def test_bool_flags() -> None:
    assert parse(["--verbose"]).verbose is True
    assert parse(["--no-verbose"]).verbose is False


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--port", "http"], "--port"),
        (["--port", "0"], "--port"),
        (["--interval", "-1"], "--interval"),
    ],
)
def test_bad_flags_are_one_line_errors(argv: list[str], needle: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse(argv)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSVC_PORT", "nope")
    with pytest.raises(SettingsError, match="LLMSVC_PORT"):
        parse([])


def test_split_passthrough() -> None:
    assert split_passthrough(["--a", "1", "--", "--b", "--"]) == (["--a", "1"], ["--b", "--"])
    assert split_passthrough(["--a"]) == (["--a"], [])


def test_cli_unknown_command_is_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmsvc", "frobnicate"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "unknown command" in out.stderr


def test_cli_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmsvc", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("registry", "router", "babysitter", "sim-engine", "up", "down", "validate"):
        assert command in out.stdout


class Needs(BaseServiceSettings):
    engine: str = Field(description="Required.")


def test_missing_required_setting_names_the_flag() -> None:
    ns = build_parser(Needs, prog="demo").parse_args([])
    with pytest.raises(SettingsError, match=r"^--engine is required$"):
        settings_from_values(Needs, vars(ns))
