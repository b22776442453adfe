"""The `model` field of a multipart/form-data body, found by a bounded byte scan.

A full MIME parse of an upload (every part decoded into objects) runs on the event loop and stalls
all traffic: 40,000 tiny parts took seconds. The scan only searches for boundaries (a C-speed
`bytes.find` per part), reads the headers of each part up to the one named `model`, and gives up
after `MAX_PARTS` parts.
"""

from __future__ import annotations

import re

from lingo.errors import BadRequest

#: Parts scanned before the `model` field; a form with more before it is refused.
MAX_PARTS = 1000
#: Largest header block of one part.
MAX_PART_HEADERS = 8 * 1024
#: Largest `model` value.
MAX_MODEL = 1024

_BOUNDARY = re.compile(r';\s*boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_NAME = re.compile(rb'(?:^|;)\s*name\s*=\s*(?:"([^"]*)"|([^;\s]*))', re.IGNORECASE)


def model_field(content_type: str, body: bytes) -> str | None:
    """The text of the form field `model`, or None when the form has none; BadRequest if malformed."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise BadRequest("malformed multipart body: the Content-Type has no boundary")
    delimiter = b"--" + (match.group(1) or match.group(2)).encode("latin-1", "replace")
    position = body.find(delimiter)
    if position < 0:
        raise BadRequest("malformed multipart body: no boundary in the body")
    for _ in range(MAX_PARTS):
        position += len(delimiter)
        if body[position : position + 2] == b"--":
            return None  # the closing delimiter
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise BadRequest("malformed multipart body: a part is cut short")
        headers_end = body.find(b"\r\n\r\n", line_end, line_end + MAX_PART_HEADERS)
        if headers_end < 0:
            raise BadRequest("malformed multipart body: a part's headers never end")
        content = headers_end + 4
        following = body.find(b"\r\n" + delimiter, content)
        if following < 0:
            raise BadRequest("malformed multipart body: a part has no closing boundary")
        if _field_name(body[line_end + 2 : headers_end]) == b"model":
            if following - content > MAX_MODEL:
                raise BadRequest('"model" is too long')
            return body[content:following].decode("utf-8", "replace").strip()
        position = following + 2
    raise BadRequest(f"multipart form has more than {MAX_PARTS} parts before its `model` field")


def _field_name(headers: bytes) -> bytes | None:
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-disposition":
            match = _NAME.search(value)
            if match is not None:
                return match.group(1) if match.group(1) is not None else match.group(2)
    return None
