"""``--workers N``: N router processes sharing one port, and the parent that keeps them.

The parent checks the settings (it builds the app once and drops it), makes
sure the port can be bound, then starts N copies of ``llmsvc router`` with
``--workers 1`` and two variables: :data:`WORKER_ENV` (the worker's index, so
the copy serves with ``SO_REUSEPORT`` and the kernel spreads connections over
the workers) and ``PROMETHEUS_MULTIPROC_DIR`` (a directory of its own, so
``GET /metrics`` on any worker reports the sum over all of them). A worker
that dies is started again after a delay that doubles while it keeps dying
young; SIGTERM or SIGINT to the parent goes to every worker, which shut down
gracefully, and the parent exits once they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence

from prometheus_client import multiprocess

from llmsvc.core.serving import bind_sockets, new_event_loop

log = logging.getLogger("llmsvc.router.workers")

WORKER_ENV = "_LLMSVC_ROUTER_WORKER_INDEX"  # not LLMSVC_*: that prefix is for settings
"""Set in a worker's environment (its index): serve with ``SO_REUSEPORT``."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

RESTART_DELAY_S = 0.5  # first delay before a dead worker is started again
RESTART_DELAY_MAX_S = 10.0  # the delay doubles up to this while workers die young
STABLE_AFTER_S = 10.0  # a worker that ran this long resets the delay
PR_SET_PDEATHSIG = 1  # prctl(2) option
STOP_GRACE_S = 5.0  # after SIGTERM, how much longer than --shutdown-timeout before SIGKILL


def worker_index() -> int | None:
    """This process's worker index, or None when it is not a worker of a parent."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value and value.isdigit() else None


def port_bindable(host: str, port: int) -> str | None:
    """None when workers can bind ``host:port`` with SO_REUSEPORT, else why not."""
    try:
        sockets = bind_sockets(host, port, reuse_port=True)
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    for sock in sockets:
        sock.close()
    return None


def run_workers(argv: Sequence[str], *, workers: int, shutdown_timeout: float) -> int:
    """Run ``workers`` router processes until SIGTERM/SIGINT; the exit code."""
    metrics_dir = tempfile.mkdtemp(prefix="llmsvc-router-metrics-")
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    parent = WorkerParent(
        argv=argv, workers=workers, metrics_dir=metrics_dir, grace=shutdown_timeout + STOP_GRACE_S
    )
    try:
        return loop.run_until_complete(parent.run())
    finally:
        loop.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


class WorkerParent:
    """Starts the workers, restarts the ones that die, stops them all on a signal."""

    def __init__(
        self, *, argv: Sequence[str], workers: int, metrics_dir: str, grace: float
    ) -> None:
        self._argv = [*argv, "--workers", "1"]  # the last flag wins
        self._grace = grace
        self._count = workers
        self._metrics_dir = metrics_dir
        self._stopping = asyncio.Event()
        self._procs: dict[int, asyncio.subprocess.Process] = {}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        log.info("router starting %d workers", self._count)
        tasks = [
            asyncio.create_task(self._keep(index), name=f"worker-{index}")
            for index in range(self._count)
        ]
        try:
            await self._stopping.wait()
            _, late = await asyncio.wait(tasks, timeout=self._grace)
            for proc in list(self._procs.values()):
                log.warning("router worker pid %d did not stop; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            if late:
                await asyncio.wait(late)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        log.info("router workers stopped")
        return 0

    def _stop(self) -> None:
        """SIGTERM/SIGINT: every worker shuts down gracefully; none is started again."""
        self._stopping.set()
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    async def _keep(self, index: int) -> None:
        """Run worker ``index`` again each time it dies, until the parent stops."""
        delay = RESTART_DELAY_S
        while not self._stopping.is_set():
            started = loop_time()
            try:
                proc = await self._start(index)
            except OSError as exc:
                log.error("router worker %d cannot start: %s; trying in %.1fs", index, exc, delay)
            else:
                code = await proc.wait()
                self._procs.pop(index, None)
                multiprocess.mark_process_dead(proc.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
                if self._stopping.is_set():
                    return
                delay = RESTART_DELAY_S if loop_time() - started >= STABLE_AFTER_S else delay
                log.warning(
                    "router worker %d (pid %d) exited with %s; starting it again in %.1fs",
                    index,
                    proc.pid,
                    code,
                    delay,
                    extra={"worker": index, "pid": proc.pid, "exit_code": code},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, RESTART_DELAY_MAX_S)

    async def _start(self, index: int) -> asyncio.subprocess.Process:
        env = {**os.environ, WORKER_ENV: str(index), MULTIPROC_ENV: self._metrics_dir}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llmsvc",
            "router",
            *self._argv,
            env=env,
            preexec_fn=_die_with_parent,
        )
        self._procs[index] = proc
        if self._stopping.is_set():  # the signal came while it was starting
            proc.send_signal(signal.SIGTERM)
        log.info("router worker %d started (pid %d)", index, proc.pid)
        return proc


def _die_with_parent() -> None:
    """In a worker before exec: SIGTERM when the parent dies, even by SIGKILL, so that
    no orphaned worker keeps serving the port (Linux ``PR_SET_PDEATHSIG``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def loop_time() -> float:
    return asyncio.get_running_loop().time()
