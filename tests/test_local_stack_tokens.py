"""``llmsvc up`` hands every component its token files: authenticated unless the file opts out."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from llmsvc.local.config import ConfigError, StackConfig, demo_config, load
from llmsvc.local.stack import Component, components, prepare_tokens, token_names
from llmsvc.local.validate import Validator
from procs import Spawn, records, start_registry


def value(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, (flag, args)
    return args[args.index(flag) + 1]


def by_label(cfg: StackConfig) -> dict[str, Component]:
    return {c.label: c for c in components(cfg)}


def stack_file(tmp_path: Path, text: str) -> StackConfig:
    path = tmp_path / "llmsvc.yaml"
    path.write_text(text)
    return load(path)


def test_the_demo_gets_token_files_not_tokens(tmp_path: Path) -> None:
    cfg = demo_config()
    cfg.logs_dir = str(tmp_path / "logs")
    tokens = tmp_path / "logs" / "tokens"
    comps = by_label(cfg)
    registry, router = comps["registry"].args, comps["router"].args
    assert value(registry, "--token-file") == str(tokens / "registry-token")
    assert value(registry, "--admin-token-file") == str(tokens / "registry-admin-token")
    assert "--allow-anonymous-writes" not in registry
    assert value(router, "--registry-token-file") == str(tokens / "registry-token")
    assert value(router, "--admin-token-file") == str(tokens / "router-admin-token")
    for label in ("babysitter_8100", "babysitter_8200"):
        assert value(comps[label].args, "--registry-token-file") == str(tokens / "registry-token")
    assert all(c.env == {} for c in comps.values())  # no token in any environment
    assert token_names(cfg) == ["registry", "registry-admin", "router-admin", "batch"]
    assert prepare_tokens(cfg) is None
    assert sorted(p.name for p in tokens.iterdir()) == [
        "batch-token",
        "registry-admin-token",
        "registry-token",
        "router-admin-token",
    ]


def test_relative_logs_dirs_give_absolute_token_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    registry = by_label(demo_config())["registry"]
    assert value(registry.args, "--token-file") == str(tmp_path / "logs/tokens/registry-token")


def test_the_files_token_wins_for_the_write_token(tmp_path: Path) -> None:
    cfg = stack_file(
        tmp_path,
        "registry: {token: s3cret}\nbabysitters: [{engine: sim, model: m, port: 9000}]\n",
    )
    comps = by_label(cfg)
    assert comps["registry"].env == {"LLMSVC_TOKEN": "s3cret"}
    assert "--token-file" not in comps["registry"].args
    assert "--admin-token-file" in comps["registry"].args  # the admin token is still made
    for label in ("router", "babysitter_9000"):
        assert comps[label].env == {"LLMSVC_REGISTRY_TOKEN": "s3cret"}
        assert "--registry-token-file" not in comps[label].args
    assert token_names(cfg) == ["registry-admin", "router-admin", "batch"]


def test_anonymous_writes_are_an_explicit_opt_out(tmp_path: Path) -> None:
    cfg = stack_file(
        tmp_path,
        "registry: {allow_anonymous_writes: true}\n"
        "babysitters: [{engine: sim, model: m, port: 9000}]\n",
    )
    comps = by_label(cfg)
    assert "--allow-anonymous-writes" in comps["registry"].args
    assert "--token-file" not in comps["registry"].args
    assert "--registry-token-file" not in comps["router"].args
    assert "--registry-token-file" not in comps["babysitter_9000"].args
    assert "--admin-token-file" in comps["router"].args  # the router's admin routes stay closed
    with pytest.raises(ConfigError, match="not both"):
        stack_file(tmp_path, "registry: {token: t, allow_anonymous_writes: true}\n")


def test_a_remote_registry_needs_its_token_copied(tmp_path: Path) -> None:
    cfg = stack_file(
        tmp_path,
        f"logs_dir: {tmp_path / 'logs'}\n"
        'registry: {enabled: false, url: "http://10.0.0.1:8081"}\n'
        "router: {enabled: false}\n"
        "babysitters: [{engine: sim, model: m, port: 9000}]\n",
    )
    assert token_names(cfg) == []  # this host makes no token: the registry's host did
    problem = prepare_tokens(cfg)
    assert problem is not None
    assert "runs on another host: copy its write token into" in problem
    token = tmp_path / "logs" / "tokens" / "registry-token"
    token.write_text("from-the-control-host\n")
    token.chmod(0o600)
    assert prepare_tokens(cfg) is None
    (sitter,) = components(cfg)
    assert value(sitter.args, "--registry-token-file") == str(token)


def test_a_tokens_path_that_is_not_a_directory_stops_up(tmp_path: Path) -> None:
    cfg = demo_config()
    cfg.logs_dir = str(tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "tokens").write_text("")
    assert prepare_tokens(cfg) == f"{tmp_path / 'logs' / 'tokens'}: exists and is not a directory"


def test_validate_fails_a_registry_that_takes_anonymous_writes(spawn: Spawn) -> None:
    """A registry that lets anyone write fails `llmsvc validate` (given a token to expect)."""
    _, url = start_registry(spawn)  # --allow-anonymous-writes
    out = io.StringIO()
    validator = Validator(
        router_url="http://127.0.0.1:9",
        registry_url=url,
        registry_token="expected-but-not-required",
        console=Console(file=out, width=200),
    )
    validator.check_registry_auth()
    text = out.getvalue()
    assert validator.failures == 2, text
    assert "✗ registry refuses an anonymous write: POST /services answered 201" in text
    assert "✗ registry refuses an anonymous read: GET /services answered 200" in text
    assert records(url) == {}  # the probe that got in was taken out again


def test_validate_notes_an_open_stack_without_failing() -> None:
    out = io.StringIO()
    validator = Validator(
        router_url="http://127.0.0.1:9", registry_url=None, console=Console(file=out, width=200)
    )
    validator.check_registry_auth()
    validator.check_router_auth()
    assert validator.failures == 0
    assert out.getvalue().count("! no ") == 2
