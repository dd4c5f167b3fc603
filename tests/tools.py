"""External tools the tests need (helm, promtool, amtool, nginx, docker, ...): find or skip.

Locally a missing tool skips its tests with the reason and how to install it; in CI
(``LLMSVC_REQUIRE_TOOLS=1``, set by ``.ci/run``) a missing tool fails them, so that a
check never silently stops running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEARCH = [ROOT / ".tools" / "bin", ROOT / ".venv" / "bin"]
HOW = {
    "helm": "run `make tools` (installs helm into .tools/bin)",
    "kubectl": "run `make tools` (installs kubectl into .tools/bin)",
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
    "amtool": "apt-get install prometheus-alertmanager",
    "nginx": "apt-get install nginx",
}
# Tools whose tests only run where they exist, in CI too (no Docker engine in CI).
OPTIONAL = {"docker", "kind"}


def tool_path(name: str) -> str | None:
    """The tool's path: ``.tools/bin``, ``.venv/bin``, then ``PATH``; None when absent."""
    for directory in SEARCH:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    # /usr/sbin holds nginx and is not on every user's PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin")


def require_tool(name: str) -> str:
    """The tool's path, or skip (locally) / fail (in CI) with how to install it."""
    path = tool_path(name)
    if path is not None:
        return path
    reason = f"{name} is not installed: {HOW.get(name, 'install it')}"
    if os.environ.get("LLMSVC_REQUIRE_TOOLS") == "1" and name not in OPTIONAL:
        pytest.fail(reason + " (LLMSVC_REQUIRE_TOOLS=1: CI must have it)")
    pytest.skip(reason)


def docker_available() -> str | None:
    """None when a Docker engine answers, else why not (for skip reasons)."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker command on this machine"
    probe = subprocess.run(
        [docker, "info", "--format", "{{.ServerVersion}}"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return "the docker command cannot reach a Docker engine"
    return None
