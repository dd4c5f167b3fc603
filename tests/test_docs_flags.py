"""Every flag the README and docs/ give an ``llmsvc`` command is one that command takes.

The commonest drift between docs and code is a flag renamed or removed while a page
still shows it. This walks every command line the pages show (code blocks and inline
code: ``llmsvc <command> [<subcommand>] --flag …``) and checks each ``--flag`` against
the parser that command really builds (``tests/cliwalk.py``: the parser the
command constructs, caught at its first parse, not a list kept by hand). A command line
ends at ``--`` (what follows goes to the engine or the wrapped command), a pipe, ``&&``,
``;``, a comment or a redirection; ``llmsvc systemd <component>`` takes the component's
flags as well as its own.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from cliwalk import caught_parser, flags, walk
from llmsvc.cli import COMMANDS
from tools import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Subcommands a command dispatches to before building its parser (the walk sees the main
# parser only): their parsers are caught the same way, from these arguments.
DISPATCHED = {("sim-engine", "fit"): ["fit"]}
# Flags a command rewrites before its parser sees them.
REWRITTEN = {"simulate": {"--json"}, "bench": {"--json"}}  # --output json (their cli.py)
COMMAND_LINE = re.compile(r"(?:^|(?<=[\s/(]))llmsvc ([a-z][a-z-]*)((?:[ \t]+[^\s`]+)*)")
STOP = {"--", "|", "||", "&&", ";", "&", ">", "2>&1", "…", "..."}
FLAG = re.compile(r"--[a-z][a-z0-9-]*")


@cache
def known_flags() -> dict[str, frozenset[str]]:
    """``"command"`` or ``"command subcommand"`` → the long flags its parser takes."""
    known: dict[str, frozenset[str]] = {}
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("LLMSVC_")]:
            patch.delenv(name)
        for command in COMMANDS:
            for where, parser in walk(command, patch).parsers:
                known[where] = _long(parser) | REWRITTEN.get(where, set())
    for (command, sub), argv in DISPATCHED.items():
        known[f"{command} {sub}"] = _long(caught_parser(command, argv))
    return known


def _long(parser: argparse.ArgumentParser) -> frozenset[str]:
    names = {"--help"} | {o for a in flags(parser) for o in a.option_strings}
    return frozenset(o for o in names if o.startswith("--"))


def command_lines(text: str) -> Iterator[str]:
    """The code of a page: each line of its fenced blocks (continuations joined), and each
    inline code span."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    for block in blocks:
        yield from block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    yield from (span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose))


def problems(text: str, known: dict[str, frozenset[str]]) -> Iterator[str]:
    """``llmsvc <command> --flag`` where that command has no such flag."""
    for line in command_lines(text):
        for match in COMMAND_LINE.finditer(line):
            command, rest = match.group(1), match.group(2).split()
            if command not in COMMANDS:
                continue  # "llmsvc 0.1.0", a Helm release named llmsvc, …
            where = command
            if rest and f"{command} {rest[0]}" in known:
                where, rest = f"{command} {rest[0]}", rest[1:]
            allowed = known[where]
            if command == "systemd" and rest and rest[0] in known:
                allowed = allowed | known[rest[0]]  # the component's own flags
            for token in rest:
                if token in STOP or token.startswith("#"):
                    break
                flag = FLAG.match(token)
                if flag and flag.group() not in allowed:
                    yield f"llmsvc {where}: no {flag.group()} (in {line.strip()!r})"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_flag_a_page_shows_exists(page: Path) -> None:
    assert not list(problems(page.read_text(), known_flags()))


def test_the_check_can_fail() -> None:
    """A renamed flag, in a block and inline, and a subcommand's and a component's flags."""
    known = known_flags()
    page = (
        "```bash\nllmsvc router --port 8080 \\\n  --helth-interval 1 | tee log\n```\n"
        "Run `llmsvc maintenance on m --mesage down` or\n`llmsvc up --wait`.\n"
        "`llmsvc systemd router --memory-max 1G --strategy least_load` and "
        "`llmsvc sim-engine fit --samples 3` are fine; so is "
        "`llmsvc babysitter --engine vllm -- --gpu-memory-utilization 0.8`."
    )
    assert sorted(p.split(" (")[0] for p in problems(page, known)) == [
        "llmsvc maintenance on: no --mesage",
        "llmsvc router: no --helth-interval",
        "llmsvc up: no --wait",
    ]
