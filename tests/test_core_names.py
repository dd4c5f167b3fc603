"""The shared names: the termination message's format, written and read back."""

from __future__ import annotations

import pytest

from llmsvc.core.names import (
    FAILURES,
    INTENDED,
    TERMINATION_MESSAGE_MAX_BYTES,
    Reason,
    parse_termination_message,
    termination_message,
)


@pytest.mark.parametrize("reason", FAILURES)
def test_every_failure_reason_round_trips(reason: Reason) -> None:
    text = termination_message(reason, "what happened", "giving up after 5 restarts")
    assert text == f"{reason}: what happened; giving up after 5 restarts"
    assert parse_termination_message("some log line\n" + text + "\n") == (
        reason,
        "what happened; giving up after 5 restarts",
    )


def test_failures_are_every_reason_but_the_intended_ones() -> None:
    assert set(FAILURES) | INTENDED == set(Reason)
    assert not set(FAILURES) & INTENDED


def test_a_message_without_a_failure_reason_is_not_one() -> None:
    assert parse_termination_message("Requested: POST /restart") is None
    assert parse_termination_message("OOMKilledX: no") is None
    assert parse_termination_message("") is None
    assert termination_message(Reason.HUNG, "") == "Hung: no detail"


def test_a_long_message_is_cut_to_what_the_kubelet_reads() -> None:
    text = termination_message(Reason.CUDA_ERROR, "é" * 5000)
    assert len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    assert text.startswith("CUDAError: é")
    assert text.encode().decode() == text  # no half character at the cut
