"""Backoff delays for an API server that is away."""

from lingo.platforms.kubernetes.backoff import Backoff


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
