"""The four workloads: what each request carries and when requests arrive.

A workload hands out the next request (:meth:`Workload.next`) and hears how it
ended (:meth:`Workload.done`): a chat session needs its reply to grow its next
turn. Arrival times are drawn separately (:func:`arrival_times`), so the same
request stream can be sent open loop (Poisson, bursts) or closed loop (for the
capacity measurement). Everything is drawn from one seeded ``random.Random``:
a run replays exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .config import MODEL, WorkloadShape

CHARS_PER_TOKEN = 4


def random_text(rng: random.Random, tokens: int) -> str:
    """``tokens`` tokens of text no other prompt shares (hex of random bytes)."""
    return rng.randbytes(tokens * CHARS_PER_TOKEN // 2).hex()


def rendered_tokens(messages: list[dict[str, str]]) -> int:
    """Prompt tokens the simulated engine counts for ``messages`` (its chat template)."""
    chars = sum(len(f"<|{m['role']}|>\n{m['content']}\n") for m in messages)
    chars += len("<|assistant|>\n")
    return -(-chars // CHARS_PER_TOKEN)


@dataclass(eq=False, slots=True)
class Session:
    """A chat: a system prompt, then turn after turn, each a prefix of the next."""

    id: str
    client: int
    turns: int
    messages: list[dict[str, str]]
    done_turns: int = 0
    busy: bool = False


@dataclass(frozen=True, slots=True)
class Request:
    """One request to send: body, extra headers, the simulated client, its session."""

    body: bytes
    headers: dict[str, str]
    client: int
    prompt_tokens: int
    session: Session | None = None


def chat_request(
    shape: WorkloadShape,
    messages: list[dict[str, str]],
    *,
    client: int,
    session: Session | None = None,
) -> Request:
    payload: dict[str, Any] = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": shape.max_tokens,
        "stream": True,
    }
    headers: dict[str, str] = {}
    if session is not None:
        payload["user"] = session.id
        headers["X-Session-Id"] = session.id
    return Request(
        body=orjson.dumps(payload),
        headers=headers,
        client=client,
        prompt_tokens=rendered_tokens(messages),
        session=session,
    )


class Workload(Protocol):
    name: str
    bursty: bool

    def next(self) -> Request: ...

    def done(self, request: Request, reply: str | None) -> None: ...


class Uniform:
    """Independent single-turn prompts of random length and content: nothing to share."""

    name = "uniform"
    bursty = False

    def __init__(self, shape: WorkloadShape, rng: random.Random) -> None:
        self.shape, self.rng = shape, rng

    def next(self) -> Request:
        tokens = self.rng.randint(*self.shape.uniform_prompt_tokens)
        messages = [{"role": "user", "content": random_text(self.rng, tokens)}]
        return chat_request(self.shape, messages, client=self.rng.randrange(self.shape.clients))

    def done(self, request: Request, reply: str | None) -> None:
        return None


class Heterogeneous(Uniform):
    """Uniform's prompts, sent to unequal engines (engine 0 faster: ``StudyConfig.profiles``).

    Nothing to share, so only the engines' speeds tell strategies apart: a
    strategy that counts requests (round robin) overloads the slow engines; one
    that sees load sends the fast engine more.
    """

    name = "heterogeneous"


def system_prompts(shape: WorkloadShape, rng: random.Random) -> list[str]:
    """Distinct long system prompts (each differs from the others from its first token)."""
    return [
        f"You are assistant {k}. " + random_text(rng, rng.randint(*shape.system_prompt_tokens))
        for k in range(shape.system_prompts)
    ]


class SharedPrefix:
    """Multi-turn chat sessions over a few long system prompts.

    About ``live_sessions`` sessions are open at once. Each arrival continues a
    random session that is not waiting for a reply (a new one when all are
    busy or fewer are open); a session sends ``session_turns`` turns, each its
    whole history plus a new user message, then ends.
    """

    name = "shared_prefix"
    bursty = False

    def __init__(self, shape: WorkloadShape, rng: random.Random) -> None:
        self.shape, self.rng = shape, rng
        self.prompts = system_prompts(shape, rng)
        self.live: list[Session] = []
        self._count = 0

    def _open(self) -> Session:
        self._count += 1
        session = Session(
            id=f"s{self._count}",
            client=self._count % self.shape.clients,
            turns=self.rng.randint(*self.shape.session_turns),
            messages=[{"role": "system", "content": self.rng.choice(self.prompts)}],
        )
        self.live.append(session)
        return session

    def next(self) -> Request:
        idle = [s for s in self.live if not s.busy]
        if len(self.live) < self.shape.live_sessions or not idle:
            session = self._open()
        else:
            session = self.rng.choice(idle)
        session.busy = True
        question = random_text(self.rng, self.rng.randint(*self.shape.user_tokens))
        session.messages.append({"role": "user", "content": question})
        return chat_request(self.shape, session.messages, client=session.client, session=session)

    def done(self, request: Request, reply: str | None) -> None:
        session = request.session
        if session is None:
            return
        session.busy = False
        if reply is None:  # failed: the user gives up on this chat
            self.live.remove(session)
            return
        session.messages.append({"role": "assistant", "content": reply})
        session.done_turns += 1
        if session.done_turns >= session.turns:
            self.live.remove(session)


class Bursts:
    """Batches of single-turn requests sharing one system prompt, arriving at once.

    Like a batch job or a fan-out: ``burst_size`` requests within
    ``burst_spread_s``, all on one of the system prompts with distinct
    questions; bursts themselves arrive as a Poisson process.
    """

    name = "bursts"
    bursty = True

    def __init__(self, shape: WorkloadShape, rng: random.Random) -> None:
        self.shape, self.rng = shape, rng
        self.prompts = system_prompts(shape, rng)
        self._left = 0
        self._prompt = ""
        self._client = 0

    def next(self) -> Request:
        if self._left == 0:
            self._left = self.shape.burst_size
            self._prompt = self.rng.choice(self.prompts)
            self._client = self.rng.randrange(self.shape.clients)
        self._left -= 1
        question = random_text(self.rng, self.rng.randint(*self.shape.user_tokens))
        messages = [
            {"role": "system", "content": self._prompt},
            {"role": "user", "content": question},
        ]
        return chat_request(self.shape, messages, client=self._client)

    def done(self, request: Request, reply: str | None) -> None:
        return None


def make_workload(name: str, shape: WorkloadShape, seed: int) -> Workload:
    rng = random.Random(f"{seed}:{name}")
    kinds: dict[str, type[Uniform] | type[SharedPrefix] | type[Bursts]] = {
        "uniform": Uniform,
        "heterogeneous": Heterogeneous,
        "shared_prefix": SharedPrefix,
        "bursts": Bursts,
    }
    return kinds[name](shape, rng)


def arrival_times(
    rate: float, duration: float, *, rng: random.Random, burst: int = 1, spread: float = 0.0
) -> list[float]:
    """Open-loop arrival offsets (s) over ``duration`` at ``rate`` requests/s on average.

    ``burst == 1``: a Poisson process. Otherwise bursts of ``burst`` requests
    start as a Poisson process of rate ``rate / burst``, each request of a
    burst uniformly within ``spread`` seconds of its start.
    """
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate / burst)
        if t >= duration:
            return sorted(times)
        if burst == 1:
            times.append(t)
        else:
            times.extend(t + rng.uniform(0.0, spread) for _ in range(burst))
