"""Finding the model of a request: header, JSON body, multipart form."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lingo.errors import BadRequest
from lingo.proxy.model_name import model_from_request


def test_header_wins_over_body() -> None:
    assert model_from_request("from-header", "application/json", b'{"model": "from-body"}') == "from-header"


def test_json_body_model() -> None:
    assert model_from_request(None, "application/json", b'{"model": "m", "prompt": "x"}') == "m"


def test_multipart_field() -> None:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n\x00\xff\r\n'
        b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--B--\r\n'
    )
    assert model_from_request(None, "multipart/form-data; boundary=B", body) == "whisper-1"


@pytest.mark.parametrize(
    "body", [b"", b"{", b"[]", b'"m"', b"{}", b'{"model": 3}', b'{"model": ""}', b"\xff"]
)
def test_bad_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest):
        model_from_request(None, "application/json", body)


@given(
    st.binary(max_size=200), st.sampled_from(["application/json", "", "text/plain", "multipart/form-data"])
)
def test_any_body_gives_a_name_or_a_bad_request(body: bytes, content_type: str) -> None:
    with contextlib.suppress(BadRequest):
        assert isinstance(model_from_request(None, content_type, body), str)
