"""Structured, quiet logs: one logfmt line per event, with the `extra` fields a call site passes."""

from __future__ import annotations

import logging
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: Characters that make a value need quotes (checked in C by `isdisjoint`: access lines are hot).
_SPECIAL = frozenset(' "=\n')


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or not _SPECIAL.isdisjoint(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    """`ts=… level=… logger=… msg=… key=value…`: greppable by people, parseable by log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={stamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts.extend(
            f"{key}={_quote(value)}" for key, value in record.__dict__.items() if key not in _STANDARD
        )
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("lingo").setLevel(level)
    # aiohttp logs every unclean client disconnect at error level; they are normal for a proxy.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
