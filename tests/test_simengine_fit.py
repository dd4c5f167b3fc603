"""Timing profiles (``--profile``) and ``llmsvc sim-engine fit``, on real processes."""

from __future__ import annotations

import json
import math
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llmsvc.simengine.fit import (
    Measurements,
    build_settings,
    fit_batch_wait,
    fit_line,
    fit_slowdown,
    fit_step_noise,
)
from llmsvc.simengine.profiles import available_profiles, load_profile
from llmsvc.simengine.settings import SimEngineSettings
from procs import Spawn, free_port, llmsvc_args


def test_fit_line_and_slowdown() -> None:
    intercept, slope = fit_line([(100, 0.02 + 100 / 250), (500, 0.02 + 500 / 250), (900, 3.62)])
    assert intercept == pytest.approx(0.02)
    assert 1 / slope == pytest.approx(250)
    assert fit_slowdown({1: 0.01, 2: 0.0125, 4: 0.0175}) == pytest.approx(0.25)
    assert fit_slowdown({1: 0.01, 2: 0.009}) == 0.0  # never faster with company
    assert fit_slowdown({1: 0.01}) == 0.0
    with pytest.raises(ValueError, match="two different"):
        fit_line([(5, 1.0), (5, 2.0)])


def test_build_settings_from_measurements() -> None:
    m = Measurements(
        ttft=[(50, 0.25), (550, 2.25)],  # 250 tok/s after 0.05 s
        chars_per_token=3.5,
        itl={1: 0.0125, 2: 0.015},
        prefix_ratio=0.1,
        slots=2,
        context_tokens=2048,
        gaps_alone=[0.0125] * 30,  # steady: no noise
    )
    settings = build_settings(m, max_batched_tokens=2048)
    assert settings == {
        "scheduler": "batched",
        "chars_per_token": 3.5,
        "prefill_tokens_per_s": 250.0,
        "prefill_overhead_s": 0.05,
        "decode_tokens_per_s": 80.0,
        "decode_slowdown": 0.2,
        "max_batched_tokens": 2048,
        "max_num_seqs": 2,
        "kv_cache_tokens": 2048,
        "prefix_cache_tokens": 2048,
        "step_noise": 0.0,
        "batch_wait_s": 0.0,
    }
    assert (
        build_settings(
            Measurements(ttft=m.ttft, itl=m.itl, prefix_ratio=0.9), max_batched_tokens=512
        )["prefix_cache_tokens"]
        == 0
    )


def test_fit_step_noise_recovers_a_lognormal_spread() -> None:
    rng = random.Random(3)
    gaps = [0.02 * math.exp(0.35 * rng.gauss(0, 1)) for _ in range(3000)]
    assert fit_step_noise(gaps) == pytest.approx(0.35, abs=0.03)
    assert fit_step_noise([0.02] * 100) == 0.0
    assert fit_step_noise(gaps[:19]) == 0.0  # too few gaps for a 95th percentile
    m = Measurements(ttft=[(50, 0.25), (550, 2.25)], itl={1: 0.02}, gaps_alone=gaps)
    assert build_settings(m, max_batched_tokens=512)["step_noise"] == pytest.approx(0.35, abs=0.03)


def test_fit_batch_wait_is_the_delay_up_to_which_requests_join() -> None:
    ms = 0.001
    llama = [(0, True), (1 * ms, True), (2 * ms, True), (3 * ms, False), (4 * ms, False)]
    assert fit_batch_wait(llama) == pytest.approx(2.5 * ms)
    noisy = [(0, True), (2 * ms, False), (4 * ms, True), (8 * ms, False), (16 * ms, False)]
    assert fit_batch_wait(noisy) == pytest.approx(1 * ms)  # a tie: the smaller threshold
    assert fit_batch_wait([(0, False), (1 * ms, False)]) == 0.0
    assert fit_batch_wait([(0, True), (32 * ms, True)]) == pytest.approx(32 * ms)  # at least
    assert fit_batch_wait([]) == 0.0


def write(path: Path, settings: dict[str, object]) -> str:
    path.write_text(json.dumps({"source": {"by": "a test"}, "settings": settings}))
    return str(path)


def test_a_profile_gives_defaults_and_flags_win(tmp_path: Path) -> None:
    name = write(tmp_path / "p.json", {"prefill_tokens_per_s": 250.0, "max_num_seqs": 2})
    settings = SimEngineSettings(profile=name)
    assert (settings.prefill_tokens_per_s, settings.max_num_seqs) == (250.0, 2)
    assert SimEngineSettings(profile=name, max_num_seqs=8).max_num_seqs == 8


