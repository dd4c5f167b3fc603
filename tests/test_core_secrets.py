"""Tokens from flags or files: the one rule every component's settings use."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from llmsvc.core.secrets import MAX_TOKEN_FILE_BYTES, from_flag_or_file, new_token, read_token_file


def test_new_tokens_are_long_and_distinct() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 43 and t.isascii() and " " not in t for t in tokens)


def test_a_token_file_is_read_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text("s3cret\n")
    assert read_token_file(path, flag="--token-file").get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b" \n", "the file is empty"),
        (b"a\nb\n", "more than one line"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * (MAX_TOKEN_FILE_BYTES + 1), "larger than"),
    ],
)
def test_bad_token_files_are_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "t"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_token_file(path, flag="--token-file")
    assert str(info.value).startswith(f"--token-file {path}: ")
    assert "\n" not in str(info.value)


def test_a_missing_token_file_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^--admin-token-file .*/nope: No such file"):
        read_token_file(tmp_path / "nope", flag="--admin-token-file")


def test_flag_or_file(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text("from-file\n")
    assert from_flag_or_file(None, None, flag="--token") is None
    assert from_flag_or_file(SecretStr(""), None, flag="--token") is None
    given = from_flag_or_file(SecretStr("v"), None, flag="--token")
    assert given is not None and given.get_secret_value() == "v"
    read = from_flag_or_file(None, path, flag="--token")
    assert read is not None and read.get_secret_value() == "from-file"
    with pytest.raises(ValueError, match="give --token or --token-file, not both"):
        from_flag_or_file(SecretStr("v"), path, flag="--token")
