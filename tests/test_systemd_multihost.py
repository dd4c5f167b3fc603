"""docs/bare-metal.md stays true: its stack files and its unit are what llmsvc makes of them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from llmsvc.local.config import load
from llmsvc.local.stack import components
from llmsvc.local.systemd import parse, unit_file

DOC = Path(__file__).resolve().parent.parent / "docs" / "bare-metal.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_multi_host_stack_files(tmp_path: Path) -> None:
    control_text, gpu_text = blocks("yaml")
    (tmp_path / "control.yaml").write_text(control_text)
    (tmp_path / "gpu01.yaml").write_text(gpu_text)
    control = components(load(tmp_path / "control.yaml"))
    assert [c.label for c in control] == ["registry", "router", "batch"]
    batch = control[2].args
    assert batch[batch.index("--data-dir") + 1] == "/var/lib/llmsvc/batch"
    assert control[0].env == {"LLMSVC_TOKEN": "change-me"}
    assert "--registry-url" in control[1].args

    gpu = components(load(tmp_path / "gpu01.yaml"))
    assert [c.label for c in gpu] == ["babysitter_8000", "babysitter_8100"]
    for comp in gpu:
        args = comp.args
        assert args[args.index("--registry") + 1] == "http://10.0.0.1:8081"
        assert args[args.index("--advertise-host") + 1] == "10.0.0.11"
        assert comp.env == {"LLMSVC_REGISTRY_TOKEN": "change-me"}
        assert comp.health_url.startswith("http://127.0.0.1:")


def test_the_unit_shown_is_the_unit_printed() -> None:
    command = next(b for b in blocks("bash") if "llmsvc systemd babysitter" in b)
    words = shlex.split(command.split("|")[0].replace("\\\n", " "))
    assert words[:2] == ["llmsvc", "systemd"]
    parsed = parse([words[2], "--exec", "/opt/llmsvc/.venv/bin/llmsvc", *words[3:]])
    assert parsed is not None
    component, args, options, exec_ = parsed
    printed = unit_file(component, args, options, exec_).splitlines()
    shown = blocks("ini")[0].splitlines()
    assert printed[1:] == shown[1:]  # the first line, a comment, is shortened in the docs
