"""What lingo reads from Kubernetes objects, free of I/O: model groups from annotated Deployments,
endpoint URLs and peer addresses from EndpointSlices.

Objects are the API's JSON shape (`metadata.annotations`, `spec.replicas`, `endpoints[].conditions`),
as a watch delivers them. Bad values never raise: they come back as problems (one line each, naming
the object and the annotation) and the default is used, so one typo cannot hide every other model.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lingo.config import parse_duration
from lingo.models import DEFAULT_LOAD_BALANCING, DEFAULT_LOAD_FACTOR, LOAD_BALANCING, ModelGroup

Obj = Mapping[str, Any]

#: Prefix of every annotation lingo reads.
PREFIX = "lingo.substratus.ai/"
#: Comma list of the model names clients send; a Deployment without it is not a model.
MODELS = PREFIX + "models"
#: Replicas kept without demand (default 0).
MIN_REPLICAS = PREFIX + "min-replicas"
#: Replicas never exceeded (default 3).
MAX_REPLICAS = PREFIX + "max-replicas"
#: Requests in flight per replica (default: the CONCURRENCY setting).
CONCURRENCY = PREFIX + "concurrency"
#: Service whose EndpointSlices are the replicas (default: the Deployment's name).
SERVICE = PREFIX + "service"
#: Endpoint port, a number or a port name (default: the only port, else the one named `http`).
PORT = PREFIX + "port"
#: Seconds (or a Go duration) demand must stay lower before replicas are removed.
SCALE_DOWN_DELAY = PREFIX + "scale-down-delay"
#: Endpoint choice: `least-load` or `prefix` (cache-aware; the default).
LOAD_BALANCING_ANNOTATION = PREFIX + "load-balancing"
#: `prefix` load bound: an endpoint carries at most ceil(mean in flight x this) (default 1.25).
LOAD_FACTOR = PREFIX + "load-factor"

#: Label the EndpointSlice controller puts on every slice: the Service it belongs to.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: Default max replicas, as in Lingo.
DEFAULT_MAX_REPLICAS = 3
#: Name of the port chosen when a slice lists several and no annotation says which.
DEFAULT_PORT_NAME = "http"
#: Name of the peer Service's port serving `/stats`.
STATS_PORT_NAME = "stats"

#: A port rule: a number, a port name, or None for "the only port, else the one named http".
PortRule = int | str | None


@dataclass(frozen=True)
class ModelDeployment:
    """One Deployment that serves models, as lingo understands it."""

    #: The group: name (the Deployment's), client-facing names, scaling bounds and targets.
    group: ModelGroup
    #: Service whose EndpointSlices list the group's endpoints.
    service: str
    #: Which EndpointSlice port requests go to.
    port: PortRule


@dataclass(frozen=True)
class Defaults:
    """Values used where a Deployment has no (valid) annotation: lingo's own settings."""

    #: Requests in flight per replica.
    concurrency: int
    #: Seconds before replicas are removed.
    scale_down_delay: float


def annotations_of(obj: Obj) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def object_name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def spec_replicas(obj: Obj) -> int:
    """`spec.replicas` of a Deployment; the API defaults a missing value to 1."""
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def read_deployment(obj: Obj, defaults: Defaults) -> tuple[ModelDeployment | None, list[str]]:
    """The model a Deployment serves (None when it is not annotated as one), and any problems."""
    name = object_name(obj)
    notes = annotations_of(obj)
    if MODELS not in notes:
        return None, []
    problems: list[str] = []

    def problem(annotation: str, value: str, why: str, default: object) -> None:
        problems.append(
            f"Deployment {name!r}: annotation {annotation}={value!r} {why}; using the default {default}"
        )

    models = tuple(dict.fromkeys(part.strip() for part in notes[MODELS].split(",") if part.strip()))
    if not models:
        problems.append(f"Deployment {name!r}: annotation {MODELS} lists no model name; ignoring it")
        return None, problems

    def integer(annotation: str, default: int, least: int) -> int:
        raw = notes.get(annotation)
        if raw is None:
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            problem(annotation, raw, "is not a whole number", default)
            return default
        if value < least:
            problem(annotation, raw, f"must be at least {least}", default)
            return default
        return value

    min_replicas = integer(MIN_REPLICAS, 0, 0)
    max_replicas = integer(MAX_REPLICAS, DEFAULT_MAX_REPLICAS, 1)
    if min_replicas > max_replicas:
        problems.append(
            f"Deployment {name!r}: {MIN_REPLICAS}={min_replicas} is above {MAX_REPLICAS}={max_replicas}; "
            f"using {max_replicas} for both"
        )
        min_replicas = max_replicas
    concurrency = integer(CONCURRENCY, defaults.concurrency, 1)
    delay = defaults.scale_down_delay
    raw_delay = notes.get(SCALE_DOWN_DELAY)
    if raw_delay is not None:
        try:
            delay = parse_duration(raw_delay)
        except ValueError:
            problem(SCALE_DOWN_DELAY, raw_delay, "is not a duration (e.g. 30s, 2m)", f"{delay:g}s")
    load_balancing = notes.get(LOAD_BALANCING_ANNOTATION, DEFAULT_LOAD_BALANCING).strip()
    if load_balancing not in LOAD_BALANCING:
        problem(
            LOAD_BALANCING_ANNOTATION,
            load_balancing,
            f"is not one of {', '.join(LOAD_BALANCING)}",
            DEFAULT_LOAD_BALANCING,
        )
        load_balancing = DEFAULT_LOAD_BALANCING
    load_factor = DEFAULT_LOAD_FACTOR
    raw_factor = notes.get(LOAD_FACTOR)
    if raw_factor is not None:
        try:
            load_factor = float(raw_factor.strip())
        except ValueError:
            load_factor = 0.0
        if not 1 <= load_factor < float("inf"):
            problem(LOAD_FACTOR, raw_factor, "is not a number of at least 1", DEFAULT_LOAD_FACTOR)
            load_factor = DEFAULT_LOAD_FACTOR
    service = notes.get(SERVICE, "").strip() or name
    port, port_problem = parse_port_rule(notes.get(PORT))
    if port_problem:
        problem(PORT, notes.get(PORT, ""), port_problem, "(the only port, else the one named http)")
    group = ModelGroup(
        name=name,
        models=models,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        concurrency=concurrency,
        scale_down_delay=delay,
        load_balancing=load_balancing,
        load_factor=load_factor,
    )
    return ModelDeployment(group=group, service=service, port=port), problems


