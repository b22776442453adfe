"""Clients that attack the proxy port over raw sockets: none may stall other requests, grow lingo's
memory without bound, smuggle headers past its checks, or get an answer nginx would refuse.

Memory is read from /proc of a lingo child process (VmHWM: the peak resident set since start)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import orjson

from tests.conftest import wait_for
from tests.faults.rawhttp import Reply, exchange, read_reply
from tests.faults.support import RawBackend, models_file, ok, read_request, static_model

MB = 1024 * 1024


async def send(lingo, request: bytes) -> Reply:  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(exchange, lingo.addresses["proxy"][1], request, False, 30)


def post(path: str, body: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    extra = b"".join(header + b"\r\n" for header in headers)
    head = b"POST %b HTTP/%b\r\nHost: lingo\r\n%bContent-Length: %d\r\n\r\n" % (
        path.encode(),
        version,
        extra,
        len(body),
    )
    return head + body


async def first_line(reader: asyncio.StreamReader) -> bytes:
    with contextlib.suppress(ConnectionError):
        return await reader.readline()
    return b""


async def echo_lingo(start_lingo, fake_model, **settings):  # type: ignore[no-untyped-def]
    return await start_lingo(models_file(static_model("static", fake_model().url)), **settings)


# -- 1. heads are counted in raw bytes as they arrive ---------------------------------------------


async def test_a_header_value_that_never_ends_is_refused_431_before_lingo_buffers_it(
    lingo_process, fake_model
) -> None:
    lingo = lingo_process(models_file(static_model("static", fake_model().url)))
    before = lingo.memory("VmHWM")
    reader, writer = await asyncio.open_connection("127.0.0.1", lingo.port)
    answer = asyncio.ensure_future(first_line(reader))
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: lingo\r\nX-Endless: ")
    piece, sent = b"a" * 65536, 0
    with contextlib.suppress(ConnectionError):
        while sent < 24 * MB and not answer.done():
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
            await asyncio.sleep(0)  # let the answer in as soon as it arrives
        if not answer.done():
            writer.write(b"\r\n\r\n")  # lets lingo as it was answer at all
    status = await asyncio.wait_for(answer, 30)
    growth = lingo.memory("VmHWM") - before
    writer.close()
    print(
        f"\nFIGURE endless header value: {sent / MB:.1f} MB sent before the answer,"
        f" VmHWM +{growth / MB:.1f} MB"
    )
    assert status.startswith(b"HTTP/1.1 431"), status
    assert growth < 8 * MB and sent < 8 * MB


async def test_sixty_thousand_empty_header_lines_are_refused_431(start_lingo, fake_model) -> None:
    lingo = await echo_lingo(start_lingo, fake_model)
    request = b"GET /echo/x HTTP/1.1\r\nHost: lingo\r\nX-Model: static\r\n" + b"a:\r\n" * 60_000 + b"\r\n"
    reply = await send(lingo, request)
    assert reply.status == 431 and reply.from_lingo, reply


# -- 2. multipart: a bounded scan for `model` -----------------------------------------------------


def probe_latencies(port: int, stop: threading.Event) -> list[float]:
    """GET /v1/models over one keep-alive connection until `stop`; each answer's latency."""
    latencies: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock, sock.makefile("rb") as stream:
        while not stop.is_set():
            started = time.monotonic()
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: lingo\r\n\r\n")
            read_reply(stream)
            latencies.append(time.monotonic() - started)
    return latencies


def multipart(parts: int) -> tuple[bytes, bytes]:
    """(content type, body) of a form with `parts` small fields and `model` last."""
    boundary = b"b0undary"
    fields = [
        b'--%b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % (boundary, n)
        for n in range(parts)
    ]
    fields.append(
        b'--%b\r\nContent-Disposition: form-data; name="model"\r\n\r\nstatic\r\n--%b--\r\n'
        % (boundary, boundary)
    )
    return b"multipart/form-data; boundary=" + boundary, b"".join(fields)


