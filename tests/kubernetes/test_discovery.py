"""Reading Deployments and EndpointSlices, without an API server."""

from __future__ import annotations

import pytest

from lingo.platforms.kubernetes.discovery import (
    Defaults,
    endpoint_urls,
    parse_port_rule,
    peer_addresses,
    pick_port,
    read_deployment,
    slices_by_service,
)
from tests.fakekube import deployment, endpoint_slice

DEFAULTS = Defaults(concurrency=100, scale_down_delay=30.0)
P = "lingo.substratus.ai/"


def annotated(**notes: str) -> dict:
    return deployment("llm", annotations={P + k.replace("_", "-"): v for k, v in notes.items()})


def test_deployment_without_models_annotation_is_not_a_model():
    assert read_deployment(deployment("web"), DEFAULTS) == (None, [])


def test_defaults_apply_to_a_deployment_with_only_model_names():
    model, problems = read_deployment(annotated(models=" a, b ,a,"), DEFAULTS)
    assert problems == []
    assert model is not None
    assert model.group.name == "llm"
    assert model.group.models == ("a", "b")
    assert (model.group.min_replicas, model.group.max_replicas, model.group.concurrency) == (0, 3, 100)
    assert model.group.scale_down_delay == 30.0
    assert (model.group.load_balancing, model.group.load_factor) == ("least-load", 1.25)
    assert (model.service, model.port) == ("llm", None)


def test_every_annotation_is_read():
    model, problems = read_deployment(
        annotated(
            models="a",
            min_replicas="1",
            max_replicas="4",
            concurrency="8",
            service="llm-svc",
            port="http-api",
            scale_down_delay="1m30s",
            load_balancing="least-load",
            load_factor="1.5",
        ),
        DEFAULTS,
    )
    assert problems == []
    group = model.group
    assert (group.load_balancing, group.load_factor) == ("least-load", 1.5)
    assert (group.min_replicas, group.max_replicas, group.concurrency, group.scale_down_delay) == (
        1,
        4,
        8,
        90.0,
    )
    assert (model.service, model.port) == ("llm-svc", "http-api")


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("min-replicas", "-1"),
        ("max-replicas", "0"),
        ("max-replicas", "many"),
        ("concurrency", "1.5"),
        ("scale-down-delay", "soon"),
        ("port", "70000"),
        ("port", "a b"),
        ("load-balancing", "round-robin"),
        ("load-factor", "0.5"),
        ("load-factor", "high"),
        ("load-factor", "inf"),
    ],
)
def test_a_bad_value_is_reported_with_deployment_and_annotation_and_the_default_is_used(annotation, value):
    model, problems = read_deployment(
        annotated(models="a", **{annotation.replace("-", "_"): value}), DEFAULTS
    )
    assert model is not None
    assert model == read_deployment(annotated(models="a"), DEFAULTS)[0]
    assert len(problems) == 1
    assert "'llm'" in problems[0] and P + annotation in problems[0] and repr(value) in problems[0]


def test_min_above_max_is_clamped_and_reported():
    model, problems = read_deployment(annotated(models="a", min_replicas="5", max_replicas="2"), DEFAULTS)
    assert (model.group.min_replicas, model.group.max_replicas) == (2, 2)
    assert len(problems) == 1


def test_an_empty_model_list_is_reported_and_ignored():
    model, problems = read_deployment(annotated(models=" , "), DEFAULTS)
    assert model is None and len(problems) == 1


def test_port_rules():
    assert parse_port_rule(None) == (None, "")
    assert parse_port_rule("8000") == (8000, "")
    assert parse_port_rule("api") == ("api", "")
    one = [{"name": "", "port": 8000}]
    two = [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}]
    unnamed_two = [{"name": "a", "port": 1}, {"name": "b", "port": 2}]
    assert pick_port(one, None) == 8000
    assert pick_port(two, None) == 8080
    assert pick_port(unnamed_two, None) is None
    assert pick_port(two, "metrics") == 9090
    assert pick_port(two, 9090) == 9090
    assert pick_port(two, 1234) is None
    assert pick_port(two, "grpc") is None


def test_ready_endpoints_of_several_slices_are_merged_and_unready_ones_left_out():
    first = endpoint_slice("s-1", "svc", [("10.0.0.1", True), ("10.0.0.2", False)], 8000)
    second = endpoint_slice("s-2", "svc", [("10.0.0.3", True), ("10.0.0.1", True)], 8000)
    no_condition = endpoint_slice("s-3", "svc", [("10.0.0.4", True)], 8000)
    del no_condition["endpoints"][0]["conditions"]
    ipv6 = endpoint_slice("s-4", "svc", [("fd00::5", True)], 8000)
    empty = {**endpoint_slice("s-5", "svc", [], 8000), "endpoints": None}
    urls, problems = endpoint_urls([first, second, no_condition, ipv6, empty], None)
    assert problems == []
    assert urls == [
        "http://10.0.0.1:8000",
        "http://10.0.0.3:8000",
        "http://10.0.0.4:8000",
        "http://[fd00::5]:8000",
    ]


def test_a_slice_without_the_wanted_port_is_reported():
    bad = endpoint_slice("s-1", "svc", [("10.0.0.1", True)], 8000, "grpc")
    bad["ports"].append({"name": "admin", "port": 9000})
    urls, problems = endpoint_urls([bad], None)
    assert urls == [] and "'s-1'" in problems[0] and "grpc=8000" in problems[0]


def test_slices_are_grouped_by_their_service_label():
    a, b = endpoint_slice("a-1", "a", [], 1), endpoint_slice("b-1", "b", [], 1)
    unlabelled = endpoint_slice("x", "x", [], 1)
    unlabelled["metadata"]["labels"] = {}
    assert slices_by_service([a, b, unlabelled]) == {"a": [a], "b": [b]}


def test_peers_are_the_other_serving_replicas_on_their_stats_port():
    peers = endpoint_slice(
        "lingo-1", "lingo", [("10.0.0.1", True), ("10.0.0.2", True), ("10.0.0.3", False)], 8083, "stats"
    )
    peers["ports"].insert(0, {"name": "http", "port": 8080})
    for endpoint, pod in zip(peers["endpoints"], ("me", "other", "starting"), strict=True):
        endpoint["targetRef"] = {"kind": "Pod", "name": pod}
    peers["endpoints"][2]["conditions"]["serving"] = False
    draining = endpoint_slice("lingo-2", "lingo", [("10.0.0.4", False)], 8080, "http")
    draining["endpoints"][0]["conditions"]["serving"] = True
    assert peer_addresses([peers, draining], "me", 9999) == ["10.0.0.2:8083", "10.0.0.4:9999"]
