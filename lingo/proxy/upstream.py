"""A lean HTTP/1.1 client for talking to model servers: pooled keep-alive connections per endpoint.

General-purpose clients spend most of a proxy's CPU on features a proxy does not need (cookies,
redirects, decompression, rich request objects). This one writes a request in one buffer, parses the
response with llhttp (httptools) and hands body chunks over as they arrive, so a streamed answer is
forwarded chunk by chunk and a small one costs a few function calls.

Pooled connections are closed after `IDLE_TIMEOUT`, shorter than common model servers' keep-alive
(uvicorn: 5 s). A parked connection that becomes readable (a late, unsolicited answer, or the
server's close) is never reused: it is closed when the bytes arrive and checked again just before
reuse. A request is written once per call: whether to send it again is the forwarder's decision,
counted against its retry budget (a backend may have read a request it did not answer).

Every wait on a backend is bounded: its response head within `response_timeout` of the request
being sent, then no silence longer than `idle_timeout` inside the body. One sweep over the busy
connections enforces both, not a timer per request.
"""

from __future__ import annotations

import asyncio
import select
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Protocol
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

#: Seconds an idle pooled connection is kept open.
IDLE_TIMEOUT = 4.0
#: Seconds to establish a TCP connection to an endpoint.
CONNECT_TIMEOUT = 10.0
#: Buffered body chunks after which reading from the backend pauses until the consumer catches up.
_HIGH_WATER = 64
#: Largest response head in raw bytes, counted as they arrive (a backend sending more is broken: 502).
MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamError(ConnectionError):
    """The backend could not be reached, or the connection broke before the response was complete."""


class UpstreamTimeoutError(UpstreamError):
    """The backend accepted the request but sent no response head within the response timeout."""


class _Connection(asyncio.Protocol):
    """One TCP connection to one endpoint, carrying one request at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.reused = False
        #: Loop time when the connection was last parked idle in the pool.
        self.parked_at = 0.0
        #: Loop time the request was sent, then of the last bytes received (for the timeouts).
        self.last_activity = 0.0
        #: File descriptor of the socket (checked for readability before reuse).
        self.fd = -1
        #: True while the bytes arriving are a response head (counted against MAX_RESPONSE_HEAD).
        self._in_head = False
        self._head_bytes = 0
        #: True while parsing an interim (1xx) response, which is skipped.
        self._interim = False
        #: True when the response body ends where the connection does (no length, not chunked).
        self._until_close = False

    # -- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response.complete:
            # Parked, or after a complete answer: bytes that answer no request. The connection can
            # never be trusted again; the answer already given stands.
            self.close()
            return
        self.last_activity = _loop_time()
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_RESPONSE_HEAD:
                end = data.find(b"\r\n\r\n")
                if end < 0 or self._head_bytes - len(data) + end + 4 > MAX_RESPONSE_HEAD:
                    self._fail(UpstreamError("backend response head larger than 64 KiB"))
                    self.close()
                    return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # an error raised in a parser callback arrives wrapped
            if not isinstance(cause, UpstreamError):
                cause = UpstreamError(f"malformed response from backend: {exc}")
            self._fail(cause)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        closed_by_backend = not self.closed
        self.closed = True
        self.pool._forget(self)
        response = self.response
        if response is None or response.complete:
            return
        if closed_by_backend and exc is None and self._until_close and response.started.done():
            response.complete = True  # a body without length ends with the connection; llhttp can't tell
            response._wake()
        else:
            self._fail(UpstreamError("backend closed the connection before the response was complete"))

    # -- llhttp callbacks -----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.response is None or self.response.complete:
            # Bytes after the answer, or with no request outstanding: never part of an answer.
            raise UpstreamError("backend sent data that answers no request")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        if self._in_head:  # trailers of a chunked answer are not headers
            self.response._raw_headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: interim, not the answer; the answer follows.
            self._interim = True
            response._raw_headers.clear()
            self._head_bytes = 0
            return
        self._in_head = False
        if not 200 <= status <= 599:
            raise UpstreamError(f"backend answered with status {status}, which is not a final HTTP status")
        response.status = status
        chunked = framed = False
        for name, value in response._raw_headers:
            lowered = name.lower()
            if lowered == "content-length":
                framed = True
            elif lowered == "transfer-encoding":
                chunked = value.rsplit(",", 1)[-1].strip().lower() == "chunked"
        self._until_close = not framed and not chunked
        if not response.started.done():
            response.started.set_result(None)

    def on_body(self, body: bytes) -> None:
        response = self.response
        assert response is not None
        sink = response._sink
        if sink is not None:
            # Piped: straight to the client as llhttp parses it, no task switch per chunk.
            sink.write(body)
            if sink.paused and self.transport is not None:
                self.transport.pause_reading()
                response._paused = True
                response._wake()
            return
        response._chunks.append(body)
        response._wake()
        if len(response._chunks) > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            response._paused = True

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        if self._interim:
            self._interim = False
            return
        response.complete = True
        response.keep_alive = self.parser.should_keep_alive()
        response._wake()

    # -- helpers --------------------------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        response = self.response
        if response is None or response.complete:
            return  # bytes after a complete answer: the connection is closed, the answer stands
        response.error = error
        if not response.started.done():
            response.started.set_exception(error)
        response._wake()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class BodySink(Protocol):
    """Where a piped body goes: the client connection."""

    @property
    def paused(self) -> bool:
        """True while the client's send buffer is full."""

    def write(self, chunk: bytes) -> None: ...

    async def drain(self) -> None:
        """Wait until the client's send buffer has room again."""


