"""``llmsvc bench``: parse the flags, drive the endpoint, print the report.

Exit status: 0 when the run completed (whatever the endpoint answered), 1 when
nothing answered at the URL, 2 for bad flags, 130 when interrupted (the partial
report is printed first).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator, Sequence

import aiohttp
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llmsvc.bench.load import LoadSpec, Unreachable, probe, run_load
from llmsvc.bench.report import print_report, report
from llmsvc.bench.settings import DEFAULT_REQUESTS, BenchSettings
from llmsvc.bench.stats import Results, Sample
from llmsvc.core.logging import configure_logging
from llmsvc.core.serving import new_event_loop
from llmsvc.core.settings import parse_settings

PROG = "llmsvc bench"
DESCRIPTION = (
    "Drive an OpenAI-compatible endpoint and report requests/s, output tokens/s, latency and "
    "TTFT percentiles and errors by kind. --json prints one JSON object."
)
PROBE_TIMEOUT_S = 10.0


def spec_from(settings: BenchSettings) -> LoadSpec:
    requests = settings.requests
    if requests is None and settings.duration is None:
        requests = DEFAULT_REQUESTS
    return LoadSpec(
        url=settings.url,
        model=settings.model,
        concurrency=settings.concurrency,
        requests=requests,
        duration=settings.duration,
        stream=settings.stream,
        prompt_tokens=settings.prompt_tokens,
        max_tokens=settings.max_tokens,
        endpoint=settings.endpoint,
        api_key=settings.api_key,
        timeout=settings.timeout,
        seed=settings.seed,
    )


def main(argv: Sequence[str]) -> int:
    argv = ["--output=json" if arg == "--json" else arg for arg in argv]
    settings = parse_settings(BenchSettings, argv, prog=PROG, description=DESCRIPTION)
    configure_logging(settings.log_level, settings.log_format)
    spec = spec_from(settings)
    as_json = settings.output == "json"
    show_progress = not as_json and sys.stderr.isatty()
    loop = new_event_loop()
    try:
        results = loop.run_until_complete(_bench(spec, show_progress))
    except Unreachable as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    data = report(spec, results)
    if as_json:
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
    else:
        print_report(Console(), data)
    return 130 if results.interrupted else 0


async def _bench(spec: LoadSpec, show_progress: bool) -> Results:
    """Probe the URL, then run; the first Ctrl-C stops the run, a second one aborts."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def first_interrupt() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)

    loop.add_signal_handler(signal.SIGINT, first_interrupt)
    try:
        connector = aiohttp.TCPConnector(limit=spec.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await probe(session, spec.url, min(spec.timeout, PROBE_TIMEOUT_S))
            if not show_progress:
                return await run_load(spec, session=session, stop=stop)
            with _progress(spec) as on_sample:
                return await run_load(spec, session=session, on_sample=on_sample, stop=stop)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


@contextlib.contextmanager
def _progress(spec: LoadSpec) -> Iterator[Callable[[Sample], None]]:
    """A rich progress bar on stderr, refreshed from the loop (no refresh thread)."""
    progress = Progress(
        TextColumn("[bold]bench[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[errors]} errors"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        auto_refresh=False,
        transient=True,
    )
    task = progress.add_task("bench", total=spec.requests, errors=0)
    errors = 0

    def on_sample(sample: Sample) -> None:
        nonlocal errors
        errors += 0 if sample.ok else 1
        progress.update(task, advance=1, errors=errors)

    ticker = asyncio.ensure_future(_refresh(progress.refresh))
    with progress:
        try:
            yield on_sample
        finally:
            ticker.cancel()


async def _refresh(refresh: Callable[[], None], interval: float = 0.1) -> None:
    while True:
        refresh()
        await asyncio.sleep(interval)
