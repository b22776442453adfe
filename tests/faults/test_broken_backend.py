"""Backends that break HTTP: lingo answers its own OpenAI-shaped 502 while no byte reached the client,
cuts the client's response when the backend breaks off later, and keeps serving either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest

from tests.faults.rawhttp import Truncated, exchange
from tests.faults.support import (
    Behaviour,
    RawBackend,
    close_at_once,
    models_file,
    read_request_head,
    reply_with,
    static_model,
)

#: Broken before any byte of an answer: lingo can (and must) answer 502 itself.
NEVER_ANSWERED: dict[str, Behaviour] = {
    "closes the connection right after accepting": close_at_once,
    "answers garbage instead of HTTP": reply_with(b"HELLO WORLD\r\n\r\n"),
    "cuts the response inside its headers": reply_with(b"HTTP/1.1 200 OK\r\nContent-Le"),
    "sends two different Content-Lengths": reply_with(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"
    ),
    "sends status 000": reply_with(b"HTTP/1.1 000 Nothing\r\nContent-Length: 2\r\n\r\nok"),
    "sends status 999": reply_with(b"HTTP/1.1 999 Nothing\r\nContent-Length: 2\r\n\r\nok"),
    "sends a 1xx status as its final answer": reply_with(b"HTTP/1.1 199 Odd\r\nContent-Length: 2\r\n\r\nok"),
    "sends a header line without a colon": reply_with(
        b"HTTP/1.1 200 OK\r\nX Bad: v\r\nContent-Length: 2\r\n\r\nok"
    ),
    "sends 100 KB of headers": reply_with(
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\nok"
    ),
}
#: Broken after the answer began: the client must see a cut response (or a 502), never a complete one.
BROKEN_OFF: dict[str, Behaviour] = {
    "stops short of its Content-Length": reply_with(
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"id": '
    ),
    "stops inside a chunked body": reply_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nwor"
    ),
    "sends a malformed chunk size mid-body": reply_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nhello\r\n0\r\n\r\n"
    ),
}
BODY = b'{"model": "broken"}'
#: Keep-alive (no `Connection: close`): lingo's answer must be complete and followed by nothing.
REQUEST = b"POST /v1/completions HTTP/1.1\r\nHost: lingo\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)


@pytest.fixture
async def raw_backend() -> AsyncIterator[RawBackend]:
    backend = await RawBackend(close_at_once).start()
    yield backend
    await backend.close()


async def start_with_broken_and_healthy(start_lingo, fake_model, backend: RawBackend):  # type: ignore[no-untyped-def]
    healthy = fake_model()
    return await start_lingo(
        models_file(static_model("broken", backend.url), static_model("healthy", healthy.url)),
        backend_retries=1,
    )


async def assert_still_serving(lingo) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as session:
        body = b'{"model": "healthy", "prompt": "x"}'
        async with session.post(lingo.url() + "/v1/completions", data=body) as response:
            assert response.status == 200
        async with session.get(lingo.url("health") + "/healthz") as response:
            assert response.status == 200


@pytest.mark.parametrize("behaviour", list(NEVER_ANSWERED))
async def test_backend_broken_before_answering_gets_the_client_an_openai_502(
    start_lingo, fake_model, raw_backend: RawBackend, behaviour: str
) -> None:
    raw_backend.behaviour = NEVER_ANSWERED[behaviour]
    lingo = await start_with_broken_and_healthy(start_lingo, fake_model, raw_backend)
    reply = await asyncio.to_thread(exchange, lingo.addresses["proxy"][1], REQUEST, False, 30)
    assert reply.status == 502 and reply.from_lingo and reply.is_openai_error(), reply
    await assert_still_serving(lingo)
    print(f"\nFIGURE backend that {behaviour}: lingo answered 502 after {raw_backend.accepted} attempt(s)")


@pytest.mark.parametrize("behaviour", list(BROKEN_OFF))
async def test_backend_breaking_off_mid_answer_never_yields_a_falsely_complete_response(
    start_lingo, fake_model, raw_backend: RawBackend, behaviour: str
) -> None:
    raw_backend.behaviour = BROKEN_OFF[behaviour]
    lingo = await start_with_broken_and_healthy(start_lingo, fake_model, raw_backend)
    try:
        reply = await asyncio.to_thread(exchange, lingo.addresses["proxy"][1], REQUEST, False, 30)
    except Truncated as cut:
        outcome = f"a cut response ({cut})"
        assert raw_backend.accepted == 1  # bytes reached the client: no retry
    else:
        assert reply.status == 502 and reply.is_openai_error(), reply
        outcome = "502"
    await assert_still_serving(lingo)
    print(f"\nFIGURE backend that {behaviour}: the client got {outcome}")


def serve_in_order(answers: Sequence[Sequence[bytes]], then: Sequence[bytes]) -> Behaviour:
    """Keep-alive backend: the n-th request (over all connections) gets answers[n], written piece by
    piece 50 ms apart; later requests get `then`."""
    served = 0

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while head := await read_request_head(reader):
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            pieces = answers[served] if served < len(answers) else then
            served += 1
            for i, piece in enumerate(pieces):
                if i:
                    await asyncio.sleep(0.05)
                writer.write(piece)
                await writer.drain()

    return behave


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


async def post_broken(session: aiohttp.ClientSession, lingo) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    async with session.post(lingo.url() + "/v1/completions", data=b'{"model": "broken"}') as response:
        return response.status, await response.read()


async def test_interim_100_continue_from_the_backend_is_skipped_and_answers_stay_in_order(
    start_lingo, fake_model, raw_backend: RawBackend
) -> None:
    continue_then = [[b"HTTP/1.1 100 Continue\r\n\r\n", ok(b"answer %d" % n)] for n in range(1, 4)]
    raw_backend.behaviour = serve_in_order(continue_then, then=[ok(b"later")])
    lingo = await start_with_broken_and_healthy(start_lingo, fake_model, raw_backend)
    async with aiohttp.ClientSession() as session:
        answers = [await post_broken(session, lingo) for _ in range(3)]
    assert answers == [(200, b"answer 1"), (200, b"answer 2"), (200, b"answer 3")]
    print("\nFIGURE backend sending 100 Continue first: 3/3 clients got their own final answer")


async def test_bytes_a_backend_sends_beyond_its_answer_reach_no_client(
    start_lingo, fake_model, raw_backend: RawBackend
) -> None:
    raw_backend.behaviour = serve_in_order([[ok(b"first") + ok(b"stray")]], then=[ok(b"second")])
    lingo = await start_with_broken_and_healthy(start_lingo, fake_model, raw_backend)
    async with aiohttp.ClientSession() as session:
        answers = [await post_broken(session, lingo) for _ in range(2)]
    assert answers == [(200, b"first"), (200, b"second")]


async def test_close_delimited_backend_answer_reaches_the_client_whole(
    start_lingo, fake_model, raw_backend: RawBackend
) -> None:
    body = bytes(range(256)) * 400  # 100 KiB, no length: the backend's close ends it (HTTP/1.0 style)
    raw_backend.behaviour = reply_with(
        b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + body
    )
    lingo = await start_with_broken_and_healthy(start_lingo, fake_model, raw_backend)
    async with aiohttp.ClientSession() as session:
        assert await post_broken(session, lingo) == (200, body)


@pytest.mark.parametrize("framing", [b"", b"Transfer-Encoding: chunked\r\n"])
async def test_204_from_the_backend_leaves_no_stray_bytes_on_the_client_connection(
    start_lingo, fake_model, raw_backend: RawBackend, framing: bytes
) -> None:
    raw_backend.behaviour = reply_with(b"HTTP/1.1 204 No Content\r\nX-Id: 7\r\n" + framing + b"\r\n")
    lingo = await start_with_broken_and_healthy(start_lingo, fake_model, raw_backend)
    # No `Connection: close`: the client keeps the connection, so any byte after the 204 would be
    # read as the start of its next response. `exchange` fails on such bytes.
    reply = await asyncio.to_thread(exchange, lingo.addresses["proxy"][1], REQUEST, False, 30)
    assert reply.status == 204 and reply.header("X-Id") == "7" and reply.body == b""
    assert not reply.all("Transfer-Encoding") and not reply.all("Content-Length")
