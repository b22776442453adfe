"""The access log and request ids: one structured line per answered request or batch message.

Off by default (`LINGO_ACCESS_LOG`); callers check `AccessLog.enabled` before gathering anything,
so a disabled log costs one attribute read per request. Request ids are always handled: a client's
`X-Request-Id` is kept, else one is made up here; it goes to the backend and back to the client.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator

#: Header carrying the request id to the backend and back to the client.
REQUEST_ID = "X-Request-Id"
#: Longest client-sent id kept as it is; longer (or empty) ones are replaced by a fresh id.
MAX_REQUEST_ID = 200
#: Logger name of the access lines (filter on `logger=lingo.access`).
LOGGER = "lingo.access"

#: Unique per process, so ids from several lingo replicas never collide.
_PREFIX = os.urandom(4).hex()
_serial: Iterator[int] = itertools.count(1)


def new_request_id() -> str:
    """A fresh id: this process's random prefix and a counter (cheaper than a random id each)."""
    return f"{_PREFIX}-{next(_serial):x}"


def request_id(given: str | None) -> str:
    """The client's id when it sent a usable one, else a fresh id."""
    if given and len(given) <= MAX_REQUEST_ID:
        return given
    return new_request_id()


def seconds(value: float | None) -> str:
    """A duration as the log shows it: milliseconds precision, `-` when not measured."""
    return "-" if value is None else f"{value:.3f}"


class AccessLog:
    """Writes access lines to the `lingo.access` logger at INFO, whatever `LINGO_LOG_LEVEL` is."""

    def __init__(self, enabled: bool) -> None:
        #: True when lines are written; callers gather fields only then.
        self.enabled = enabled
        self._log = logging.getLogger(LOGGER)
        if enabled:
            self._log.setLevel(logging.INFO)

    def write(self, fields: dict[str, object]) -> None:
        """One line: `msg=access` and the fields in the order given."""
        self._log.info("access", extra=fields)
