"""Batch stream specs and broker URLs (see docs/batch.md), parsed and checked without any I/O.

A stream is `REQUESTS_URL|RESPONSES_URL[|MAX_HANDLERS]`. Each URL names a place on one broker:

- `gcppubsub://projects/P/subscriptions/S` to receive, `gcppubsub://projects/P/topics/T` to publish;
- `nats://SUBJECT[?stream=NAME&consumer=NAME&ack_wait=30s]` (JetStream);
- `rabbit://QUEUE` to receive, `rabbit://EXCHANGE` (or a queue name) to publish;
- `awssqs://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE[?region=R]` to receive or publish, and
  `awssns:///arn:aws:sns:REGION:ACCOUNT:TOPIC[?region=R]` to publish (one kind of broker: AWS);
- `redisstream://STREAM?group=GROUP[&lease=30s]` to receive, `redisstream://STREAM[?maxlen=N]` to publish;
- `kafka://GROUP?topic=TOPIC` to receive, `kafka://TOPIC` to publish;
- `mem://NAME`, an in-process topic for tests and demos.

A receiving URL may add `model=NAME`: the backlog the broker reports then counts as demand for
that model (a scaling signal before any message was pulled). Unknown query keys are refused so
typos surface at start-up instead of being ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote

from lingo.config import ConfigError, parse_duration

#: Handlers per stream when the spec names none: messages handled (waiting or running) at once.
DEFAULT_MAX_HANDLERS = 100
#: Largest MAX_HANDLERS accepted; beyond this a typo is more likely than a plan.
MAX_HANDLERS_LIMIT = 100_000

SCHEMES = ("gcppubsub", "nats", "rabbit", "awssqs", "awssns", "redisstream", "kafka", "mem")
#: Schemes that are one kind of broker: a stream may receive with one and publish with the other.
_KINDS = {"awssqs": "aws", "awssns": "aws"}

#: `receive`: a place messages are pulled from; `publish`: a place messages are sent to.
Role = Literal["receive", "publish"]

_QUERY_KEYS: dict[str, frozenset[str]] = {
    "gcppubsub": frozenset(),
    "nats": frozenset({"stream", "consumer", "ack_wait"}),
    "rabbit": frozenset(),
    "awssqs": frozenset({"region"}),
    "awssns": frozenset({"region"}),
    "redisstream": frozenset({"group", "lease", "maxlen"}),
    "kafka": frozenset({"topic"}),
    "mem": frozenset(),
}
_RECEIVE_ONLY_KEYS = frozenset({"model", "consumer", "ack_wait", "group", "lease", "topic"})
_PUBLISH_ONLY_KEYS = frozenset({"maxlen"})
#: Query keys a receiving URL of the scheme must have.
_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {"redisstream": ("group",), "kafka": ("topic",)}
_SQS_PATH = re.compile(r"([^/\s]+)/([0-9A-Za-z_-]{1,64})/([A-Za-z0-9_-]{1,80}(?:\.fifo)?)")
_SNS_ARN = re.compile(
    r"arn:aws[A-Za-z-]*:sns:([a-z0-9-]+):([0-9A-Za-z_-]{1,64}):([A-Za-z0-9_-]{1,256}(?:\.fifo)?)"
)
_SQS_HOST_REGION = re.compile(r"sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")
_KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_PUBSUB_ID = r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}"
_PUBSUB_PATHS = {
    "receive": re.compile(rf"projects/([^/\s]+)/subscriptions/({_PUBSUB_ID})"),
    "publish": re.compile(rf"projects/([^/\s]+)/topics/({_PUBSUB_ID})"),
}
_NATS_TOKEN = re.compile(r"[^\s.*>]+")
_JS_NAME = re.compile(r"[A-Za-z0-9_\-]+")
_PLAIN_NAME = re.compile(r"[^\s/?#]{1,255}")
_CREDENTIALS = re.compile(r"(?<=://)[^/@?#]*@")


@dataclass(frozen=True)
class BrokerURL:
    """One place on a broker: where requests are received from or responses published to."""

    #: The URL as configured.
    url: str
    #: One of `SCHEMES`.
    scheme: str
    #: What the URL names: a Pub/Sub resource path, a NATS subject, a queue or exchange, an SQS
    #: queue path (`HOST/ACCOUNT/QUEUE`), an SNS topic ARN, a Redis stream, a Kafka consumer group
    #: (receiving) or topic (publishing), a mem topic.
    name: str
    #: Whether messages are received from or published to this place.
    role: Role
    #: Query parameters (`model`, and per scheme e.g. `stream`, `consumer`).
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The URL without credentials: safe for logs and metric labels."""
        return _CREDENTIALS.sub("", self.url)

    @property
    def place(self) -> str:
        """Where the messages are: the name, except a Kafka group's topic."""
        if self.scheme == "kafka" and self.role == "receive":
            return self.params["topic"]
        if self.scheme == "awssns":
            return self.name.rpartition(":")[2]
        if self.scheme == "awssqs":
            return self.name.rpartition("/")[2]
        return self.name

    @property
    def model(self) -> str | None:
        """The model whose demand this place's backlog adds to (`?model=`), if any."""
        return self.params.get("model") or None


