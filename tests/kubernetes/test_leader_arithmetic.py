"""Lease arithmetic, without an API server."""

from __future__ import annotations

from datetime import UTC, datetime

from lingo.platforms.kubernetes.lease import (
    LeaseRecord,
    claim,
    held_by_other,
    micro_time,
    release,
    still_leading,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_micro_time_always_has_six_fractional_digits_and_z():
    assert micro_time(NOW) == "2024-05-01T12:00:00.000000Z"


def test_a_lease_held_by_another_blocks_until_its_duration_passed_since_it_was_last_seen_changing():
    record = LeaseRecord("other", 15)
    assert held_by_other(record, "me", observed_at=100.0, now=114.9)
    assert not held_by_other(record, "me", observed_at=100.0, now=115.0)


def test_a_released_or_own_lease_never_blocks():
    assert not held_by_other(LeaseRecord("", 15), "me", 100.0, 100.0)
    assert not held_by_other(LeaseRecord("me", 15), "me", 100.0, 100.0)


def test_claiming_counts_transitions_and_renewing_keeps_the_acquire_time():
    created = claim(None, "me", 15, NOW)
    assert (created.holder, created.transitions, created.acquired) == ("me", 0, micro_time(NOW))
    later = NOW.replace(second=5)
    renewed = claim(created, "me", 15, later)
    assert (renewed.transitions, renewed.acquired, renewed.renewed) == (0, micro_time(NOW), micro_time(later))
    taken = claim(LeaseRecord("other", 15, transitions=3), "me", 15, later)
    assert (taken.holder, taken.transitions, taken.acquired) == ("me", 4, micro_time(later))


def test_release_leaves_no_holder():
    released = release(LeaseRecord("me", 15, transitions=2), NOW)
    assert (released.holder, released.duration, released.transitions) == ("", 1, 2)


def test_spec_round_trip():
    record = LeaseRecord("me", 15, micro_time(NOW), micro_time(NOW), 2)
    assert LeaseRecord.from_spec(record.to_spec(), 10) == record
    assert LeaseRecord.from_spec(None, 10) == LeaseRecord("", 10)


def test_a_leader_that_did_not_renew_within_the_deadline_stops_leading():
    assert still_leading(renewed_at=100.0, renew_deadline=10, now=109.9)
    assert not still_leading(renewed_at=100.0, renew_deadline=10, now=110.0)
    assert not still_leading(renewed_at=None, renew_deadline=10, now=0.0)
