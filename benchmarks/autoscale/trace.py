"""The agreement benchmark's trace: bursts of requests separated by idle gaps.

Each gap is longer than the babysitter's ``--idle-timeout`` by a stated margin,
so that every burst finds the engine in standby and wakes it once; inside a
burst no two arrivals are further apart than half the idle timeout, so that no
engine goes to sleep mid-burst. The count of wake-ups is then fixed by the
trace (one per burst), on both sides, and a disagreement in it is a
disagreement of the systems, not of the trace's chance.

The trace goes to a CSV (``arrival_s,prompt_tokens,output_tokens``, the format
``llmsvc simulate --trace FILE.csv`` reads), and both sides read that file.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

HEADER = ("arrival_s", "prompt_tokens", "output_tokens")


@dataclass(frozen=True, slots=True)
class Request:
    """One line of a trace: when it is sent and how long its prompt and answer are."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Bursts:
    """``bursts`` Poisson bursts of ``burst_s`` seconds at ``rate``/s, ``gap_s`` apart
    (end of one to start of the next), the first after ``lead_in_s`` seconds of quiet."""

    bursts: int = 6
    burst_s: float = 12.0
    rate: float = 1.5
    gap_s: float = 8.0
    lead_in_s: float = 6.0
    prompt_tokens: tuple[int, int] = (16, 64)
    output_tokens: tuple[int, int] = (4, 16)
    max_inner_gap_s: float = 1.5
    """The longest gap allowed between two arrivals of one burst (half the idle timeout)."""

    @property
    def duration_s(self) -> float:
        return self.lead_in_s + self.bursts * self.burst_s + (self.bursts - 1) * self.gap_s

    def starts(self) -> list[float]:
        """When each burst begins."""
        return [self.lead_in_s + i * (self.burst_s + self.gap_s) for i in range(self.bursts)]


def generate(shape: Bursts, seed: int) -> list[Request]:
    """The seeded trace: the same ``shape`` and ``seed`` give the same requests."""
    rng = random.Random(seed)
    requests: list[Request] = []
    for start in shape.starts():
        at = start  # a burst begins with a request: the gap before it is exactly gap_s
        while at < start + shape.burst_s:
            prompt = rng.randint(*shape.prompt_tokens)
            requests.append(Request(round(at, 4), prompt, rng.randint(*shape.output_tokens)))
            at += min(rng.expovariate(shape.rate), shape.max_inner_gap_s)
    return requests


def write_csv(path: Path, requests: list[Request]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(HEADER)
        for r in requests:
            writer.writerow((f"{r.arrival_s:.4f}", r.prompt_tokens, r.output_tokens))


def read_csv(path: Path) -> list[Request]:
    """The trace a CSV holds (header required), in arrival order."""
    with path.open(newline="") as src:
        rows = list(csv.DictReader(src))
    requests = [
        Request(float(r["arrival_s"]), int(r["prompt_tokens"]), int(r["output_tokens"]))
        for r in rows
    ]
    return sorted(requests, key=lambda r: r.arrival_s)
