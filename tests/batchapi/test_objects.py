"""Input-file rules, output lines and multipart parsing: pure code, no sockets."""

from __future__ import annotations

import orjson
import pytest

from lingo.batch.api.multipart import MultipartError, parse_form
from lingo.batch.api.objects import MAX_LINES, batch_object, check_input, output_line, page
from tests.batchapi.support import chat_line, jsonl

ENDPOINT = "/v1/chat/completions"


def test_a_valid_file_yields_its_lines_in_order_with_their_bodies() -> None:
    check = check_input(jsonl([chat_line("a"), chat_line("b")]) + b"\n\n", ENDPOINT)
    assert check.error_count == 0
    assert [(line.line, line.custom_id) for line in check.lines] == [(1, "a"), (2, "b")]
    assert orjson.loads(check.lines[0].body)["model"] == "fake"


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"[1]", "invalid_json_line"),
        (orjson.dumps({**chat_line("x"), "custom_id": 7}), "missing_required_parameter"),
        (orjson.dumps({**chat_line("x"), "body": {"messages": []}}), "invalid_body"),
        (orjson.dumps({**chat_line("x"), "url": "/v1/chat/completions?x=1"}), "mismatched_url"),
    ],
)
def test_each_broken_rule_is_reported_with_its_line_number(line: bytes, code: str) -> None:
    check = check_input(jsonl([chat_line("ok")]) + line + b"\n", ENDPOINT)
    assert check.lines == []
    assert [(error["line"], error["code"]) for error in check.errors] == [(2, code)]


def test_files_beyond_openais_limits_are_refused_whole() -> None:
    too_many = check_input(b'{"custom_id": "x"}\n' * (MAX_LINES + 1), ENDPOINT)
    assert [error["code"] for error in too_many.errors] == ["too_many_requests"]
    assert [error["code"] for error in check_input(b"\n \n", ENDPOINT).errors] == ["empty_file"]


def test_at_most_a_hundred_errors_are_listed_but_all_are_counted() -> None:
    check = check_input(b"nope\n" * 150, ENDPOINT)
    assert check.error_count == 150 and len(check.errors) == 100


def test_output_lines_have_openais_shape() -> None:
    ok = orjson.loads(output_line("a", 200, "req_1", {"id": "x"}))
    assert ok["id"].startswith("batch_req_") and ok["custom_id"] == "a" and ok["error"] is None
    assert ok["response"] == {"status_code": 200, "request_id": "req_1", "body": {"id": "x"}}
    expired = orjson.loads(output_line("b", None, "", None, {"code": "batch_expired", "message": "m"}))
    assert expired["response"] is None and expired["error"]["code"] == "batch_expired"


def test_an_empty_page_has_no_cursor_ids() -> None:
    assert page([], False) == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


def test_a_new_batch_object_parses_with_the_openai_sdk() -> None:
    from openai.types import Batch

    row = {
        "id": "batch_1",
        "endpoint": ENDPOINT,
        "errors": orjson.dumps([{"code": "c", "message": "m", "param": None, "line": 3}]).decode(),
        "input_file_id": "file-1",
        "completion_window": "24h",
        "status": "failed",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": 1,
        "in_progress_at": None,
        "expires_at": 86401,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": 2,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "total": 0,
        "completed": 0,
        "failed": 0,
        "metadata": None,
    }
    batch = Batch.model_validate(batch_object(row))
    assert batch.errors is not None and batch.errors.data is not None
    assert batch.errors.data[0].line == 3


def multipart(boundary: str, *parts: tuple[str, str | None, bytes]) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_multipart_fields_and_files_are_read() -> None:
    body = multipart("XyZ", ("purpose", None, b"batch"), ("file", "in.jsonl", b'{"a": 1}\r\n{"b": 2}'))
    form = parse_form("multipart/form-data; boundary=XyZ", body)
    assert form["purpose"].data == b"batch" and form["purpose"].filename is None
    assert form["file"].filename == "in.jsonl" and form["file"].data == b'{"a": 1}\r\n{"b": 2}'


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{}"),
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--\r\n"),
    ],
)
def test_malformed_multipart_bodies_are_refused(content_type: str, body: bytes) -> None:
    with pytest.raises(MultipartError):
        parse_form(content_type, body)
