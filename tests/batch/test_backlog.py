"""A stream's broker backlog split by model: pure bookkeeping."""

from __future__ import annotations

from lingo.batch.backlog import BacklogSplit


def test_a_hinted_model_takes_the_whole_backlog() -> None:
    split = BacklogSplit("m")
    split.received("other")
    split.total = 900
    assert split.demand() == {"m": 900}


def test_the_backlog_is_split_like_the_recent_messages() -> None:
    split = BacklogSplit()
    for model in ["a"] * 3 + ["b"]:
        split.received(model)
    split.total = 1000
    assert split.demand() == {"a": 750, "b": 250}


def test_only_the_recent_window_counts_and_shares_round_up() -> None:
    split = BacklogSplit(window=3)
    for model in ["old", "a", "a", "b"]:
        split.received(model)
    split.total = 10
    assert split.demand() == {"a": 7, "b": 4}


def test_no_backlog_or_no_message_yet_is_no_demand() -> None:
    split = BacklogSplit()
    split.total = 50
    assert split.demand() == {}
    split.received("a")
    split.total = 0
    assert split.demand() == {}
