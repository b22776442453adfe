"""Reads a `multipart/form-data` body into its fields with `python-multipart`'s streaming parser.

CPU-bound on large uploads: callers run `parse_form` in a thread, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """The body is not a well-formed multipart form."""


@dataclass
class Part:
    """One form field."""

    #: The file name the client sent, None for plain fields.
    filename: str | None = None
    #: The field's bytes.
    data: bytearray = field(default_factory=bytearray)


def parse_form(content_type: str, body: bytes) -> dict[str, Part]:
    """The form's fields by name (the first of repeated names wins)."""
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise MultipartError("the request must be multipart/form-data with a boundary")
    parts: dict[str, Part] = {}
    state: dict[str, object] = {}
    current = Part()
    header_name = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}

    def on_part_begin() -> None:
        nonlocal current
        current = Part()
        headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current.data += data[start:end]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_part_end() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name")
        if name is None:
            state["error"] = "a form part has no name"
            return
        filename = disposition.get(b"filename")
        current.filename = filename.decode("utf-8", "replace") if filename is not None else None
        parts.setdefault(name.decode("utf-8", "replace"), current)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:
        raise MultipartError(f"malformed multipart body: {exc}") from None
    if "error" in state:
        raise MultipartError(str(state["error"]))
    return parts
