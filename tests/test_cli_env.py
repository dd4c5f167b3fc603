"""Every flag of every ``llmsvc`` subcommand has an ``LLMSVC_*`` variable, named in its help.

The walk takes each entry of ``llmsvc.cli.COMMANDS`` and runs it with its parser's parsing
replaced by a catch, so the parser the command really builds (its subcommands' too) is the
one checked, not a list kept by hand. For each flag (``--help`` and ``--version`` aside):

- its help ends in ``[env LLMSVC_NAME]``;
- the variable does something: for a command's own argparse flags, building the parser
  again with ``LLMSVC_NAME`` set changes the flag's default to that value; for a
  pydantic-settings service (``core.settings.build_parser``) the flag is a field of the
  settings class, the variable is ``LLMSVC_<FIELD>``, and pydantic-settings' environment
  source reads it for that field.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from pydantic_settings import EnvSettingsSource

import llmsvc.core.settings as core_settings
from cliwalk import flags, walk
from llmsvc.cli import COMMANDS

ENV_IN_HELP = re.compile(r"\[env (LLMSVC_[A-Z0-9_]+)(?:=[^\]]*)?\]")  # [env LLMSVC_X=1]: a switch
SAMPLE = "7"


def env_of(action: argparse.Action, where: str) -> str:
    names = ENV_IN_HELP.findall(action.help or "")
    assert len(names) == 1, (
        f"llmsvc {where} {'/'.join(action.option_strings)}: its help names no "
        f"'[env LLMSVC_…]' (help: {action.help!r})"
    )
    return str(names[0])


def sample_for(action: argparse.Action) -> tuple[str, Callable[[Any], bool]]:
    """A value for the variable and what the flag's default must then be."""
    if action.nargs == 0:  # a switch
        return "1", lambda default: default is True
    if action.choices is not None:
        choice = next(str(c) for c in action.choices if c != action.default)
        return choice, lambda default: str(default) == choice
    return SAMPLE, lambda default: str(default) in ("7", "7.0")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_its_variable(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LLMSVC_")]:
        monkeypatch.delenv(name)
    walked = walk(command, monkeypatch)
    checked = 0
    for where, parser in walked.parsers:
        for action in flags(parser):
            variable = env_of(action, where)
            flag = "/".join(action.option_strings)
            if walked.settings is not None and action.default is argparse.SUPPRESS:
                field = action.dest
                assert field in walked.settings.model_fields, (where, flag)
                assert variable == core_settings.env_name(field), (where, flag, variable)
                with monkeypatch.context() as patch:
                    patch.setenv(variable, SAMPLE)
                    read = EnvSettingsSource(walked.settings)()
                assert field in read, f"llmsvc {where} {flag}: {variable} is not read"
            else:
                value, expected = sample_for(action)
                with monkeypatch.context() as patch:
                    patch.setenv(variable, value)
                    again = walk(command, patch)
                    match = [
                        a
                        for w, p in again.parsers
                        if w == where
                        for a in flags(p)
                        if a.dest == action.dest
                    ]
                assert match, (where, flag)
                assert expected(match[0].default), (
                    f"llmsvc {where} {flag}: with {variable}={value} its default is "
                    f"{match[0].default!r}"
                )
            checked += 1
    assert checked, f"llmsvc {command}: no flag found"


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without its LLMSVC_* variables, plus ``variables``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LLMSVC_")} | variables


def test_memory_max_from_the_environment_reaches_the_unit() -> None:
    """The issue's example, as a user types it."""
    unit = subprocess.run(
        [sys.executable, "-m", "llmsvc", "systemd", "router"],
        env=clean_env(LLMSVC_MEMORY_MAX="3G", LLMSVC_CPU_QUOTA="150%"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "MemoryMax=3G" in unit.splitlines()
    assert "CPUQuota=150%" in unit.splitlines()
    flag_wins = subprocess.run(
        [sys.executable, "-m", "llmsvc", "systemd", "router", "--memory-max", "1G"],
        env=clean_env(LLMSVC_MEMORY_MAX="3G"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "MemoryMax=1G" in flag_wins.splitlines()


def test_a_bad_switch_variable_is_one_line_exit_2() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "llmsvc", "systemd", "router"],
        env=clean_env(LLMSVC_NO_TOKENS="maybe"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr == (
        "llmsvc systemd: error: LLMSVC_NO_TOKENS: 'maybe' is not a switch "
        "(give 1 or 0, true or false)\n"
    )