class UpstreamResponse:
    """A backend's response: status and headers at once, the body as it arrives."""

    def __init__(self, connection: _Connection, head_request: bool) -> None:
        self._connection = connection
        self._head = head_request
        #: HTTP status code.
        self.status = 0
        #: True once the whole body has arrived.
        self.complete = False
        #: True when the backend allows reusing the connection.
        self.keep_alive = False
        #: Set when the connection failed.
        self.error: Exception | None = None
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._raw_headers: list[tuple[str, str]] = []
        self._headers: CIMultiDict[str] | None = None
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._released = False
        self._sink: BodySink | None = None

    @property
    def raw_headers(self) -> list[tuple[str, str]]:
        """Headers as received, in order."""
        return self._raw_headers

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._headers is None:
            self._headers = CIMultiDict(self._raw_headers)
        return self._headers

    @property
    def content_length(self) -> int | None:
        for name, value in self._raw_headers:
            if len(name) == 14 and name.lower() == "content-length":
                return int(value) if value.strip().isdigit() else None
        return None

    @property
    def reason(self) -> str | None:
        return None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive; raises UpstreamError if the backend breaks off."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                if self._paused and len(self._chunks) < _HIGH_WATER // 2:
                    self._paused = False
                    self._connection.last_activity = _loop_time()  # the pause was lingo's silence
                    if self._connection.transport is not None:
                        self._connection.transport.resume_reading()
                yield chunk
                continue
            if self.complete or self._head:
                return
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None

    async def pipe(self, sink: BodySink) -> None:
        """Forward the body to `sink` as it arrives; raises UpstreamError if the backend breaks off.

        Reading from the backend pauses while the client reads slower than the backend writes.
        """
        while self._chunks:
            sink.write(self._chunks.popleft())
        if self._head:
            return
        transport = self._connection.transport
        self._sink = sink
        try:
            while True:
                if self.error is not None:
                    raise self.error
                if self.complete:
                    return
                if self._paused or sink.paused:
                    await sink.drain()
                    self._paused = False
                    self._connection.last_activity = _loop_time()  # the pause was lingo's silence
                    if transport is not None:
                        transport.resume_reading()
                    continue
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
                self._waiter = None
        finally:
            self._sink = None

    async def read(self) -> bytes:
        """The whole body."""
        if self.complete and len(self._chunks) <= 1:
            return self._chunks.popleft() if self._chunks else b""
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def release(self) -> None:
        """Give the connection back to the pool if the exchange finished cleanly, else close it."""
        if self._released:
            return
        self._released = True
        connection = self._connection
        connection.response = None
        if self.complete and self.keep_alive and not self._head and self.error is None:
            connection.pool._park(connection)
        else:
            connection.close()