async def test_multipart_form_with_forty_thousand_parts_is_refused_without_stalling_other_requests(
    lingo_process, fake_model
) -> None:
    lingo = lingo_process(models_file(static_model("static", fake_model().url)))
    content_type, body = multipart(40_000)
    stop = threading.Event()
    probe = asyncio.ensure_future(asyncio.to_thread(probe_latencies, lingo.port, stop))
    try:
        reply = await asyncio.to_thread(
            exchange,
            lingo.port,
            post("/echo/audio/transcriptions", body, b"Content-Type: " + content_type, b"Connection: close"),
        )
    finally:
        stop.set()
    worst = max(await probe)
    print(
        f"\nFIGURE 40,000-part form: answered {reply.status},"
        f" other requests waited up to {worst * 1000:.0f} ms"
    )
    assert reply.status == 400 and b"parts" in reply.body, reply
    assert worst < 1.0


async def test_multipart_form_with_model_first_is_routed_without_reading_the_file(
    start_lingo, fake_model
) -> None:
    lingo = await echo_lingo(start_lingo, fake_model)
    boundary = b"xyz"
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nstatic\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + b"\x00--xy\r\n" * 100_000 + b"\r\n--xyz--\r\n"
    )
    reply = await send(
        lingo, post("/echo/audio", body, b"Content-Type: multipart/form-data; boundary=" + boundary)
    )
    assert reply.status == 200 and orjson.loads(reply.body)["path"] == "/echo/audio", reply


# -- 3. pipelining: reading pauses while requests wait --------------------------------------------


def send_until_stalled(port: int, data: bytes, stall: float) -> tuple[socket.socket, int]:
    """Send `data` until lingo stops reading for `stall` seconds; (open socket, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(stall)
    view, sent = memoryview(data), 0
    with contextlib.suppress(TimeoutError, ConnectionError):
        while sent < len(data):
            sent += sock.send(view[sent : sent + MB])
    return sock, sent


async def test_pipelined_requests_from_a_client_that_never_reads_do_not_grow_memory(
    lingo_process, fake_model
) -> None:
    lingo = lingo_process(models_file(static_model("static", fake_model().url)))
    before = lingo.memory("VmHWM")
    requests = b"GET /v1/models HTTP/1.1\r\nHost: lingo\r\nX-Padding: " + b"p" * 60 + b"\r\n\r\n"
    sock, sent = await asyncio.to_thread(send_until_stalled, lingo.port, requests * 300_000, 2.0)
    with sock:
        growth = lingo.memory("VmHWM") - before
    print(
        f"\nFIGURE 300,000 pipelined GETs, never read: {sent / MB:.1f} MB taken in,"
        f" VmHWM +{growth / MB:.1f} MB"
    )
    assert growth < 16 * MB and sent < len(requests) * 300_000


async def test_six_pipelined_50_mb_bodies_behind_a_slow_answer_are_not_all_read(lingo_process) -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await read_request(reader))[0]:
            await release.wait()
            writer.write(ok(b"done"))
            await writer.drain()

    backend = await RawBackend(slow).start()
    try:
        lingo = lingo_process(models_file(static_model("static", backend.url)), LINGO_MAX_BODY=str(60 * MB))
        before = lingo.memory("VmHWM")
        one = post(
            "/v1/completions", b'{"model": "static", "p": "' + b"x" * (50 * MB) + b'"}', b"X-Model: static"
        )
        sock, sent = await asyncio.to_thread(send_until_stalled, lingo.port, one * 6, 2.0)
        growth = lingo.memory("VmHWM") - before
        release.set()
        sock.close()
    finally:
        await backend.close()
    print(
        f"\nFIGURE 6 pipelined 50 MB bodies behind a slow answer: {sent / MB:.0f} MB taken in,"
        f" VmHWM +{growth / MB:.0f} MB"
    )
    assert growth < 100 * MB  # one body (the one being answered) and a read


# -- 4. bodies: one copy, released at once, a process-wide budget ---------------------------------


async def upload(port: int, request: bytes) -> bytes:
    """Send one request on its own connection; the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 60)
    finally:
        writer.close()


async def concurrent_uploads(lingo, count: int, size: int, *headers: bytes) -> list[bytes]:  # type: ignore[no-untyped-def]
    body = b'{"model": "static", "p": "' + b"x" * size + b'"}'
    request = post("/v1/completions", body, b"Connection: close", *headers)
    return await asyncio.gather(*(upload(lingo.port, request) for _ in range(count)))


