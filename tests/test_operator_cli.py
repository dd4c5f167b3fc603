"""``llmsvc operator`` on the command line: the CRD, bad flags, no credentials, a busy port.

Bad input always ends with one line on stderr and a non-zero exit, never a
traceback. Two tests run the real ``llmsvc`` process; the others call the same
``main`` in-process (no kopf operator starts: each case ends before that).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from kubeapi import write_kubeconfig
from llmsvc.operator.cli import join_repeated, main
from llmsvc.operator.crd import crd_yaml
from procs import HOST, free_port, llmsvc_args


def without_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """No kubeconfig (HOME has no ~/.kube, no $KUBECONFIG) and not in a pod."""
    for name in list(os.environ):
        if name.startswith(("KUBE", "LLMSVC_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))


def fails(
    capsys: pytest.CaptureFixture[str], argv: list[str], status: int, *, usage: bool = False
) -> str:
    """Run ``main(argv)``; it must exit ``status`` with one error line (after argparse's usage)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == status
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    if usage:
        assert lines[0].startswith("usage: llmsvc operator"), err
    else:
        assert len(lines) == 1, err
    assert lines[-1].startswith("llmsvc operator"), err
    return lines[-1]


# -- the real process --------------------------------------------------------------------


def test_crd_prints_the_generated_definition() -> None:
    result = subprocess.run(
        llmsvc_args("operator", "crd"), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == crd_yaml()
    crd = yaml.safe_load(result.stdout)
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "inferenceservices.llmsvc.io"


def test_no_credentials_process_exits_1_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "LLMSVC_"))}
    result = subprocess.run(
        llmsvc_args("operator", "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "HOME": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("llmsvc operator: error: no Kubernetes credentials")
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_api_exits_1_with_one_line(tmp_path: Path) -> None:
    # Port 9 (discard): below 1024, so no test process can be listening there.
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://{HOST}:9")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "LLMSVC_"))}
    result = subprocess.run(
        llmsvc_args("operator", "--host", HOST, "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "KUBECONFIG": str(kubeconfig)},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("llmsvc operator: error: cannot reach the Kubernetes API"), last


# -- main() in-process ---------------------------------------------------------------------


def test_crd_takes_no_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert "extra" in fails(capsys, ["crd", "extra"], 2)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--namespace", "a", "--all-namespaces"], "not both"),
        (["--namespace", "a", "--namespace", "Not_A_Namespace"], "Not_A_Namespace"),
        (["--port", "0"], "--port"),
        (["--resync-interval", "-1"], "--resync-interval"),
        (["--image-prefix", ""], "--image-prefix"),
    ],
)
def test_bad_flags_exit_2(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")  # never reached: flags come first
    assert says in fails(capsys, args, 2, usage="unrecognized" in says)


def test_missing_kubeconfig_file_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    without_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    assert "Kubernetes credentials" in fails(capsys, ["--port", str(free_port())], 1)


def test_malformed_kubeconfig_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    without_credentials(monkeypatch, tmp_path)
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n")
    monkeypatch.setenv("KUBECONFIG", str(broken))
    assert "Kubernetes credentials" in fails(capsys, ["--port", str(free_port())], 1)


def test_busy_port_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    without_credentials(monkeypatch, tmp_path)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with socket.socket() as busy:
        busy.bind((HOST, 0))  # held busy here, handed to no one
        busy.listen()
        port = busy.getsockname()[1]
        line = fails(capsys, ["--host", HOST, "--port", str(port)], 1)
    assert f"cannot listen on {HOST}:{port}" in line


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--namespace", "--all-namespaces", "--image-prefix", "--resync-interval"):
        assert flag in out


def test_operator_is_a_command_of_llmsvc(capsys: pytest.CaptureFixture[str]) -> None:
    from llmsvc.cli import main as llmsvc

    assert llmsvc(["--help"]) == 0
    assert "operator" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "joined"),
    [
        (["--port", "1"], ["--port", "1"]),
        (["--namespace", "a", "--namespace", "b"], ["--namespace", "a,b"]),
        (
            ["--namespace=a", "--port", "1", "--namespace", "b,c"],
            ["--port", "1", "--namespace", "a,b,c"],
        ),
    ],
)
def test_namespace_flag_repeats(argv: list[str], joined: list[str]) -> None:
    assert join_repeated(argv, "--namespace") == joined
