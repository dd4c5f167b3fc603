"""``llmsvc exclusive``: run a command on a babysitter's GPU while its engine steps aside.

The seed's ``test_model_safely.sh`` stopped the worker, slept 5 s, ran the test and
started the worker again — unless the test failed (``set -e``) or was interrupted,
which left the worker down. Here:

1. the babysitter is drained and its engine stopped (``POST /stop``): routers send new
   requests to the model's other engines (or hold them), in-flight ones finish, and the
   babysitter answers once the engine's processes are gone and each GPU's free memory
   has come back (not a fixed sleep; no GPU visible: said, nothing waited for);
2. the command runs under ``--memory-max``/``--memory-high`` (:mod:`memlimit`);
3. whatever its outcome — success, failure, SIGINT or SIGTERM of ``exclusive`` — the
   engine is started again (``POST /restart``) and waited for until it is ready and
   registered; ``exclusive`` exits with the command's status.

A *marker file* records each step before it is taken, so that an ``exclusive`` that was
SIGKILLed (or whose host rebooted) leaves something one command mends: ``llmsvc
exclusive --restore --babysitter URL``. The command itself dies with ``exclusive``
(``PR_SET_PDEATHSIG``), so a restored engine never meets an orphaned test on its GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from pydantic import SecretStr

from llmsvc.core.addresses import check_origin_url
from llmsvc.core.secrets import from_flag_or_file
from llmsvc.local.env import env, env_flag
from llmsvc.local.exclusive_marker import ExclusiveError, Marker, alive, default_state_dir
from llmsvc.local.memlimit import LIMITERS, Limiter, LimitError, MemoryLimits, parse_size, wrap
from llmsvc.local.tokens import REGISTRY, TokensError, default_dir, file_name

PROG = "llmsvc exclusive"
_PR_SET_PDEATHSIG = 1
POLL_S = 0.2


class Refused(ExclusiveError):
    """The babysitter refused a control request before doing anything (401: no or a wrong
    token, 409: a swap in progress, 503: shutting down): nothing to restore."""


def say(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


# ---- the babysitter --------------------------------------------------------------------


class Babysitter:
    """The babysitter's control API, as ``exclusive`` uses it (blocking: a CLI)."""

    def __init__(self, url: str, token: str | None, *, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self._timeout = timeout
        self._http = httpx.Client(base_url=url, headers=headers, timeout=10.0)

    def _call(self, method: str, path: str, *, timeout: float = 10.0) -> dict[str, Any]:
        try:
            resp = self._http.request(method, path, timeout=timeout)
        except httpx.HTTPError as exc:
            raise ExclusiveError(f"babysitter {self.url} unreachable ({exc})") from None
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:200]
            hint = " (give --token or --token-file)" if resp.status_code == 401 else ""
            error = Refused if resp.status_code in (401, 409, 503) else ExclusiveError
            raise error(f"{method} {path}: {resp.status_code} {message}{hint}")
        data: dict[str, Any] = resp.json()
        return data

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def stop(self) -> dict[str, Any]:
        return self._call("POST", "/stop", timeout=self._timeout)

    def restore(self) -> dict[str, Any]:
        """``POST /restart``, then wait until the engine is ready and registered again."""
        self._call("POST", "/restart")
        deadline = time.monotonic() + self._timeout
        while True:
            st = self.status()
            if _serving(st):
                return st
            if time.monotonic() >= deadline:
                raise ExclusiveError(
                    f"the engine is not back after {self._timeout:.0f}s (state {st['state']})"
                )
            time.sleep(POLL_S)


def _serving(st: dict[str, Any]) -> bool:
    return bool(st["state"] == "ready" and st["registration"]["engine"] in ("registered", "off"))


