"""Leader-election arithmetic on a `coordination.k8s.io/v1` Lease, free of I/O (client-go's rules).

Expiry is judged by the local monotonic clock, from when this replica last saw the record change,
never by comparing `renewTime` with the local wall clock: replicas' clocks may disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any


def micro_time(moment: datetime) -> str:
    """A MicroTime as the API writes it: RFC 3339 with exactly six fractional digits, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    """The leader-election fields of a Lease's spec."""

    #: Who holds the lease; empty when nobody does (released).
    holder: str
    #: Seconds the holder may go without renewing before others may take over.
    duration: float
    #: When the current holder acquired it (as written, RFC 3339).
    acquired: str = ""
    #: When the holder last renewed it (as written, RFC 3339).
    renewed: str = ""
    #: How many times the lease changed hands.
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None, default_duration: float) -> LeaseRecord:
        spec = spec or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration=float(spec.get("leaseDurationSeconds") or default_duration),
            acquired=str(spec.get("acquireTime") or ""),
            renewed=str(spec.get("renewTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "leaseTransitions": self.transitions,
        }
        if self.acquired:
            spec["acquireTime"] = self.acquired
        if self.renewed:
            spec["renewTime"] = self.renewed
        return spec


def held_by_other(record: LeaseRecord, identity: str, observed_at: float, now: float) -> bool:
    """True while someone else holds the lease and has not let it lapse, as seen from here.

    `observed_at` is the local monotonic time at which the current record was first seen.
    """
    return bool(record.holder) and record.holder != identity and now < observed_at + record.duration


def claim(current: LeaseRecord | None, identity: str, duration: float, now: datetime) -> LeaseRecord:
    """The record to write to take (or keep) the lease: renew if ours, else acquire and count a transition."""
    stamp = micro_time(now)
    if current is not None and current.holder == identity:
        return replace(current, duration=duration, renewed=stamp)
    transitions = current.transitions + 1 if current is not None else 0
    return LeaseRecord(identity, duration, acquired=stamp, renewed=stamp, transitions=transitions)


def release(current: LeaseRecord, now: datetime) -> LeaseRecord:
    """The record to write when stepping down on shutdown: no holder, so a peer takes over at once."""
    stamp = micro_time(now)
    return LeaseRecord("", 1, acquired=stamp, renewed=stamp, transitions=current.transitions)


def still_leading(renewed_at: float | None, renew_deadline: float, now: float) -> bool:
    """A leader that could not renew within `renew_deadline` must stop acting as one, before its
    lease (longer) can expire and a peer takes over: never two writers at once."""
    return renewed_at is not None and now - renewed_at < renew_deadline
