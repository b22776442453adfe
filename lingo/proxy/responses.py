"""Answers lingo gives itself, OpenAI-shaped: `{"error": {...}}` with `X-Proxy: lingo`."""

from __future__ import annotations

import math

import orjson
from aiohttp import web

from lingo.errors import LingoError


def error_response(error: LingoError) -> web.Response:
    headers = {"X-Proxy": "lingo"}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return web.Response(
        status=error.status, body=orjson.dumps(error.body()), content_type="application/json", headers=headers
    )


def json_response(document: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(document),
        content_type="application/json",
        headers={"X-Proxy": "lingo"},
    )
