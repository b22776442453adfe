"""A strict raw HTTP/1.1 client: send any bytes, then check every byte of the one answer.

Lingo's answers are judged by what a careful client would accept: status line and header syntax,
body framing (Content-Length, chunked, or close), and nothing after the answer (stray bytes desync a
keep-alive client). A body cut short raises `Truncated`, anything else malformed `Malformed`.
"""

from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass, field
from typing import BinaryIO

import orjson

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\x00-\x08\x0a-\x1f\x7f]*)?\r\n")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*\r\n")
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,8})(?:;[^\r\n]*)?\r\n")
#: Longest line accepted from lingo (status line, header, chunk size).
_MAX_LINE = 1 << 20


class Malformed(AssertionError):
    """Lingo's answer is not a well-formed HTTP/1.1 response (or there was none)."""


class Truncated(Malformed):
    """The answer started well but its body was cut off: how lingo passes on a backend that broke off."""


@dataclass
class Reply:
    """One parsed response."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def from_lingo(self) -> bool:
        """Lingo marks every answer of its own (errors, the model list) with `X-Proxy: lingo`."""
        return self.header("X-Proxy") == "lingo"

    def is_openai_error(self) -> bool:
        try:
            error = orjson.loads(self.body)["error"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return False
        return isinstance(error, dict) and bool(error.get("message")) and bool(error.get("type"))

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.headers!r}, {self.body[:300]!r})"


def _line(stream: BinaryIO, truncation: type[Malformed] = Malformed) -> bytes:
    line = stream.readline(_MAX_LINE)
    if not line:
        raise truncation("connection closed in the middle of the response")
    if not line.endswith(b"\r\n"):
        raise Malformed(f"unterminated line: {line[:200]!r}")
    return line


def read_reply(stream: BinaryIO, head_request: bool = False) -> Reply:
    """Parse one response strictly: status line, header syntax, and body framing."""
    while True:
        first = stream.readline(_MAX_LINE)
        if not first:
            raise Malformed("connection closed without a response")
        match = _STATUS_LINE.fullmatch(first)
        if match is None:
            raise Malformed(f"bad status line: {first[:200]!r}")
        reply = Reply(int(match.group(1)))
        while (line := _line(stream)) != b"\r\n":
            header = _HEADER_LINE.fullmatch(line)
            if header is None:
                raise Malformed(f"bad header line: {line[:200]!r}")
            reply.headers.append((header.group(1).decode("latin-1"), header.group(2).decode("latin-1")))
        if reply.status != 100 and reply.status != 103:
            break  # 100 Continue and 103 Early Hints are interim; anything else is the answer
    reply.body = _read_body(stream, reply, head_request)
    return reply


def _read_body(stream: BinaryIO, reply: Reply, head_request: bool) -> bytes:
    if head_request or reply.status in (204, 304) or reply.status < 200:
        return b""
    encodings = reply.all("Transfer-Encoding")
    lengths = reply.all("Content-Length")
    if encodings:
        if lengths:
            raise Malformed("both Transfer-Encoding and Content-Length")
        if [e.strip().lower() for e in encodings] != ["chunked"]:
            raise Malformed(f"unexpected Transfer-Encoding {encodings}")
        body = bytearray()
        while True:
            size = _CHUNK_SIZE.fullmatch(_line(stream, Truncated))
            if size is None:
                raise Malformed("bad chunk size line")
            length = int(size.group(1), 16)
            if length == 0:
                while _line(stream, Truncated) != b"\r\n":
                    pass  # trailers
                return bytes(body)
            chunk = stream.read(length)
            if len(chunk) != length:
                raise Truncated("truncated chunk")
            if stream.read(2) != b"\r\n":
                raise Malformed("chunk not followed by CRLF")
            body += chunk
    if lengths:
        if len(set(lengths)) != 1 or not lengths[0].isdigit():
            raise Malformed(f"bad Content-Length {lengths}")
        body = stream.read(int(lengths[0]))
        if len(body) != int(lengths[0]):
            raise Truncated(f"body of {len(body)} bytes, Content-Length {lengths[0]}")
        return body
    if (reply.header("Connection") or "").lower() != "close":
        raise Malformed("body framed by neither length, chunks nor Connection: close")
    return stream.read()


def exchange(port: int, request: bytes, head_request: bool = False, timeout: float = 30.0) -> Reply:
    """Send raw bytes to 127.0.0.1:`port` and parse the one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # Lingo may answer (413, 400) and close before reading everything; its answer is still read.
        with contextlib.suppress(OSError):
            sock.sendall(request)
        with sock.makefile("rb") as stream:
            try:
                reply = read_reply(stream, head_request)
                # One request was sent: nothing may follow its answer (a stray byte desyncs a client).
                if (reply.header("Connection") or "").lower() == "close":
                    extra = stream.read()
                else:
                    sock.settimeout(0.3)
                    try:
                        extra = stream.read1(65536)
                    except TimeoutError:
                        extra = b""
                if extra:
                    raise Malformed(f"{len(extra)} bytes after the response: {extra[:100]!r}")
                return reply
            except TimeoutError:
                raise Malformed(f"no complete response within {timeout} s") from None
            except ConnectionResetError:
                raise Malformed("connection reset instead of a response") from None


def http_get(port: int, path: str) -> Reply:
    return exchange(port, f"GET {path} HTTP/1.1\r\nHost: lingo\r\nConnection: close\r\n\r\n".encode())


def http_post(port: int, path: str, body: bytes, *headers: str) -> Reply:
    head = "".join(f"{header}\r\n" for header in headers)
    request = f"POST {path} HTTP/1.1\r\nHost: lingo\r\n{head}Content-Length: {len(body)}\r\n"
    return exchange(port, request.encode("latin-1") + b"Connection: close\r\n\r\n" + body)
