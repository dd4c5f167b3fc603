"""The parsers an ``llmsvc`` command really builds, for the tests that check its flags.

Each entry of ``llmsvc.cli.COMMANDS`` is run with ``ArgumentParser.parse_known_args``
replaced by a catch, so the parser the command constructs (and its subcommands') is
the one inspected, not a list kept by hand. ``tests/test_cli_env.py`` checks every flag
has its ``LLMSVC_*`` variable; ``tests/test_docs_flags.py`` that the docs show no flag
a command lacks.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import llmsvc.core.settings as core_settings
from llmsvc.cli import COMMANDS

# What each command needs before it parses (systemd takes the component first).
ARGV: dict[str, list[str]] = {"systemd": ["router"], "babysitter": ["--engine", "sim"]}


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


@dataclass
class Walked:
    parsers: list[tuple[str, argparse.ArgumentParser]]
    """(where, parser): the command's parser and its subcommands' parsers."""
    settings: type[core_settings.BaseServiceSettings] | None


def _run(command: str) -> Callable[[list[str]], int]:
    module, function = COMMANDS[command][0].split(":")
    run: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
    return run


def walk(command: str, monkeypatch: pytest.MonkeyPatch) -> Walked:
    """The parsers ``llmsvc <command>`` builds, caught at their first parse."""
    seen: list[type[core_settings.BaseServiceSettings]] = []
    real_build = core_settings.build_parser

    def build(settings_cls: Any, **kwargs: Any) -> argparse.ArgumentParser:
        seen.append(settings_cls)
        return real_build(settings_cls, **kwargs)

    def catch(self: argparse.ArgumentParser, *_: Any, **__: Any) -> Any:
        raise _Caught(self)

    with monkeypatch.context() as patch:
        patch.setattr(core_settings, "build_parser", build)
        patch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
        try:
            _run(command)(list(ARGV.get(command, [])))
        except _Caught as caught:
            top = caught.parser
        else:
            raise AssertionError(f"llmsvc {command} parsed no flags")
    parsers = [(command, top)]
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += [(f"{command} {name}", sub) for name, sub in action.choices.items()]
    return Walked(parsers, seen[0] if seen else None)


def flags(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if not action.option_strings:
            continue  # positional, or the subcommands
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if action.option_strings == ["-h", "--help"] or "--version" in action.option_strings:
            continue
        yield action


def caught_parser(command: str, argv: list[str]) -> argparse.ArgumentParser:
    """The parser ``llmsvc <command> <argv>`` builds: for a subcommand the command
    dispatches to before building its own parser (``llmsvc sim-engine fit``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", _catch)
        try:
            _run(command)(argv)
        except _Caught as caught:
            return caught.parser
    raise AssertionError(f"llmsvc {command} {' '.join(argv)} parsed no flags")


def _catch(self: argparse.ArgumentParser, *_: Any, **__: Any) -> Any:
    raise _Caught(self)
