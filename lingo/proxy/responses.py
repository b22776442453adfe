"""Answers lingo gives itself, OpenAI-shaped: `{"error": {...}}` with `X-Proxy: lingo`."""

from __future__ import annotations

import math

import orjson

from lingo.errors import LingoError

Headers = list[tuple[str, str]]


def error_parts(error: LingoError) -> tuple[int, Headers, bytes]:
    """(status, headers, body) of the OpenAI-shaped answer to `error`."""
    headers = [("Content-Type", "application/json"), ("X-Proxy", "lingo")]
    if error.retry_after is not None:
        headers.append(("Retry-After", str(max(1, math.ceil(error.retry_after)))))
    return error.status, headers, orjson.dumps(error.body())


def json_parts(document: object, status: int = 200) -> tuple[int, Headers, bytes]:
    return status, [("Content-Type", "application/json"), ("X-Proxy", "lingo")], orjson.dumps(document)