# ---- the command ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: SIGKILL when ``exclusive`` dies, even by SIGKILL, so that a restored
    engine never shares its GPU with an orphaned test."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Interrupts:
    """SIGINT, SIGTERM and SIGHUP of ``exclusive`` while it works: noted, never fatal, so
    that the engine is always restored. The command gets each one too (``forward``)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None
        self.at = 0.0
        self.child: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Interrupts:
        self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *_: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = self.received is None
        self.received, self.at = signum, time.monotonic()
        name = signal.Signals(signum).name
        if self.child is not None and self.child.poll() is None:
            say(f"{name}: passing it to the command; the engine is restored after it ends")
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signum)
        elif first:
            say(f"{name}: the engine is restored before exiting")


def run_command(argv: list[str], interrupts: Interrupts, *, grace: float) -> int:
    """Run ``argv``; after an interrupt it has ``grace`` s, then SIGTERM, 5 s, SIGKILL.
    Its exit status, 128 + N when signal N ended it (as a shell says)."""
    try:
        child = subprocess.Popen(argv, preexec_fn=_die_with_parent)
    except OSError as exc:
        say(f"cannot run {argv[0]}: {exc.strerror or exc}")
        return 127 if isinstance(exc, FileNotFoundError) else 126
    interrupts.child = child
    escalated = 0
    while True:
        try:
            code = child.wait(timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            pass
        if interrupts.received is None:
            continue
        late = time.monotonic() - interrupts.at
        if escalated == 0 and late > grace:
            say(f"the command still runs {grace:.0f}s after the interrupt: SIGTERM")
            child.terminate()
            escalated = 1
        elif escalated == 1 and late > grace + 5:
            say("the command still runs: SIGKILL")
            child.kill()
            escalated = 2
    interrupts.child = None
    return 128 - code if code < 0 else code


# ---- the whole run -------------------------------------------------------------------


def exclusive(
    sitter: Babysitter,
    marker: Marker,
    argv: list[str],
    limits: MemoryLimits,
    *,
    limiter: Limiter,
    grace: float,
) -> int:
    """Stop the engine, run ``argv``, restore the engine: the command's status (1 when the
    engine could not be stopped or restored)."""
    wrapped = wrap(argv, limits, limiter=limiter, unit=f"llmsvc-exclusive-{os.getpid()}")
    before = sitter.status()
    held = marker.read()
    if held is not None:
        pid = int(held.get("pid", 0))
        if pid and pid != os.getpid() and alive(pid):
            raise ExclusiveError(f"another {PROG} (pid {pid}) holds {sitter.url}")
        raise ExclusiveError(
            f"a previous {PROG} of {sitter.url} was interrupted (step {held.get('step')}): "
            f"run '{PROG} --restore --babysitter {sitter.url}' first"
        )
    marker.write(babysitter=sitter.url, name=before["name"], pid=os.getpid(),
                 state_before=before["state"], started_at=time.time(), step="stopping")  # fmt: skip
    code, touched = 1, True
    with Interrupts() as interrupts:
        try:
            code = _stop_and_run(sitter, marker, wrapped.argv, wrapped.how, interrupts, grace)
        except Refused:
            touched = False  # the engine runs as before
            marker.remove()
            raise
        finally:
            if touched:
                marker.write(step="restoring")
                code = _restore(sitter, marker, code)
    return code


def _stop_and_run(
    sitter: Babysitter,
    marker: Marker,
    argv: list[str],
    how: str,
    interrupts: Interrupts,
    grace: float,
) -> int:
    say(f"draining {sitter.url} and stopping its engine")
    stopped = sitter.stop()
    released = str(stopped["released"])
    if "no GPU visible" in released:
        say(f"engine stopped; no GPU visible, so no GPU memory to wait for ({released})")
    else:
        say(f"engine stopped; {released}")
    if interrupts.received is not None:
        say("interrupted before the command started: not running it")
        return 128 + interrupts.received
    if "not released in time" in released:
        say("the GPU memory did not come back: not running the command")
        return 1
    marker.write(step="running")
    say(f"running {shlex.join(argv)} ({how})")
    code = run_command(argv, interrupts, grace=grace)
    say(f"the command exited with status {code}")
    return code


def _restore(sitter: Babysitter, marker: Marker, code: int) -> int:
    say(f"restoring the engine of {sitter.url}")
    try:
        st = sitter.restore()
    except ExclusiveError as exc:
        say(f"error: {exc}; the engine is not restored: "
            f"run '{PROG} --restore --babysitter {sitter.url}'")  # fmt: skip
        return code or 1
    marker.remove()
    say(f"engine {st['name']} ready and registered again (pid {st['pid']})")
    return code


def restore(sitter: Babysitter, marker: Marker) -> int:
    """``--restore``: bring back an engine an interrupted ``exclusive`` left stopped."""
    held = marker.read()
    pid = int(held.get("pid", 0)) if held else 0
    if pid and pid != os.getpid() and alive(pid):
        raise ExclusiveError(f"{PROG} (pid {pid}) still runs: it restores the engine itself")
    st = sitter.status()
    if held is None and _serving(st):
        say(f"nothing to restore: {st['name']} is ready and registered")
        return 0
    if held is not None:
        say(f"the marker {marker.path} says {PROG} stopped at step {held.get('step')}")
    return 0 if _restore(sitter, marker, 0) == 0 else 1


# ---- the command line --------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Drain a babysitter, stop its engine, wait until its GPU memory is "
        "free, run COMMAND (with memory limits), then start and register the engine again "
        "whatever the command did; exit with the command's status.",
        usage=f"{PROG} --babysitter URL [options] -- COMMAND [ARG...]\n"
        f"       {PROG} --restore --babysitter URL",
    )
    add = p.add_argument
    add("--babysitter", default=env("BABYSITTER"),
        help="the babysitter's API URL (engine port + 1) [env LLMSVC_BABYSITTER]")  # fmt: skip
    add("--token", default=env("REGISTRY_TOKEN"),
        help="the babysitter's registry token, which POST /stop and /restart need "
        "[env LLMSVC_REGISTRY_TOKEN]")  # fmt: skip
    add("--token-file", type=Path, default=env("REGISTRY_TOKEN_FILE"),
        help="file holding --token (default: llmsvc up's tokens/registry-token when there "
        "is one) [env LLMSVC_REGISTRY_TOKEN_FILE]")  # fmt: skip
    add("--memory-max", default=env("MEMORY_MAX"),
        help="hard memory limit of the command, e.g. 24G (MemoryMax=; without systemd: "
        "prlimit --as) [env LLMSVC_MEMORY_MAX]")  # fmt: skip
    add("--memory-high", default=env("MEMORY_HIGH"),
        help="soft limit, throttled above it, e.g. 20G (MemoryHigh=; needs systemd) "
        "[env LLMSVC_MEMORY_HIGH]")  # fmt: skip
    add("--limiter", choices=LIMITERS, default=env("LIMITER") or "auto",
        help="how the limits are applied: auto (systemd when it runs, else prlimit), "
        "systemd, prlimit [env LLMSVC_LIMITER]")  # fmt: skip
    add("--timeout", type=float, default=env("TIMEOUT", "900"),
        help="seconds the babysitter may take to stop the engine (drain, stop, GPU memory) "
        "and again to bring it back (default 900) [env LLMSVC_TIMEOUT]")  # fmt: skip
    add("--grace", type=float, default=env("GRACE", "10"),
        help="seconds the command has after an interrupt, then SIGTERM, 5 s, SIGKILL "
        "(default 10) [env LLMSVC_GRACE]")  # fmt: skip
    add("--state-dir", type=Path, default=env("STATE_DIR"),
        help="where the marker file is kept (default $XDG_RUNTIME_DIR/llmsvc, else "
        "/tmp/llmsvc-<uid>) [env LLMSVC_STATE_DIR]")  # fmt: skip
    add("--restore", action="store_true", default=env_flag(PROG, "RESTORE"),
        help="start and register again an engine that an interrupted (SIGKILLed) "
        "exclusive left stopped, and remove its marker [env LLMSVC_RESTORE=1]")  # fmt: skip
    add("command", nargs=argparse.REMAINDER, help="after --: the command to run")
    return p


def _token(value: str | None, file: Path | None) -> str | None:
    token = from_flag_or_file(SecretStr(value) if value else None, file, flag="--token")
    if token is None:
        default = default_dir() / file_name(REGISTRY)
        if default.is_file():
            token = from_flag_or_file(None, default, flag="--token")
    return token.get_secret_value() if token is not None else None


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        if not args.babysitter:
            raise ExclusiveError("--babysitter URL is required")
        url = check_origin_url(args.babysitter).rstrip("/")
        if args.restore and command:
            raise ExclusiveError("--restore takes no command")
        if not args.restore and not command:
            raise ExclusiveError("no command: give it after --")
        limits = MemoryLimits(
            max_bytes=parse_size(args.memory_max) if args.memory_max else None,
            high_bytes=parse_size(args.memory_high) if args.memory_high else None,
        )
        if args.timeout <= 0 or args.grace < 0:
            raise ExclusiveError("--timeout must be > 0 and --grace >= 0")
        wrap(command or ["true"], limits, limiter=args.limiter)  # refuse before stopping
        token = _token(args.token, args.token_file)
    except (ExclusiveError, LimitError, TokensError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    sitter = Babysitter(url, token, timeout=args.timeout)
    marker = Marker.for_babysitter(args.state_dir or default_state_dir(), url)
    run: Callable[[], int] = (
        (lambda: restore(sitter, marker))
        if args.restore
        else (
            lambda: exclusive(
                sitter, marker, command, limits, limiter=args.limiter, grace=args.grace
            )
        )
    )
    try:
        return run()
    except ExclusiveError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
