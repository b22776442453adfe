"""Random request messages through each broker: every one is answered exactly once and acked once,
refused ones with 400, and the backend never sees a path outside the allowed list.

What each message deserves is worked out here from the envelope rules in docs/batch.md alone
(`expect`), not with lingo's parser.
Responses are matched to requests by their `request_message_id` attribute: the id the broker gave the
request when the test published it. One lingo runs on its own loop in a thread (`LingoThread`), with a
recording HTTP server as its only (static) model; broker clients run on that same loop.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import string
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from lingo.batch.brokers.base import REQUEST_MESSAGE_ID
from lingo.batch.envelope import DEFAULT_PATHS
from tests.batch.conftest import BrokerKit, MemKit, Response, decode, make_kit
from tests.batch.support import PubSubEmulator, emulator_launcher, reachable
from tests.fuzz.support import LingoThread, fuzz_settings

T = TypeVar("T")

ALLOWED = DEFAULT_PATHS
KNOWN_MODELS = ("fuzz", "fuzz-alias")
#: What the recording backend answers to every request.
BACKEND_ANSWER = {"object": "fuzz.answer", "choices": [{"text": "ok"}]}
#: Seconds to wait after the last example for anything answered twice (a redelivery).
QUIET = 1.5
#: Seconds one example's messages may take to be answered (a broker round trip takes milliseconds).
ANSWER_TIMEOUT = 10.0
#: Examples per broker: many in-process, fewer where every message is a network round trip.
EXAMPLES = {
    "mem": 300,
    "nats": 50,
    "rabbit": 50,
    "gcppubsub": 10,
    "awssqs": 30,
    "awssns": 15,
    "redisstream": 50,
    "kafka": 30,
}
#: Always tried first: a valid request whose own headers include `Status` (NATS once took it for
#: the server's status message and dropped it, unanswered, on every redelivery).
STATUS_HEADER = (b'{"metadata": {"custom_id": "s"}, "body": {"model": "fuzz"}}', {"Status": "404"})

# -- what a message deserves (docs/batch.md) ----------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """The answer a request message deserves."""

    #: 400 refused envelope, 404 unknown model, 504 deadline already past, 200 forwarded (the
    #: backend always answers 200).
    status: int
    #: The metadata echoed back: the request's when it is a JSON object, else None.
    metadata: Any
    #: The JSON body the backend must receive (once), None when nothing may be forwarded.
    forwarded: bytes | None = None


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def expect(data: bytes) -> Expected:
    """What docs/batch.md says the message `data` must be answered with.

    JSON is read as lingo reads it (orjson: no BOM, numbers beyond 64 bits as doubles, the last of
    duplicate keys); which documents are valid envelopes is decided from the spec here.
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Expected(400, None)
    if not isinstance(document, dict) or not isinstance(document.get("metadata"), dict):
        return Expected(400, None)
    metadata = document["metadata"]
    refused = Expected(400, metadata)
    if set(document) - {"path", "metadata", "body", "options"}:
        return refused
    path = document.get("path")  # null counts as absent: the default path
    if path is not None and not (isinstance(path, str) and path in ALLOWED):
        return refused
    body = document.get("body")
    if not isinstance(body, dict):
        return refused
    model = body.get("model")
    if not isinstance(model, str) or not model or body.get("stream") is True:
        return refused
    options = document.get("options")
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"timeout_seconds", "max_attempts", "deadline"}:
            return refused
        timeout = options.get("timeout_seconds")
        if timeout is not None and not (
            is_number(timeout) and math.isfinite(timeout) and 0 < timeout <= 86400
        ):
            return refused
        attempts = options.get("max_attempts")
        if attempts is not None and not (type(attempts) is int and 1 <= attempts <= 20):
            return refused
        deadline = options.get("deadline")
        if deadline is not None and not (is_number(deadline) and math.isfinite(deadline) and deadline > 0):
            return refused
        if deadline is not None and deadline < time.time():  # past on receipt: answered at once
            return Expected(504, metadata)
    if model not in KNOWN_MODELS:
        return Expected(404, metadata)
    return Expected(200, metadata, orjson.dumps(body))