@dataclass(frozen=True)
class StreamSpec:
    """One batch stream: where requests come from, where responses go, how many run at once."""

    #: Where request messages are received from.
    requests: BrokerURL
    #: Where response messages are published to.
    responses: BrokerURL
    #: Messages handled at once (queued in lingo or running on a backend); also the broker-side
    #: bound on outstanding messages (Pub/Sub flow control, RabbitMQ prefetch, NATS fetch size).
    max_handlers: int = DEFAULT_MAX_HANDLERS

    @property
    def label(self) -> str:
        """The stream's name in logs and metrics: its requests URL without credentials."""
        return self.requests.label


def parse_url(text: str, role: Role) -> BrokerURL:
    """A broker URL for `role`; raises ConfigError naming the URL and what is wrong with it."""
    url = text.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ConfigError(f"batch URL {url!r}: scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    rest, _, query = rest.partition("?")
    name = unquote(_CREDENTIALS.sub("", f"://{rest}")[3:])
    if scheme == "awssns":
        name = name.removeprefix("/")  # awssns:///arn:… (gocloud's form: an empty host)
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigError(f"batch URL {url!r}: malformed query string") from None
    params = dict(pairs)
    allowed = _QUERY_KEYS[scheme] | {"model"}
    allowed = allowed - (_RECEIVE_ONLY_KEYS if role == "publish" else _PUBLISH_ONLY_KEYS)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(
            f"batch URL {url!r}: unknown parameter(s) {', '.join(unknown)} "
            f"(allowed here: {', '.join(sorted(allowed)) or 'none'})"
        )
    if len(pairs) != len(params):
        raise ConfigError(f"batch URL {url!r}: a parameter is given twice")
    if role == "receive":
        for key in _REQUIRED_KEYS.get(scheme, ()):
            if not params.get(key):
                raise ConfigError(f"batch URL {url!r}: {scheme}:// needs ?{key}= where requests are received")
    _check_name(url, scheme, name, role)
    _check_params(url, params)
    return BrokerURL(url=url, scheme=scheme, name=name, role=role, params=params)


def _check_name(url: str, scheme: str, name: str, role: Role) -> None:
    if scheme == "gcppubsub":
        if not _PUBSUB_PATHS[role].fullmatch(name):
            kind = "subscriptions/S" if role == "receive" else "topics/T"
            raise ConfigError(
                f"batch URL {url!r}: expected gcppubsub://projects/P/{kind} "
                f"(names of 3-255 characters starting with a letter)"
            )
    elif scheme == "nats":
        tokens = name.split(".")
        for i, token in enumerate(tokens):
            wildcard = token == "*" or (token == ">" and i == len(tokens) - 1)
            if role == "receive" and wildcard:
                continue
            if not _NATS_TOKEN.fullmatch(token):
                raise ConfigError(
                    f"batch URL {url!r}: not a NATS subject (dot-separated tokens without spaces"
                    + ("; wildcards only where messages are received)" if wildcard else ")")
                )
    elif scheme == "awssqs":
        if not _SQS_PATH.fullmatch(name):
            raise ConfigError(
                f"batch URL {url!r}: expected awssqs://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE "
                f"(queue names of 1-80 letters, digits, '-' or '_')"
            )
    elif scheme == "awssns":
        if role == "receive":
            raise ConfigError(
                f"batch URL {url!r}: SNS topics are only published to; receive from an SQS queue "
                f"subscribed to the topic (awssqs://…)"
            )
        if not _SNS_ARN.fullmatch(name):
            raise ConfigError(f"batch URL {url!r}: expected awssns:///arn:aws:sns:REGION:ACCOUNT:TOPIC")
    elif scheme == "kafka":
        if not _KAFKA_NAME.fullmatch(name):
            what = "GROUP" if role == "receive" else "TOPIC"
            raise ConfigError(
                f"batch URL {url!r}: expected kafka://{what} (1-249 letters, digits, '.', '_' or '-')"
            )
    elif not _PLAIN_NAME.fullmatch(name):
        raise ConfigError(f"batch URL {url!r}: expected {scheme}://NAME (1-255 characters, no spaces or /)")


def _check_params(url: str, params: Mapping[str, str]) -> None:
    for key in ("stream", "consumer"):
        value = params.get(key)
        if value is not None and not _JS_NAME.fullmatch(value):
            raise ConfigError(f"batch URL {url!r}: {key} must be letters, digits, '-' or '_', got {value!r}")
    if "model" in params and not params["model"].strip():
        raise ConfigError(f"batch URL {url!r}: model must not be empty")
    for key in ("ack_wait", "lease"):
        if key in params:
            try:
                seconds = parse_duration(params[key])
            except ValueError as exc:
                raise ConfigError(f"batch URL {url!r}: {key}: {exc}") from None
            if seconds < 1:
                raise ConfigError(f"batch URL {url!r}: {key} must be at least 1s")
    if "topic" in params and not _KAFKA_NAME.fullmatch(params["topic"]):
        raise ConfigError(f"batch URL {url!r}: topic must be 1-249 letters, digits, '.', '_' or '-'")
    if "group" in params and not _PLAIN_NAME.fullmatch(params["group"]):
        raise ConfigError(f"batch URL {url!r}: group must be 1-255 characters without spaces or /")
    if "maxlen" in params and not (params["maxlen"].isdigit() and int(params["maxlen"]) >= 1):
        raise ConfigError(f"batch URL {url!r}: maxlen must be a whole number of at least 1")
    if "region" in params and not re.fullmatch(r"[a-z0-9-]{1,32}", params["region"]):
        raise ConfigError(f"batch URL {url!r}: region must be an AWS region name such as us-east-1")


def ack_wait_seconds(url: BrokerURL, default: float) -> float:
    """The NATS `ack_wait` of a receiving URL, in seconds (checked when the URL was parsed)."""
    value = url.params.get("ack_wait")
    return parse_duration(value) if value else default


def duration_param(url: BrokerURL, key: str, default: float) -> float:
    """A duration query parameter of `url` in seconds (checked when the URL was parsed)."""
    value = url.params.get(key)
    return parse_duration(value) if value else default


def aws_region(url: BrokerURL) -> str | None:
    """The AWS region of an `awssqs`/`awssns` URL: `?region=`, else the one its host or ARN names."""
    if url.params.get("region"):
        return url.params["region"]
    if url.scheme == "awssns":
        found = _SNS_ARN.fullmatch(url.name)
        return found.group(1) if found else None
    found = _SQS_PATH.fullmatch(url.name)
    host = _SQS_HOST_REGION.fullmatch(found.group(1)) if found else None
    return host.group(1) if host else None


def parse_stream(text: str) -> StreamSpec:
    """`REQUESTS_URL|RESPONSES_URL[|MAX_HANDLERS]` → StreamSpec; raises ConfigError naming the spec."""
    parts = [part.strip() for part in text.split("|")]
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(
            f"batch stream {text!r}: expected 'REQUESTS_URL|RESPONSES_URL[|MAX_HANDLERS]' (--messenger)"
        )
    requests = parse_url(parts[0], "receive")
    responses = parse_url(parts[1], "publish")
    if _KINDS.get(requests.scheme, requests.scheme) != _KINDS.get(responses.scheme, responses.scheme):
        raise ConfigError(f"batch stream {text!r}: requests and responses must be on the same kind of broker")
    max_handlers = DEFAULT_MAX_HANDLERS
    if len(parts) == 3:
        if not parts[2].isdigit() or not 1 <= int(parts[2]) <= MAX_HANDLERS_LIMIT:
            raise ConfigError(
                f"batch stream {text!r}: MAX_HANDLERS must be a whole number from 1 to {MAX_HANDLERS_LIMIT}"
            )
        max_handlers = int(parts[2])
    if (requests.scheme, requests.place) == (responses.scheme, responses.place):
        raise ConfigError(f"batch stream {text!r}: responses must not go where requests come from")
    return StreamSpec(requests, responses, max_handlers)


def parse_streams(specs: Iterable[str]) -> list[StreamSpec]:
    """Every configured stream; two streams receiving from the same place are refused."""
    streams = [parse_stream(spec) for spec in specs]
    seen: set[str] = set()
    for stream in streams:
        if stream.requests.url in seen:
            raise ConfigError(f"batch stream {stream.requests.url!r} is configured twice")
        seen.add(stream.requests.url)
    return streams


def subject_matches(pattern: str, subject: str) -> bool:
    """True when NATS subject `pattern` (with `*` and `>` wildcards) covers `subject`."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)
