"""`lingo status`: the status facts of a running lingo as terminal tables, once or refreshed."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from lingo.status.table import render

#: Where `lingo status` looks by default: the health port of a local lingo.
DEFAULT_URL = "http://127.0.0.1:8081"
#: Seconds one fetch of /status.json may take.
FETCH_TIMEOUT = 5.0


class Unreachable(Exception):
    """lingo did not answer /status.json with status facts."""


def add_parser(subparsers: Any) -> None:
    """Add `status` to the `lingo` command."""
    status = subparsers.add_parser(
        "status",
        help="show model groups, replicas, queues, endpoints, scale events and batch streams",
        description="The facts of lingo's /status.json (health port) as tables.",
    )
    status.add_argument("--url", default=DEFAULT_URL, help=f"lingo's health port (default {DEFAULT_URL})")
    status.add_argument("--watch", "-w", action="store_true", help="refresh until interrupted")
    status.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes with --watch (default 1)"
    )
    status.add_argument("--json", action="store_true", help="print the raw facts as JSON")
    status.set_defaults(handler=run)


def fetch(url: str, timeout: float = FETCH_TIMEOUT) -> dict[str, Any]:
    """The facts from `url` (the health port's base URL, or the full /status.json URL)."""
    target = url.rstrip("/")
    if not target.endswith("/status.json"):
        target += "/status.json"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            facts = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise Unreachable(f"{target} answered {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise Unreachable(f"cannot reach lingo at {target}: {_reason(exc.reason)}") from None
    except (OSError, ValueError) as exc:
        raise Unreachable(f"cannot read {target}: {_reason(exc)}") from None
    if not isinstance(facts, dict) or "groups" not in facts:
        raise Unreachable(f"{target} did not answer lingo status facts")
    return facts


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        print("lingo status: --interval must be above 0", file=sys.stderr)
        return 2
    if not args.watch:
        try:
            facts = fetch(args.url)
        except Unreachable as exc:
            print(f"lingo status: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        sys.stdout.write(json.dumps(facts, indent=2) + "\n" if args.json else render(facts))
        return 0
    try:
        while True:
            try:
                text = render(fetch(args.url))
            except Unreachable as exc:
                text = f"lingo status: {exc} (retrying every {args.interval:g}s)\n"
            # Clear the screen and home the cursor, as `watch` does.
            sys.stdout.write("\x1b[H\x1b[2J" + text)
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _reason(error: object) -> str:
    if isinstance(error, OSError) and error.strerror:
        return str(error.strerror)
    return str(error) or type(error).__name__
