"""OpenAI batch files: input lines to envelopes, response messages to output lines (no sockets)."""

from __future__ import annotations

import io

import orjson
import pytest

from lingo.batch.jobs import InputError, Progress, read_items, result_line


def test_openai_batch_lines_become_envelopes_keyed_by_custom_id() -> None:
    line = orjson.dumps(
        {"custom_id": "r-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}
    )
    [item] = read_items([line])
    assert item.custom_id == "r-1"
    assert orjson.loads(item.data) == {
        "path": "/v1/chat/completions",
        "metadata": {"custom_id": "r-1"},
        "body": {"model": "m"},
    }


def test_envelope_lines_keep_their_metadata_and_get_a_custom_id_where_missing() -> None:
    lines = [
        orjson.dumps({"metadata": {"custom_id": "mine", "user": 7}, "body": {"model": "m"}}),
        b"\n",
        orjson.dumps({"metadata": {"user": 8}, "body": {"model": "m"}}),
    ]
    first, second = read_items(lines)
    assert first.custom_id == "mine"
    assert orjson.loads(first.data)["metadata"] == {"custom_id": "mine", "user": 7}
    assert second.custom_id == "line-3"
    assert orjson.loads(second.data)["metadata"] == {"user": 8, "custom_id": "line-3"}


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([b"{oops"], "line 1: not JSON"),
        ([b"[]"], "line 1: not a JSON object"),
        ([b'{"custom_id": "a", "method": "GET", "url": "/v1/models"}'], "method must be POST"),
        ([b'{"custom_id": 5}'], "custom_id must be"),
        ([b'{"url": "/v1/completions"}'], "line 1: custom_id is missing"),
        ([b'{"method": "POST", "url": "/v1/completions", "body": {"model": "m"}}'], "custom_id is missing"),
        ([b'{"body": {"model": "m"}, "metadata": 3}'], "neither"),
        ([b'{"custom_id": "a", "body": {}}', b'{"custom_id": "a", "body": {}}'], "line 2: custom_id 'a'"),
    ],
)
def test_bad_input_lines_are_reported_by_number(lines: list[bytes], reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        read_items(lines)


def test_a_response_becomes_an_openai_batch_output_line() -> None:
    data = orjson.dumps({"status_code": 200, "metadata": {"custom_id": "r-1"}, "body": {"id": "cmpl-1"}})
    custom_id, line = result_line(data, {"request_message_id": "S:4"})
    assert custom_id == "r-1"
    assert line["id"].startswith("batch_req_")
    assert line["response"] == {"status_code": 200, "request_id": "S:4", "body": {"id": "cmpl-1"}}
    assert line["error"] is None


def test_a_typed_error_becomes_the_output_lines_error() -> None:
    error = {"code": "DEADLINE_EXCEEDED", "message": "too late"}
    data = orjson.dumps({"status_code": 504, "metadata": {"custom_id": "r-2"}, "body": {}, "error": error})
    _, line = result_line(data, {})
    assert line["error"] == error
    assert line["response"]["status_code"] == 504


def test_a_response_without_metadata_has_no_custom_id() -> None:
    custom_id, line = result_line(b'{"status_code": 400, "metadata": null, "body": {}}', {})
    assert custom_id is None and line["custom_id"] is None


def test_progress_shows_counts_and_the_summary_names_missing_ids() -> None:
    out = io.StringIO()
    progress = Progress(4, stream=out)
    progress.published, progress.answered = 4, 3
    progress.statuses.update({200: 2, 404: 1})
    progress.finish()
    assert "answered 3/4" in out.getvalue() and "published 4/4" in out.getvalue()
    summary = progress.summary({"r-9"})
    assert "answered 3 request(s)" in summary and "200: 2, 404: 1" in summary
    assert "missing 1: r-9" in summary


def test_the_summary_names_failed_custom_ids_and_collect_shows_no_publish_count() -> None:
    out = io.StringIO()
    progress = Progress(3, stream=out, publishing=False)
    progress.answered = 3
    progress.failed.extend(["r-2", "r-1"])
    progress.finish()
    assert "published" not in out.getvalue() and "answered 3/3" in out.getvalue()
    assert "failed 2: r-1, r-2" in progress.summary()
