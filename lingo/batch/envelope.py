"""Batch envelopes: request messages parsed and checked, response messages built.

Pure code, no I/O. A request that can never succeed — not JSON, not an object, a path outside the
allowed list, `stream: true`, a typo in `options` — raises `EnvelopeError`, which carries the
400 response to publish, so such a message is answered and acked instead of redelivered forever.

A response lingo makes up itself (no backend answered) carries a typed `error` beside
`status_code`: `{"code": one of ERROR_CODES, "message": ...}`; its `body` still holds the OpenAI
error body, so consumers that read only `status_code` and `body` keep working.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from lingo.errors import BadRequest, LingoError

#: Path used when a request names none.
DEFAULT_PATH = "/v1/completions"
#: Paths a request may name unless the stream is configured otherwise.
DEFAULT_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings"})
#: Upper bound of `options.max_attempts`.
MAX_ATTEMPTS_LIMIT = 20
#: Upper bound of `options.timeout_seconds` (one day).
MAX_TIMEOUT_SECONDS = 86_400.0

#: The request's `options.deadline` passed before it got an answer.
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
#: The message is not a valid envelope; it was never forwarded.
INVALID_REQUEST = "INVALID_REQUEST"
#: No model of that name is served.
MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
#: The answer was larger than the broker accepts; this small error was published instead.
RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
#: Any other failure without a backend answer: unreachable, no endpoint in time, queue full after
#: every attempt, or a message delivered more than `LINGO_BATCH_MAX_DELIVERIES` times.
INFERENCE_ERROR = "INFERENCE_ERROR"
#: Every code a response's `error.code` may hold.
ERROR_CODES = frozenset(
    {DEADLINE_EXCEEDED, INVALID_REQUEST, MODEL_NOT_FOUND, RESPONSE_TOO_LARGE, INFERENCE_ERROR}
)

_KEYS = frozenset({"path", "metadata", "body", "options"})
_OPTION_KEYS = frozenset({"timeout_seconds", "max_attempts", "deadline"})
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/")


class EnvelopeError(ValueError):
    """A request message lingo answers with 400 without forwarding it."""

    def __init__(self, message: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        #: Why the message was refused, shown in the response's error body.
        self.message = message
        #: The request's metadata when it could be read (echoed back), else None.
        self.metadata = metadata

    def response(self) -> bytes:
        """The response message: status 400, the metadata (or null), an OpenAI error body."""
        return error_response(BadRequest(self.message), self.metadata, INVALID_REQUEST)


@dataclass(frozen=True)
class Options:
    """Per-message settings a request may carry in `options`."""

    #: Seconds this message may wait for an endpoint per attempt (default: `LINGO_MAX_WAIT`).
    timeout_seconds: float | None = None
    #: Attempts before a transient failure is answered (default: the stream's; with a deadline
    #: and no `max_attempts`, attempts go on until the deadline).
    max_attempts: int | None = None
    #: Unix time (seconds) after which no further attempt is made and the request is answered
    #: DEADLINE_EXCEEDED; it also bounds each attempt's wait and the backend's work.
    deadline: float | None = None


@dataclass(frozen=True)
class Envelope:
    """A valid request message."""

    #: Backend path to POST to; one of the allowed paths.
    path: str
    #: Echoed back unchanged in the response so users can join responses to requests.
    metadata: dict[str, Any]
    #: The OpenAI request body; has a string `model`.
    body: dict[str, Any]
    #: Per-message settings.
    options: Options

    @property
    def model(self) -> str:
        """The model the request names (client-facing name)."""
        return str(self.body["model"])

    def body_bytes(self) -> bytes:
        """The request body as sent to the backend."""
        return orjson.dumps(self.body)


def check_paths(paths: Iterable[str]) -> frozenset[str]:
    """A configured allowed-path list; each must be a plain absolute path (no `..`, query, host)."""
    checked = frozenset(paths)
    for path in checked:
        segments = path.split("/")[1:]
        if (
            not path.startswith("/")
            or not set(path) <= _PATH_CHARS
            or any(segment in ("", ".", "..") for segment in segments)
        ):
            raise ValueError(f"not a plain path: {path!r} (use e.g. /v1/completions)")
    return checked


def parse_envelope(data: bytes | str, allowed_paths: frozenset[str] = DEFAULT_PATHS) -> Envelope:
    """The request in `data`; raises `EnvelopeError` (and nothing else) when it cannot be forwarded."""
    try:
        document = orjson.loads(data)
    except (orjson.JSONDecodeError, TypeError):
        raise EnvelopeError("the message is not valid JSON") from None
    if not isinstance(document, dict):
        raise EnvelopeError(f"the message must be a JSON object, not {_kind(document)}")
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        reason = "missing" if metadata is None else f"{_kind(metadata)}, not an object"
        raise EnvelopeError(f"'metadata' is required and must be an object (may be {{}}): {reason}")
    unknown = sorted(set(document) - _KEYS)
    if unknown:
        raise EnvelopeError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; an envelope has path, metadata, body, options",
            metadata,
        )
    path = _path(document.get("path"), allowed_paths, metadata)
    body = document.get("body")
    if not isinstance(body, dict):
        raise EnvelopeError(f"'body' is required and must be an object, not {_kind(body)}", metadata)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise EnvelopeError("'body.model' is required and must be a non-empty string", metadata)
    if body.get("stream") is True:
        raise EnvelopeError("'body.stream: true' is not supported in batch; leave it out", metadata)
    return Envelope(path, metadata, body, _options(document.get("options"), metadata))


def _path(path: object, allowed: frozenset[str], metadata: dict[str, Any]) -> str:
    if path is None:
        return DEFAULT_PATH
    if not isinstance(path, str):
        raise EnvelopeError(f"'path' must be a string, not {_kind(path)}", metadata)
    if path not in allowed:
        shown = path if len(path) <= 100 else path[:100] + "…"
        raise EnvelopeError(
            f"path {shown!r} is not allowed; use one of {', '.join(sorted(allowed))}", metadata
        )
    return path


def _options(options: object, metadata: dict[str, Any]) -> Options:
    if options is None:
        return Options()
    if not isinstance(options, dict):
        raise EnvelopeError(f"'options' must be an object, not {_kind(options)}", metadata)
    unknown = sorted(set(options) - _OPTION_KEYS)
    if unknown:
        raise EnvelopeError(
            f"unknown option(s) {', '.join(map(repr, unknown))}; "
            "known: timeout_seconds, max_attempts, deadline",
            metadata,
        )
    timeout = options.get("timeout_seconds")
    if timeout is not None and not (
        isinstance(timeout, int | float)
        and not isinstance(timeout, bool)
        and math.isfinite(timeout)
        and 0 < timeout <= MAX_TIMEOUT_SECONDS
    ):
        raise EnvelopeError(
            f"'options.timeout_seconds' must be seconds above 0, at most {MAX_TIMEOUT_SECONDS:g}",
            metadata,
        )
    attempts = options.get("max_attempts")
    if attempts is not None and not (
        isinstance(attempts, int) and not isinstance(attempts, bool) and 1 <= attempts <= MAX_ATTEMPTS_LIMIT
    ):
        raise EnvelopeError(
            f"'options.max_attempts' must be a whole number from 1 to {MAX_ATTEMPTS_LIMIT}", metadata
        )
    deadline = options.get("deadline")
    if deadline is not None and not (
        isinstance(deadline, int | float)
        and not isinstance(deadline, bool)
        and math.isfinite(deadline)
        and deadline > 0
    ):
        raise EnvelopeError("'options.deadline' must be a Unix time in seconds (a number above 0)", metadata)
    return Options(
        float(timeout) if timeout is not None else None,
        attempts,
        float(deadline) if deadline is not None else None,
    )


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


def build_response(status_code: int, metadata: dict[str, Any] | None, body: object) -> bytes:
    """A response message: `{"status_code", "metadata", "body"}` as JSON bytes."""
    return orjson.dumps({"status_code": status_code, "metadata": metadata, "body": body})


def error_response(error: LingoError, metadata: dict[str, Any] | None, code: str) -> bytes:
    """A response lingo answers itself: the error's status and OpenAI body, plus the typed
    `error: {code, message}`."""
    return orjson.dumps(
        {
            "status_code": error.status,
            "metadata": metadata,
            "body": error.body(),
            "error": {"code": code, "message": error.message},
        }
    )


def response_body(data: bytes) -> object:
    """A backend's answer as it goes into a response: its JSON value, else its text."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace")
