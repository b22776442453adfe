"""Random and malformed requests against one lingo: it answers each with a well-formed 4xx of its own
or the backend's answer, never a 5xx of its own, and keeps serving."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.conftest import FakeModelProcess
from tests.fuzz.support import LingoThread, Reply, assert_still_serving, exchange, fuzz_settings

#: Small on purpose, so oversized bodies are cheap to send.
MAX_BODY = 4096
TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"


@dataclass
class RawRequest:
    """A request as bytes: anything may be wrong with it except the framing of its body."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str  # "length", "chunked" or "none"
    chunk: int = 1000
    version: bytes = b"HTTP/1.1"

    def encode(self) -> bytes:
        lines = [self.method + b" " + self.target + b" " + self.version, b"Host: lingo"]
        lines += [name + b": " + value for name, value in self.headers]
        body = self.body
        if self.framing == "length":
            lines.append(b"Content-Length: %d" % len(body))
        elif self.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            pieces = [body[i : i + self.chunk] for i in range(0, len(body), self.chunk)]
            body = b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
        else:
            body = b""
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**20, max_value=10**300)
    | st.floats()
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
models = st.sampled_from(["static", "gpt-4o-mini", "nope", "", " ", "static ", "STATIC"]) | json_values


@st.composite
def json_bodies(draw: st.DrawFn, valid: bool = False) -> bytes:
    document = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=5))
    if valid or draw(st.integers(0, 4)):
        document["model"] = draw(st.sampled_from(["static", "gpt-4o-mini"]) if valid else models)
    if draw(st.booleans()):
        document["max_tokens"] = draw(st.integers(min_value=-5, max_value=50) | json_values)
    if draw(st.booleans()):
        document["stream"] = draw(st.booleans() | json_values)
    encoded = json.dumps(document).encode()
    if not valid and draw(st.integers(0, 9)) == 0:
        return encoded[: draw(st.integers(0, len(encoded)))]  # truncated JSON
    return encoded


def nested(depth: int) -> bytes:
    return b'{"model": "static", "x": ' + b"[" * depth + b"]" * depth + b"}"


broken_bodies = st.one_of(
    st.binary(max_size=600),
    st.integers(1, 5000).map(nested),
    st.integers(300, 3000).map(lambda n: b'{"model": "static", "n": 1' + b"0" * n + b"}"),
    st.just(b'{"model": "static", "n": 1e999999}'),
    st.sampled_from([b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\x00"]).map(
        lambda bad: b'{"model": "st' + bad + b'atic", "prompt": "x"}'
    ),
    st.integers(MAX_BODY + 1, 3 * MAX_BODY).map(
        lambda n: b'{"model": "static", "prompt": "' + b"x" * n + b'"}'
    ),
    st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    boundary = draw(st.text(alphabet=TOKEN, min_size=1, max_size=20)).encode()
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([b"model", b"file", b"", b'"model"', b"model; filename*=utf-8''x"]))
        value = draw(st.binary(max_size=50) | st.sampled_from([b"static", b"nope", b""]))
        parts.append(
            b'--%b\r\nContent-Disposition: form-data; name="%b"\r\n\r\n%b\r\n' % (boundary, name, value)
        )
    body = b"".join(parts) + (b"--%b--\r\n" % boundary if draw(st.booleans()) else b"")
    params = draw(
        st.sampled_from([b"boundary=" + boundary, b'boundary="' + boundary + b'"', b"", b"boundary="])
    )
    return b"multipart/form-data; " + params, body


content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data",
        b"multipart/form-data; boundary=",
        b"multipart/mixed; boundary=x",
        b"",
        b"*/*",
        b"application/json; charset=\xff",
    ]
) | st.binary(max_size=40).filter(lambda value: b"\r" not in value and b"\n" not in value)

