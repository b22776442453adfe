"""A backend that answers with hand-crafted, often broken HTTP: lingo passes a sane answer on (without
hop-by-hop headers) or answers its own 502, and keeps serving."""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.faults.support import RawBackend, reply_with
from tests.fuzz.support import LingoThread, Reply, Truncated, exchange, fuzz_settings, http_post

TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
#: Hop-by-hop headers a backend may send; none may reach the client.
HOP_BY_HOP = [
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Upgrade",
    "Proxy-Authenticate",
]
#: Headers lingo writes itself (framing, and X-Request-Id: the id it sent upstream replaces the
#: backend's) or may set (`Connection: close`).
LINGOS_OWN = {"content-length", "transfer-encoding", "connection", "x-request-id"}
HOP_BY_HOP_EXAMPLE = [
    (b"Connection", b"X-Secret, Upgrade"),
    (b"X-Secret", b"s"),
    (b"Upgrade", b"websocket"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"TE", b"trailers"),
    (b"Trailer", b"X-T"),
    (b"Proxy-Authenticate", b"Basic"),
]
VALID = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 26\r\n\r\n" + (
    b'{"choices": [{"text": ""}]}'
)


@dataclass
class BackendResponse:
    """A response as the raw backend writes it, and what a correct proxy could make of it."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str
    interim: bytes = b""
    version: bytes = b"HTTP/1.1"
    filler: int = 0
    connection_tokens: set[str] = field(default_factory=set)

    def encode(self) -> bytes:
        lines = [self.version + b" " + (b"%03d" % self.status) + (b" " + self.reason if self.reason else b"")]
        lines += [name + b": " + value for name, value in self.headers]
        lines += [b"X-Filler-%d: %d" % (i, i) for i in range(self.filler)]
        body = self.body
        if self.framing == "length":
            lines.append(b"Content-Length: %d" % len(body))
        elif self.framing == "length-twice":
            lines += [b"Content-Length: %d" % len(body)] * 2
        elif self.framing == "length-conflict":
            lines += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
        elif self.framing == "length-short":  # the body stops before its declared length
            lines.append(b"Content-Length: %d" % (len(body) + 10))
        elif self.framing == "length-long":  # more bytes follow than declared
            lines.append(b"Content-Length: %d" % (len(body) // 2))
        elif self.framing in ("chunked", "chunked-cut", "chunked-and-length"):
            lines.append(b"Transfer-Encoding: chunked")
            if self.framing == "chunked-and-length":
                lines.append(b"Content-Length: %d" % len(body))
            pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
            body = b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces)
            if self.framing != "chunked-cut":
                body += b"0\r\n\r\n"
        return self.interim + b"\r\n".join(lines) + b"\r\n\r\n" + body

    @property
    def has_body(self) -> bool:
        return self.status not in (204, 304) and not 100 <= self.status < 200

    @property
    def delivered_body(self) -> bytes:
        """The body a client should get when lingo passes the answer on."""
        if not self.has_body:
            return b""
        if self.framing == "length-long":
            return self.body[: len(self.body) // 2]
        return self.body


header_names = st.sampled_from(
    [b"Content-Type", b"X-Request-Id", b"Set-Cookie", b"Cache-Control", b"Server", b"Date", b"Location"]
    + [name.encode() for name in HOP_BY_HOP]
) | st.text(alphabet=TOKEN, min_size=1, max_size=24).map(str.encode)
bad_header_names = st.sampled_from([b"X Bad", b"X-Bad ", b"X\x01Bad", b"X\xe9", b""])
# Hypothesis favours small draws, so the first choices are the common, plausible ones.
header_values = st.integers(0, 19).flatmap(
    lambda pick: (
        st.text(alphabet=string.printable.strip() + " \t", max_size=80).map(str.encode)
        if pick < 13
        else st.sampled_from(
            [b"close", b"keep-alive", b"chunked", b"gzip", b"timeout=5", b"websocket", b"X-Secret"]
        )
        if pick < 17
        else st.binary(max_size=40).filter(lambda value: b"\r" not in value and b"\n" not in value)
        if pick < 19
        else st.integers(9_000, 100_000).map(lambda size: b"a" * size)
    )
)
statuses = st.integers(0, 19).flatmap(
    lambda pick: (
        st.sampled_from([200] * 8 + [201, 204, 304, 400, 404, 418, 429, 500, 501])
        if pick < 16
        else st.integers(100, 599)
        if pick < 19
        else st.sampled_from([0, 42, 600, 999])
    )
)
framings = st.sampled_from(
    ["length"] * 8
    + ["chunked"] * 6
    + ["close", "length-twice", "length-conflict", "length-short", "length-long", "chunked-cut"]
    + ["chunked-and-length"]
)


@st.composite
def backend_responses(draw: st.DrawFn) -> BackendResponse:
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=8))
    if draw(st.integers(0, 29)) == 29:
        headers.append((draw(bad_header_names), b"v"))
    tokens = {value.decode("latin-1").lower() for name, value in headers if name.lower() == b"connection"}
    if draw(st.booleans()):
        headers.append((b"Connection", b"X-Secret, Keep-Alive"))
        headers.append((b"X-Secret", b"for this hop only"))
        tokens |= {"x-secret", "keep-alive"}
    return BackendResponse(
        status=draw(statuses),
        reason=draw(st.sampled_from([b"OK", b"", b"Caf\xe9", b"A\x01B", b"Whatever It Is"])),
        headers=headers,
        body=draw(st.binary(max_size=3000)),
        framing=draw(framings),
        interim=draw(
            st.sampled_from(
                [b""] * 6 + [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\n\r\n"]
            )
        ),
        version=draw(st.sampled_from([b"HTTP/1.1"] * 5 + [b"HTTP/1.0"])),
        filler=draw(st.sampled_from([0] * 18 + [150, 1000])),
        connection_tokens={token.strip() for joined in tokens for token in joined.split(",")},
    )


def crafted(
    headers: list[tuple[bytes, bytes]], framing: str = "length", filler: int = 0, **fields: object
) -> BackendResponse:
    """An explicit example: always covered, whatever the random draws."""
    return BackendResponse(
        200,
        b"OK",
        headers,
        b'{"ok": true}',
        framing,
        filler=filler,
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def raw_lingo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LingoThread, RawBackend]]:
    thread = LingoThread()
    backend = thread.call(RawBackend(reply_with(VALID)).start())
    models = f"""
        models:
          - name: raw
            endpoints: ["{backend.url}"]
        """
    try:
        thread.start(tmp_path_factory.mktemp("fuzz-responses"), models, backend_retries=0)
        yield thread, backend
    finally:
        thread.call(backend.close())
        thread.stop()


def check(sent: BackendResponse, reply: Reply) -> str:
    """Judge lingo's answer to one crafted backend response; returns how it was handled."""
    if reply.from_lingo:
        assert reply.status == 502 and reply.is_openai_error(), reply
        return "502"
    assert 200 <= sent.status <= 599, f"lingo passed on status {sent.status}: {reply}"
    assert reply.status == sent.status, reply
    names = {name.lower() for name, _ in reply.headers}
    leaked = ({name.lower() for name in HOP_BY_HOP} - {"connection"} | sent.connection_tokens) & names
    assert not leaked, f"hop-by-hop headers reached the client: {leaked}"
    assert all(value.lower() == "close" for value in reply.all("Connection")), reply.all("Connection")
    assert all(value.lower() == "chunked" for value in reply.all("Transfer-Encoding")), reply
    dropped = LINGOS_OWN | sent.connection_tokens | {name.lower() for name in HOP_BY_HOP}
    for name, value in sent.headers:
        text = name.decode("latin-1")
        if text.lower() not in dropped:
            passed = reply.all(text)
            assert value.decode("latin-1").strip(" \t") in passed, f"{text}: {value[:40]!r} not passed on"
    assert reply.body == sent.delivered_body, (len(reply.body), len(sent.delivered_body))
    return "passed on"