async def test_ten_concurrent_uploads_hold_one_copy_of_each_body(lingo_process) -> None:
    arrived = 0
    all_in = asyncio.Event()

    async def hold_until_all_arrived(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        if (await read_request(reader))[0]:
            arrived += 1
            if arrived % 10 == 0:
                all_in.set()
            await all_in.wait()
            writer.write(ok(b"done"))
            await writer.drain()

    backend = await RawBackend(hold_until_all_arrived).start()
    try:
        lingo = lingo_process(models_file(static_model("static", backend.url)))
        before = lingo.memory("VmHWM")
        # X-Model: lingo parses no JSON, so the figure is its body handling alone.
        statuses = await concurrent_uploads(lingo, 10, 20 * MB, b"X-Model: static")
        all_in.clear()  # a second round: memory freed by the first must serve it without growing
        statuses += await concurrent_uploads(lingo, 10, 20 * MB, b"X-Model: static")
        growth = lingo.memory("VmHWM") - before
    finally:
        await backend.close()
    print(f"\nFIGURE 2 rounds of 10 concurrent 20 MB uploads (200 MB in flight): VmHWM +{growth / MB:.0f} MB")
    assert all(status.startswith(b"HTTP/1.1 200") for status in statuses), statuses
    assert growth < 1.2 * 200 * MB


async def test_bodies_beyond_the_buffer_budget_wait_instead_of_growing_memory(lingo_process) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if (await read_request(reader))[0]:
            writer.write(ok(b"done"))
            await writer.drain()

    backend = await RawBackend(answer).start()
    try:
        lingo = lingo_process(models_file(static_model("static", backend.url)), LINGO_MAX_BUFFERED="50MiB")
        before = lingo.memory("VmHWM")
        statuses = await concurrent_uploads(lingo, 10, 20 * MB)
        growth = lingo.memory("VmHWM") - before
    finally:
        await backend.close()
    print(f"\nFIGURE 10 concurrent 20 MB uploads, LINGO_MAX_BUFFERED=50MiB: VmHWM +{growth / MB:.0f} MB")
    assert all(status.startswith(b"HTTP/1.1 200") for status in statuses), statuses
    assert growth < 50 * MB + 20 * MB + 50 * MB  # the budget, one body past it, transient reads


async def test_an_idle_keep_alive_connection_does_not_pin_its_last_body(lingo_process, fake_model) -> None:
    lingo = lingo_process(models_file(static_model("static", fake_model().url)))
    before = lingo.memory("VmRSS")
    body = b'{"model": "static", "max_tokens": 1, "p": "' + b"x" * (50 * MB) + b'"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", lingo.port)
    writer.write(post("/v1/completions", body))
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).startswith(b"HTTP/1.1 200")
    peak = lingo.memory("VmRSS") - before
    try:
        await wait_for(lambda: lingo.memory("VmRSS") - before < 20 * MB, timeout=5)
    finally:
        print(
            f"\nFIGURE idle keep-alive after a 50 MB body:"
            f" VmRSS +{(lingo.memory('VmRSS') - before) / MB:.0f} MB (peak +{peak / MB:.0f} MB)"
        )
        writer.close()


# -- 6. slowloris: deadlines for heads and silent bodies ------------------------------------------