methods = st.sampled_from(
    [b"POST"] * 6 + [b"GET", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"HEAD", b"TRACE", b"CONNECT", b"FROB"]
)
paths = st.sampled_from(
    [
        b"/v1/completions",
        b"/v1/chat/completions",
        b"/v1/embeddings",
        b"/v1/models",
        b"/v1/models/",
        b"/v1/models/static",
        b"/v1/models/%ff%00",
        b"/models",
        b"/echo/x?y=1&z",
        b"/",
        b"*",
        b"//v1//completions",
        b"/v1/completions?stream=true#frag",
        b"http://elsewhere.example/v1/completions",
        b"/../../etc/passwd",
        b"/%2e%2e/%2e%2e/",
    ]
) | st.binary(min_size=0, max_size=40).map(lambda raw: b"/" + "".join(f"%{b:02x}" for b in raw).encode())
header_names = st.sampled_from(
    [
        b"X-Model",
        b"Authorization",
        b"Accept",
        b"Accept-Encoding",
        b"Content-Encoding",
        b"Expect",
        b"Upgrade",
        b"Connection",
        b"Keep-Alive",
        b"TE",
        b"Trailer",
        b"Proxy-Authorization",
        b"X-Forwarded-For",
        b"Cookie",
    ]
) | st.text(alphabet=TOKEN, min_size=1, max_size=20).map(str.encode)
printable_values = st.text(alphabet=string.printable.strip() + " \t", max_size=60).map(str.encode)
# Hypothesis favours small draws, so the first choices are the common, plausible ones.
header_values = st.integers(0, 9).flatmap(
    lambda pick: (
        printable_values
        if pick < 6
        else st.sampled_from([b"static", b"", b"  ", b"nope", b"100-continue", b"gzip", b"close", b"upgrade"])
        if pick < 9
        else st.binary(max_size=60).filter(lambda value: b"\r" not in value and b"\n" not in value)
    )
)
openai_paths = st.sampled_from([b"/v1/completions", b"/v1/chat/completions", b"/v1/embeddings", b"/echo/x"])


@st.composite
def requests(draw: st.DrawFn) -> RawRequest:
    """Half plausible OpenAI calls with random details, half anything."""
    if draw(st.booleans()):
        headers = draw(st.lists(st.tuples(header_names, printable_values), max_size=4))
        headers = [(name, value) for name, value in headers if name.lower() not in _FRAMING_AND_MODEL]
        return RawRequest(
            method=b"POST",
            target=draw(openai_paths),
            headers=[*headers, (b"Content-Type", b"application/json")],
            body=draw(json_bodies(valid=True)),
            framing=draw(st.sampled_from(["length", "chunked"])),
            chunk=draw(st.integers(1, 2000)),
        )
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    kind = draw(st.sampled_from(["json", "json", "json", "broken", "multipart", "empty"]))
    if kind == "multipart":
        content_type, body = draw(multipart_bodies())
        headers.append((b"Content-Type", content_type))
    else:
        body = {"json": json_bodies, "broken": lambda: broken_bodies, "empty": lambda: st.just(b"")}[kind]()
        body = draw(body)
        if draw(st.booleans()):
            headers.append((b"Content-Type", draw(content_types)))
    draw(st.randoms()).shuffle(headers)
    return RawRequest(
        method=draw(methods),
        target=draw(paths),
        headers=headers,
        body=body,
        framing=draw(st.sampled_from(["length", "length", "length", "chunked", "none"])),
        chunk=draw(st.integers(1, 2000)),
        version=draw(st.sampled_from([b"HTTP/1.1"] * 5 + [b"HTTP/1.0"])),
    )


#: Headers the plausible requests leave alone (the builder frames the body; X-Model would override).
_FRAMING_AND_MODEL = {
    b"x-model",
    b"connection",
    b"upgrade",
    b"expect",
    b"content-encoding",
    b"te",
    b"trailer",
}


@pytest.fixture(scope="module")
def lingo_for_requests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LingoThread]:
    """One lingo for the whole module: model `static` (alias `gpt-4o-mini`) on a healthy fake model."""
    backend = FakeModelProcess().wait_ready()
    models = f"""
        models:
          - name: static
            models: [static, gpt-4o-mini]
            endpoints: ["{backend.url}"]
        """
    lingo = LingoThread()
    try:
        yield lingo.start(
            tmp_path_factory.mktemp("fuzz-requests"), models, max_body=MAX_BODY, backend_retries=1
        )
    finally:
        lingo.stop()
        backend.kill()


