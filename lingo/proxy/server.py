"""A lean HTTP/1.1 server for the proxy port, built on asyncio and llhttp (httptools).

The proxy's own work per request is small (find the model, take a queue slot, forward), so the HTTP
machinery around it dominates its cost. This server parses with llhttp, hands the handler the
request as plain values, and writes each response with as few buffers and calls as possible.
Requests on one connection are handled in order (pipelining is allowed); a client that disconnects
cancels its request's task at once, which frees its place in the queue or its endpoint slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast
from urllib.parse import urlsplit

import httptools
import orjson

from lingo.errors import (
    BadRequest,
    BodyTooLarge,
    HeadersTooLarge,
    LingoError,
    MethodNotAllowed,
    RequestTimeout,
)

log = logging.getLogger(__name__)

#: Longest request line target accepted (414 beyond).
MAX_TARGET = 16 * 1024
#: Largest request head in raw bytes (request line, headers, CRLFs), counted as they arrive (431 beyond).
MAX_HEAD = 64 * 1024
#: Seconds an idle keep-alive connection is kept open.
KEEP_ALIVE_TIMEOUT = 75.0
#: Requests parsed and waiting behind the one being answered before reading pauses.
MAX_PIPELINED = 8
#: Seconds a refused client may go on sending (discarded) so that it can read lingo's answer.
LINGER = 2.0
#: Bytes of a chunked body fed to llhttp at once.
_CHUNKED_SLICE = 16 * 1024

_REASONS = {status.value: status.phrase for status in HTTPStatus}


@dataclass(slots=True)
class IncomingRequest:
    """One parsed request, as plain values."""

    #: HTTP method, e.g. `POST`.
    method: str
    #: Request target as sent: path and query string.
    target: str
    #: Headers in arrival order, names as sent.
    headers: list[tuple[str, str]]
    #: The whole body (de-chunked). A body that arrived in pieces is the one bytearray they were
    #: copied into (no second copy by a join); bytes-like either way.
    body: bytes
    #: "1.1" or "1.0".
    http_version: str
    #: True when the connection may carry another request after this one.
    keep_alive: bool

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        lowered = name.lower()
        for key, value in self.headers:
            if len(key) == len(lowered) and key.lower() == lowered:
                return value
        return None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class ResponseWriter:
    """Writes one response: whole (`send`) or streamed (`start`, `write`…, `end`)."""

    __slots__ = ("_chunked", "_close", "_protocol", "_request", "finished", "started")

    def __init__(self, protocol: HttpProtocol, request: IncomingRequest) -> None:
        self._protocol = protocol
        self._request = request
        self._chunked = False
        self._close = not request.keep_alive
        #: True once the status line was written (no other answer is possible then).
        self.started = False
        #: True once the response is complete.
        self.finished = False

    def _head(self, status: int, headers: list[tuple[str, str]], framing: str) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        lines.append(framing)
        if self._close:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1", "replace")

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """The whole response in one write, with Content-Length."""
        self.started = True
        framing = f"Content-Length: {len(body)}\r\n"
        no_body = self._request.method == "HEAD" or status in (204, 304) or status < 200
        if status == 204 or status < 200:
            framing = ""
        head = self._head(status, headers, framing)
        self._protocol.write(head if no_body else head + body)
        self._finish()

    def start(self, status: int, headers: list[tuple[str, str]], content_length: int | None) -> None:
        """Begin a streamed response; without a length it is sent chunked (or close-delimited)."""
        self.started = True
        if status in (204, 304):
            framing = ""  # never a body: a chunked terminator here would be read as the next response
        elif content_length is not None:
            framing = f"Content-Length: {content_length}\r\n"
        elif self._request.http_version == "1.1":
            self._chunked = True
            framing = "Transfer-Encoding: chunked\r\n"
        else:
            self._close = True
            framing = ""
        self._protocol.write(self._head(status, headers, framing))

    def write(self, chunk: bytes) -> None:
        if not chunk or self._request.method == "HEAD":
            return
        if self._chunked:
            self._protocol.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            self._protocol.write(chunk)

    @property
    def paused(self) -> bool:
        """True while the client's send buffer is full."""
        return self._protocol._paused

    async def drain(self) -> None:
        """Wait while the client reads slower than the backend writes."""
        await self._protocol.drain()

    def end(self) -> None:
        if self._chunked and self._request.method != "HEAD":
            self._protocol.write(b"0\r\n\r\n")
        self._finish()

    def abort(self) -> None:
        """Cut the connection: the client must see a broken response, not a falsely complete one."""
        self.finished = True
        self._protocol.close()

    def _finish(self) -> None:
        self.finished = True
        if self._close:
            self._protocol.close_after_write()


