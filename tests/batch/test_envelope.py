"""Envelope parsing and response building: pure code, no sockets."""

from __future__ import annotations

import contextlib
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lingo.batch.envelope import (
    DEFAULT_PATH,
    ERROR_CODES,
    INVALID_REQUEST,
    EnvelopeError,
    build_response,
    check_paths,
    error_response,
    parse_envelope,
    response_body,
)
from lingo.errors import DeadlineExceeded


def message(**fields: object) -> bytes:
    document: dict[str, object] = {"metadata": {"custom_id": "a-1"}, "body": {"model": "m", "prompt": "hi"}}
    document.update(fields)
    return orjson.dumps({k: v for k, v in document.items() if v is not ...})


def test_a_minimal_envelope_defaults_to_completions() -> None:
    envelope = parse_envelope(message())
    assert envelope.path == DEFAULT_PATH
    assert envelope.model == "m"
    assert envelope.metadata == {"custom_id": "a-1"}
    assert orjson.loads(envelope.body_bytes()) == {"model": "m", "prompt": "hi"}
    assert envelope.options.timeout_seconds is None and envelope.options.max_attempts is None


def test_options_are_read() -> None:
    envelope = parse_envelope(message(options={"timeout_seconds": 2.5, "max_attempts": 3}))
    assert (envelope.options.timeout_seconds, envelope.options.max_attempts) == (2.5, 3)


def test_empty_metadata_is_allowed_and_echoed() -> None:
    assert parse_envelope(message(metadata={})).metadata == {}


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b"nan", b"[1, 2]", b'"text"', b"42", b"null"])
def test_unparseable_or_non_object_messages_have_no_metadata(data: bytes) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(data)
    assert caught.value.metadata is None
    response = orjson.loads(caught.value.response())
    assert response["status_code"] == 400 and response["metadata"] is None
    assert response["body"]["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("metadata", [..., None, [], "id-1", 3])
def test_metadata_must_be_an_object(metadata: object) -> None:
    with pytest.raises(EnvelopeError, match="metadata") as caught:
        parse_envelope(message(metadata=metadata))
    assert caught.value.metadata is None


@pytest.mark.parametrize(
    "path",
    [
        "http://169.254.169.254/latest/meta-data/",
        "/v1/../admin",
        "/v1/completions/../../admin",
        "/v1/completions?x=1",
        "/v1/completions#frag",
        "//evil.example/v1/completions",
        "@evil.example/v1/completions",
        "/v1/completions/",
        "/V1/COMPLETIONS",
        "/v1/%2e%2e/admin",
        "v1/completions",
        "",
        "/v1/models",
    ],
)
def test_paths_outside_the_allowed_list_are_refused_with_the_metadata(path: str) -> None:
    with pytest.raises(EnvelopeError, match="not allowed") as caught:
        parse_envelope(message(path=path))
    assert caught.value.metadata == {"custom_id": "a-1"}
    assert orjson.loads(caught.value.response())["metadata"] == {"custom_id": "a-1"}


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
def test_the_default_paths_are_allowed(path: str) -> None:
    assert parse_envelope(message(path=path)).path == path


def test_a_configured_path_list_replaces_the_default() -> None:
    allowed = check_paths(["/v1/rerank"])
    assert parse_envelope(message(path="/v1/rerank"), allowed).path == "/v1/rerank"
    with pytest.raises(EnvelopeError):
        parse_envelope(message(path="/v1/completions"), allowed)


@pytest.mark.parametrize(
    "path", ["v1/x", "/v1/../x", "/v1//x", "/v1/x?y", "http://h/v1", "/v1/./x", "/v1/x/"]
)
def test_configured_paths_must_be_plain(path: str) -> None:
    with pytest.raises(ValueError, match="plain path"):
        check_paths([path])


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"body": ...}, "'body' is required"),
        ({"body": []}, "'body' is required"),
        ({"body": {"prompt": "x"}}, "body.model"),
        ({"body": {"model": ""}}, "body.model"),
        ({"body": {"model": 7}}, "body.model"),
        ({"body": {"model": "m", "stream": True}}, "stream"),
        ({"path": 5}, "'path' must be a string"),
        ({"options": []}, "'options' must be an object"),
        ({"options": {"timeout": 5}}, "unknown option"),
        ({"options": {"timeout_seconds": 0}}, "timeout_seconds"),
        ({"options": {"timeout_seconds": -1}}, "timeout_seconds"),
        ({"options": {"timeout_seconds": True}}, "timeout_seconds"),
        ({"options": {"timeout_seconds": "5"}}, "timeout_seconds"),
        ({"options": {"timeout_seconds": 1e9}}, "timeout_seconds"),
        ({"options": {"max_attempts": 0}}, "max_attempts"),
        ({"options": {"max_attempts": 2.5}}, "max_attempts"),
        ({"options": {"max_attempts": 1000}}, "max_attempts"),
        ({"options": {"max_attempts": False}}, "max_attempts"),
        ({"options": {"deadline": "tomorrow"}}, "deadline"),
        ({"options": {"deadline": 0}}, "deadline"),
        ({"options": {"deadline": -5}}, "deadline"),
        ({"options": {"deadline": True}}, "deadline"),
        ({"metdata": {}}, "unknown key"),
    ],
)
def test_invalid_fields_are_refused_with_a_reason_and_the_metadata(fields: dict, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason) as caught:
        parse_envelope(message(**fields))
    assert caught.value.metadata == {"custom_id": "a-1"}