async def test_a_request_head_trickled_byte_by_byte_is_answered_408_at_the_header_deadline(
    start_lingo, fake_model
) -> None:
    lingo = await echo_lingo(start_lingo, fake_model, header_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", lingo.addresses["proxy"][1])
    answer = asyncio.ensure_future(first_line(reader))
    started = asyncio.get_running_loop().time()
    trickle = b"GET /v1/models HTTP/1.1\r\nHost: lingo\r\n" + b"X-Slow: " + b"s" * 1000
    with contextlib.suppress(ConnectionError):
        for byte in trickle:
            if answer.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.wait([answer], timeout=0.1)  # a slow client: one byte every 100 ms
    status = await asyncio.wait_for(answer, 5)
    elapsed = asyncio.get_running_loop().time() - started
    print(
        f"\nFIGURE head trickled at 10 bytes/s, LINGO_HEADER_TIMEOUT=1s:"
        f" {status[:12]!r} after {elapsed:.1f} s"
    )
    assert status.startswith(b"HTTP/1.1 408") and elapsed < 3.0
    writer.close()


async def test_a_body_that_goes_silent_is_answered_408_and_closed(start_lingo, fake_model) -> None:
    lingo = await echo_lingo(start_lingo, fake_model, body_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", lingo.addresses["proxy"][1])
    writer.write(b'POST /v1/completions HTTP/1.1\r\nHost: lingo\r\nContent-Length: 100\r\n\r\n{"model"')
    started = asyncio.get_running_loop().time()
    status = await asyncio.wait_for(first_line(reader), 10)
    elapsed = asyncio.get_running_loop().time() - started
    print(f"\nFIGURE body silent, LINGO_BODY_TIMEOUT=1s: {status[:12]!r} after {elapsed:.1f} s")
    assert status.startswith(b"HTTP/1.1 408") and elapsed < 3.0
    writer.close()


# -- 7. trailers stay out of the header section ---------------------------------------------------


def chunked(path: bytes, body: bytes, trailers: bytes, *headers: bytes) -> bytes:
    extra = b"".join(header + b"\r\n" for header in headers)
    return b"POST %b HTTP/1.1\r\nHost: lingo\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n%b\r\n" % (
        path,
        extra,
    ) + b"%x\r\n%b\r\n0\r\n%b\r\n" % (len(body), body, trailers)


async def test_trailers_of_a_chunked_request_neither_reach_the_backend_nor_choose_the_model(
    start_lingo, fake_model
) -> None:
    lingo = await echo_lingo(start_lingo, fake_model)
    reply = await send(lingo, chunked(b"/echo/t", b"raw", b"X-Model: static\r\n"))
    assert reply.status == 400, reply  # no model: a trailer must not choose it
    reply = await send(lingo, chunked(b"/echo/t", b"raw", b"X-Smuggled: yes\r\n", b"X-Model: static"))
    assert reply.status == 200, reply
    assert "x-smuggled" not in {name.lower() for name, _ in orjson.loads(reply.body)["headers"]}


async def test_an_api_key_sent_only_as_a_trailer_is_401(start_lingo, fake_model) -> None:
    lingo = await echo_lingo(start_lingo, fake_model, api_keys=["sk-right"])
    reply = await send(
        lingo, chunked(b"/echo/t", b"raw", b"Authorization: Bearer sk-right\r\n", b"X-Model: static")
    )
    assert reply.status == 401, reply


# -- 10. lingo's own key stays with lingo ---------------------------------------------------------


async def test_the_clients_lingo_api_key_is_not_forwarded_to_the_model_server(
    start_lingo, fake_model
) -> None:
    lingo = await echo_lingo(start_lingo, fake_model, api_keys=["sk-right"])
    reply = await send(
        lingo,
        post("/echo/k", b"raw", b"X-Model: static", b"Authorization: Bearer sk-right", b"Connection: close"),
    )
    assert reply.status == 200, reply
    assert "authorization" not in {name.lower() for name, _ in orjson.loads(reply.body)["headers"]}


# -- 11. Transfer-Encoding other than exactly chunked on HTTP/1.1 ---------------------------------


async def test_transfer_encoding_identity_then_chunked_is_400_and_close(start_lingo, fake_model) -> None:
    lingo = await echo_lingo(start_lingo, fake_model)
    request = (
        b"POST /echo/te HTTP/1.1\r\nHost: lingo\r\nX-Model: static\r\n"
        b"Transfer-Encoding: identity, chunked\r\n\r\n3\r\nraw\r\n0\r\n\r\n"
    )
    reply = await send(lingo, request)
    assert reply.status == 400 and reply.header("Connection") == "close", reply


async def test_a_chunked_body_on_http10_is_400_and_close(start_lingo, fake_model) -> None:
    lingo = await echo_lingo(start_lingo, fake_model)
    request = (
        b"POST /echo/te HTTP/1.0\r\nHost: lingo\r\nX-Model: static\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nraw\r\n0\r\n\r\n"
    )
    reply = await send(lingo, request)
    assert reply.status == 400 and reply.header("Connection") == "close", reply


# -- 12. 100 Continue: head of the line, HTTP/1.1, within the limit -------------------------------


async def test_100_continue_is_never_written_into_an_earlier_pipelined_answer(
    start_lingo, fake_model
) -> None:
    lingo = await echo_lingo(start_lingo, fake_model)
    reader, writer = await asyncio.open_connection("127.0.0.1", lingo.addresses["proxy"][1])
    stream = b'{"model": "static", "stream": true, "max_tokens": 50}'
    writer.write(post("/v1/completions", stream))
    writer.write(
        b"POST /echo/c HTTP/1.1\r\nHost: lingo\r\nX-Model: static\r\n"
        b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head
    received = b""
    while b"0\r\n\r\n" not in received:
        received += await asyncio.wait_for(reader.read(65536), 10)
    first_body, _, rest = received.partition(b"0\r\n\r\n")
    writer.write(b"raw")
    while b"HTTP/1.1 200" not in rest:
        rest += await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    assert b"100 Continue" not in first_body, first_body[-300:]
    assert first_body.endswith(b"data: [DONE]\n\n\r\n")
    assert rest.startswith((b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", b"HTTP/1.1 200")), rest


async def test_an_http10_client_gets_no_100_continue(start_lingo, fake_model) -> None:
    lingo = await echo_lingo(start_lingo, fake_model)
    request = (
        b"POST /echo/c HTTP/1.0\r\nHost: lingo\r\nX-Model: static\r\n"
        b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\nraw"
    )
    reply = await send(lingo, request)  # `exchange` skips interim answers: look at the raw bytes too
    assert reply.status == 200, reply
    reader, writer = await asyncio.open_connection("127.0.0.1", lingo.addresses["proxy"][1])
    writer.write(request)
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_declared_body_over_the_limit_with_expect_gets_413_at_once(start_lingo, fake_model) -> None:
    lingo = await echo_lingo(start_lingo, fake_model, max_body=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", lingo.addresses["proxy"][1])
    writer.write(
        b"POST /echo/c HTTP/1.1\r\nHost: lingo\r\nX-Model: static\r\n"
        b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    )
    status = await asyncio.wait_for(first_line(reader), 10)  # the body is never sent
    writer.close()
    assert status.startswith(b"HTTP/1.1 413"), status


# -- 13. a valid request, then bytes lingo refuses ------------------------------------------------


async def test_a_valid_request_followed_by_garbage_is_answered_then_400_and_close(
    start_lingo, fake_model
) -> None:
    lingo = await echo_lingo(start_lingo, fake_model)
    valid = post("/echo/v", b"raw", b"X-Model: static")
    with socket.create_connection(("127.0.0.1", lingo.addresses["proxy"][1]), timeout=10) as sock:
        sock.sendall(valid + b"NOT HTTP AT ALL\r\n\r\n")
        with sock.makefile("rb") as stream:
            first = await asyncio.to_thread(read_reply, stream)
            second = await asyncio.to_thread(read_reply, stream)
            rest = stream.read()
    assert first.status == 200 and orjson.loads(first.body)["path"] == "/echo/v", first
    assert second.status == 400 and second.header("Connection") == "close" and rest == b"", second


# -- 15. CONNECT and absolute-form targets ---------------------------------------------------------


async def test_connect_is_405(start_lingo, fake_model) -> None:
    lingo = await echo_lingo(start_lingo, fake_model)
    reply = await send(
        lingo, b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: 169.254.169.254:80\r\nX-Model: static\r\n\r\n"
    )
    assert reply.status == 405 and reply.from_lingo and reply.is_openai_error(), reply


async def test_an_absolute_form_target_is_forwarded_in_origin_form(start_lingo) -> None:
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append((await read_request(reader))[0])
        writer.write(ok(b"done"))
        await writer.drain()

    backend = await RawBackend(record).start()
    try:
        lingo = await start_lingo(models_file(static_model("static", backend.url)))
        target = b"http://169.254.169.254/latest/meta-data?x=1"
        reply = await send(
            lingo,
            b"POST %b HTTP/1.1\r\nHost: lingo\r\nX-Model: static\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n" % target,
        )
    finally:
        await backend.close()
    assert reply.status == 200, reply
    assert heads[0].startswith(b"POST /latest/meta-data?x=1 HTTP/1.1\r\n"), heads
