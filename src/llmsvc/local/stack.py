"""``llmsvc up``, ``down`` and ``status`` over a :class:`StackConfig`.

Authenticated by default: ``up`` makes (or keeps) the stack's tokens in
``<logs_dir>/tokens/`` (:mod:`llmsvc.local.tokens`) and hands every component
the files, never the tokens: the registry ``--token-file`` and
``--admin-token-file``, the router ``--registry-token-file`` and
``--admin-token-file``, each babysitter ``--registry-token-file``, and the router
and the batch service share ``batch-token`` (the router's ``--batch-token-file``,
the batch service's ``--token-file``). A file's
``registry.token`` wins for the write token (given by environment, as before);
``registry.allow_anonymous_writes: true`` is the explicit opt-out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmsvc.local import processes
from llmsvc.local.config import BabysitterSection, StackConfig
from llmsvc.local.tokens import (
    BATCH,
    REGISTRY,
    REGISTRY_ADMIN,
    ROUTER_ADMIN,
    TokensError,
    ensure_tokens,
    file_name,
)


@dataclass(frozen=True)
class Component:
    """One process of the stack: how to start it and how to know it is ready."""

    label: str
    title: str
    args: list[str]
    env: dict[str, str]
    host: str
    port: int
    health_url: str
    timeout: float
    status_url: str | None = None
    """A babysitter with idle_timeout: its /status, whose state standby (or waking) is no
    failure though its /health is 503 then."""
    health_token_file: str | None = None
    """The token its /health needs (the batch service's, which guards every route)."""

    def health_headers(self) -> dict[str, str]:
        """The headers of a health check: the bearer token when it needs one."""
        if self.health_token_file is None:
            return {}
        try:
            token = Path(self.health_token_file).read_text().strip()
        except OSError:
            return {}
        return {"Authorization": f"Bearer {token}"}


def _connect(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _token_file(cfg: StackConfig, name: str) -> str:
    return str((cfg.tokens_dir / file_name(name)).absolute())


def write_token_from_dir(cfg: StackConfig) -> bool:
    """Whether the registry's write token is the tokens directory's (no file token, no opt-out)."""
    reg = cfg.registry
    return cfg.uses_registry and not reg.token and not reg.allow_anonymous_writes


def token_names(cfg: StackConfig) -> list[str]:
    """The tokens this host's stack makes: those of the components it runs."""
    names = []
    if cfg.registry.enabled:
        names += [REGISTRY] if write_token_from_dir(cfg) else []
        names.append(REGISTRY_ADMIN)
    if cfg.router.enabled:
        names.append(ROUTER_ADMIN)
    if cfg.runs_batch:
        names.append(BATCH)
    return names


def _sends_write_token(cfg: StackConfig) -> tuple[list[str], dict[str, str]]:
    """The flags and environment of a router or babysitter for the registry's write token."""
    if cfg.registry.token:
        return [], {"LLMSVC_REGISTRY_TOKEN": cfg.registry.token}
    if write_token_from_dir(cfg):
        return ["--registry-token-file", _token_file(cfg, REGISTRY)], {}
    return [], {}


def _registry_auth(cfg: StackConfig) -> tuple[list[str], dict[str, str]]:
    """The registry's token flags and environment."""
    args = ["--admin-token-file", _token_file(cfg, REGISTRY_ADMIN)]
    if cfg.registry.allow_anonymous_writes:
        return ["--allow-anonymous-writes", *args], {}
    if cfg.registry.token:
        return args, {"LLMSVC_TOKEN": cfg.registry.token}
    return ["--token-file", _token_file(cfg, REGISTRY), *args], {}


def _babysitter(cfg: StackConfig, sitter: BabysitterSection) -> Component:
    args = [
        "babysitter",
        "--engine",
        sitter.engine,
        "--host",
        sitter.host,
        "--port",
        str(sitter.port),
        "--weight",
        str(sitter.weight),
        "--log-dir",
        cfg.logs_dir,
        "--log-max-bytes",
        str(cfg.logs.max_bytes),
        "--log-backups",
        str(cfg.logs.backups),
    ]
    if sitter.model:
        args += ["--model", sitter.model]
    if sitter.model_name:
        args += ["--model-name", sitter.model_name]
    if sitter.name:
        args += ["--name", sitter.name]
    if sitter.gpus:
        args += ["--gpus", ",".join(map(str, sitter.gpus))]
    if sitter.idle_timeout:
        args += ["--idle-timeout", str(sitter.idle_timeout)]
    if sitter.standby is not None:
        args += ["--standby", sitter.standby]
    token_args, env = _sends_write_token(cfg)
    if cfg.uses_registry:
        args += ["--registry", cfg.registry_url, *token_args]
    if cfg.uses_router:
        args += ["--router", cfg.router_url]
    args += sitter.args
    if sitter.engine_args:
        args += ["--", *sitter.engine_args]
    return Component(
        label=sitter.label,
        title=(
            f"babysitter {sitter.name} (port {sitter.port}, {sitter.engine})"
            if sitter.name
            else f"babysitter {sitter.port} ({sitter.engine})"
        ),
        args=args,
        env=env,
        host=sitter.host,
        port=sitter.api_port,
        health_url=f"http://{_connect(sitter.host)}:{sitter.api_port}/health",
        timeout=cfg.startup_timeout,
        status_url=(
            f"http://{_connect(sitter.host)}:{sitter.api_port}/status"
            if sitter.idle_timeout
            else None
        ),
    )


def _batch(cfg: StackConfig) -> Component:
    """The batch service: it sends its lines through the router, with the shared token."""
    batch, token_file = cfg.batch, _token_file(cfg, BATCH)
    args = ["batch", "--host", batch.host, "--port", str(batch.port)]
    args += ["--router-url", cfg.router_url, "--token-file", token_file]
    args += ["--data-dir", str(cfg.batch_data_dir.absolute()), *batch.args]
    return Component(
        label="batch",
        title="batch service",
        args=args,
        env={},
        host=batch.host,
        port=batch.port,
        health_url=f"{cfg.batch_url}/health",
        timeout=cfg.startup_timeout,
        health_token_file=token_file,
    )


def components(cfg: StackConfig) -> list[Component]:
    """The stack in start order: registry, router, batch service, babysitters.

    The batch service comes after the router (all it needs), before the engines: it waits
    for them like any client, its lines queued at the router at priority batch.
    """
    out: list[Component] = []
    reg, rtr = cfg.registry, cfg.router
    if reg.enabled:
        args = ["registry", "--host", reg.host, "--port", str(reg.port)]
        if reg.state_file:
            args += ["--state-file", reg.state_file]
        auth_args, env = _registry_auth(cfg)
        args += auth_args
        out.append(
            Component(
                "registry",
                "registry",
                args + reg.args,
                env,
                reg.host,
                reg.port,
                f"{cfg.registry_url}/health",
                cfg.startup_timeout,
            )
        )
    if rtr.enabled:
        args = ["router", "--host", rtr.host, "--port", str(rtr.port), "--strategy", rtr.strategy]
        args += ["--admin-token-file", _token_file(cfg, ROUTER_ADMIN), *rtr.flow_args()]
        env = {"LLMSVC_API_KEYS": ",".join(rtr.api_keys)} if rtr.api_keys else {}
        if cfg.uses_registry:
            token_args, token_env = _sends_write_token(cfg)
            args += ["--registry-url", cfg.registry_url, *token_args]
            env |= token_env
        if cfg.runs_batch:
            args += ["--batch-url", cfg.batch_url, "--batch-token-file", _token_file(cfg, BATCH)]
        out.append(
            Component(
                "router",
                "router",
                args + rtr.args,
                env,
                rtr.host,
                rtr.port,
                f"{cfg.router_url}/health",
                cfg.startup_timeout,
            )
        )
    if cfg.runs_batch:
        out.append(_batch(cfg))
    out += [_babysitter(cfg, s) for s in cfg.babysitters]
    return out


KINDS = ("registry", "router", "batch", "babysitter")
"""What ``llmsvc up KIND`` and ``llmsvc down KIND`` name (a babysitter by name or port)."""


class SelectError(Exception):
    """A component named on the command line that the stack does not have (one line)."""


def select(cfg: StackConfig, kind: str, which: str | None) -> list[str]:
    """The PID-file labels of ``kind`` (every babysitter, or the one ``which`` names).

    A babysitter is named by its ``name`` in the file or by its (engine) port, as the
    seeds' ``stop_babysitter.sh 8000``; a port the file does not list still names a
    babysitter whose PID file is there (started with another file).
    """
    if kind not in KINDS:
        raise SelectError(f"unknown component '{kind}' (one of: {', '.join(KINDS)})")
    if kind != "babysitter":
        if which is not None:
            raise SelectError(f"'{kind}' takes no name or port (got '{which}')")
        return [kind]
    if which is None:
        return [s.label for s in cfg.babysitters]
    for sitter in cfg.babysitters:
        if which in (sitter.name, str(sitter.port)):
            return [sitter.label]
    if which.isdigit() and processes.pid_file(Path(cfg.logs_dir), f"babysitter_{which}").exists():
        return [f"babysitter_{which}"]
    known = [s.name or str(s.port) for s in cfg.babysitters]
    listed = f" (the stack's: {', '.join(known)})" if known else " (the stack has none)"
    raise SelectError(f"no babysitter named or on port '{which}'{listed}")


def up(cfg: StackConfig, console: Console, *, only: list[str] | None = None) -> int:
    """Start what is not running yet, in order, each after the one before is ready.

    ``only``: just these components (labels from :func:`select`), the rest left alone.
    """
    logs = Path(cfg.logs_dir)
    problem = prepare_tokens(cfg)
    if problem:
        console.print(f"[red]✗[/] tokens: {escape(problem)}")
        return 1
    for comp in components(cfg):
        if only is not None and comp.label not in only:
            continue
        pid = processes.read_pid(logs, comp.label)
        if pid is not None:
            console.print(f"[dim]•[/] {comp.title}: already running (pid {pid})")
            continue
        if processes.port_in_use(comp.host, comp.port):
            console.print(
                f"[red]✗[/] {comp.title}: port {comp.port} is already in use by "
                "a process llmsvc did not start; stopping here"
            )
            return 1
        proc, log_path = processes.start(
            comp.label,
            comp.args,
            logs,
            comp.env,
            max_bytes=cfg.logs.max_bytes,
            backups=cfg.logs.backups,
        )
        try:
            with console.status(f"starting {comp.title}…"):
                took = processes.wait_ready(
                    proc,
                    comp.health_url,
                    log_path,
                    timeout=comp.timeout,
                    label=comp.title,
                    headers=comp.health_headers(),
                )
        except processes.StartError as exc:
            console.print(f"[red]✗[/] {escape(str(exc))}")
            return 1
        console.print(
            f"[green]✓[/] {comp.title} ready in {took:.1f}s (pid {proc.pid}, log {log_path})"
        )
    return 0


def prepare_tokens(cfg: StackConfig) -> str | None:
    """Make the missing tokens of the stack; why it cannot start, or None."""
    names = token_names(cfg)
    if not names and not write_token_from_dir(cfg):
        return None
    try:
        tokens = ensure_tokens(cfg.tokens_dir, names)
    except TokensError as exc:
        return str(exc)
    if write_token_from_dir(cfg) and tokens.registry is None:
        return (
            f"the registry at {cfg.registry_url} runs on another host: copy its write token "
            f"into {_token_file(cfg, REGISTRY)} (mode 0600), or set registry.token "
            "(or registry.allow_anonymous_writes: true if it takes anonymous writes)"
        )
    return None


def down(
    logs_dir: Path,
    *,
    timeout: float,
    console: Console,
    only: list[str] | None = None,
    titles: dict[str, str] | None = None,
) -> int:
    """Stop router and babysitters, then the registry: SIGTERM, SIGKILL after ``timeout``.

    ``only``: just these components (labels from :func:`select`); ``titles``: how to call
    them (the names ``status`` shows), by label.
    """
    found = processes.running(logs_dir)
    names = titles or {}
    if only is not None:
        running = {comp.label for comp in found}
        for label in only:
            if label not in running:
                console.print(f"[dim]•[/] {escape(names.get(label, label))}: not running")
        found = [comp for comp in found if comp.label in only]
    elif not found:
        console.print(f"nothing running (no live PID files in {logs_dir}/)")
    for comp in found:
        how = processes.stop(comp.pid, timeout=timeout)
        processes.pid_file(logs_dir, comp.label).unlink(missing_ok=True)
        mark = "[green]✓[/]" if how == "stopped" else "[yellow]![/]"
        console.print(f"{mark} {escape(names.get(comp.label, comp.label))} (pid {comp.pid}) {how}")
    return 0


def _state(client: httpx.Client, url: str) -> str | None:
    """A babysitter's state from its ``/status``; None when that says nothing."""
    try:
        body = client.get(url).json()
    except (httpx.HTTPError, ValueError):
        return None
    state = body.get("state") if isinstance(body, dict) else None
    return state if isinstance(state, str) else None


def status(cfg: StackConfig, console: Console) -> int:
    """A table of every configured component: process, health. 0 when all are healthy."""
    logs = Path(cfg.logs_dir)
    table = Table(title=f"llmsvc local stack ({logs}/)", title_justify="left")
    for column in ("component", "pid", "health url", "health"):
        table.add_column(column)
    healthy = True
    with httpx.Client(timeout=3.0) as client:
        for comp in components(cfg):
            pid = processes.read_pid(logs, comp.label)
            try:
                code = client.get(comp.health_url, headers=comp.health_headers()).status_code
                health = "[green]healthy[/]" if code == 200 else f"[red]{code}[/]"
                ok = code == 200
                if not ok and comp.status_url is not None:
                    state = _state(client, comp.status_url)
                    if state in ("standby", "waking"):
                        health, ok = f"[cyan]{state}[/] (idle)", True
            except httpx.HTTPError:
                health, ok = "[red]unreachable[/]", False
            healthy &= ok and pid is not None
            table.add_row(
                comp.title, str(pid) if pid else "[red]not running[/]", comp.health_url, health
            )
    console.print(table)
    return 0 if healthy else 1
