"""Workload traces: when requests arrive and how many tokens each has.

A :class:`Trace` is three parallel tuples (arrival seconds, prompt tokens, output
tokens), sorted by arrival. The built-in shapes are non-homogeneous Poisson
processes whose *mean* rate over the trace is ``--rate`` (requests/s), drawn by
thinning from one seeded RNG so that a seed gives the same trace on every machine:

- ``steady``: the rate throughout.
- ``bursty``: cycles (60 s, or a fifth of a shorter trace) of 20 % at 4.2x the rate
  and 80 % at 0.2x.
- ``diurnal``: one day's shape compressed into the duration: ``rate * (1 - 0.8 cos(2 pi
  t / duration))``, 0.2x at "midnight" (start and end), 1.8x at "noon".
- ``spike-from-zero``: nothing for the first 40 %, 5x the rate for 20 %, nothing after.

Token counts of built-in traces are uniform integers in ``[mean/2, 3*mean/2]``. A CSV
trace (``arrival_s,prompt_tokens,output_tokens``, header required) is used as written;
its duration is the larger of ``--duration`` and its last arrival, and ``--rate`` does
not apply to it.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BUILTIN_TRACES = ("steady", "bursty", "diurnal", "spike-from-zero")
CSV_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")


class TraceError(ValueError):
    """An unknown trace, a bad CSV (its line said), or bad trace parameters."""


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests in arrival order; ``duration`` is the window the trace covers."""

    name: str
    duration: float
    arrivals: tuple[float, ...]
    prompt_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.arrivals)

    def write_csv(self, path: Path) -> None:
        """The trace as a CSV that :func:`load_trace` reads back (for real-process runs)."""
        with path.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(CSV_COLUMNS)
            for row in zip(self.arrivals, self.prompt_tokens, self.output_tokens, strict=True):
                writer.writerow((repr(row[0]), row[1], row[2]))


RateShape = Callable[[float], float]
"""A built-in shape: the rate at ``t`` as a multiple of the mean rate."""


def _bursty(duration: float) -> RateShape:
    cycle = 60.0 if duration >= 300.0 else duration / 5.0

    def shape(t: float) -> float:
        return 4.2 if (t % cycle) < 0.2 * cycle else 0.2

    return shape


def _diurnal(duration: float) -> RateShape:
    omega = 2.0 * math.pi / duration

    def shape(t: float) -> float:
        return 1.0 - 0.8 * math.cos(omega * t)

    return shape


def _spike(duration: float) -> RateShape:
    start, end = 0.4 * duration, 0.6 * duration

    def shape(t: float) -> float:
        return 5.0 if start <= t < end else 0.0

    return shape


def _steady(duration: float) -> RateShape:
    return lambda t: 1.0


SHAPES: dict[str, tuple[Callable[[float], RateShape], float]] = {
    "steady": (_steady, 1.0),
    "bursty": (_bursty, 4.2),
    "diurnal": (_diurnal, 1.8),
    "spike-from-zero": (_spike, 5.0),
}
"""name -> (shape for a duration, the shape's maximum: the thinning envelope)."""


def _token_range(mean: int) -> tuple[int, int]:
    """(lowest, count of values) of the uniform token counts around ``mean``."""
    low = max(1, mean // 2)
    return low, max(low, (3 * mean) // 2) - low + 1


def builtin_trace(
    name: str,
    *,
    duration: float,
    rate: float,
    seed: int,
    prompt_tokens: int = 64,
    output_tokens: int = 32,
) -> Trace:
    """A built-in shape at mean ``rate`` requests/s over ``duration`` seconds."""
    make, peak = SHAPES[name]
    shape = make(duration)
    rng = random.Random(f"{seed}:trace:{name}")
    envelope = rate * peak
    arrivals: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    expovariate, uniform, now = rng.expovariate, rng.random, 0.0
    (prompt_low, prompt_span), (output_low, output_span) = (
        _token_range(prompt_tokens),
        _token_range(output_tokens),
    )
    while True:
        now += expovariate(envelope)
        if now >= duration:
            break
        if peak != 1.0 and uniform() * peak >= shape(now):
            continue
        arrivals.append(now)
        prompts.append(prompt_low + int(uniform() * prompt_span))
        outputs.append(output_low + int(uniform() * output_span))
    return Trace(name, duration, tuple(arrivals), tuple(prompts), tuple(outputs))


def _field(value: str, column: str, where: str, *, integer: bool) -> float:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise TraceError(f"{where}: {column} is not {kind} ({value!r})") from None
    if not math.isfinite(number) or number < (1 if integer else 0):
        bound = "at least 1" if integer else "a finite number >= 0"
        raise TraceError(f"{where}: {column} must be {bound} (got {value!r})")
    return number


def csv_trace(path: Path, *, duration: float) -> Trace:
    """A CSV trace; every bad line is a :class:`TraceError` naming it."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read trace {str(path)!r}: {exc}") from None
    rows = csv.reader(text.splitlines())
    header = [cell.strip() for cell in next(rows, [])]
    missing = [column for column in CSV_COLUMNS if column not in header]
    if missing:
        raise TraceError(
            f"{path} line 1: the header must name {','.join(CSV_COLUMNS)} (missing "
            f"{', '.join(missing)})"
        )
    index = [header.index(column) for column in CSV_COLUMNS]
    records: list[tuple[float, int, int]] = []
    for number, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{path} line {number}"
        if len(row) < len(header):
            raise TraceError(f"{where}: {len(row)} fields, the header has {len(header)}")
        arrival = _field(row[index[0]].strip(), CSV_COLUMNS[0], where, integer=False)
        prompt = _field(row[index[1]].strip(), CSV_COLUMNS[1], where, integer=True)
        output = _field(row[index[2]].strip(), CSV_COLUMNS[2], where, integer=True)
        records.append((arrival, int(prompt), int(output)))
    records.sort(key=lambda record: record[0])  # stable: equal arrivals keep file order
    last = records[-1][0] if records else 0.0
    return Trace(
        path.name,
        max(duration, last),
        tuple(r[0] for r in records),
        tuple(r[1] for r in records),
        tuple(r[2] for r in records),
    )


def load_trace(
    name_or_csv: str,
    *,
    duration: float,
    rate: float,
    seed: int,
    prompt_tokens: int = 64,
    output_tokens: int = 32,
) -> Trace:
    """A built-in trace by name, or a CSV file (a name ending in ``.csv``)."""
    if duration <= 0 or not math.isfinite(duration):
        raise TraceError(f"duration must be a positive number of seconds (got {duration!r})")
    if name_or_csv.endswith(".csv"):
        return csv_trace(Path(name_or_csv), duration=duration)
    if name_or_csv not in SHAPES:
        raise TraceError(
            f"unknown trace {name_or_csv!r} (known: {', '.join(BUILTIN_TRACES)}, or FILE.csv)"
        )
    if rate <= 0 or not math.isfinite(rate):
        raise TraceError(f"rate must be a positive number of requests/s (got {rate!r})")
    if prompt_tokens < 1 or output_tokens < 1:
        raise TraceError("prompt and output tokens must be at least 1")
    return builtin_trace(
        name_or_csv,
        duration=duration,
        rate=rate,
        seed=seed,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
    )
