"""The proxy's HTTP/1.1 layer over raw sockets: framing, pipelining, limits, stale upstream connections."""

from __future__ import annotations

import asyncio

import orjson

from tests.test_proxy import static


async def exchange(port: int, raw: bytes, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.read(1 << 20) if not read_until_close else reader.read(), 10)
    finally:
        writer.close()
    return data


def post_bytes(body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    head = f"POST /v1/completions HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


async def test_pipelined_requests_are_answered_in_order(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    port = lingo.addresses["proxy"][1]
    first = post_bytes(b'{"model": "static", "max_tokens": 1}')
    second = post_bytes(b'{"model": "static", "max_tokens": 2}', "Connection: close\r\n")
    data = await exchange(port, first + second)
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.index(b'"completion_tokens":1') < data.index(b'"completion_tokens":2')


async def test_expect_continue_is_honoured(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    reader, writer = await asyncio.open_connection("127.0.0.1", lingo.addresses["proxy"][1])
    body = b'{"model": "static"}'
    head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_http10_client_gets_a_close_delimited_stream(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    data = await exchange(
        lingo.addresses["proxy"][1],
        post_bytes(b'{"model": "static", "stream": true, "max_tokens": 2}', version="1.0"),
    )
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body.endswith(b"data: [DONE]\n\n")


async def test_malformed_request_line_is_400_and_lingo_keeps_serving(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    port = lingo.addresses["proxy"][1]
    data = await exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400") and b"X-Proxy: lingo" in data
    assert (await exchange(port, post_bytes(b'{"model": "static"}', "Connection: close\r\n"))).startswith(
        b"HTTP/1.1 200"
    )


async def test_oversized_headers_are_431(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    huge = "X-Big: " + "a" * 70_000 + "\r\n"
    data = await exchange(lingo.addresses["proxy"][1], post_bytes(b'{"model": "static"}', huge))
    assert data.startswith(b"HTTP/1.1 431")


async def test_chunked_request_body_is_forwarded_whole(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    body = b'{"model": "static", "prompt": "x"}'
    raw = (
        b"POST /echo/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"%x\r\n%b\r\n" % (10, body[:10])
        + b"%x\r\n%b\r\n" % (len(body) - 10, body[10:])
        + b"0\r\n\r\n"
    )
    data = await exchange(lingo.addresses["proxy"][1], raw)
    echoed = orjson.loads(data.partition(b"\r\n\r\n")[2])
    assert echoed["body"] == body.decode()
    sent = {name.lower(): value for name, value in echoed["headers"]}
    assert "transfer-encoding" not in sent and sent["content-length"] == str(len(body))


async def test_backend_that_silently_drops_idle_connections_costs_no_error(start_lingo) -> None:
    """KEDA #432/#854: a pooled connection the backend closed must not fail the next request."""
    answers = 0

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answers
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(100)
        answers += 1
        body = b'{"ok": true}'
        # Keep-alive is implied (HTTP/1.1, no Connection: close), but the server hangs up anyway.
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lingo = await start_lingo(static(f"http://127.0.0.1:{port}"), backend_retries=0)
    proxy = lingo.addresses["proxy"][1]
    for _ in range(5):
        data = await exchange(proxy, post_bytes(b'{"model": "static"}', "Connection: close\r\n"))
        assert data.startswith(b"HTTP/1.1 200"), data
        await asyncio.sleep(0.05)
    assert answers == 5
    server.close()


async def test_a_slow_client_slows_the_backend_instead_of_filling_lingos_memory(start_lingo) -> None:
    """Backpressure: a 64 MiB stream to a client that is not reading must stall the backend."""
    total = 64 * 1024 * 1024
    chunk = b"x" * 65536
    finished = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(100)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(total // len(chunk)):
            writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        finished.set()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lingo = await start_lingo(static(f"http://127.0.0.1:{port}"))
    reader, writer = await asyncio.open_connection("127.0.0.1", lingo.addresses["proxy"][1])
    writer.write(post_bytes(b'{"model": "static"}', "Connection: close\r\n"))
    await asyncio.sleep(2.0)  # not reading: every buffer on the way fills up
    assert not finished.is_set(), "the backend could send everything: lingo buffered it"
    received = 0
    while data := await asyncio.wait_for(reader.read(1 << 20), 20):
        received += len(data)
    assert finished.is_set() and received > total
    writer.close()
    server.close()
