"""OpenAI's Files and Batches objects, input-file validation and output lines: pure code, no I/O."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

#: OpenAI's limits on one batch input file.
MAX_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
#: Endpoints a batch may name (the ones lingo proxies to model servers).
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
#: Statuses in which a batch still has work for a runner.
ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
#: Statuses a batch can no longer leave.
FINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
#: Most errors listed on a batch that failed validation (OpenAI lists a sample too).
MAX_LISTED_ERRORS = 100


def new_id(prefix: str) -> str:
    """An OpenAI-looking id: `file-…`, `batch_…`, `batch_req_…`."""
    return f"{prefix}{secrets.token_hex(12)}"


def file_object(row: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI File object of a `files` row."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def batch_object(row: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI Batch object of a `batches` row."""
    errors = orjson.loads(row["errors"]) if row["errors"] else None
    return {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "errors": {"object": "list", "data": errors} if errors is not None else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
        "created_at": row["created_at"],
        "in_progress_at": row["in_progress_at"],
        "expires_at": row["expires_at"],
        "finalizing_at": row["finalizing_at"],
        "completed_at": row["completed_at"],
        "failed_at": row["failed_at"],
        "expired_at": row["expired_at"],
        "cancelling_at": row["cancelling_at"],
        "cancelled_at": row["cancelled_at"],
        "request_counts": {"total": row["total"], "completed": row["completed"], "failed": row["failed"]},
        "metadata": orjson.loads(row["metadata"]) if row["metadata"] else None,
    }


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor-paginated OpenAI list."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@dataclass(frozen=True)
class InputLine:
    """One valid request line of a batch input file."""

    #: 1-based line number in the file.
    line: int
    #: The caller's id for joining outputs to inputs.
    custom_id: str
    #: The request body (JSON), sent to the endpoint as it is.
    body: bytes


@dataclass
class InputCheck:
    """The result of validating an input file: the lines, or what is wrong with which line."""

    #: Valid lines, in file order (empty when there are errors).
    lines: list[InputLine] = field(default_factory=list)
    #: OpenAI BatchError objects: `{code, message, param, line}`.
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Errors found, including those not listed beyond `MAX_LISTED_ERRORS`.
    error_count: int = 0

    def fail(self, code: str, message: str, line: int | None, param: str | None = None) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})


def check_input(content: bytes, endpoint: str) -> InputCheck:
    """Validate a batch input file against OpenAI's rules; CPU-bound, run it off the event loop.

    Every line: a JSON object with a unique string `custom_id`, `method` POST, `url` equal to the
    batch's endpoint, and a `body` object with a string `model` and without `stream: true`.
    """
    check = InputCheck()
    if len(content) > MAX_FILE_BYTES:
        check.fail("file_too_large", f"the input file is larger than {MAX_FILE_BYTES} bytes", None)
        return check
    seen: set[str] = set()
    raw_lines = content.splitlines()
    while raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()
    if not raw_lines:
        check.fail("empty_file", "the input file has no request lines", None)
        return check
    if len(raw_lines) > MAX_LINES:
        check.fail("too_many_requests", f"the input file has more than {MAX_LINES} lines", None)
        return check
    lines: list[InputLine] = []
    for number, raw in enumerate(raw_lines, start=1):
        line = _check_line(check, number, raw, endpoint, seen)
        if line is not None:
            lines.append(line)
    if not check.error_count:
        check.lines = lines
    return check


def _check_line(
    check: InputCheck, number: int, raw: bytes, endpoint: str, seen: set[str]
) -> InputLine | None:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        check.fail("invalid_json_line", "this line is not valid JSON", number)
        return None
    if not isinstance(document, dict):
        check.fail("invalid_json_line", "this line is not a JSON object", number)
        return None
    custom_id = document.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        check.fail("missing_required_parameter", "custom_id is missing or not a string", number, "custom_id")
        return None
    if custom_id in seen:
        check.fail(
            "duplicate_custom_id", f"custom_id {custom_id!r} appears more than once", number, "custom_id"
        )
        return None
    seen.add(custom_id)
    if document.get("method") != "POST":
        check.fail("invalid_method", "method must be POST", number, "method")
        return None
    if document.get("url") != endpoint:
        check.fail("mismatched_url", f"url must be the batch's endpoint {endpoint}", number, "url")
        return None
    body = document.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        check.fail("invalid_body", "body must be an object with a string model", number, "body")
        return None
    if body.get("stream") is True:
        check.fail("unsupported_value", "stream: true is not supported in a batch", number, "body.stream")
        return None
    return InputLine(number, custom_id, orjson.dumps(body))


def output_line(
    custom_id: str, status: int | None, request_id: str, body: object, error: dict[str, str] | None = None
) -> bytes:
    """One line of an output or error file: `{id, custom_id, response, error}`."""
    response = None if status is None else {"status_code": status, "request_id": request_id, "body": body}
    return orjson.dumps(
        {"id": new_id("batch_req_"), "custom_id": custom_id, "response": response, "error": error}
    )
