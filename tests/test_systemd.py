"""``llmsvc systemd``: unit files for each component, checked by systemd-analyze when present."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from llmsvc.local.systemd import UnitOptions, main, quote, unit_file
from procs import llmsvc_args


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        llmsvc_args("systemd", *args), capture_output=True, text=True, timeout=30, check=False
    )


class _CaseKept(configparser.ConfigParser):
    """A parser that keeps the case of keys (systemd's are case-sensitive)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def sections(text: str) -> configparser.ConfigParser:
    # strict=False: LoadCredential= may repeat (checked line by line where it matters)
    parser = _CaseKept(strict=False, interpolation=None, comment_prefixes=("#",))
    parser.read_string(text)
    return parser


def exec_words(text: str) -> list[str]:
    line = sections(text)["Service"]["ExecStart"]
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line)]


def test_babysitter_unit_passes_component_flags_through() -> None:
    result = run(
        "babysitter", "--memory-max", "8G", "--memory-high", "6G", "--cpu-quota", "200%",
        "--engine", "vllm", "--model", "/models/Qwen3-8B", "--user", "llm",
        "--registry", "http://10.0.0.1:8081", "--no-tokens", "--", "--max-model-len", "8192",
        "--chat-template", '{% if x %}"$HOME" a\\b',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    unit = sections(result.stdout)
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert (service["MemoryMax"], service["MemoryHigh"], service["CPUQuota"]) == (
        "8G",
        "6G",
        "200%",
    )
    assert (service["User"], service["KillMode"], service["TimeoutStopSec"]) == (
        "llm",
        "mixed",
        "120",
    )
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    words = exec_words(result.stdout)
    assert Path(words[0]).is_absolute()
    assert words[words.index("babysitter") :] == [
        "babysitter", "--engine", "vllm", "--model", "/models/Qwen3-8B",
        "--registry", "http://10.0.0.1:8081", "--", "--max-model-len", "8192",
        "--chat-template", '{% if x %}"$HOME" a\\b',
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("component", "loaded"),
    [
        (
            "registry",
            {"--token-file": "registry-token", "--admin-token-file": "registry-admin-token"},
        ),
        (
            "router",
            {"--registry-token-file": "registry-token", "--admin-token-file": "router-admin-token"},
        ),
        ("batch", {"--token-file": "batch-token"}),
        ("babysitter", {"--registry-token-file": "registry-token"}),
    ],
)
def test_units_load_the_tokens_as_credentials(component: str, loaded: dict[str, str]) -> None:
    result = run(component, "--user", "llm", "--port", "9")
    assert result.returncode == 0, result.stderr
    words = exec_words(result.stdout)
    after = words[words.index(component) + 1 :]
    assert {after[i]: after[i + 1] for i in range(0, 2 * len(loaded), 2)} == {
        flag: f"%d/{name}" for flag, name in loaded.items()
    }
    assert after[2 * len(loaded) :] == ["--port", "9"]
    creds = [
        line.removeprefix("LoadCredential=")
        for line in result.stdout.splitlines()
        if line.startswith("LoadCredential=")
    ]
    assert creds == [f"{name}:/etc/llmsvc/tokens/{name}" for name in loaded.values()]
    other = run(component, "--tokens-dir", "/srv/tok%ens/", "--port", "9").stdout
    assert f"LoadCredential={next(iter(loaded.values()))}:/srv/tok%%ens/" in other
    assert "LoadCredential" not in run(component, "--no-tokens").stdout


@pytest.mark.parametrize(
    ("component", "flags", "left"),
    [
        ("registry", ["--allow-anonymous-writes"], ["--admin-token-file"]),
        ("registry", ["--token=t"], ["--admin-token-file"]),
        ("registry", ["--admin-token-file", "/x"], ["--token-file"]),
        ("router", ["--registry-token", "t"], ["--admin-token-file"]),
        ("babysitter", ["--registry-token-file", "/x"], []),
        ("batch", ["--token-file", "/x"], []),
        (
            "router",
            ["--batch-url", "http://127.0.0.1:8082"],
            ["--registry-token-file", "--admin-token-file", "--batch-token-file"],
        ),
        (
            "router",
            ["--batch-url", "http://127.0.0.1:8082", "--batch-token-file", "/x"],
            ["--registry-token-file", "--admin-token-file"],
        ),
    ],
)
def test_a_token_the_flags_give_is_not_loaded(
    component: str, flags: list[str], left: list[str]
) -> None:
    result = run(component, *flags)
    assert result.returncode == 0, result.stderr
    words = exec_words(result.stdout)
    ours = words[words.index(component) + 1 : len(words) - len(flags)]
    assert ours[::2] == left
    assert result.stdout.count("LoadCredential=") == len(left)


@pytest.mark.parametrize("component", ["registry", "router", "batch", "babysitter"])
def test_units_verify(component: str, tmp_path: Path) -> None:
    args = ["--engine", "sim", "--model", "m"] if component == "babysitter" else ["--port", "9"]
    result = run(component, "--memory-max", "512M", "--cpu-quota", "50%", *args)
    assert result.returncode == 0, result.stderr
    assert sections(result.stdout)["Service"]["SyslogIdentifier"] == f"llmsvc-{component}"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the structure was checked above")
    path = tmp_path / f"llmsvc-{component}.service"
    path.write_text(result.stdout)
    check = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stderr
    assert check.stderr.strip() == "", check.stderr  # warnings (bad values) also fail


def test_quote_and_defaults() -> None:
    assert quote("plain-arg") == "plain-arg"
    assert quote("50%") == "50%%"
    assert quote("a b") == '"a b"'
    assert quote("") == '""'
    text = unit_file("router", [], UnitOptions(), ["/usr/bin/llmsvc"])
    service = sections(text)["Service"]
    assert service["ExecStart"] == "/usr/bin/llmsvc router"
    assert "MemoryMax" not in service and service["TimeoutStopSec"] == "30"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["operator"], "unknown component"),
        (["router", "--memory-max", "lots"], "--memory-max"),
        (["router", "--cpu-quota", "2"], "--cpu-quota"),
        (["router", "--working-directory", "rel/dir"], "absolute"),
        (["router", "--user", "bad user"], "--user"),
        (["router", "--port", "1\n2"], "line breaks"),
        (["router", "--tokens-dir", "etc/tokens"], "absolute"),
        (["router", "--tokens-dir", "/etc/my tokens"], "--tokens-dir"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("llmsvc systemd: error:") and says in err
    assert len(err.strip().splitlines()) == 1


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--memory-max" in out and "--cpu-quota" in out
    assert main(["router", "--help"]) == 0
    assert run("bogus").returncode == 2  # through the llmsvc command
