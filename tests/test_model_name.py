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


def test_multipart_model_before_the_file_is_found_without_scanning_the_file() -> None:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="model"\r\n\r\n' + b"\x00" * 1000
    )  # no closing boundary: the scan stops at `model`
    assert model_from_request(None, 'multipart/form-data; boundary="B"', body) == "whisper-1"


def test_multipart_field_named_filename_model_is_not_the_model() -> None:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="model"\r\n\r\nx\r\n'
        b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--B--\r\n'
    )
    assert model_from_request(None, "multipart/form-data; boundary=B", body) == "m"


def test_multipart_form_with_too_many_parts_before_model_is_a_bad_request() -> None:
    parts = b"".join(
        b'--B\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % n for n in range(1001)
    )
    body = parts + b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--B--\r\n'
    with pytest.raises(BadRequest, match="parts"):
        model_from_request(None, "multipart/form-data; boundary=B", body)


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("multipart/form-data", b"--B\r\n"),
        ("multipart/form-data; boundary=B", b"no boundary here"),
        ("multipart/form-data; boundary=B", b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nm'),
        ("multipart/form-data; boundary=B", b"--B--\r\n"),
    ],
)
def test_malformed_or_modelless_multipart_is_a_bad_request(content_type: str, body: bytes) -> None:
    with pytest.raises(BadRequest):
        model_from_request(None, content_type, body)