# -- strategies -------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
TRICKY_PATHS = [
    "",
    "/",
    "v1/completions",
    "/v1",
    "/v1/models",
    "/metrics",
    "/healthz",
    "/admin",
    "//evil.example/v1/completions",
    "http://evil.example/v1/completions",
    "https://127.0.0.1/v1/chat/completions",
    "file:///etc/passwd",
    "../../etc/passwd",
    "/v1/../v1/completions",
    "/v1/./completions",
    "/v1/completions/../embeddings",
    "/v1//completions",
    "/V1/COMPLETIONS",
    "\\v1\\completions",
    "/v1/%63ompletions",
    "/v1/completions%3Fx=1",
    "/v1/chat/completions\r\nX-Injected: 1",
    "/v1/embeddings\x00",
    " /v1/completions",
]
paths = st.one_of(
    st.sampled_from(sorted(ALLOWED)),
    st.sampled_from(TRICKY_PATHS),
    st.builds(
        str.__add__,
        st.sampled_from(sorted(ALLOWED)),
        st.sampled_from(["/", "?", "?stream=true", "#x", "/..", "/.", "%00", " ", "\n", ";x", "//"]),
    ),
    st.text(alphabet="/.?#:@%&=;\\ abvc1-", max_size=24),
    st.text(max_size=24),
    json_values,
)
models = st.one_of(
    st.sampled_from(KNOWN_MODELS),
    st.sampled_from(["", "unknown", "FUZZ", "fuzz ", "fuzz\x00"]),
    st.text(max_size=10),
    json_values,
)
bodies = st.one_of(
    st.builds(
        lambda extra, base: {**extra, **base},
        st.dictionaries(st.text(max_size=8), json_values, max_size=2),
        st.fixed_dictionaries(
            {"model": models},
            optional={
                "prompt": json_values,
                "messages": json_values,
                "stream": st.just(True) | json_values,
                "max_tokens": json_values,
            },
        ),
    ),
    json_values,
)
option_values = st.one_of(
    st.sampled_from([0, -1, 1, 5, 20, 21, 0.5, 1e-9, 5e-324, 86400, 86400.5, 1e308, True, False, None, "5"]),
    json_values,
)
options = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "timeout_seconds": option_values,
            "max_attempts": option_values,
            "deadline": option_values,
        },
    ),
    st.dictionaries(
        st.sampled_from(["timeout", "max_attempt", "retries", "Timeout_seconds"]) | st.text(max_size=8),
        option_values,
        min_size=1,
        max_size=2,
    ),
    json_values,
)
metadatas = st.one_of(st.dictionaries(st.text(max_size=8), json_values, max_size=4), json_values)
extra_keys = st.one_of(
    st.just({}),
    st.dictionaries(
        st.sampled_from(["metdata", "Path", "model", "custom_id", "url"]) | st.text(max_size=8),
        json_values,
        min_size=1,
        max_size=2,
    ),
)
#: Envelopes that are mostly right: metadata and body present, anything else may be off.
near_valid = st.builds(
    lambda extra, base: {**extra, **base},
    extra_keys,
    st.fixed_dictionaries(
        {"metadata": metadatas, "body": bodies},
        optional={"path": paths, "options": options},
    ),
)
#: Envelopes the spec accepts (a few name an unknown model): metadata and bodies of any content.
valid = st.fixed_dictionaries(
    {
        "metadata": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        "body": st.builds(
            lambda extra, model: {**extra, "model": model},
            st.dictionaries(st.text(max_size=8), json_values, max_size=3),
            st.sampled_from(KNOWN_MODELS) | st.text(min_size=1, max_size=6),
        ),
    },
    optional={
        "path": st.sampled_from(sorted(ALLOWED)) | st.none(),
        "options": st.fixed_dictionaries(
            {},
            optional={
                "timeout_seconds": st.floats(min_value=1e-9, max_value=86400) | st.integers(1, 86400),
                "max_attempts": st.integers(1, 20) | st.none(),
            },
        ),
    },
)
#: Any keys an envelope may have, each present or not.
anything = st.builds(
    lambda extra, base: {**extra, **base},
    extra_keys,
    st.fixed_dictionaries(
        {}, optional={"path": paths, "metadata": metadatas, "body": bodies, "options": options}
    ),
)
RAW = [
    b"",
    b"null",
    b"[]",
    b'"metadata"',
    b"NaN",
    b"{",
    b"\xef\xbb\xbf" + b'{"metadata": {}, "body": {"model": "fuzz"}}',
    b' \n{"metadata": {}, "body": {"model": "fuzz"}}\n ',
    b'{"metadata": {}, "body": {"model": "fuzz"}} trailing',
    b'{"metadata": {}, "body": {"model": "fuzz"}}\x00',
    b'{"metadata": {"n": 123456789012345678901234567890}, "body": {"model": "fuzz"}}',
    b'{"metadata": {}, "body": {"model": "fuzz"}, "options": {"timeout_seconds": 1e999}}',
    b'{"metadata": {}, "body": {"model": "fuzz"}, "options": {"deadline": 1}}',
    b'{"metadata": {}, "body": {"model": "nope"}, "options": {"deadline": 1e308}}',
    b'{"metadata": {}, "body": {"model": "fuzz", "x": NaN}}',
    b'{"metadata": {"a": "\\ud800"}, "body": {"model": "fuzz"}}',
    '{"metadata": {}, "body": {"model": "fuzz"}}'.encode("utf-16"),
]


