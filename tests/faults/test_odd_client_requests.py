"""Odd but possible client requests: protocol switches (curl --http2's h2c upgrade, websockets, CONNECT)
are answered in HTTP/1.1 instead of a dropped connection; a rejected HEAD request gets no body."""

from __future__ import annotations

import asyncio

import orjson

from tests.faults.rawhttp import Reply, exchange
from tests.faults.support import models_file, static_model

H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"


async def send(lingo, request: bytes) -> Reply:  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(exchange, lingo.addresses["proxy"][1], request, False, 30)


async def test_h2c_upgrade_request_is_answered_in_http11(start_lingo, fake_model) -> None:
    lingo = await start_lingo(models_file(static_model("static", fake_model().url)))
    reply = await send(lingo, b"GET /v1/models HTTP/1.1\r\nHost: lingo\r\n" + H2C + b"\r\n")
    assert reply.status == 200 and orjson.loads(reply.body)["data"][0]["id"] == "static", reply
    assert reply.header("Connection") == "close"


async def test_h2c_upgrade_request_is_forwarded_without_its_upgrade_headers(start_lingo, fake_model) -> None:
    lingo = await start_lingo(models_file(static_model("static", fake_model().url)))
    reply = await send(lingo, b"GET /echo/x HTTP/1.1\r\nHost: lingo\r\nX-Model: static\r\n" + H2C + b"\r\n")
    assert reply.status == 200, reply
    sent = {name.lower() for name, _ in orjson.loads(reply.body)["headers"]}
    assert not {"upgrade", "http2-settings", "connection"} & sent


async def test_connect_request_gets_a_4xx_from_lingo(start_lingo, fake_model) -> None:
    lingo = await start_lingo(models_file(static_model("static", fake_model().url)))
    reply = await send(lingo, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert 400 <= reply.status < 500 and reply.from_lingo and reply.is_openai_error(), reply


async def test_upgrade_request_with_a_body_is_400_not_served_without_it(start_lingo, fake_model) -> None:
    lingo = await start_lingo(models_file(static_model("static", fake_model().url)))
    body = b'{"model": "static", "prompt": "x"}'
    head = b"POST /v1/completions HTTP/1.1\r\nHost: lingo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    reply = await send(lingo, head + b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
    assert reply.status == 400 and reply.from_lingo and reply.is_openai_error(), reply


async def test_malformed_head_request_is_answered_400_without_a_body(start_lingo, fake_model) -> None:
    lingo = await start_lingo(models_file(static_model("static", fake_model().url)))
    # `exchange` reads a HEAD answer as headers only and fails on any byte after them.
    request = b"HEAD /v1/completions HTTP/1.1\r\nHost: lingo\r\nX-Bad: \x00\r\n\r\n"
    reply = await asyncio.to_thread(exchange, lingo.addresses["proxy"][1], request, True, 30)
    assert reply.status == 400 and reply.from_lingo, reply
