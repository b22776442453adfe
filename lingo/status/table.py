"""The status facts as terminal tables, like `kubectl get` or `ollama ps` (pure: dict in, text out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Scale events listed, newest first, across all groups.
TABLE_SCALE_EVENTS = 5
#: Batch outcome columns, in order.
OUTCOMES = ("answered", "error", "retried", "invalid", "nacked")


def render(facts: dict[str, Any]) -> str:
    """Every section that has rows, separated by blank lines."""
    now = float(facts.get("time", 0))
    state = "ready" if facts.get("ready") else "NOT READY"
    role = "leader" if facts.get("leader") else "follower"
    head = (
        f"lingo {facts.get('version', '?')} · {facts.get('platform', '?')} · {state} · {role}"
        f" · up {round(facts.get('uptime', 0))}s"
    )
    parts = [head, _groups(facts)]
    endpoints = [
        [e["url"] + (" (leaving)" if e.get("retired") else ""), group["name"], e["in_flight"]]
        for group in facts["groups"]
        for e in group["endpoints"]
    ]
    if endpoints:
        parts.append(table(["ENDPOINT", "GROUP", "IN-FLIGHT"], endpoints))
    events = sorted(
        ((event, group["name"]) for group in facts["groups"] for event in group["scale_events"]),
        key=lambda item: -item[0]["time"],
    )[:TABLE_SCALE_EVENTS]
    if events:
        parts.append(
            table(
                ["SCALED", "GROUP", "REPLICAS", "REASON"],
                [
                    [ago(event["time"], now), name, f"{event['from']} → {event['to']}", event["reason"]]
                    for event, name in events
                ],
            )
        )
    if facts.get("streams"):
        parts.append(
            table(
                ["STREAM", "MODEL", "OPEN", "IN-FLIGHT", "BACKLOG", *(o.upper() for o in OUTCOMES)],
                [
                    [
                        s["stream"],
                        s.get("model") or "-",
                        "yes" if s["open"] else "no",
                        f"{s['in_flight']}/{s['max_handlers']}",
                        s["backlog"],
                        *(s["outcomes"].get(o, 0) for o in OUTCOMES),
                    ]
                    for s in facts["streams"]
                ],
            )
        )
    if facts.get("jobs"):
        parts.append(
            table(
                ["JOB", "STATUS", "COMPLETED", "FAILED", "TOTAL"],
                [
                    [
                        job.get("id", "?"),
                        job.get("status", "?"),
                        *(job.get("request_counts", {}).get(k, 0) for k in ("completed", "failed", "total")),
                    ]
                    for job in facts["jobs"]
                ],
            )
        )
    return "\n\n".join(parts) + "\n"


def _groups(facts: dict[str, Any]) -> str:
    groups = facts["groups"]
    if not groups:
        return "no model groups"
    classes: list[str] = facts.get("classes") or sorted({c for g in groups for c in g["queued"]})
    headers = ["GROUP", "MODELS", "DESIRED", "READY", "MIN", "MAX", "QUEUED"]
    headers += [f"Q-{name.upper()}" for name in classes]
    headers += ["IN-FLIGHT", "BACKLOG", "ANSWERED"]
    rows = []
    for group in groups:
        replicas = group["replicas"]
        answered = " ".join(f"{code}:{count}" for code, count in group["requests"].items()) or "-"
        rows.append(
            [
                group["name"],
                ",".join(group["models"]),
                replicas["desired"],
                replicas["ready"],
                _dash(replicas["min"]),
                _dash(replicas["max"]),
                group["queued_total"],
                *(group["queued"].get(name, 0) for name in classes),
                group["in_flight"],
                group["backlog"],
                answered,
            ]
        )
    return table(headers, rows)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, three spaces apart, no trailing spaces."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(line.rstrip() for line in lines)


def ago(then: float, now: float) -> str:
    seconds = max(0, round(now - then))
    if seconds < 90:
        return f"{seconds}s ago"
    if seconds < 5400:
        return f"{round(seconds / 60)}m ago"
    return f"{round(seconds / 3600)}h ago"


def _dash(value: object) -> object:
    return "-" if value is None else value
