"""Header hygiene for a reverse proxy: hop-by-hop headers stay on their own hop (RFC 9110 §7.6.1)."""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Recomputed by the client library for the upstream request.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "x-model"}
#: Recomputed by the server library for the downstream response.
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "date", "server"}


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(","))
    return tokens


def request_headers(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Headers to send upstream: the client's, minus hop-by-hop and those the client library sets."""
    items = list(headers)
    drop = _REQUEST_DROP | _connection_tokens(items)
    return CIMultiDict((name, value) for name, value in items if name.lower() not in drop)


def response_headers(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Headers to send downstream: the backend's, minus hop-by-hop and those aiohttp sets."""
    items = list(headers)
    drop = _RESPONSE_DROP | _connection_tokens(items)
    return CIMultiDict((name, value) for name, value in items if name.lower() not in drop)
