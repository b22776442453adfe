"""Stream specs and broker URLs: parsed and checked without I/O; bad ones fail naming themselves."""

from __future__ import annotations

import pytest

from lingo.batch.urls import (
    DEFAULT_MAX_HANDLERS,
    aws_region,
    parse_stream,
    parse_streams,
    parse_url,
    subject_matches,
)
from lingo.config import ConfigError


def test_a_pubsub_stream_with_max_handlers() -> None:
    spec = parse_stream("gcppubsub://projects/p1/subscriptions/reqs|gcppubsub://projects/p1/topics/resps|25")
    assert spec.requests.scheme == "gcppubsub"
    assert spec.requests.name == "projects/p1/subscriptions/reqs"
    assert spec.responses.name == "projects/p1/topics/resps"
    assert spec.max_handlers == 25


def test_max_handlers_has_a_default() -> None:
    assert parse_stream("mem://a|mem://b").max_handlers == DEFAULT_MAX_HANDLERS


def test_nats_parameters_and_model_hint() -> None:
    url = parse_url("nats://jobs.requests?stream=JOBS&consumer=workers&ack_wait=1m&model=llama", "receive")
    assert url.name == "jobs.requests"
    assert dict(url.params) == {"stream": "JOBS", "consumer": "workers", "ack_wait": "1m", "model": "llama"}
    assert url.model == "llama"


def test_the_label_leaves_credentials_out() -> None:
    url = parse_url("rabbit://user:secret@jobs", "receive")
    assert url.name == "jobs"
    assert "secret" not in url.label and url.label == "rabbit://jobs"


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("nats://a", "nats://a"),
        ("nats://a|nats://b|zero", "zero"),
        ("nats://a|nats://b|0", "MAX_HANDLERS"),
        ("nats://a|nats://b|1|2", "nats://a|nats://b|1|2"),
        ("kafka://a|kafka://b", "needs ?topic="),
        ("kafka://g?topic=t|kafka://t", "must not go"),
        ("kafka://g?topic=a b|kafka://t", "topic must be"),
        ("kafka://g?topic=t|kafka://u?topic=v", "topic"),
        ("redisstream://s|redisstream://r", "needs ?group="),
        ("redisstream://s?group=g&maxlen=5|redisstream://r", "maxlen"),
        ("redisstream://s?group=g|redisstream://r?maxlen=0", "maxlen must be"),
        ("redisstream://s?group=g&lease=0s|redisstream://r", "lease must be"),
        ("awssqs://sqs.us-east-1.amazonaws.com/q|awssqs://h/1/r", "ACCOUNT/QUEUE"),
        ("awssns:///arn:aws:sns:us-east-1:1:t|awssqs://h/1/r", "only published to"),
        ("awssqs://h/1/q|awssns:///arn:aws:sqs:us-east-1:1:t", "arn:aws:sns"),
        ("awssqs://h/1/q?region=Mars 1|awssqs://h/1/r", "region"),
        ("awssqs://h/1/q|redisstream://r", "same kind"),
        ("nats://a|rabbit://b", "same kind"),
        ("nats://a|nats://a", "must not go"),
        ("gcppubsub://projects/p/topics/top|gcppubsub://projects/p/topics/uuu", "subscriptions"),
        ("gcppubsub://projects/p/subscriptions/sub|gcppubsub://projects/p/subscriptions/uuu", "topics"),
        ("gcppubsub://projects/p/subscriptions/ab|gcppubsub://projects/p/topics/t12", "3-255"),
        ("nats://a b|nats://c", "NATS subject"),
        ("nats://a..b|nats://c", "NATS subject"),
        ("nats://a.>|nats://c.*", "wildcards"),
        ("nats://a?strem=X|nats://b", "strem"),
        ("nats://a?stream=bad.name|nats://b", "stream must be"),
        ("nats://a?ack_wait=soon|nats://b", "ack_wait"),
        ("nats://a|nats://b?consumer=c", "consumer"),
        ("mem://a?model=|mem://b", "model must not be empty"),
        ("rabbit://|rabbit://b", "rabbit://NAME"),
    ],
)
def test_bad_specs_fail_with_a_message_naming_the_problem(spec: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("|", r"\|").replace("?", r"\?").replace(".", r"\.")):
        parse_stream(spec)


def test_the_same_requests_url_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="twice"):
        parse_streams(["mem://a|mem://b", "mem://a|mem://c"])


def test_wildcard_subjects_may_be_received_from() -> None:
    assert parse_url("nats://jobs.*.requests", "receive").name == "jobs.*.requests"


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        (">", "a", True),
        ("a.b", "a", False),
        ("*.b", "x.b", True),
    ],
)
def test_subject_matching(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


def test_aws_urls_name_queue_topic_and_region() -> None:
    spec = parse_stream(
        "awssqs://sqs.eu-west-1.amazonaws.com/123456789012/jobs?model=m|"
        "awssns:///arn:aws:sns:eu-west-1:123456789012:answers|7"
    )
    assert spec.requests.name == "sqs.eu-west-1.amazonaws.com/123456789012/jobs"
    assert aws_region(spec.requests) == "eu-west-1"
    assert spec.responses.name == "arn:aws:sns:eu-west-1:123456789012:answers"
    assert aws_region(spec.responses) == "eu-west-1"
    assert aws_region(parse_url("awssqs://localhost:4566/000000000000/q?region=us-west-2", "receive")) == (
        "us-west-2"
    )


def test_redis_and_kafka_urls() -> None:
    redis = parse_url("redisstream://jobs?group=workers&lease=1m&model=m", "receive")
    assert (redis.name, redis.params["group"], redis.params["lease"]) == ("jobs", "workers", "1m")
    assert parse_url("redisstream://answers?maxlen=500", "publish").params["maxlen"] == "500"
    kafka = parse_stream("kafka://workers?topic=jobs|kafka://answers")
    assert (kafka.requests.name, kafka.requests.place, kafka.responses.place) == (
        "workers",
        "jobs",
        "answers",
    )
