"""The local platform's models file: parsing and validation with errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lingo.config import ConfigError
from lingo.models import DEFAULT_LOAD_BALANCING, DEFAULT_LOAD_FACTOR, LOAD_BALANCING, ModelGroup


@dataclass(frozen=True)
class LocalModel:
    """One entry of the models file: a group run as local processes, or static endpoints."""

    #: Group spec (names, replica bounds, concurrency, scale-down delay).
    group: ModelGroup
    #: Command starting one replica; `{port}` is replaced with a free port. Empty for static entries.
    command: tuple[str, ...] = ()
    #: Base URLs of servers already running elsewhere; never scaled.
    endpoints: tuple[str, ...] = ()
    #: Path polled until it answers 200 before a replica gets traffic.
    ready_path: str = "/health"
    #: Extra environment for replica processes.
    env: dict[str, str] = field(default_factory=dict)
    #: Seconds between SIGTERM and SIGKILL when a replica is stopped.
    stop_grace: float = 10.0


_KEYS = {
    "name",
    "models",
    "command",
    "endpoints",
    "ready_path",
    "min_replicas",
    "max_replicas",
    "concurrency",
    "scale_down_delay",
    "env",
    "stop_grace",
    "load_balancing",
    "load_factor",
}


def load_models_file(path: str, concurrency: int, scale_down_delay: float) -> list[LocalModel]:
    """Parse `path`; a problem raises ConfigError naming the file, the entry and the key."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"LINGO_MODELS_FILE {path!r}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"LINGO_MODELS_FILE {path!r}: not valid YAML: {exc}") from None
    return parse_models(document, path, concurrency, scale_down_delay)


def parse_models(document: Any, source: str, concurrency: int, scale_down_delay: float) -> list[LocalModel]:
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise ConfigError(f"models file {source}: expected a mapping with a 'models' list")
    models: list[LocalModel] = []
    seen: set[str] = set()
    for index, entry in enumerate(document["models"]):
        where = f"models file {source}: models[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping")
        unknown = set(entry) - _KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name: required, a non-empty string")
        if name in seen:
            raise ConfigError(f"{where}.name: {name!r} appears twice")
        seen.add(name)
        where = f"models file {source}: model {name!r}"
        names = _string_list(entry.get("models", [name]), f"{where}.models")
        command = _string_list(entry.get("command", []), f"{where}.command")
        endpoints = _string_list(entry.get("endpoints", []), f"{where}.endpoints")
        if bool(command) == bool(endpoints):
            raise ConfigError(f"{where}: give exactly one of 'command' or 'endpoints'")
        if command and not any("{port}" in part for part in command):
            raise ConfigError(f"{where}.command: must contain '{{port}}' where the replica's port goes")
        for url in endpoints:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}.endpoints: {url!r} is not an http(s) URL")
        min_replicas = _int(entry, "min_replicas", 0, where, minimum=0)
        max_replicas = _int(entry, "max_replicas", max(1, min_replicas), where, minimum=0)
        if max_replicas < min_replicas:
            raise ConfigError(f"{where}.max_replicas: {max_replicas} is below min_replicas {min_replicas}")
        ready_path = entry.get("ready_path", "/health")
        if not isinstance(ready_path, str) or not ready_path.startswith("/"):
            raise ConfigError(f"{where}.ready_path: must be a path starting with '/'")
        env = entry.get("env", {})
        if not isinstance(env, dict):
            raise ConfigError(f"{where}.env: expected a mapping of names to values")
        load_balancing = entry.get("load_balancing", DEFAULT_LOAD_BALANCING)
        if load_balancing not in LOAD_BALANCING:
            raise ConfigError(
                f"{where}.load_balancing: expected one of {', '.join(LOAD_BALANCING)}, got {load_balancing!r}"
            )
        load_factor = entry.get("load_factor", DEFAULT_LOAD_FACTOR)
        if not isinstance(load_factor, int | float) or isinstance(load_factor, bool) or load_factor < 1:
            raise ConfigError(f"{where}.load_factor: expected a number of at least 1, got {load_factor!r}")
        group = ModelGroup(
            name=name,
            models=tuple(names),
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            concurrency=_int(entry, "concurrency", concurrency, where, minimum=1),
            scale_down_delay=_number(entry, "scale_down_delay", scale_down_delay, where),
            scalable=bool(command),
            load_balancing=load_balancing,
            load_factor=float(load_factor),
        )
        models.append(
            LocalModel(
                group=group,
                command=tuple(command),
                endpoints=tuple(url.rstrip("/") for url in endpoints),
                ready_path=ready_path,
                env={str(k): str(v) for k, v in env.items()},
                stop_grace=_number(entry, "stop_grace", 10.0, where),
            )
        )
    return models


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return [str(v) for v in value]


def _int(entry: dict[str, Any], key: str, default: int, where: str, minimum: int) -> int:
    value = entry.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{where}.{key}: expected a whole number of at least {minimum}, got {value!r}")
    return value


def _number(entry: dict[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where}.{key}: expected seconds (a number of at least 0), got {value!r}")
    return float(value)