def test_crafted_backend_responses_are_passed_on_sanely_or_answered_502(
    raw_lingo: tuple[LingoThread, RawBackend],
) -> None:
    lingo, backend = raw_lingo
    outcomes: dict[str, int] = {}

    @fuzz_settings(250)
    @given(sent=backend_responses())
    @example(sent=crafted([(b"X-Big", b"a" * 100_000)]))
    @example(sent=crafted([], filler=1000))
    @example(sent=crafted([], framing="length-twice"))
    @example(sent=crafted([], framing="length-conflict"))
    @example(sent=crafted([(b"X-Bad", b"a\x00b")]))
    @example(sent=crafted([(b"X-Latin", b"caf\xe9")]))
    @example(
        sent=crafted(
            HOP_BY_HOP_EXAMPLE,
            connection_tokens={"x-secret", "upgrade"},
        )
    )
    @example(sent=crafted([(b"Transfer-Encoding", b"gzip")], framing="close"))
    @example(sent=crafted([], framing="chunked-and-length"))
    def one(sent: BackendResponse) -> None:
        backend.behaviour = reply_with(sent.encode())
        try:
            reply = exchange(
                lingo.port,
                b"POST /v1/completions HTTP/1.1\r\nHost: lingo\r\nContent-Length: 15\r\n"
                b'Connection: close\r\n\r\n{"model":"raw"}',
                timeout=15,
            )
        except Truncated:
            # The backend broke off after its answer began: the client must see a cut response.
            assert sent.framing in ("length-short", "chunked-cut"), sent
            outcome = "cut"
        else:
            outcome = check(sent, reply)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    one()
    backend.behaviour = reply_with(VALID)
    assert http_post(lingo.port, "/v1/completions", b'{"model": "raw"}').status == 200
    assert (
        exchange(lingo.lingo.addresses["health"][1], b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status
        == 200
    )
    print(f"\nFIGURE crafted backend responses: {sum(outcomes.values())} answers, {outcomes}")
