"""The real router re-reads ``--api-keys-file`` when it changes, without dropping requests:
a stream admitted with a key that a reload removes runs to its end, the new key works
within about one reload interval, the removed key gets 401, and a broken file keeps the
last good keys. A broken file at start is a one-line exit 2 naming the line."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import orjson

from procs import HOST, Spawn, free_port, llmsvc_args, start_sim_engine, wait_until

RELOAD_S = 0.5
# The aim is one reload interval and a request; the bound leaves room for a loaded machine.
NEW_KEY_WITHIN_S = RELOAD_S + 3.0


def replace(path: Path, text: str) -> None:
    """Write ``text`` as a new file swapped in at once (as editors and Secret mounts do)."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def chat(base: str, key: str, **extra: object) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(
        f"{base}/v1/chat/completions",
        json=body | extra,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_reload_keeps_running_streams_and_swaps_keys(spawn: Spawn, tmp_path: Path) -> None:
    # A slow engine: 40 tokens at 10 tokens/s, a stream of about 4 s.
    _, engine = start_sim_engine(
        spawn, "e1", "--time-scale", "1", "--decode-tokens-per-s", "10", "--prefill-tokens-per-s",
        "100000",
    )  # fmt: skip
    static = tmp_path / "services.json"
    static.write_bytes(orjson.dumps([{"name": "e1", "host": HOST, "port": engine,
                                      "metadata": {"models": ["m"]}}]))  # fmt: skip
    keys = tmp_path / "keys.yaml"
    keys.write_text("- {name: team-a, key: key-a}\n")
    port = free_port()
    router = spawn(
        "router", "router", "--port", str(port), "--static-services", str(static),
        "--api-keys-file", str(keys), "--api-keys-reload-interval", str(RELOAD_S),
    )  # fmt: skip
    base = f"http://{HOST}:{port}"
    router.wait_http(f"{base}/health")
    assert chat(base, "key-a").status_code == 200
    assert chat(base, "key-b").status_code == 401

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40,
            "stream": True}  # fmt: skip
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json=body,
        headers={"Authorization": "Bearer key-a"}, timeout=30,
    ) as stream:  # fmt: skip
        assert stream.status_code == 200
        chunks = stream.iter_bytes()
        received = next(chunks)
        # While the stream runs: key-a leaves the file, key-b comes.
        replace(keys, "- {name: team-b, key: key-b}\n")
        changed = time.monotonic()
        wait_until(
            lambda: chat(base, "key-b").status_code == 200,
            timeout=NEW_KEY_WITHIN_S,
            interval=0.1,
            what="the new key to be accepted",
        )
        took = time.monotonic() - changed
        assert chat(base, "key-a").status_code == 401
        for chunk in chunks:
            received += chunk
    assert received.endswith(b"data: [DONE]\n\n"), received[-200:]
    assert received.count(b'"delta"') >= 40  # every token came: the stream was not cut
    print(f"new key accepted {took:.2f} s after the file changed")

    # A broken file: the last good keys stay, one error line in the log.
    replace(keys, "- {name: team-c, key: key-c, rpm: 0}\n")
    time.sleep(RELOAD_S * 4)
    assert chat(base, "key-b").status_code == 200
    assert chat(base, "key-c").status_code == 401
    errors = [line for line in router.log().splitlines() if "rpm must be an integer" in line]
    assert len(errors) == 1, errors
    assert "line 1" in errors[0] and "keeping the 1 keys" in errors[0]
    # Fixed again: applied.
    replace(keys, "- {name: team-c, key: key-c}\n")
    wait_until(lambda: chat(base, "key-c").status_code == 200, timeout=NEW_KEY_WITHIN_S)
    assert "Traceback" not in router.log()


def test_malformed_keys_file_at_start_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: a\n  key: k1\n- name: b\n  key: k2\n  max_priority: urgent\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("k1\nk2 k3\n")
    cases = [
        (bad, f"--api-keys-file: {bad} line 5: max_priority must be one of critical, "),
        (plain, f"--api-keys-file: {plain} line 2: a key is one word"),
    ]
    runs = [  # at once: each is a Python start-up
        subprocess.Popen(
            llmsvc_args("router", "--port", str(free_port()), "--api-keys-file", str(path)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path, _ in cases
    ]
    for run, (_, message) in zip(runs, cases, strict=True):
        _, stderr = run.communicate(timeout=30)
        assert run.returncode == 2, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        assert lines[0] == f"llmsvc router: error: {message}" or message in lines[0], lines
        assert "Traceback" not in stderr
