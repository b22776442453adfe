"""Which class an HTTP request waits in: the `X-Lingo-Priority` header, else the body's `service_tier`.

Pure: the proxy hands it the header value and the parsed JSON document; nothing here raises, since
an unknown tier must never fail a request (it waits as `default`). Batch is never chosen here: only
work from the batch paths waits as batch.
"""

from __future__ import annotations

from lingo.queue import Priority

#: Header a client (or a gateway in front of lingo) sets to choose the class of any request.
PRIORITY_HEADER = "X-Lingo-Priority"

_HEADER_CLASSES = {"priority": Priority.PRIORITY, "default": Priority.DEFAULT, "flex": Priority.FLEX}
#: OpenAI's `service_tier` values; `auto` and `scale` wait as default.
_TIER_CLASSES = {
    "priority": Priority.PRIORITY,
    "default": Priority.DEFAULT,
    "auto": Priority.DEFAULT,
    "scale": Priority.DEFAULT,
    "flex": Priority.FLEX,
}


def request_class(header: str | None, document: object) -> Priority:
    """The class of a request: a present header decides, else the body's `service_tier`; unknown
    or malformed values mean `default`."""
    if header is not None and header.strip():
        return _HEADER_CLASSES.get(header.strip().lower(), Priority.DEFAULT)
    tier = document.get("service_tier") if isinstance(document, dict) else None
    if isinstance(tier, str):
        return _TIER_CLASSES.get(tier.strip().lower(), Priority.DEFAULT)
    return Priority.DEFAULT
