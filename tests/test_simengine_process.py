"""The real ``llmsvc sim-engine`` process, driven by the ``openai`` client."""

from __future__ import annotations

import subprocess

import httpx
import openai
import pytest

from procs import Spawn, free_port, llmsvc_args


def start_engine(spawn: Spawn, name: str, *args: str) -> str:
    port = free_port()
    proc = spawn(name, "sim-engine", "--port", str(port), "--time-scale", "0", *args)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/health")
    return url


def chat_text(url: str, content: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": content}], max_tokens=12
    )
    return reply.choices[0].message.content or ""


def test_openai_client_lists_chats_and_streams(spawn: Spawn) -> None:
    url = start_engine(spawn, "engine", "--model-name", "sim-model,alias", "--engine-id", "e1")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    assert [m.id for m in client.models.list()] == ["sim-model", "alias"]

    reply = client.chat.completions.create(
        model="alias", messages=[{"role": "user", "content": "Hello"}], max_tokens=6
    )
    assert reply.system_fingerprint == "e1"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 6

    stream = client.chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert {c.system_fingerprint for c in chunks} == {"e1"}

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(
            model="missing", messages=[{"role": "user", "content": "Hello"}]
        )
    resp = httpx.get(f"{url}/v1/models")
    assert resp.headers["X-Llmsvc-Engine"] == "e1"


def test_same_seed_same_text_across_processes(spawn: Spawn) -> None:
    a = start_engine(spawn, "a", "--seed", "7")
    b = start_engine(spawn, "b", "--seed", "7")
    c = start_engine(spawn, "c", "--seed", "8")
    prompt = "Write a haiku about queues."
    assert chat_text(a, prompt) == chat_text(b, prompt)
    assert chat_text(a, prompt) != chat_text(c, prompt)
    vectors = [
        httpx.post(f"{u}/v1/embeddings", json={"model": "sim-model", "input": "x"}).json()
        for u in (a, b)
    ]
    assert vectors[0]["data"] == vectors[1]["data"]


def test_client_disconnect_frees_the_slot_in_the_real_server(spawn: Spawn) -> None:
    url = start_engine(spawn, "engine", "--max-num-seqs", "1", "--time-scale", "1")
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 2000}  # 50 s at 40 tok/s
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=0.5)
    # the slot is free again: a short request is answered at once
    quick = {"model": "sim-model", "prompt": "hi", "max_tokens": 1}
    resp = httpx.post(f"{url}/v1/completions", json=quick, timeout=3)
    assert resp.status_code == 200
    metrics = httpx.get(f"{url}/metrics").text
    assert (
        'vllm:request_success_total{engine="0",finished_reason="abort",model_name="sim-model"} 1.0'
        in metrics
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "eighty"],
        ["--time-scale", "-1"],
        ["--fail-rate", "2"],
        ["--model-name", ""],
        ["--no-such-flag"],
        ["--scheduler", "fifo"],
        ["--max-num-seqs", "64", "--max-batched-tokens", "32"],
        ["--profile", "no-such-profile"],
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str]) -> None:
    done = subprocess.run(
        llmsvc_args("sim-engine", *args), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert lines[-1].startswith("llmsvc sim-engine: error:")
