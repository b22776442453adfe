"""Header hygiene for a reverse proxy: hop-by-hop headers stay on their own hop (RFC 9110 §7.6.1)."""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "transfer-encoding", "upgrade",
    }
)  # fmt: skip
#: Set by the upstream client itself (Host, framing), meant for lingo only (X-Model), or set by
#: lingo once per request (X-Request-Id: the client's own id, or a fresh one).
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "x-model", "x-request-id"}
#: Framing is lingo's own on the client side; so is X-Request-Id (the id lingo sent upstream).
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "x-request-id"}

Headers = list[tuple[str, str]]


def _filter(headers: Iterable[tuple[str, str]], drop: frozenset[str]) -> Headers:
    items = list(headers)
    extra: set[str] = set()
    for name, value in items:
        if name.lower() == "connection":
            extra.update(token.strip().lower() for token in value.split(","))
    if extra:
        drop = drop | extra
    return [(name, value) for name, value in items if name.lower() not in drop]


#: With API keys set, `Authorization` carries lingo's own key: the model server never sees it.
_REQUEST_DROP_KEYED = _REQUEST_DROP | {"authorization"}


def request_headers(headers: Iterable[tuple[str, str]], keyed: bool = False) -> Headers:
    """Headers to send upstream: the client's, minus hop-by-hop and those lingo sets itself (and
    `Authorization` when it holds lingo's key, `keyed`)."""
    return _filter(headers, _REQUEST_DROP_KEYED if keyed else _REQUEST_DROP)


def response_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """Headers to send downstream: the backend's, minus hop-by-hop and framing."""
    return _filter(headers, _RESPONSE_DROP)