def test_shipped_profiles_load() -> None:
    assert "llama.cpp-smollm2-cpu" in available_profiles()
    for name in available_profiles():
        SimEngineSettings(**load_profile(name))  # every value valid


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (None, "unknown profile 'no-such-profile' (known: "),
        ({"port": 80}, "sets non-timing fields: port"),
        ({"prefill_tokens_per_s": -1}, "prefill_tokens_per_s: Input should be greater than 0"),
    ],
)
def test_bad_profiles_exit_2_with_one_line(
    tmp_path: Path, settings: dict[str, object] | None, message: str
) -> None:
    name = "no-such-profile" if settings is None else write(tmp_path / "bad.json", settings)
    done = subprocess.run(
        llmsvc_args("sim-engine", "--profile", name), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("llmsvc sim-engine: error:")
    assert message in done.stderr


def fitted(url: str, out: Path, *flags: str) -> dict[str, Any]:
    """``llmsvc sim-engine fit`` of the engine at ``url`` into ``out``: what it wrote."""
    fit = ["--url", url, "--model", "sim-model", "--out", str(out), *flags]
    done = subprocess.run(
        llmsvc_args("sim-engine", "fit", *fit), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def test_fit_recovers_a_simulated_engine(spawn: Spawn, tmp_path: Path) -> None:
    port = free_port()
    truth = ("--prefill-tokens-per-s", "4000", "--decode-tokens-per-s", "100")
    engine = spawn("truth", "sim-engine", "--port", str(port), *truth, "--decode-slowdown", "0.25")
    url = f"http://127.0.0.1:{port}"
    engine.wait_http(f"{url}/health")
    out = tmp_path / "fitted.json"
    fit = ["--samples", "1", "--decode-tokens", "20", "--concurrency", "1,4"]
    settings = fitted(url, out, *fit)["settings"]
    assert settings["chars_per_token"] == pytest.approx(4, rel=0.05)
    assert settings["prefill_tokens_per_s"] == pytest.approx(4000, rel=0.2)
    assert settings["prefill_overhead_s"] < 0.03
    assert settings["decode_tokens_per_s"] == pytest.approx(100, rel=0.2)
    assert settings["decode_slowdown"] == pytest.approx(0.25, abs=0.1)
    assert settings["prefix_cache_tokens"] > 0
    SimEngineSettings(profile=str(out))  # the fit is a valid profile


def test_fit_recovers_a_simulated_engines_step_noise_and_batch_wait(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    truth = ("--decode-tokens-per-s", "50", "--step-noise", "0.3", "--batch-wait-s", "0.02")
    engine = spawn("noisy", "sim-engine", "--port", str(port), "--prefill-tokens-per-s", "400",
                   "--seed", "4", *truth)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    engine.wait_http(f"{url}/health")
    fit = ["--samples", "2", "--prompt-tokens", "16,64", "--decode-tokens", "60",
           "--concurrency", "1"]  # fmt: skip
    # batch_wait_s: the median of three fits (see below)
    documents = [fitted(url, tmp_path / f"fitted-{run}.json", *fit) for run in range(3)]
    # Each fit prefills afresh: a rerun's prompts are not the last one's (cached) prompts.
    for d in documents:
        assert d["settings"]["prefill_tokens_per_s"] == pytest.approx(400, rel=0.3), d["fit"]
    document = documents[0]
    assert document["settings"]["step_noise"] == pytest.approx(0.3, abs=0.1)
    assert document["settings"]["decode_tokens_per_s"] == pytest.approx(50, rel=0.2)
    assert document["fit"]["itl_alone_gaps"] == 118  # 2 samples of 59 gaps (not the closing chunk)
    spread = document["fit"]["itl_alone_p95_s"] / document["fit"]["itl_alone_p50_s"]
    assert spread == pytest.approx(math.exp(0.3 * 1.645), rel=0.2)
    # Requests sent up to 16 ms apart joined the first's step, from 24 ms on they did not.
    # One fit's probe is a single pair per delay: on a loaded machine the 16 ms pair can
    # reach the engine 4 ms late and miss (CI saw 13.8 ms), so the median of three is taken.
    waits = sorted(d["settings"]["batch_wait_s"] for d in documents)
    assert waits[1] == pytest.approx(0.02, abs=0.006), waits


def test_fit_of_an_unreachable_url_exits_1_with_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        llmsvc_args("sim-engine", "fit", "--url", url, "--model", "m"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith(f"llmsvc sim-engine fit: error: cannot measure {url}")


@pytest.mark.parametrize("url", ["notaurl", "ftp://h:1", "http://h:1/v1?x=", "http://h:99999"])
def test_fit_of_a_url_that_is_not_an_origin_exits_2_with_one_line(url: str) -> None:
    done = subprocess.run(
        llmsvc_args("sim-engine", "fit", "--url", url, "--model", "m"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("llmsvc sim-engine fit: error: --url: ")
    assert len(done.stderr.strip().splitlines()) == 1
