"""Backoff: doubling delays with jitter, capped, reset on success."""

from lingo.backoff import Backoff, backoff_delay


def test_delays_double_up_to_the_cap_with_jitter_in_the_upper_half_and_reset():
    low = Backoff(initial=1, cap=8, random_fraction=lambda: 0.0)
    assert [low.next() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    high = Backoff(initial=1, cap=8, random_fraction=lambda: 0.999999)
    assert round(max(high.next() for _ in range(10)), 3) == 8
    low.reset()
    assert low.next() == 0.5


def test_many_failures_do_not_overflow():
    backoff = Backoff(initial=0.5, cap=30, random_fraction=lambda: 0.5)
    for _ in range(5000):
        delay = backoff.next()
    assert delay == 22.5


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [backoff_delay(n, 1.0, 10.0, jitter=0) for n in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay(10_000, 1.0, 10.0, jitter=0) == 10.0
    assert 0.5 <= backoff_delay(1, 1.0, 10.0) <= 1.0


def test_an_error_streak_resets_on_success() -> None:
    streak = Backoff(0.5, 60.0)
    assert streak.current() == 0.0
    streak.next()
    streak.next()
    assert 0.5 <= streak.current() <= 1.0
    streak.reset()
    assert streak.current() == 0.0
