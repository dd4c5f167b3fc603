"""A batch input file is checked whole: each bad line is named with its number and code."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llmsvc.batch.objects import batch_object, file_object, list_object
from llmsvc.batch.sla import SlaView
from llmsvc.batch.store import BatchRecord, Counts, FileRecord
from llmsvc.batch.validation import InvalidInput, check_for_batch, validate_input

CHAT = "/v1/chat/completions"


def line(custom_id: str = "r1", *, url: str = CHAT, model: str = "m", **extra: Any) -> bytes:
    data: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
    }
    data.update(extra)
    return orjson.dumps(data)


def jsonl(*rows: bytes) -> bytes:
    return b"\n".join(rows) + b"\n"


def test_good_file_gives_one_spec_per_line_in_order() -> None:
    specs = validate_input(jsonl(line("a"), line("b"), line("c")), max_lines=10)
    assert [(s.index, s.custom_id, s.url, s.method) for s in specs] == [
        (0, "a", CHAT, "POST"),
        (1, "b", CHAT, "POST"),
        (2, "c", CHAT, "POST"),
    ]
    assert specs[0].body["model"] == "m"
    assert check_for_batch(specs, CHAT) == "m"


def test_trailing_blank_lines_and_no_final_newline_are_fine() -> None:
    assert len(validate_input(line("a") + b"\n" + line("b"), max_lines=2)) == 2
    assert len(validate_input(jsonl(line("a")) + b"\n\n  \n", max_lines=1)) == 1


@pytest.mark.parametrize(
    ("content", "code", "number", "words"),
    [
        (b"", "invalid_file", None, "empty"),
        (b"\n \n", "invalid_file", None, "empty"),
        (b"\xff\xfe", "invalid_file", None, "UTF-8"),
        (jsonl(line("a"), b"{not json"), "invalid_json", 2, "not valid JSON"),
        (jsonl(b"[1, 2]"), "invalid_json", 1, "JSON object"),
        (jsonl(line("a"), b"", line("b")), "invalid_file", 2, "empty line"),
        (
            jsonl(orjson.dumps({"method": "POST", "url": CHAT, "body": {"model": "m"}})),
            "missing_custom_id",
            1,
            "custom_id",
        ),
        (jsonl(line("a"), line(custom_id="")), "invalid_file", 2, "custom_id"),
        (jsonl(line("a"), line("b"), line("a")), "duplicate_custom_id", 3, "'a'"),
        (jsonl(line("a", method="GET")), "invalid_file", 1, "method"),
        (jsonl(line("a", url="/v1/responses")), "invalid_file", 1, "url"),
        (
            jsonl(line("a"), line("b", url="/v1/embeddings")),
            "mismatched_endpoint",
            2,
            "one endpoint",
        ),
        (jsonl(line("a"), line("b", model="other")), "mismatched_model", 2, "one model"),
        (jsonl(line("a", body=[1])), "invalid_file", 1, "'body'"),
        (jsonl(line("a", body={"messages": []})), "invalid_file", 1, "body.model"),
        (jsonl(line("a"), line("b"), line("c"), line("d")), "too_many_lines", 4, "3 lines"),
    ],
)
def test_bad_files(content: bytes, code: str, number: int | None, words: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_input(content, max_lines=3)
    err = info.value
    assert err.code == code
    assert err.line == number
    assert err.param == "file"
    assert words in err.message
    assert "\n" not in err.message
    if number is not None:
        assert err.message.startswith(f"line {number}: ")


def test_lines_must_use_the_batch_endpoint() -> None:
    specs = validate_input(jsonl(line("a", url="/v1/embeddings")), max_lines=3)
    with pytest.raises(InvalidInput, match=r"line 1: .*endpoint") as info:
        check_for_batch(specs, CHAT)
    assert info.value.code == "mismatched_endpoint"
    assert info.value.param == "endpoint"


def test_objects_have_openai_shapes() -> None:
    record = FileRecord(
        id="file-x", tenant="t", purpose="batch", filename="in.jsonl", bytes=3, created_at=5
    )
    assert file_object(record) == {
        "id": "file-x",
        "object": "file",
        "bytes": 3,
        "created_at": 5,
        "filename": "in.jsonl",
        "purpose": "batch",
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }
    batch = BatchRecord(
        id="batch_x",
        tenant="t",
        endpoint=CHAT,
        input_file_id="file-x",
        completion_window="1h",
        window_seconds=3600.0,
        created_at=100.5,
        status="in_progress",
        model="m",
        times={"in_progress_at": 100.5},
        counts=Counts(total=4, pending=1, running=1, completed=1, failed=1),
        usage={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
    )
    view = SlaView(
        deadline=3700.5,
        progress=0.5,
        throughput=0.25,
        eta=108.9,
        eta_seconds=8.0,
        time_left_seconds=3599.0,
        window_used=0.0003,
        sla_status="on_track",
        priority="batch",
    )
    body = batch_object(batch, view)
    assert body["object"] == "batch"
    assert body["created_at"] == 100 and body["in_progress_at"] == 100
    assert body["expires_at"] == 3700 and body["completed_at"] is None
    assert body["request_counts"] == {"total": 4, "completed": 1, "failed": 1}
    assert body["usage"] == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    assert body["errors"] is None
    assert body["llmsvc"]["eta"] == 108 and body["llmsvc"]["tenant"] == "t"
    assert body["llmsvc"]["sla_status"] == "on_track"
    page = list_object([{"id": "a"}, {"id": "b"}], has_more=True)
    assert (page["first_id"], page["last_id"], page["has_more"]) == ("a", "b", True)
    assert list_object([], has_more=False)["first_id"] is None