def test_stream_false_is_accepted() -> None:
    assert parse_envelope(message(body={"model": "m", "stream": False})).body["stream"] is False


def test_null_path_and_options_mean_the_defaults() -> None:
    envelope = parse_envelope(message(path=None, options=None))
    assert envelope.path == DEFAULT_PATH


def test_build_response_shape() -> None:
    assert orjson.loads(build_response(200, {"custom_id": "x"}, {"id": "c"})) == {
        "status_code": 200,
        "metadata": {"custom_id": "x"},
        "body": {"id": "c"},
    }


def test_response_body_is_json_where_the_backend_answered_json_else_text() -> None:
    assert response_body(b'{"a": 1}') == {"a": 1}
    assert response_body(b"upstream exploded") == "upstream exploded"
    assert response_body(b"\xff") == "\ufffd"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "path": st.sampled_from(["/v1/completions", "/v1/../x", "http://x/"]) | json_values,
        "metadata": st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values,
        "body": st.fixed_dictionaries(
            {}, optional={"model": st.text(max_size=5) | json_values, "stream": json_values}
        )
        | json_values,
        "options": st.fixed_dictionaries(
            {}, optional={"timeout_seconds": json_values, "max_attempts": json_values}
        )
        | json_values,
        "extra": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, envelope_like))
def test_any_json_either_parses_or_raises_envelope_error(document: object) -> None:
    data = json.dumps(document).encode()  # stdlib: also writes what orjson cannot read (huge ints)
    try:
        envelope = parse_envelope(data)
    except EnvelopeError as error:
        orjson.loads(error.response())
        return
    assert isinstance(envelope.metadata, dict)
    assert isinstance(envelope.model, str) and envelope.model
    assert envelope.body.get("stream") is not True


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_either_parse_or_raise_envelope_error(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        parse_envelope(data)


def test_a_deadline_is_read_as_unix_seconds() -> None:
    envelope = parse_envelope(message(options={"deadline": 1_900_000_000, "max_attempts": 2}))
    assert envelope.options.deadline == 1_900_000_000.0
    assert envelope.options.max_attempts == 2


def test_a_refused_envelope_carries_the_invalid_request_code_beside_the_openai_body() -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(message(path="/admin"))
    document = orjson.loads(caught.value.response())
    assert document["error"] == {"code": INVALID_REQUEST, "message": caught.value.message}
    assert document["status_code"] == 400
    assert document["body"]["error"]["type"] == "invalid_request_error"


def test_an_error_response_keeps_the_existing_fields_and_adds_the_typed_error() -> None:
    error = DeadlineExceeded("too late")
    document = orjson.loads(error_response(error, {"custom_id": "x"}, "DEADLINE_EXCEEDED"))
    assert document == {
        "status_code": 504,
        "metadata": {"custom_id": "x"},
        "body": {"error": {"message": "too late", "type": "server_error", "code": "deadline_exceeded"}},
        "error": {"code": "DEADLINE_EXCEEDED", "message": "too late"},
    }
    assert {
        "DEADLINE_EXCEEDED",
        "INVALID_REQUEST",
        "MODEL_NOT_FOUND",
        "RESPONSE_TOO_LARGE",
        "INFERENCE_ERROR",
    } == ERROR_CODES
