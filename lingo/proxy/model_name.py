"""Which model a request is for: `X-Model` header, JSON body `model`, or multipart field `model`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from lingo.errors import BadRequest
from lingo.proxy.multipart import model_field

#: Largest body parsed only for its routing key, when `X-Model` already named the model (1 MiB:
#: far above any prompt's first blocks, far below the uploads that header is meant for).
MAX_EXTRA_PARSE = 1 << 20


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What the proxy read from a request body: the model, and the JSON document when it parsed one."""

    #: The requested model name.
    model: str
    #: The parsed JSON body; None when the model came from a header or a multipart form.
    document: Any = None


def model_from_request(header: str | None, content_type: str, body: bytes) -> str:
    """The requested model name; raises BadRequest when it is missing, invalid or the JSON malformed."""
    return parse_request(header, content_type, body).model


def parse_request(header: str | None, content_type: str, body: bytes) -> ParsedRequest:
    """The requested model name and the parsed JSON body (parsed once, for the routing key too)."""
    if header:
        return ParsedRequest(header.strip())
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type.startswith("multipart/form-data"):
        return ParsedRequest(_model_from_multipart(content_type, body))
    if not body:
        raise BadRequest('no model given: send a JSON body with "model" or an X-Model header')
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest('request body must be a JSON object with a "model" field')
    return ParsedRequest(_valid_name(document.get("model")), document)


def json_document(content_type: str, body: bytes) -> Any:
    """The JSON body of a request whose model came from `X-Model`; None when it is not JSON or
    larger than `MAX_EXTRA_PARSE` (its only use is the routing key, which is not worth a large
    body's copy: such a request goes least-load)."""
    if (
        not body
        or len(body) > MAX_EXTRA_PARSE
        or content_type.split(";", 1)[0].strip().lower().startswith("multipart/")
    ):
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _valid_name(model: object) -> str:
    if model is None:
        raise BadRequest('no model given: the JSON body has no "model" field')
    if not isinstance(model, str) or not model.strip():
        raise BadRequest('"model" must be a non-empty string')
    return model


def _model_from_multipart(content_type: str, body: bytes) -> str:
    model = model_field(content_type, body)
    if model is None:
        raise BadRequest('no model given: the multipart form has no "model" field')
    return _valid_name(model)
