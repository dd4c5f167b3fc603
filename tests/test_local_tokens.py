"""``llmsvc tokens`` and ``llmsvc.local.tokens``: private files, made once, kept, never printed."""

from __future__ import annotations

import stat
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from llmsvc.local.tokens import NAMES, Tokens, TokensError, ensure_tokens, file_name, read_tokens
from procs import llmsvc_args


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        llmsvc_args("tokens", *args), cwd=cwd, capture_output=True, text=True, timeout=30
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secrets_of(tokens: Tokens) -> list[str]:
    values = [tokens.get(name) for name in NAMES]
    return [v.get_secret_value() for v in values if v is not None]


def test_tokens_are_private_files_made_once(tmp_path: Path) -> None:
    directory = tmp_path / "logs" / "tokens"
    first = ensure_tokens(directory)
    assert mode(directory) == 0o700
    files = sorted(p.name for p in directory.iterdir())
    assert files == sorted(file_name(n) for n in NAMES)  # no temporary file is left
    for name in files:
        assert mode(directory / name) == 0o600, name
        text = (directory / name).read_text()
        assert text.endswith("\n") and len(text.strip()) >= 43
    values = secrets_of(first)
    assert len(set(values)) == len(NAMES) == 4
    assert secrets_of(ensure_tokens(directory)) == values  # kept, not made again
    assert secrets_of(read_tokens(directory)) == values
    assert "*" in repr(first) and not any(v in repr(first) for v in values)


def test_only_the_named_tokens_are_made(tmp_path: Path) -> None:
    tokens = ensure_tokens(tmp_path / "t", names=["router-admin"])
    assert tokens.registry is None and tokens.registry_admin is None
    assert tokens.router_admin is not None
    assert read_tokens(tmp_path / "missing") == Tokens()


def _make(directory: str) -> list[str]:
    return secrets_of(ensure_tokens(Path(directory)))


def test_concurrent_makers_agree_on_one_set_of_tokens(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    with ProcessPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_make, [str(directory)] * 8))
    assert all(r == results[0] for r in results), "two makers wrote different tokens"
    assert len(list(directory.iterdir())) == len(NAMES)


def test_too_open_modes_are_fixed_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "tokens"
    values = secrets_of(ensure_tokens(directory))
    directory.chmod(0o755)
    (directory / "registry-token").chmod(0o644)
    assert secrets_of(read_tokens(directory)) == values  # reading alone changes nothing
    assert mode(directory / "registry-token") == 0o644
    assert "chmod 600" in caplog.text
    caplog.clear()
    assert secrets_of(ensure_tokens(directory)) == values
    assert (mode(directory), mode(directory / "registry-token")) == (0o700, 0o600)
    assert "others could read it" in caplog.text


def test_an_existing_token_written_by_hand_is_kept(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    directory.mkdir(mode=0o700)
    (directory / "registry-token").write_text("copied-from-the-control-host\n")
    (directory / "registry-token").chmod(0o600)
    tokens = ensure_tokens(directory)
    assert tokens.registry is not None
    assert tokens.registry.get_secret_value() == "copied-from-the-control-host"


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        ("file-as-dir", "not a directory"),
        ("empty-token", "the file is empty; delete it"),
        ("dir-as-token", "not a regular file"),
    ],
)
def test_a_bad_directory_is_a_one_line_error(tmp_path: Path, setup: str, says: str) -> None:
    directory = tmp_path / "tokens"
    if setup == "file-as-dir":
        directory.write_text("")
    else:
        directory.mkdir(mode=0o700)
        if setup == "empty-token":
            (directory / "registry-token").write_text("")
        else:
            (directory / "registry-token").mkdir()
    with pytest.raises(TokensError, match=says):
        ensure_tokens(directory)


def test_the_command_prints_names_never_tokens(tmp_path: Path) -> None:
    made = run(cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    directory = tmp_path / "logs" / "tokens"  # the default: where `llmsvc up` keeps them
    values = secrets_of(read_tokens(directory))
    assert len(values) == len(NAMES)
    assert str(Path("logs") / "tokens") in made.stdout and "registry-admin-token" in made.stdout
    assert made.stdout.count("made now") == len(NAMES)
    assert not any(v in made.stdout + made.stderr for v in values)
    again = run("--dir", str(directory), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("kept") == len(NAMES)
    for name, value in zip(NAMES, values, strict=True):
        shown = run("--show", name, cwd=tmp_path)
        assert (shown.returncode, shown.stdout) == (0, value + "\n")


def test_command_errors_are_one_line(tmp_path: Path) -> None:
    missing = run("--show", "registry", "--dir", str(tmp_path / "none"), cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith("llmsvc tokens: error: no registry token in ")
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()  # --show makes nothing
    (tmp_path / "file").write_text("")
    bad = run("--dir", str(tmp_path / "file"), cwd=tmp_path)
    assert bad.returncode == 1 and "not a directory" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
