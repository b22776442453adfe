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

import httptools

log = logging.getLogger(__name__)

#: Longest request line target accepted (414 beyond).
MAX_TARGET = 16 * 1024
#: Largest total size of request headers accepted (431 beyond).
MAX_HEADERS = 64 * 1024
#: Seconds an idle keep-alive connection is kept open.
KEEP_ALIVE_TIMEOUT = 75.0

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
    #: The whole body (de-chunked).
    body: bytes
    #: "1.1" or "1.0".
    http_version: str
    #: True when the connection may carry another request after this one.
    keep_alive: bool
    #: Set when the body exceeded the limit; the body was discarded.
    too_large: bool = False

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
    """One client connection: parse requests, run the handler for each in order, write answers."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[IncomingRequest] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self._target = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused = False
        #: Loop time of the last bytes received or answer finished (idle connections are swept).
        self.last_seen = 0.0
        self._upgraded = False
        self._busy = False

    # -- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self.last_seen = asyncio.get_running_loop().time()

    def data_received(self, data: bytes) -> None:
        self.last_seen = asyncio.get_running_loop().time()
        if self._upgraded:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp stops at CONNECT and Upgrade requests, skipping their body. Lingo switches no
            # protocols: a body-less one is answered in HTTP/1.1 and the connection closed after it
            # (what follows may not be HTTP); one with a body cannot be served whole, so 400.
            self._upgraded = True
            request = self.pending[-1] if self.pending else None
            if request is not None and not _declares_body(request):
                request.keep_alive = False
                return
            if request is not None:
                self.pending.pop()
            if not self.pending and not self._busy:
                self.task = None  # made for the dropped request, it has nothing left to serve
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # A limit raised inside a parser callback arrives wrapped; answer with its own status.
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.message)
            else:
                self._reject(400, f"malformed HTTP request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
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
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > MAX_TARGET:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADERS:
            raise _Reject(431, "request headers too large")
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == "content-length" and value.strip().isdigit() and int(value) > self.server.max_body:
                self._too_large = True
            elif lowered == "expect" and value.strip().lower() == "100-continue" and not self._too_large:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.server.max_body:
            self._too_large = True
            self._body = []
            if self._body_size > 2 * self.server.max_body + (1 << 20):
                raise _Reject(413, "request body too large")
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        request = IncomingRequest(
            method=self.parser.get_method().decode("latin-1"),
            target=self._target.decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body) if len(self._body) != 1 else self._body[0],
            http_version=self.parser.get_http_version(),
            keep_alive=self.parser.should_keep_alive() and not self.server.draining,
            too_large=self._too_large,
        )
        self.pending.append(request)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._serve())

    # -- request loop ---------------------------------------------------------------------------------

    async def _serve(self) -> None:
        while self.pending and not self.closing:
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
            if not writer.finished:
                writer.abort()
        self.last_seen = asyncio.get_running_loop().time()

    # -- writing --------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.closing:
            raise ConnectionResetError("client disconnected")
        if self._paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
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

    def close_if_idle(self) -> None:
        if not self.busy:
            self.close_after_write()

    def _reject(self, status: int, message: str) -> None:
        body = (
            b'{"error": {"message": "' + message.replace('"', "'").encode() + b'", '
            b'"type": "invalid_request_error", "code": "bad_http"}}'
        )
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"X-Proxy: lingo\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        if self.task is None or self.task.done():
            head_request = self.parser.get_method() == b"HEAD"  # its answer never carries a body
            self.write(head.encode() if head_request else head.encode() + body)
        self.close_after_write()


def _declares_body(request: IncomingRequest) -> bool:
    length = request.header("Content-Length")
    return request.header("Transfer-Encoding") is not None or (length is not None and length.strip() != "0")


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ProxyServer:
    """Listens on the proxy port and runs `handler` for every request."""

    def __init__(self, handler: Handler, max_body: int) -> None:
        #: Called once per request.
        self.handler = handler
        #: Largest accepted request body; larger ones reach the handler with `too_large` set.
        self.max_body = max_body
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
        self._sweeper = loop.create_task(self._sweep_idle())
        return host, int(bound[1])

    async def _sweep_idle(self) -> None:
        """Close connections silent for KEEP_ALIVE_TIMEOUT: one sweep, not a timer per request."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(KEEP_ALIVE_TIMEOUT / 5)
            cutoff = loop.time() - KEEP_ALIVE_TIMEOUT
            for connection in list(self.connections):
                if connection.last_seen < cutoff and not connection.busy:
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