class UpstreamPool:
    """Keep-alive connections to backends, reused per (host, port)."""

    def __init__(self, response_timeout: float = 600.0, idle_timeout: float = 300.0) -> None:
        #: Seconds from a request sent to its response head (UpstreamTimeoutError beyond).
        self.response_timeout = response_timeout
        #: Longest silence inside a response body (UpstreamError beyond: the answer is cut).
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._swept_at = 0.0
        self._targets: dict[str, tuple[tuple[str, int], str]] = {}
        self._watcher: asyncio.Task[None] | None = None

    async def request(
        self, base_url: str, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> UpstreamResponse:
        """Send one request, once, and return when the response status and headers have arrived."""
        target = self._targets.get(base_url)
        if target is None:
            target = self._targets[base_url] = _parse_target(base_url)
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        key, netloc = target
        head = _encode_head(method, path, netloc, headers, len(body))
        connection = self._take(key) or await self._connect(key)
        return await self._send(connection, head, body, method)

    async def _watch(self) -> None:
        """Enforce the response and idle timeouts on busy connections (a deadline fires up to a
        quarter of its length late)."""
        period = max(0.05, min(1.0, self.response_timeout / 4, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.check_timeouts(_loop_time())

    def check_timeouts(self, now: float) -> None:
        for connection in list(self._all):
            response = connection.response
            if response is None or response.complete or response._paused:
                continue  # parked, done, or silent because lingo paused reading (a slow client)
            silence = now - connection.last_activity
            if not response.started.done():
                if silence > self.response_timeout:
                    connection._fail(
                        UpstreamTimeoutError(
                            f"backend sent no response head within {self.response_timeout:g} s"
                        )
                    )
                    connection.close()
            elif silence > self.idle_timeout:
                connection._fail(
                    UpstreamError(f"backend silent for {self.idle_timeout:g} s inside its answer")
                )
                connection.close()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        for connection in list(self._all):
            connection.close()
        self._all.clear()
        self._idle.clear()

    def forget_endpoint(self, base_url: str) -> None:
        """Close pooled idle connections to an endpoint that left the rotation."""
        self._targets.pop(base_url, None)
        split = urlsplit(base_url)
        for connection in self._idle.pop((split.hostname or "", split.port or 80), []):
            connection.close()

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, connection = await loop.create_connection(lambda: _Connection(self, key), *key)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]}: {exc}") from None
        self._all.add(connection)
        return connection

    async def _send(self, connection: _Connection, head: bytes, body: bytes, method: str) -> UpstreamResponse:
        response = UpstreamResponse(connection, head_request=method == "HEAD")
        connection.response = response
        connection._in_head = True
        connection._head_bytes = 0
        connection.last_activity = _loop_time()
        assert connection.transport is not None
        if len(body) < 65536:
            connection.transport.write(head + body)
        else:
            connection.transport.writelines((head, body))
        try:
            await response.started
        except BaseException:
            connection.response = None
            connection.close()
            raise
        return response

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if connection.closed:
                continue
            if now - connection.parked_at > IDLE_TIMEOUT or _readable(connection.fd):
                connection.close()  # stale, or it spoke while parked (stray bytes or the server's close)
                continue
            connection.reused = True
            return connection
        return None

    def _park(self, connection: _Connection) -> None:
        if connection.closed:
            return
        # llhttp resets itself after a complete keep-alive message: the parser is reused as it is.
        now = asyncio.get_running_loop().time()
        connection.parked_at = now
        self._idle.setdefault(connection.key, []).append(connection)
        if now - self._swept_at > 1.0:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Close connections idle past IDLE_TIMEOUT (a timestamp check, not a timer per request)."""
        self._swept_at = now
        for idle in self._idle.values():
            expired = [c for c in idle if now - c.parked_at > IDLE_TIMEOUT]
            for connection in expired:
                idle.remove(connection)
                connection.close()

    def _forget(self, connection: _Connection) -> None:
        self._all.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _readable(fd: int) -> bool:
    """True when a socket has bytes or an EOF waiting (one poll, no wait; select() fails above fd 1024)."""
    if fd < 0:
        return False
    _POLL.register(fd, select.POLLIN)
    try:
        return bool(_POLL.poll(0))
    except OSError:
        return True
    finally:
        _POLL.unregister(fd)


#: One poll object for the readability check (registering costs no system call).
_POLL = select.poll()


def _parse_target(base_url: str) -> tuple[tuple[str, int], str]:
    """((host, port), netloc) of an endpoint URL; only plain http is spoken to model servers."""
    split = urlsplit(base_url)
    if split.scheme != "http":
        raise UpstreamError(f"unsupported endpoint scheme in {base_url!r}: only http is spoken")
    return (split.hostname or "127.0.0.1", split.port or 80), split.netloc


def _encode_head(
    method: str, path: str, netloc: str, headers: Iterable[tuple[str, str]], length: int
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1\r\nHost: {netloc}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    if length or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(f"Content-Length: {length}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")
