"""``make images`` and the images' health check script, without Docker.

``images/build.sh --print`` shows the exact ``docker build`` commands ``make images``
runs; without a Docker engine ``make images`` says so in one line and fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from containers import DOCKERFILES, FLAVOURS, args_file
from procs import HOST, Spawn, free_port, start_registry
from tools import ROOT

ALL = ["router", "registry", "operator", "babysitter", *FLAVOURS]
HEALTHCHECK = ROOT / "images" / "healthcheck.py"


def build_commands(*args: str) -> list[list[str]]:
    proc = subprocess.run(
        [str(ROOT / "images" / "build.sh"), "--print", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [line.split() for line in proc.stdout.splitlines()]


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


def test_make_images_builds_every_image_with_its_tag() -> None:
    commands = build_commands("ghcr.io/llmsvc", "0.1.0")
    tags = [option(argv, "--tag")[0] for argv in commands]
    assert tags == [f"ghcr.io/llmsvc/{name}:0.1.0" for name in ALL]
    for argv in commands:
        assert argv[:2] == ["docker", "build"] and argv[-1] == "."
        assert (ROOT / option(argv, "--file")[0]).is_file()
    by_name = dict(zip(ALL, commands, strict=True))
    assert option(by_name["operator"], "--file") == ["operator/Dockerfile"]
    for flavour in FLAVOURS:
        build_args = option(by_name[flavour], "--build-arg")
        assert option(by_name[flavour], "--file") == ["Dockerfile.babysitter"]
        for key, value in args_file(flavour).items():
            assert f"{key}={value}" in build_args
    assert not any(
        a.startswith("BASE_IMAGE=") for a in option(by_name["babysitter"], "--build-arg")
    )


def test_prefix_tag_and_subset_are_overridable() -> None:
    commands = build_commands("registry.example/llm", "dev", "router", "babysitter-vllm")
    assert [option(argv, "--tag")[0] for argv in commands] == [
        "registry.example/llm/router:dev",
        "registry.example/llm/babysitter-vllm:dev",
    ]
    bad = subprocess.run(
        [str(ROOT / "images" / "build.sh"), "--print", "p", "t", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "unknown image 'nope'" in bad.stderr


def make_images(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make command")
    return subprocess.run(
        [make, "--no-print-directory", "images"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def ours(stderr: str) -> list[str]:
    """stderr without make's own "make: *** [images] Error 1"."""
    return [line for line in stderr.splitlines() if not line.startswith(("make: ", "make["))]


def test_make_images_without_docker_says_so_in_one_line(tmp_path: Path) -> None:
    # A PATH with what images/build.sh needs, and no docker command.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "dirname", "sh"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    proc = make_images({"PATH": str(bin_dir)})
    assert proc.returncode != 0
    assert ours(proc.stderr) == [
        "make images: Docker is not available here (no docker command, or its daemon is "
        "unreachable); no image built"
    ]


def test_make_images_with_an_unreachable_daemon_fails_in_one_line(tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker command: the case above covers this machine")
    proc = make_images({"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"})
    assert proc.returncode != 0
    assert ours(proc.stderr) == [
        "make images: Docker is not available here (no docker command, or its daemon is "
        "unreachable); no image built"
    ]


def healthcheck(*args: str, port: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LLMSVC_PORT"}
    if port is not None:
        env["LLMSVC_PORT"] = port
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )


def test_healthcheck_script(spawn: Spawn, tmp_path: Path) -> None:
    _, url = start_registry(spawn)
    port = url.rsplit(":", 1)[1]
    assert healthcheck(port).returncode == 0  # the default port
    assert healthcheck("1", port=port).returncode == 0  # LLMSVC_PORT wins
    assert healthcheck(str(int(port) - 1), "1").returncode == 0  # with an offset
    closed = str(free_port())
    down = healthcheck(closed)
    assert down.returncode == 1
    assert down.stderr.startswith(f"healthcheck: http://{HOST}:{closed}/health:")
    assert len(down.stderr.splitlines()) == 1
    web = free_port()  # a server without /health: 404 is not healthy
    server = spawn("http.server", sys.executable, "-m", "http.server", str(web), "--bind", HOST,
                   "--directory", str(tmp_path), raw=True)  # fmt: skip
    server.wait_http(f"http://{HOST}:{web}/")
    not_found = healthcheck(str(web))
    assert not_found.returncode == 1 and "HTTP 404" in not_found.stderr
    assert healthcheck("1", port="tcp://10.0.0.1:8080").returncode == 1
    assert healthcheck().returncode == 2


def test_the_operators_default_engine_images_are_built_for_their_engine() -> None:
    """An InferenceService without ``engine.image`` runs an image ``make images`` makes."""
    from llmsvc.operator.builders import DEFAULT_IMAGES

    built = {option(argv, "--tag")[0]: argv for argv in build_commands("p", "t")}
    for engine, name in DEFAULT_IMAGES.items():
        argv = built[f"p/{name}:t"]
        assert option(argv, "--file") == ["Dockerfile.babysitter"]
        default = re.search(r"^ARG ENGINE=(\S+)$", DOCKERFILES["babysitter"].read_text(), re.M)
        assert default is not None
        flavour_engine = args_file(name)["ENGINE"] if name in FLAVOURS else default.group(1)
        assert flavour_engine == engine, name
