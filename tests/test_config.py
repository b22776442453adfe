"""Settings: Go-style durations, addresses, env fallbacks, and errors that name the setting."""

from __future__ import annotations

import argparse

import pytest

from lingo import config
from lingo.config import ConfigError, parse_address, parse_duration
from lingo.platforms.models_file import parse_models


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3s", 3), ("1m", 60), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), ("45", 45), ("0.25", 0.25)],
)
def test_durations_take_go_style_or_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "3x", "s", "-1", "1m 30s", "abc"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_addresses_take_host_port_or_port_only() -> None:
    assert parse_address(":8080") == ("0.0.0.0", 8080)
    assert parse_address("127.0.0.1:9") == ("127.0.0.1", 9)
    assert parse_address("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        parse_address("8080")


def parse(argv: list[str], env: dict[str, str]) -> config.Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args(argv), env)


def test_defaults_are_lingos() -> None:
    settings = parse([], {})
    assert (settings.concurrency, settings.scale_down_delay, settings.backend_retries) == (100, 30, 1)
    assert (settings.autoscaling_interval, settings.autoscaling_time_window) == (3, 30)
    assert settings.metrics_address == ("0.0.0.0", 8082) and settings.health_address == ("0.0.0.0", 8081)
    assert (settings.max_queue, settings.max_wait, settings.max_body) == (10000, 600, 64 * 1024 * 1024)


def test_lingo_env_names_are_honoured_and_flags_win() -> None:
    env = {
        "CONCURRENCY": "7",
        "SCALE_DOWN_DELAY": "1m",
        "MESSENGER_URLS": "mem://a|mem://b,mem://c|mem://d|4",
        "LINGO_API_KEYS": "x, y",
        "NAMESPACE": "models",
    }
    settings = parse(["--concurrency", "9"], env)
    assert settings.concurrency == 9 and settings.scale_down_delay == 60 and settings.namespace == "models"
    assert settings.messengers == ["mem://a|mem://b", "mem://c|mem://d|4"]
    assert settings.api_keys == ["x", "y"]
    assert parse(["--messenger", "mem://a|mem://b", "--messenger", "mem://c|mem://d"], {}).messengers == [
        "mem://a|mem://b",
        "mem://c|mem://d",
    ]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CONCURRENCY": "0"}, "CONCURRENCY"),
        ({"SCALE_DOWN_DELAY": "soon"}, "SCALE_DOWN_DELAY"),
        ({"METRICS_BIND_ADDRESS": "nope"}, "METRICS_BIND_ADDRESS"),
        ({"LINGO_PLATFORM": "nomad"}, "LINGO_PLATFORM"),
        ({"AUTOSCALING_INTERVAL": "0"}, "AUTOSCALING_INTERVAL"),
    ],
)
def test_bad_values_fail_with_the_setting_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse([], env)


def test_platform_defaults_to_kubernetes_inside_a_cluster() -> None:
    settings = parse([], {})
    assert settings.resolved_platform({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "kubernetes"
    assert settings.resolved_platform({}) == "local"


def test_models_file_fills_defaults() -> None:
    [scaled, fixed] = parse_models(
        {
            "models": [
                {"name": "a", "command": ["srv", "{port}"]},
                {"name": "b", "endpoints": ["http://x:1/"]},
            ]
        },
        "f.yaml",
        concurrency=5,
        scale_down_delay=12,
    )
    assert (
        scaled.group.models == ("a",)
        and scaled.group.concurrency == 5
        and scaled.group.scale_down_delay == 12
    )
    assert scaled.group.scalable and scaled.ready_path == "/health"
    assert (scaled.group.load_balancing, scaled.group.load_factor) == ("least-load", 1.25)
    assert not fixed.group.scalable and fixed.endpoints == ("http://x:1",)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a"}, "exactly one of 'command' or 'endpoints'"),
        ({"name": "a", "command": ["srv"]}, "{port}"),
        ({"name": "a", "command": ["srv", "{port}"], "max_replicas": -1}, "max_replicas"),
        ({"name": "a", "command": ["srv", "{port}"], "min_replicas": 3, "max_replicas": 1}, "max_replicas"),
        ({"name": "a", "endpoints": ["ftp://x"]}, "endpoints"),
        ({"name": "a", "endpoints": ["http://x"], "concurency": 3}, "concurency"),
        ({"command": ["x", "{port}"]}, "name"),
        ({"name": "a", "endpoints": ["http://x"], "load_balancing": "random"}, "load_balancing"),
        ({"name": "a", "endpoints": ["http://x"], "load_factor": 0.9}, "load_factor"),
        ({"name": "a", "endpoints": ["http://x"], "load_factor": "2"}, "load_factor"),
    ],
)
def test_models_file_errors_name_the_entry_and_key(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_models({"models": [entry]}, "f.yaml", concurrency=1, scale_down_delay=1)


def test_models_file_reads_the_load_balancing_keys() -> None:
    [entry] = parse_models(
        {
            "models": [
                {"name": "a", "endpoints": ["http://x"], "load_balancing": "least-load", "load_factor": 2}
            ]
        },
        "f.yaml",
        concurrency=1,
        scale_down_delay=1,
    )
    assert (entry.group.load_balancing, entry.group.load_factor) == ("least-load", 2.0)