def parse_port_rule(raw: str | None) -> tuple[PortRule, str]:
    """The rule in a port annotation, and why it is unusable (empty when it is fine)."""
    if raw is None or not raw.strip():
        return None, ""
    text = raw.strip()
    if text.isdigit():
        number = int(text)
        if not 1 <= number <= 65535:
            return None, "is not a port number (1-65535)"
        return number, ""
    if any(c.isspace() or c == "," for c in text):
        return None, "is neither a port number nor a port name"
    return text, ""


def pick_port(ports: Iterable[Obj], rule: PortRule) -> int | None:
    """The EndpointSlice port `rule` selects: by number, by name, else the only one, else `http`."""
    listed = [p for p in ports if p.get("port") is not None]
    if isinstance(rule, int):
        return rule if any(int(p["port"]) == rule for p in listed) else None
    if isinstance(rule, str):
        return next((int(p["port"]) for p in listed if (p.get("name") or "") == rule), None)
    if len(listed) == 1:
        return int(listed[0]["port"])
    return next((int(p["port"]) for p in listed if p.get("name") == DEFAULT_PORT_NAME), None)


def service_of(slice_: Obj) -> str | None:
    """The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label)."""
    return ((slice_.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)


def slices_by_service(slices: Iterable[Obj]) -> dict[str, list[Obj]]:
    """EndpointSlices grouped by the Service they belong to."""
    grouped: dict[str, list[Obj]] = {}
    for slice_ in slices:
        service = service_of(slice_)
        if service:
            grouped.setdefault(service, []).append(slice_)
    return grouped


def _condition(endpoint: Obj, name: str) -> bool:
    # The API docs: a nil condition is to be read as true ("unknown state").
    value = (endpoint.get("conditions") or {}).get(name)
    return value is not False


def _host(address: str) -> str:
    try:
        return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        return address  # an FQDN slice


def endpoint_urls(slices: Iterable[Obj], rule: PortRule) -> tuple[list[str], list[str]]:
    """Ready endpoint URLs across every slice of one Service (merged, sorted, unique), and problems.

    An endpoint counts when `conditions.ready` is true or missing; its first address is used, as
    kube-proxy does. A slice whose ports do not contain the one `rule` asks for contributes nothing.
    """
    urls: set[str] = set()
    problems: list[str] = []
    for slice_ in slices:
        endpoints = slice_.get("endpoints") or []
        if not endpoints:
            continue
        port = pick_port(slice_.get("ports") or [], rule)
        if port is None:
            listed = ", ".join(
                f"{p.get('name') or '(unnamed)'}={p.get('port')}" for p in slice_.get("ports") or []
            )
            wanted = "the only port or one named http" if rule is None else repr(rule)
            problems.append(
                f"EndpointSlice {object_name(slice_)!r}: no port matches {wanted} "
                f"(ports: {listed or 'none'}); set the {PORT} annotation"
            )
            continue
        for endpoint in endpoints:
            addresses = endpoint.get("addresses") or []
            if addresses and _condition(endpoint, "ready"):
                urls.add(f"http://{_host(addresses[0])}:{port}")
    return sorted(urls), problems


def replica_rank(slices: Iterable[Obj], identity: str) -> tuple[int, int]:
    """(rank, count) of this replica among the lingo replicas in the peer Service's EndpointSlices.

    Replicas are ordered by pod name, so every replica computes the same order. This replica counts
    even before its own endpoint is listed (it is already sending requests), as do peers still
    serving while they terminate, so the shares add up to at most the cap whenever every replica
    sees the same slices.
    """
    names = {identity}
    for slice_ in slices:
        for endpoint in slice_.get("endpoints") or []:
            name = (endpoint.get("targetRef") or {}).get("name")
            if (
                name
                and (endpoint.get("addresses") or [])
                and (_condition(endpoint, "ready") or _condition(endpoint, "serving"))
            ):
                names.add(str(name))
    ordered = sorted(names)
    return ordered.index(identity), len(ordered)


def peer_addresses(slices: Iterable[Obj], identity: str, default_port: int) -> list[str]:
    """`host:port` of every other lingo replica's `/stats`, from the peer Service's EndpointSlices.

    Endpoints still serving count too (ready, or terminating while draining its in-flight work). This
    replica (`targetRef.name` equal to its identity) is left out: it counts its own queues directly.
    The port is the slice's port named `stats`, else `default_port`.
    """
    peers: set[str] = set()
    for slice_ in slices:
        named = [p for p in slice_.get("ports") or [] if p.get("name") == STATS_PORT_NAME]
        port = int(named[0]["port"]) if named and named[0].get("port") else default_port
        for endpoint in slice_.get("endpoints") or []:
            addresses = endpoint.get("addresses") or []
            if not addresses or (endpoint.get("targetRef") or {}).get("name") == identity:
                continue
            if _condition(endpoint, "ready") or _condition(endpoint, "serving"):
                peers.add(f"{_host(addresses[0])}:{port}")
    return sorted(peers)
