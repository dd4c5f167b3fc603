"""The Dockerfiles: hadolint-clean, multi-stage, pinned, non-root, labelled, health-checked.

No Docker is needed: hadolint and a small parser (``containers.py``) read the files.
The images themselves are built by ``make images`` and exercised by the compose
end-to-end test where a Docker engine exists.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from containers import DOCKERFILES, FLAVOURS, Stage, args_file, dockerfile, global_args
from tools import ROOT, require_tool

# An exact version tag: digits with at least one dot (3.11.11, v0.8.5, b5200 for llama.cpp's
# build numbers), never "latest" or a bare major version.
PINNED_TAG = re.compile(r"^[\w.\-/]+:(v?\d+\.\d+[\w.\-]*|[\w.\-]*-b\d+|\d+\.\d+\.\d+[\w.\-]*)$")
OCI_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.source",
    "org.opencontainers.image.licenses",
}
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make ", "cmake", "git ", "uv ", "pip wheel")


def final_stage(path: Path) -> Stage:
    return dockerfile(path)[-1]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(name: str) -> None:
    hadolint = require_tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_sees_findings() -> None:
    """The check above can fail: a Dockerfile with the usual mistakes has findings."""
    hadolint = require_tool("hadolint")
    bad = "FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nRUN cd /src\n"
    proc = subprocess.run(
        [hadolint, "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout and "DL3008" in proc.stdout


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_multi_stage_with_a_build_stage(name: str) -> None:
    stages = dockerfile(DOCKERFILES[name])
    assert len(stages) >= 2, "build in one stage, run in another"
    assert "build" in [s.name for s in stages]
    final = stages[-1]
    assert final.name is None
    copies = [i.args for i in final.all("COPY")]
    assert any(c.startswith("--from=build ") and "/opt/llmsvc" in c for c in copies), copies


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_base_images_are_pinned(name: str) -> None:
    for stage in dockerfile(DOCKERFILES[name]):
        assert PINNED_TAG.match(stage.base), f"{stage.base!r} is not an exact tag"
        assert ":latest" not in stage.base


def test_flavour_base_images_are_pinned_and_engines_known() -> None:
    from llmsvc.babysitter.settings import ENGINES

    for flavour in FLAVOURS:
        values = args_file(flavour)
        assert PINNED_TAG.match(values["BASE_IMAGE"]), (flavour, values)
        assert values["ENGINE"] in ENGINES
        assert set(values) <= set(re.findall(r"^ARG (\w+)", _text("babysitter"), re.M))


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_stage_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = final_stage(DOCKERFILES[name]).all("USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].args.split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert user.isdigit() and int(user) >= 1000, user


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_stage_has_healthcheck_labels_and_entrypoint(name: str) -> None:
    final = final_stage(DOCKERFILES[name])
    [health] = final.all("HEALTHCHECK")
    command = health.exec_form()
    assert command[:2] == ["/opt/llmsvc/bin/python", "/opt/llmsvc/healthcheck.py"], command
    labels = final.labels()
    assert set(labels) >= OCI_LABELS, OCI_LABELS - set(labels)
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    [entrypoint] = final.all("ENTRYPOINT")
    assert entrypoint.exec_form() == ["llmsvc", name]
    assert final.all("EXPOSE")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_no_build_tools_or_caches_in_the_final_stage(name: str) -> None:
    final = final_stage(DOCKERFILES[name])
    for run in final.all("RUN"):
        for tool in BUILD_TOOLS:
            assert tool not in run.args + " ", f"{tool!r} in the final stage: {run.args}"
        assert "apt-get install" not in run.args
    build_runs = " ".join(i.args for s in dockerfile(DOCKERFILES[name])[:-1] for i in s.all("RUN"))
    for pip in re.findall(r"pip (?:--python \S+ )?install[^&;]*", build_runs):
        assert "--no-cache" in pip, pip  # pip's --no-cache-dir, uv's --no-cache


def test_babysitter_keeps_llmsvc_apart_from_the_engine() -> None:
    """/opt/llmsvc on its own interpreter; only the llmsvc command lands on PATH."""
    stages = dockerfile(DOCKERFILES["babysitter"])
    assert "BASE_IMAGE" in global_args(DOCKERFILES["babysitter"])
    final = stages[-1]
    assert final.base == global_args(DOCKERFILES["babysitter"])["BASE_IMAGE"]
    runs = " ".join(i.args for i in final.all("RUN"))
    assert "ln -s /opt/llmsvc/bin/llmsvc /usr/local/bin/llmsvc" in runs
    env = " ".join(i.args for i in final.all("ENV"))
    assert "PATH=" not in env, "the venv's python3 must not shadow the engine's"


def test_dockerignore_lets_in_exactly_what_the_dockerfiles_copy() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing, then allow"
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    for path in DOCKERFILES.values():
        for stage in dockerfile(path):
            for copy in stage.all("COPY"):
                if copy.args.startswith("--from="):
                    continue
                *sources, _dest = copy.args.split()
                for source in sources:
                    assert source.rstrip("/") in allowed, f"{path.name}: COPY {source} is ignored"
                    assert (ROOT / source).exists(), source


def _text(name: str) -> str:
    return DOCKERFILES[name].read_text()