def duplicate_keys(pairs: list[tuple[str, Any]]) -> bytes:
    """An object whose keys may repeat (the JSON text allows it; the last one counts)."""
    return b"{" + b",".join(orjson.dumps(key) + b":" + orjson.dumps(value) for key, value in pairs) + b"}"


payloads = st.one_of(
    valid.map(orjson.dumps),
    valid.map(orjson.dumps),
    near_valid.map(orjson.dumps),
    near_valid.map(orjson.dumps),
    anything.map(orjson.dumps),
    json_values.map(orjson.dumps),
    st.lists(
        st.tuples(st.sampled_from(["path", "metadata", "body", "options"]), json_values | near_valid),
        max_size=4,
    ).map(duplicate_keys),
    st.sampled_from(RAW),
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
)
HEADER_TEXT = "".join(c for c in string.printable if c not in "\r\n\x0b\x0c")
attribute_keys = st.one_of(
    st.sampled_from([REQUEST_MESSAGE_ID, "Status", "Description", "custom_id", "content-type"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,15}", fullmatch=True),
)
attributes = st.dictionaries(attribute_keys, st.text(alphabet=HEADER_TEXT, max_size=30), max_size=3)


def usable_attributes(broker: str, attrs: dict[str, str], data: bytes) -> dict[str, str]:
    """Attributes the broker's own client and server accept (the broker, not lingo, refuses others)."""
    if broker == "nats":  # Nats-Msg-Id would deduplicate messages, Nats-* are the server's
        attrs = {k: v for k, v in attrs.items() if not k.lower().startswith("nats-")}
    if broker == "gcppubsub":
        attrs = {k: v for k, v in attrs.items() if not k.lower().startswith("goog")}
        if not data and not attrs:  # Pub/Sub refuses a message with neither data nor attributes
            attrs = {"empty": "yes"}

    if broker in ("awssqs", "awssns"):  # attribute values must not be empty
        attrs = {k: v for k, v in attrs.items() if v}
    if broker == "redisstream":  # the field `data` is the envelope itself
        attrs = {k: v for k, v in attrs.items() if k != "data"}
    return attrs


#: Characters an SQS message body may hold (XML's), besides the rest of the BMP and beyond.
SQS_CONTROL = frozenset("\t\n\r")


def usable_payload(broker: str, data: bytes) -> bool:
    """Whether the broker carries `data` at all: SQS and SNS take non-empty text of XML characters."""
    if broker not in ("awssqs", "awssns"):
        return True
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return False
    return bool(text) and all(
        (c >= " " or c in SQS_CONTROL) and not ("\ud800" <= c <= "\udfff") and c not in "\ufffe\uffff"
        for c in text
    )


def batches(broker: str) -> st.SearchStrategy[list[tuple[bytes, dict[str, str]]]]:
    message = (
        st.tuples(payloads, attributes)
        .filter(lambda m: usable_payload(broker, m[0]))
        .map(lambda m: (m[0], usable_attributes(broker, m[1], m[0])))
    )
    return st.lists(message, min_size=1, max_size=4)


# -- the harness ------------------------------------------------------------------------------------


class Backend:
    """The only model: an HTTP server recording each request's method, raw path and body."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.requests.append((request.method, request.raw_path, await request.read()))
            return web.json_response(BACKEND_ANSWER)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Harness:
    """One lingo, one broker kit, one backend; publishes batches and checks every answer."""

    def __init__(self, kit: BrokerKit, tmp: Path) -> None:
        self.kit = kit
        self.tmp = tmp
        self.thread = LingoThread()
        self.backend = Backend()
        #: What each published request deserves, by the id lingo answers with.
        self.expected: dict[str, Expected] = {}

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 90.0) -> T:
        return self.thread.call(coroutine, timeout)

    def start(self) -> None:
        self.call(self.backend.start())
        self.call(self.kit.setup())
        models_yaml = f"""
            models:
              - name: fuzz
                models: [{", ".join(KNOWN_MODELS)}]
                endpoints: ["{self.backend.url}"]
                concurrency: 1000
        """
        self.thread.start(self.tmp, models_yaml, messengers=[self.kit.messenger(max_handlers=20)])

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.thread.lingo.stop())
        with contextlib.suppress(Exception):
            self.call(self.kit.cleanup())
        with contextlib.suppress(Exception):
            self.call(self.backend.stop())
        self.thread.stop()

    def exchange(self, batch: list[tuple[bytes, dict[str, str]]]) -> None:
        """Publish `batch`, wait for its answers, check each."""
        self.call(self._exchange(batch))

    async def _exchange(self, batch: list[tuple[bytes, dict[str, str]]]) -> None:
        ids: list[str] = []
        for data, attrs in batch:
            message_id = await self.kit.publish(data, attrs)
            assert message_id not in self.expected, f"the broker reused message id {message_id}"
            self.expected[message_id] = expect(data)
            ids.append(message_id)
        answers = await self._wait_answered(set(ids), timeout=ANSWER_TIMEOUT)
        for (data, _), message_id in zip(batch, ids, strict=True):
            check(answers[message_id], self.expected[message_id], data)

    async def _wait_answered(self, ids: set[str], timeout: float) -> dict[str, Response]:
        loop = self.thread.loop
        deadline = loop.time() + timeout
        while True:
            answers = {answer_id(r): r for r in self.kit.collected if answer_id(r) in ids}
            if len(answers) == len(ids):
                return answers
            remaining = deadline - loop.time()
            assert remaining > 0, f"{len(ids) - len(answers)} message(s) never answered: {ids - set(answers)}"
            for data, attrs in await self.kit.receive(min(0.5, remaining)):
                self.kit.collected.append(decode(data, attrs))

    def finish(self) -> dict[str, int]:
        """After the examples: nothing answered twice, nothing left unacked, the backend saw only
        allowed paths and exactly the forwardable bodies. Returns counts for the figure."""
        self.call(self.kit.quiet(QUIET))
        answered = collections.Counter(answer_id(r) for r in self.kit.collected)
        self.call(self.thread.lingo.stop())
        left = self.call(self.kit.requests_left())

        assert set(answered) == set(self.expected), set(answered) ^ set(self.expected)
        twice = {message_id: count for message_id, count in answered.items() if count != 1}
        assert not twice, f"answered more than once: {twice}"
        assert left == 0, f"{left} request(s) left unacked on the broker"
        if isinstance(self.kit, MemKit):
            deliveries = collections.Counter(message.deliveries for message in self.kit.published)
            assert deliveries == {1: len(self.expected)}, deliveries
        seen_paths = {path for _, path, _ in self.backend.requests}
        assert seen_paths <= ALLOWED, seen_paths - ALLOWED
        assert {method for method, _, _ in self.backend.requests} <= {"POST"}
        forwarded = collections.Counter(e.forwarded for e in self.expected.values() if e.forwarded)
        received = collections.Counter(
            orjson.dumps(orjson.loads(body)) for _, _, body in self.backend.requests
        )
        assert received == forwarded, "the backend got other bodies than the valid envelopes' (or not once)"
        statuses = collections.Counter(e.status for e in self.expected.values())
        return {
            "messages": len(self.expected),
            "ok": statuses[200],
            "unknown_model": statuses[404],
            "refused": statuses[400],
            "deadline_passed": statuses[504],
            "backend_requests": len(self.backend.requests),
        }


def answer_id(response: Response) -> str:
    return response.attributes.get(REQUEST_MESSAGE_ID, "")


def check(response: Response, expected: Expected, data: bytes) -> None:
    """One answer against what its request deserves."""
    shown = data[:200]
    assert response.status_code == expected.status, (response, shown)
    # Unchanged means the same JSON, keys in the same order (and 1 is not true).
    assert orjson.dumps(response.metadata) == orjson.dumps(expected.metadata), (response.metadata, shown)
    if expected.status == 200:
        assert response.body == BACKEND_ANSWER, (response, shown)
        assert response.error is None, response
        return
    error = response.body.get("error") if isinstance(response.body, dict) else None
    assert isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"], response
    if expected.status == 404:
        assert error.get("code") == "model_not_found", response
    code = {400: "INVALID_REQUEST", 404: "MODEL_NOT_FOUND", 504: "DEADLINE_EXCEEDED"}[expected.status]
    assert response.error["code"] == code and response.error["message"], response


# -- brokers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pubsub_emulator_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's emulator when one runs (PUBSUB_EMULATOR_HOST), else a private one for this module."""
    current = os.environ.get("PUBSUB_EMULATOR_HOST")
    if current and reachable(f"//{current}", 8085):
        yield current
        return
    reason = PubSubEmulator.unavailable()
    if reason is not None:
        pytest.skip(reason)
    emulator = PubSubEmulator(str(emulator_launcher()), tmp_path_factory.mktemp("pubsub"))
    emulator.start()
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.address
    try:
        yield emulator.address
    finally:
        if current is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = current
        emulator.stop()


@pytest.fixture
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    kit = make_kit(request.param, request, emulator_fixture="pubsub_emulator_host")
    running = Harness(kit, tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("harness", list(EXAMPLES), indirect=True)
def test_every_random_message_is_answered_once_refused_ones_400_and_only_allowed_paths_reach_the_backend(
    harness: Harness,
) -> None:
    broker = harness.kit.name

    # Shrinking re-runs failing examples, each waiting ANSWER_TIMEOUT: only in-process, where it is cheap.
    phases = list(Phase) if broker == "mem" else [Phase.explicit, Phase.reuse, Phase.generate]

    @settings(fuzz_settings(EXAMPLES[broker]), phases=phases)
    @given(batches(broker))
    @example([STATUS_HEADER])
    def run(batch: list[tuple[bytes, dict[str, str]]]) -> None:
        harness.exchange(batch)

    run()
    counts = harness.finish()
    print(
        f"\nFIGURE envelope-fuzz broker={broker} examples={EXAMPLES[broker]} messages={counts['messages']} "
        f"forwarded_200={counts['ok']} unknown_model_404={counts['unknown_model']} "
        f"refused_400={counts['refused']} deadline_504={counts['deadline_passed']} "
        f"backend_requests={counts['backend_requests']} "
        f"answered_exactly_once={counts['messages']} disallowed_paths_seen=0"
    )