#: Handles one request; must answer through the writer.
Handler = Callable[[IncomingRequest, ResponseWriter], Awaitable[None]]


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse requests, run the handler for each in order, write answers.

    Every resource a client can make the connection hold is bounded: the raw bytes of a head (counted
    as they arrive, before llhttp sees them), the time a head may take and a body may stay silent
    (checked by the server's sweep, no timer per request), the requests waiting behind the one being
    answered (reading pauses), and the body bytes of the whole process (`ProxyServer.budget`).
    """

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[IncomingRequest] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self._loop = asyncio.get_running_loop()
        self._target = bytearray()
        self._headers: list[tuple[str, str]] = []
        #: The body so far: its first piece, then the buffer all pieces are copied into.
        self._body: bytes | bytearray = b""
        self._body_size = 0
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused = False
        #: Loop time of the last bytes received or answer finished (idle connections are swept).
        self.last_seen = self._loop.time()
        self._upgraded = False
        self._busy = False
        #: True from the end of one message to the end of the next head (what arrives is a head).
        self.in_head = True
        #: Raw bytes of the head being received.
        self._head_bytes = 0
        #: Last bytes of a head cut by a read, so a CRLF CRLF split across reads is still found.
        self._carry = b""
        #: Loop time of the first byte of the head being received; 0 while none is.
        self.head_started = 0.0
        #: Content-Length bytes of the body still to come; -1 for a chunked body.
        self._body_left = 0
        #: Chunk framing and trailer bytes of the chunked body being received.
        self._framing_bytes = 0
        #: Chunks of the chunked body being received.
        self._chunks = 0
        #: True once the head is parsed: header callbacks after it are trailers, never headers.
        self._headers_done = False
        #: True while reading (not paused by the limits below).
        self.reading = True
        #: Reading paused: a request body waits until the requests before it are answered.
        self._hold_turn = False
        #: Reading paused: the process holds `max_buffered` body bytes.
        self.hold_budget = False
        #: A `100 Continue` owed once the requests before this one are answered.
        self._continue_owed = False
        #: The answer to bytes lingo refused, sent after the answers owed before it; then close.
        self._refusal: bytes | None = None
        #: True once the connection accepts no more requests (refused bytes, lingering close).
        self.broken = False

    # -- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        now = self.last_seen = self._loop.time()
        if self._upgraded or self.broken:
            return  # refused or switched: what follows is discarded unread
        try:
            if self.in_head and not self._head_bytes and len(data) < MAX_HEAD:
                end = data.find(b"\r\n\r\n")
                if end == len(data) - 4 or (end >= 0 and self._feeds_whole(data, end + 4)):
                    self.parser.feed_data(data)  # the common case: whole requests in one read
                    return
            self._feed(data, now)
        except httptools.HttpParserUpgrade:
            self._upgrade()
        except httptools.HttpParserError as exc:
            # A limit raised inside a parser callback arrives wrapped; answer with its own status.
            cause = exc.__context__
            if isinstance(cause, LingoError):
                self._reject(cause)
            else:
                self._reject(BadRequest(f"malformed HTTP request: {exc}"))

    def _feeds_whole(self, data: bytes, head_end: int) -> bool:
        """True when `data` holds exactly one head and its Content-Length body: feed it in one go."""
        lowered = data[:head_end].lower()
        at = lowered.find(b"\ncontent-length:")
        if at < 0 or b"transfer-encoding" in lowered:
            return False
        value = lowered[at + 16 : lowered.find(b"\r", at + 16)].strip()
        return value.isdigit() and head_end + int(value) == len(data)

    def _feed(self, data: bytes, now: float) -> None:
        """Feed `data` to llhttp in pieces that end where heads and Content-Length bodies end, so each
        head's raw bytes are counted exactly and refused at MAX_HEAD before llhttp buffers them."""
        view = memoryview(data)
        pos, size = 0, len(data)
        while pos < size and not self.broken and not self._upgraded:
            if self.in_head:
                if not self._head_bytes:
                    self.head_started = now
                end = data.find(b"\r\n\r\n", pos)
                if end < 0 and self._carry:
                    joined = (self._carry + data[pos : pos + 3]).find(b"\r\n\r\n")
                    if joined >= 0:
                        end = pos + joined - len(self._carry)
                if end < 0:
                    self._head_bytes += size - pos
                    if self._head_bytes > MAX_HEAD:
                        raise _refused(HeadersTooLarge("request head larger than 64 KiB"))
                    self._carry = data[-3:]
                    self.parser.feed_data(view[pos:])
                    return
                cut = end + 4
                if self._head_bytes + cut - pos > MAX_HEAD:
                    raise _refused(HeadersTooLarge("request head larger than 64 KiB"))
                self._carry = b""
                self.parser.feed_data(view[pos:cut])
                pos = cut
            elif self._body_left > 0:
                cut = min(size, pos + self._body_left)
                self.parser.feed_data(view[pos:cut])
                pos = cut
            else:
                # Chunked: its end is only known to llhttp. Small slices bound what a head pipelined
                # behind it may pass uncounted; framing and trailers are bounded like a head.
                cut = min(size, pos + _CHUNKED_SLICE)
                before = self._body_size
                self.parser.feed_data(view[pos:cut])
                if not self.in_head:
                    self._framing_bytes += cut - pos - (self._body_size - before)
                    if self._framing_bytes > MAX_HEAD + 64 * self._chunks:
                        raise _refused(HeadersTooLarge("chunk framing or trailers larger than 64 KiB"))
                pos = cut

    def _upgrade(self) -> None:
        # llhttp stops at Upgrade requests, skipping their body. Lingo switches no protocols: a
        # body-less one is answered in HTTP/1.1 and the connection closed after it (what follows may
        # not be HTTP); one with a body cannot be served whole, so 400.
        self._upgraded = True
        request = self.pending[-1] if self.pending else None
        if request is not None and not _declares_body(request):
            request.keep_alive = False
            return
        if request is not None:
            self.pending.pop()
            self.server.budget.release(len(request.body), complete=True)
        if not self.pending and not self._busy:
            self.task = None  # made for the dropped request, it has nothing left to serve
        self._reject(BadRequest("protocol upgrades are not supported"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        budget = self.server.budget
        budget.release(self._body_size, complete=False)
        budget.release(sum(len(request.body) for request in self.pending), complete=True)
        self._body, self._body_size = b"", 0
        self.pending.clear()
        budget.forget(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()  # frees the request's queue place or endpoint slot at once
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("client disconnected"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- llhttp callbacks -----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._target.clear()
        self._headers = []
        self._headers_done = False

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > MAX_TARGET:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a trailer: never part of the header section (it would pass every check)
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self.in_head = False
        self.head_started = 0.0
        self._head_bytes = 0
        version = self.parser.get_http_version()
        if self.parser.get_method() == b"CONNECT":
            raise MethodNotAllowed("CONNECT is not supported: lingo is not a forward proxy")
        length: str | None = None
        encodings: list[str] = []
        expect = False
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == "content-length":
                length = value.strip()
            elif lowered == "transfer-encoding":
                encodings.append(value)
            elif lowered == "expect" and value.strip().lower() == "100-continue":
                expect = True
        if encodings:
            if version != "1.1" or len(encodings) != 1 or encodings[0].strip().lower() != "chunked":
                raise BadRequest("unsupported Transfer-Encoding: only chunked, and only on HTTP/1.1")
            self._body_left = -1
            self._framing_bytes = self._chunks = 0
        elif length:
            self._body_left = int(length)  # llhttp checked it is a number
            if self._body_left > self.server.max_body:
                raise BodyTooLarge(f"request body exceeds the limit of {self.server.max_body} bytes")
        else:
            self._body_left = 0
        if self._body_left:
            behind = self._busy or bool(self.pending)
            if behind:
                # Its body waits until the requests before it are answered (nginx reads none early).
                self._hold_turn = True
                self.update_reading()
            if expect and version == "1.1":
                if behind:
                    self._continue_owed = True  # written at the head of the line, never mid-answer
                else:
                    self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        size = len(body)
        held = self._body_size
        self._body_size += size
        if not held:
            self._body = body  # most bodies arrive in one piece: kept as it is
        elif isinstance(self._body, bytes):
            # A second piece: one growing buffer for the whole body (large ones grow by remapping,
            # not copying), so no join doubles the body at its end.
            self._body = bytearray(self._body)
            self._body += body
        else:
            self._body += body
        if self._body_left > 0:
            self._body_left -= size
        elif self._body_size > self.server.max_body:
            raise BodyTooLarge(f"request body exceeds the limit of {self.server.max_body} bytes")
        if self.server.budget.take(self, size):
            self.update_reading()

    def on_chunk_complete(self) -> None:
        self._chunks += 1

    def on_message_complete(self) -> None:
        target = self._target.decode("latin-1")
        if not target.startswith("/"):
            target = _origin_form(target)
        request = IncomingRequest(
            method=self.parser.get_method().decode("latin-1"),
            target=target,
            headers=self._headers,
            body=cast(bytes, self._body),  # a bytearray is used as bytes everywhere downstream
            http_version=self.parser.get_http_version(),
            keep_alive=self.parser.should_keep_alive() and not self.server.draining,
        )
        self._body, self._body_size, self._body_left = b"", 0, 0
        self.in_head = True
        self.server.budget.completed(self, len(request.body))
        self.pending.append(request)
        if len(self.pending) >= MAX_PIPELINED:
            self.update_reading()
        if self.task is None or self.task.done():
            self.task = self._loop.create_task(self._serve())

    # -- request loop ---------------------------------------------------------------------------------

    async def _serve(self) -> None:
        while self.pending and not self.closing:
            if self._paused:
                try:
                    await self.drain()  # a client that does not read gets no more answers buffered
                except ConnectionResetError:
                    return
            request = self.pending.popleft()
            writer = ResponseWriter(self, request)
            self._busy = True
            try:
                await self.server.handler(request, writer)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("request handler failed", extra={"path": request.path})
                if not writer.started:
                    writer.send(
                        500,
                        [("Content-Type", "application/json"), ("X-Proxy", "lingo")],
                        b'{"error": {"message": "internal error in lingo", "type": "server_error",'
                        b' "code": "internal_error"}}',
                    )
                else:
                    writer.abort()
            finally:
                self._busy = False
                self.server.budget.release(len(request.body), complete=True)
                request.body = b""  # released at once, not when the connection goes idle
            if not writer.finished:
                writer.abort()
            if len(self.pending) < MAX_PIPELINED:
                self.update_reading()
        self.last_seen = self._loop.time()
        if self.closing:
            return
        if self._refusal is not None:
            self._refuse(self._refusal)
        elif self._hold_turn:
            self._hold_turn = False
            if self._continue_owed:
                self._continue_owed = False
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.update_reading()

    def update_reading(self) -> None:
        """Pause or resume reading from the client as the limits require."""
        want = not (self._hold_turn or self.hold_budget or len(self.pending) >= MAX_PIPELINED)
        if want == self.reading or self.transport is None or self.closing:
            return
        self.reading = want
        if want:
            self.last_seen = self._loop.time()  # the silence while paused was lingo's, not the client's
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    # -- writing --------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.closing:
            raise ConnectionResetError("client disconnected")
        if self._paused:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def close_after_write(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()  # flushes what was written, then closes

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def busy(self) -> bool:
        """True while a request of this connection is being handled."""
        return self.task is not None and not self.task.done()

    @property
    def receiving_body(self) -> bool:
        """True while a request body is arriving and lingo is reading it."""
        return not self.in_head and self.reading and not self.broken

    @property
    def idle(self) -> bool:
        """True between requests: nothing being answered, waiting, or arriving."""
        return self.in_head and not self.head_started and not self.busy and not self.pending

    def close_if_idle(self) -> None:
        if not self.busy:
            self.close_after_write()

    def time_out(self, error: LingoError) -> None:
        """The client took too long (slow head, silent body): answer `error` and close."""
        self._reject(error)

    def _reject(self, error: LingoError) -> None:
        """Answer `error` and close; after the answers owed to earlier requests, if there are any."""
        self.broken = True
        self.server.budget.release(self._body_size, complete=False)
        self._body, self._body_size = b"", 0
        self.server.budget.forget(self)
        body = orjson.dumps(error.body())
        head = (
            f"HTTP/1.1 {error.status} {_REASONS.get(error.status, 'Error')}\r\n"
            "Content-Type: application/json\r\n"
            f"X-Proxy: lingo\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        if self.busy or self.pending:
            self._refusal = head + body  # sent by `_serve` once the earlier answers are out
            return
        head_request = self.parser.get_method() == b"HEAD"  # its answer never carries a body
        self._refuse(head if head_request else head + body)

    def _refuse(self, answer: bytes) -> None:
        """Write the refusal, then close gently: the client may still be sending what lingo refused,
        and closing with unread bytes would reset the connection before it reads the answer."""
        self._refusal = None
        if self.transport is None or self.closing:
            return
        self.transport.write(answer)
        self.transport.resume_reading()  # read and discard until the client is done, or LINGER
        self.reading = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._loop.call_later(LINGER, self.close_after_write)


def _refused(error: LingoError) -> httptools.HttpParserError:
    """An error raised outside a parser callback, shaped like one raised inside."""
    wrapped = httptools.HttpParserError(error.message)
    wrapped.__context__ = error
    return wrapped


def _origin_form(target: str) -> str:
    """Path and query of an absolute-form target (`http://host/path?q`): the backend gets origin form."""
    split = urlsplit(target)
    if not split.scheme:
        return target  # `*` (OPTIONS) and other forms pass as they are
    path = split.path or "/"
    return f"{path}?{split.query}" if split.query else path


def _declares_body(request: IncomingRequest) -> bool:
    length = request.header("Content-Length")
    return request.header("Transfer-Encoding") is not None or (length is not None and length.strip() != "0")


class _Reject(LingoError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = "invalid_request_error"
        self.code = "bad_http"


class BodyBudget:
    """Request-body bytes the whole process holds, against `LINGO_MAX_BUFFERED`.

    Beyond the budget, connections receiving a body stop reading until bodies are released. One of
    them (the owner) keeps reading while no complete body is held, so that a budget filled by
    incomplete bodies cannot stall them all: at most the budget plus one body is held.
    """

    def __init__(self, limit: int) -> None:
        #: Most bytes held before reading pauses.
        self.limit = limit
        #: Bytes held now: bodies arriving, waiting or being forwarded.
        self.held = 0
        #: Of those, bytes of complete bodies (their requests release them when answered).
        self.complete = 0
        #: The one connection that may read past the budget.
        self._owner: HttpProtocol | None = None
        #: Connections paused for the budget.
        self._waiting: set[HttpProtocol] = set()

    def take(self, connection: HttpProtocol, size: int) -> bool:
        """Count `size` new bytes of `connection`; True when it must pause."""
        self.held += size
        if self.held <= self.limit or connection is self._owner:
            return False
        if self._owner is None and not self.complete:
            self._owner = connection
            return False
        connection.hold_budget = True
        self._waiting.add(connection)
        return True

    def completed(self, connection: HttpProtocol, size: int) -> None:
        """`connection` received a whole body of `size` bytes."""
        self.complete += size
        if connection is self._owner:
            self._owner = None

    def release(self, size: int, complete: bool) -> None:
        """A body of `size` bytes is gone (answered, or its connection lost)."""
        self.held -= size
        if complete:
            self.complete -= size
        self._maybe_wake()

    def forget(self, connection: HttpProtocol) -> None:
        """`connection` receives no more bodies."""
        self._waiting.discard(connection)
        if connection is self._owner:
            self._owner = None
            self._maybe_wake()

    def _maybe_wake(self) -> None:
        if self._waiting and (self.held <= self.limit or (self._owner is None and not self.complete)):
            waiting, self._waiting = self._waiting, set()
            for connection in waiting:
                connection.hold_budget = False
                connection.update_reading()


class ProxyServer:
    """Listens on the proxy port and runs `handler` for every request."""

    def __init__(
        self,
        handler: Handler,
        max_body: int,
        *,
        max_buffered: int = 1 << 30,
        header_timeout: float = 30.0,
        body_timeout: float = 60.0,
    ) -> None:
        #: Called once per request.
        self.handler = handler
        #: Largest accepted request body; a larger declared or received one is answered 413 at once.
        self.max_body = max_body
        #: Request-body bytes held by the process, against `LINGO_MAX_BUFFERED`.
        self.budget = BodyBudget(max_buffered)
        #: Seconds from the first byte of a request head to its end (408 beyond).
        self.header_timeout = header_timeout
        #: Longest silence while a request body arrives (408 beyond).
        self.body_timeout = body_timeout
        #: Open client connections.
        self.connections: set[HttpProtocol] = set()
        #: True once shutting down: answers carry `Connection: close`.
        self.draining = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self), host, port, backlog=4096, reuse_address=True
        )
        bound = self._server.sockets[0].getsockname()
        self._sweeper = loop.create_task(self._sweep())
        return host, int(bound[1])

    async def _sweep(self) -> None:
        """Enforce the idle, head and body deadlines: one sweep over all connections, not a timer per
        request (a deadline fires up to a quarter of its length late)."""
        loop = asyncio.get_running_loop()
        period = max(0.05, min(KEEP_ALIVE_TIMEOUT / 5, self.header_timeout / 4, self.body_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.sweep(loop.time())

    def sweep(self, now: float) -> None:
        idle_cutoff = now - KEEP_ALIVE_TIMEOUT
        head_cutoff = now - self.header_timeout
        body_cutoff = now - self.body_timeout
        for connection in list(self.connections):
            if connection.broken:
                continue
            if connection.head_started and connection.head_started < head_cutoff:
                connection.time_out(
                    RequestTimeout(f"request head not complete within {self.header_timeout:g} s")
                )
            elif connection.receiving_body and connection.last_seen < body_cutoff:
                connection.time_out(RequestTimeout(f"request body silent for {self.body_timeout:g} s"))
            elif connection.last_seen < idle_cutoff and connection.idle:
                connection.close_after_write()

    def stop_accepting(self) -> None:
        """Close the listening socket and idle keep-alive connections; running requests go on."""
        self.draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()

    async def close(self, timeout: float) -> None:
        """Wait up to `timeout` for running requests, then cut every connection."""
        self.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(c.busy for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
