"""`llmsvc up -f FILE` refuses a bad file in one line, before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmsvc.local.config import ConfigError, demo_config, load

GOOD = """
logs_dir: {logs}
registry: {{port: 18081}}
router: {{port: 18080}}
babysitters:
  - {{name: a, engine: sim, model: m, port: 18100}}
  - {{name: b, engine: llama.cpp, model: {gguf}, port: 18200, gpus: [0]}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "llmsvc.yaml"
    path.write_text(text)
    return path


def test_good_file_loads(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    cfg = load(write(tmp_path, GOOD.format(logs=tmp_path / "logs", gguf=gguf)))
    assert [b.port for b in cfg.babysitters] == [18100, 18200]
    assert cfg.router_url == "http://127.0.0.1:18080"


def test_demo_is_two_sim_engines_of_one_model() -> None:
    cfg = demo_config()
    assert {b.engine for b in cfg.babysitters} == {"sim"}
    assert len({b.model for b in cfg.babysitters}) == 1
    assert (cfg.registry.port, cfg.router.port) == (8081, 8080)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("babysitters: [{engine: tensorrt, model: m, port: 9000}]", "unknown engine 'tensorrt'"),
        (
            "router: {port: 9000}\nbabysitters: [{engine: sim, model: m, port: 9000}]",
            "port 9000 is used twice",
        ),
        (
            "babysitters: [{engine: sim, model: m, port: 9000},"
            " {engine: sim, model: m, port: 9001}]",
            "port 9001 is used twice",
        ),
        (
            "babysitters: [{engine: llama.cpp, model: /nonexistent/x.gguf, port: 9000}]",
            "model path does not exist: /nonexistent/x.gguf",
        ),
        (
            "babysitters: [{engine: vllm, model: ./missing-dir, port: 9000}]",
            "model path does not exist",
        ),
        ("babysitters: [{engine: sim, port: 9000}]", "needs a model"),
        ("babysitters: [{engine: command, port: 9000}]", "needs the command"),
        ("router: {port: http}", "router.port"),
        ("routr: {}", "routr"),
        ("babysitters: [oops", "not valid YAML"),
        ("- 1\n- 2", "top level must be a mapping"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_up_with_a_bad_file_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"logs_dir: {tmp_path}/logs\nbabysitters: [{{engine: nope, model: m, port: 9000}}]",
    )
    out = subprocess.run(
        [sys.executable, "-m", "llmsvc", "up", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert out.returncode == 2
    assert "unknown engine 'nope'" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "logs").exists()


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmsvc", "up", "-f", str(tmp_path / "no.yaml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert out.returncode == 2
    assert "cannot read" in out.stdout + out.stderr


def test_remote_registry_and_router_by_url(tmp_path: Path) -> None:
    from llmsvc.local.stack import components

    cfg = load(
        write(
            tmp_path,
            """
registry: {enabled: false, url: "http://10.0.0.1:8081/", token: t}
router: {enabled: false, url: "http://10.0.0.1:8080"}
babysitters: [{engine: sim, model: m, port: 9000}]
""",
        )
    )
    (sitter,) = components(cfg)
    assert sitter.args[sitter.args.index("--registry") + 1] == "http://10.0.0.1:8081"
    assert sitter.args[sitter.args.index("--router") + 1] == "http://10.0.0.1:8080"
    assert sitter.env == {"LLMSVC_REGISTRY_TOKEN": "t"}


def test_a_remote_url_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"registry\.url"):
        load(write(tmp_path, "registry: {enabled: false, url: 10.0.0.1:8081}"))
