"""Backends that stall, flood or misbehave at the HTTP level: lingo bounds every wait on them, never
hands one client another's answer, never sends one request more often than its retry budget allows,
and delivers a complete answer whatever the backend sends after it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest

from tests.faults.rawhttp import Truncated, exchange
from tests.faults.support import RawBackend, models_file, ok, read_request, static_model

MB = 1024 * 1024
BODY = b'{"model": "static"}'
#: Keep-alive: lingo's answer must be complete and followed by nothing.
REQUEST = b"POST /v1/completions HTTP/1.1\r\nHost: lingo\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)


@pytest.fixture
async def backend() -> AsyncIterator[RawBackend]:
    server = await RawBackend(read_request).start()  # type: ignore[arg-type]
    yield server
    await server.close()


async def ask(port: int, timeout: float = 30):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(exchange, port, REQUEST, False, timeout)


# -- 1. response heads are counted in raw bytes as they arrive ------------------------------------


async def test_a_backend_header_value_that_never_ends_gets_the_client_a_502_without_buffering_it(
    lingo_process, backend: RawBackend
) -> None:
    async def endless_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(160):  # 10 MB
                writer.write(b"a" * 65536)
                await writer.drain()
            writer.write(b"\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    backend.behaviour = endless_header
    lingo = lingo_process(models_file(static_model("static", backend.url)), BACKEND_RETRIES="0")
    before = lingo.memory("VmHWM")
    reply = await ask(lingo.port)
    growth = lingo.memory("VmHWM") - before
    print(f"\nFIGURE backend sending a 10 MB header value: {reply.status}, VmHWM +{growth / MB:.1f} MB")
    assert reply.status == 502 and reply.is_openai_error(), reply
    assert growth < 8 * MB


# -- 5. upstream timeouts -------------------------------------------------------------------------


async def test_a_backend_that_never_answers_gets_the_client_a_504_and_frees_the_slot(
    start_lingo, backend: RawBackend
) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until lingo gives up and closes

    backend.behaviour = never_answer
    lingo = await start_lingo(
        models_file(static_model("static", backend.url, concurrency=1)), upstream_timeout=0.5, max_wait=5.0
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = await ask(lingo.addresses["proxy"][1], timeout=10)
    second = await ask(lingo.addresses["proxy"][1], timeout=10)  # one slot: only free if the first let go
    elapsed = loop.time() - started
    print(
        f"\nFIGURE backend that never answers, LINGO_UPSTREAM_TIMEOUT=0.5s:"
        f" {first.status}, {second.status} in {elapsed:.1f} s"
    )
    for reply in (first, second):
        assert reply.status == 504 and reply.from_lingo and reply.is_openai_error(), reply
    assert backend.accepted == 2 and elapsed < 4


async def test_a_backend_that_goes_silent_mid_stream_gets_the_clients_answer_cut(
    start_lingo, backend: RawBackend
) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata: \r\n")
        await writer.drain()
        await reader.read()

    backend.behaviour = stall
    lingo = await start_lingo(models_file(static_model("static", backend.url)), upstream_idle_timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Truncated):
        await ask(lingo.addresses["proxy"][1], timeout=10)
    elapsed = loop.time() - started
    print(
        f"\nFIGURE backend silent mid-stream, LINGO_UPSTREAM_IDLE_TIMEOUT=0.5s:"
        f" answer cut after {elapsed:.1f} s"
    )
    assert elapsed < 4


# -- 8. a parked connection that speaks is never reused --------------------------------------------


async def test_an_unsolicited_answer_on_a_parked_connection_reaches_no_client(
    start_lingo, backend: RawBackend
) -> None:
    stray_sent = asyncio.Event()
    served = 0

    async def stray_after_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while (await read_request(reader))[0]:
            served += 1
            writer.write(ok(b"answer %d" % served))
            await writer.drain()
            if served == 1:
                await asyncio.sleep(0.02)  # after the answer: lingo has parked the connection
                writer.write(ok(b"stray"))
                await writer.drain()
                stray_sent.set()

    backend.behaviour = stray_after_first
    lingo = await start_lingo(models_file(static_model("static", backend.url)))
    poisoned = 0
    for _ in range(5):
        served, stray_sent = 0, asyncio.Event()
        first = await ask(lingo.addresses["proxy"][1])
        await asyncio.wait_for(stray_sent.wait(), 5)
        second = await ask(lingo.addresses["proxy"][1])
        assert first.body == b"answer 1"
        poisoned += second.body == b"stray"
    print(f"\nFIGURE unsolicited answer 20 ms after a complete one: {poisoned}/5 next clients got it")
    assert poisoned == 0


# -- 9. retry accounting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "broken", [b"HELLO WORLD\r\n\r\n", b""], ids=["malformed answer", "close without answer"]
)
async def test_one_request_reaches_the_backend_at_most_retries_plus_one_times(
    start_lingo, backend: RawBackend, broken: bytes
) -> None:
    posts, fine_given = 0, False

    async def fine_once_then_broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal posts, fine_given
        while (await read_request(reader))[0]:
            posts += 1
            if not fine_given:
                fine_given = True
                writer.write(ok(b"fine"))  # keep-alive: lingo pools this connection
                await writer.drain()
                continue
            writer.write(broken)
            await writer.drain()
            return

    backend.behaviour = fine_once_then_broken
    lingo = await start_lingo(models_file(static_model("static", backend.url)), backend_retries=1)
    assert (await ask(lingo.addresses["proxy"][1])).status == 200
    posts = 0
    reply = await ask(lingo.addresses["proxy"][1])
    assert reply.is_openai_error(), reply
    message = orjson.loads(reply.body)["error"]["message"]
    print(
        f"\nFIGURE {broken[:5]!r} on a reused connection, BACKEND_RETRIES=1:"
        f" {posts} sends, message {message!r}"
    )
    assert reply.status == 502 and posts <= 2, reply
    assert f"after {posts} attempt(s)" in message


# -- 14. bytes after a complete answer --------------------------------------------------------------


async def test_bytes_after_a_complete_streamed_answer_do_not_cut_it(start_lingo, backend: RawBackend) -> None:
    served = 0

    async def trailing_garbage_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while (await read_request(reader))[0]:
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)  # a stream: the client has its head already
            writer.write(b"6\r\n world\r\n0\r\n\r\n" + (b"garbage after the end" if served == 1 else b""))
            await writer.drain()

    backend.behaviour = trailing_garbage_once
    lingo = await start_lingo(models_file(static_model("static", backend.url)))
    first = await ask(lingo.addresses["proxy"][1])
    second = await ask(lingo.addresses["proxy"][1])
    assert (first.status, first.body) == (200, b"hello world")
    assert (second.status, second.body) == (200, b"hello world")