def post(
    body: bytes,
    framing: str = "length",
    content_type: bytes = b"application/json",
    path: bytes = b"/v1/completions",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> RawRequest:
    """An explicit example: always covered, whatever the random draws."""
    headers = [*(headers or []), (b"Content-Type", content_type)]
    return RawRequest(method=b"POST", target=path, headers=headers, body=body, framing=framing)


def check(reply: Reply, head_request: bool) -> None:
    """Lingo's own answers are well-formed 4xx errors (or the model list); 5xx only from the backend."""
    if reply.from_lingo:
        assert reply.status < 500, reply
        if reply.status >= 400 and not head_request:
            assert reply.is_openai_error(), reply
    else:
        assert reply.header("X-Served-By") or reply.status < 500, reply


def test_random_requests_get_well_formed_answers_and_never_a_lingo_5xx(
    lingo_for_requests: LingoThread,
) -> None:
    seen: dict[int, int] = {}

    @fuzz_settings(300)
    @given(request=requests())
    @example(request=post(b'{"model": "static", "prompt": "' + b"x" * (2 * MAX_BODY) + b'"}'))  # 413
    @example(request=post(b'{"model": "static", "prompt": "' + b"x" * (2 * MAX_BODY) + b'"}', "chunked"))
    @example(request=post(nested(1500)))  # deeper than the JSON parser goes
    @example(request=post(b'{"model": "static", "max_tokens": 1' + b"0" * 5000 + b"}"))
    @example(request=post(b'{"model": "st\xff\xfeatic"}'))
    @example(request=post(b'{"model": "static", "prompt": "\xed\xa0\x80"}'))
    @example(request=post(b"\x1f\x8b\x08\x00garbage", content_type=b"application/json"))
    @example(
        request=post(
            b"--b\r\nContent-Disposition: form-data; name=model\r\n\r\nstatic\r\n--b--\r\n",
            content_type=b"multipart/form-data; boundary=b",
        )
    )
    @example(request=post(b'{"model": "static"}', content_type=b"text/plain; charset=\xff"))
    @example(
        request=post(b'{"model": "static", "stream": true, "max_tokens": 5}', path=b"/v1/chat/completions")
    )
    @example(request=post(b"", headers=[(b"X-Model", b"static"), (b"Expect", b"100-continue")]))
    @example(request=post(b"[]"))
    def one(request: RawRequest) -> None:
        head = request.method == b"HEAD"
        reply = exchange(lingo_for_requests.port, request.encode(), head_request=head)
        check(reply, head)
        seen[reply.status] = seen.get(reply.status, 0) + 1

    one()
    assert_still_serving(lingo_for_requests, "static")
    print(
        f"\nFIGURE HTTP fuzz: {sum(seen.values())} requests, answers by status {dict(sorted(seen.items()))}"
    )


VALID_HEAD = (
    b"POST /v1/completions?x=1 HTTP/1.1\r\nHost: lingo\r\nX-Model: static\r\nAccept: */*\r\n"
    b"Authorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close"
)


@st.composite
def mutated_heads(draw: st.DrawFn) -> bytes:
    """A valid body-less request head with random bytes replaced, inserted or deleted (never its end)."""
    head = bytearray(VALID_HEAD)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(head) - 1))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.integers(0, 255) | st.sampled_from([0x00, 0x09, 0x0A, 0x0D, 0x20, 0x3A, 0x7F, 0xFF]))
        if action == "replace":
            head[at] = byte
        elif action == "insert":
            head.insert(at, byte)
        elif len(head) > 1:
            del head[at]
    return bytes(head) + b"\r\n\r\n"


def test_mutated_request_heads_get_well_formed_answers_and_never_a_lingo_5xx(
    lingo_for_requests: LingoThread,
) -> None:
    seen: dict[int, int] = {}

    @fuzz_settings(200)
    @given(head=mutated_heads())
    def one(head: bytes) -> None:
        reply = exchange(lingo_for_requests.port, head, head_request=head.startswith(b"HEAD "), timeout=10)
        check(reply, head.startswith(b"HEAD "))
        seen[reply.status] = seen.get(reply.status, 0) + 1

    one()
    assert_still_serving(lingo_for_requests, "static")
    print(
        f"\nFIGURE mutated request heads: {sum(seen.values())} requests, "
        f"answers by status {dict(sorted(seen.items()))}"
    )
