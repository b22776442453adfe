"""Settings of `lingo serve`: one table, parsed from flags with environment fallbacks.

Every setting is declared once in `SETTINGS`; the CLI flags, the env lookup, the docs test and the
chart test all read that table, so none of them can drift from the code.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A setting has a value lingo cannot use; the message names the setting."""


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from a Go-style duration (`3s`, `1m30s`, `500ms`) or a plain number of seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pos, total = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 1m, 1m30s or plain seconds)") from None
        return total
    if value < 0:
        raise ValueError(f"negative duration: {text!r}")
    return value


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) from `host:port` or `:port`; an empty host means all interfaces."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not an address: {text!r} (use host:port or :port)")
    host = host.strip("[]")
    return (host or "0.0.0.0", int(port))


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|K|M|G|T)?", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tib": 1 << 40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
}  # fmt: skip


def parse_size(text: str) -> int:
    """Bytes from a size (`1GiB`, `512MiB`, `64K`, `1000000`); at least 1."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 1GiB, 512MiB or plain bytes)")
    value = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]
    if value < 1:
        raise ValueError(f"must be at least 1 byte, got {text!r}")
    return value


def parse_positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"must be more than 0, got {text!r}")
    return value


def parse_positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def parse_non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(f"must be more than 0 and at most 1, got {text!r}")
    return value


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def parse_platform(text: str) -> str:
    value = text.strip().lower()
    if value not in ("local", "kubernetes", ""):
        raise ValueError(f"must be 'local' or 'kubernetes', got {text!r}")
    return value


def parse_log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"must be debug, info, warning or error, got {text!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """One configuration knob: a flag, its env fallback, its default and how to parse it."""

    #: Attribute name on `Settings`.
    name: str
    #: Command-line flag of `lingo serve`.
    flag: str
    #: Environment variable read when the flag is absent (Lingo's names where Lingo had one).
    env: str
    #: Default as the text a user would type; parsed like user input.
    default: str
    #: Turns the text into the typed value; raises ValueError with a reason.
    parse: Callable[[str], Any]
    #: One line for `--help` and docs/configuration.md.
    help: str
    #: True when the flag may repeat (values are joined with commas).
    repeat: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "platform",
        "--platform",
        "LINGO_PLATFORM",
        "",
        parse_platform,
        "Where models run: local or kubernetes (default: kubernetes inside a cluster, else local).",
    ),
    Setting(
        "namespace",
        "--namespace",
        "NAMESPACE",
        "default",
        str,
        "Kubernetes namespace whose Deployments are models.",
    ),
    Setting(
        "models_file",
        "--models-file",
        "LINGO_MODELS_FILE",
        "",
        str,
        "YAML file listing models for the local platform.",
    ),
    Setting(
        "proxy_address",
        "--proxy-address",
        "LINGO_PROXY_ADDRESS",
        ":8080",
        parse_address,
        "Address of the OpenAI-compatible proxy.",
    ),
    Setting(
        "health_address",
        "--health-probe-bind-address",
        "HEALTH_PROBE_BIND_ADDRESS",
        ":8081",
        parse_address,
        "Address of /healthz and /readyz.",
    ),
    Setting(
        "metrics_address",
        "--metrics-bind-address",
        "METRICS_BIND_ADDRESS",
        ":8082",
        parse_address,
        "Address of Prometheus /metrics.",
    ),
    Setting(
        "stats_address",
        "--stats-address",
        "LINGO_STATS_ADDRESS",
        ":8083",
        parse_address,
        "Address of /stats, the per-model counts peers read.",
    ),
    Setting(
        "peer_service",
        "--peer-service",
        "LINGO_PEER_SERVICE",
        "lingo",
        str,
        "Kubernetes Service whose endpoints are the lingo peers.",
    ),
    Setting(
        "concurrency",
        "--concurrency",
        "CONCURRENCY",
        "100",
        parse_positive_int,
        "Default requests in flight per replica (model annotation or file may override).",
    ),
    Setting(
        "scale_down_delay",
        "--scale-down-delay",
        "SCALE_DOWN_DELAY",
        "30s",
        parse_duration,
        "How long demand must stay lower before replicas are removed.",
    ),
    Setting(
        "backend_retries",
        "--backend-retries",
        "BACKEND_RETRIES",
        "1",
        parse_non_negative_int,
        "Retries on connection errors and 502/503/504, each to a freshly picked endpoint.",
    ),
    Setting(
        "messengers",
        "--messenger",
        "MESSENGER_URLS",
        "",
        parse_list,
        "Batch streams 'REQUESTS_URL|RESPONSES_URL[|MAX_HANDLERS]' (repeatable; env: comma list).",
        repeat=True,
    ),
    Setting(
        "messenger_error_max_backoff",
        "--messenger-error-max-backoff",
        "MESSENGER_ERROR_MAX_BACKOFF",
        "3m",
        parse_duration,
        "Longest pause of a batch stream's receive loop after repeated errors.",
    ),
    Setting(
        "batch_max_deliveries",
        "--batch-max-deliveries",
        "LINGO_BATCH_MAX_DELIVERIES",
        "5",
        parse_positive_int,
        "Deliveries of one batch message after which it is answered with an error and acked.",
    ),
    Setting(
        "autoscaling_interval",
        "--autoscaling-interval",
        "AUTOSCALING_INTERVAL",
        "3s",
        parse_duration,
        "How often the autoscaler samples demand and decides.",
    ),
    Setting(
        "autoscaling_time_window",
        "--autoscaling-time-window",
        "AUTOSCALING_TIME_WINDOW",
        "30s",
        parse_duration,
        "Window of the moving average of demand.",
    ),
    Setting(
        "max_queue",
        "--max-queue",
        "LINGO_MAX_QUEUE",
        "10000",
        parse_positive_int,
        "Waiting requests per model before new ones get 429.",
    ),
    Setting(
        "max_wait",
        "--max-wait",
        "LINGO_MAX_WAIT",
        "600",
        parse_duration,
        "Longest a request waits for a ready endpoint before 503.",
    ),
    Setting(
        "flex_max_wait",
        "--flex-max-wait",
        "LINGO_FLEX_MAX_WAIT",
        "10s",
        parse_duration,
        "Longest a flex request (service_tier flex) waits for a slot before 429 with Retry-After.",
    ),
    Setting(
        "batch_max_share",
        "--batch-max-share",
        "LINGO_BATCH_MAX_SHARE",
        "0.75",
        parse_share,
        "Fraction of each endpoint's slots batch work may fill (at least one slot); 1 disables.",
    ),
    Setting(
        "priority_aging",
        "--priority-aging",
        "LINGO_PRIORITY_AGING",
        "15s",
        parse_positive_duration,
        "Waiting this long moves a request up one class, so lower classes never starve.",
    ),
    Setting(
        "max_body",
        "--max-body",
        "LINGO_MAX_BODY",
        str(64 * 1024 * 1024),
        parse_positive_int,
        "Largest request body in bytes before 413.",
    ),
    Setting(
        "max_buffered",
        "--max-buffered",
        "LINGO_MAX_BUFFERED",
        "1GiB",
        parse_size,
        "Request-body bytes the whole process holds at once; beyond it reading pauses.",
    ),
    Setting(
        "header_timeout",
        "--header-timeout",
        "LINGO_HEADER_TIMEOUT",
        "30s",
        parse_positive_duration,
        "Longest from the first byte of a request head to its end before 408.",
    ),
    Setting(
        "body_timeout",
        "--body-timeout",
        "LINGO_BODY_TIMEOUT",
        "60s",
        parse_positive_duration,
        "Longest silence while a request body arrives before 408.",
    ),
    Setting(
        "upstream_timeout",
        "--upstream-timeout",
        "LINGO_UPSTREAM_TIMEOUT",
        "600s",
        parse_positive_duration,
        "Longest from a request sent to a backend to its response head before 504.",
    ),
    Setting(
        "upstream_idle_timeout",
        "--upstream-idle-timeout",
        "LINGO_UPSTREAM_IDLE_TIMEOUT",
        "300s",
        parse_positive_duration,
        "Longest silence inside a backend's response body before the answer is cut.",
    ),
    Setting(
        "api_keys",
        "--api-keys",
        "LINGO_API_KEYS",
        "",
        parse_list,
        "Comma list of accepted API keys (Authorization: Bearer); empty disables the check.",
    ),
    Setting(
        "shutdown_grace",
        "--shutdown-grace",
        "LINGO_SHUTDOWN_GRACE",
        "30s",
        parse_duration,
        "On SIGTERM, how long in-flight work may finish before lingo exits.",
    ),
    Setting(
        "shutdown_delay",
        "--shutdown-delay",
        "LINGO_SHUTDOWN_DELAY",
        "5s",
        parse_duration,
        "On SIGTERM, how long lingo keeps serving with /readyz failing (endpoint removal) before draining.",
    ),
    Setting(
        "access_log",
        "--access-log",
        "LINGO_ACCESS_LOG",
        "false",
        parse_bool,
        "One structured log line per request and per batch message (true or false).",
    ),
    Setting(
        "log_dir",
        "--log-dir",
        "LINGO_LOG_DIR",
        "",
        str,
        "Folder for local replicas' output (default: a temporary folder).",
    ),
    Setting(
        "log_level",
        "--log-level",
        "LINGO_LOG_LEVEL",
        "info",
        parse_log_level,
        "Log level: debug, info, warning or error.",
    ),
    Setting(
        "pod_name",
        "--pod-name",
        "POD_NAME",
        "",
        str,
        "This replica's identity for leader election (default: host name).",
    ),
    Setting(
        "lease_name",
        "--lease-name",
        "LINGO_LEASE_NAME",
        "lingo-leader",
        str,
        "Lease used for leader election on Kubernetes.",
    ),
    Setting(
        "state_configmap",
        "--state-configmap",
        "LINGO_STATE_CONFIGMAP",
        "lingo-autoscaler",
        str,
        "ConfigMap where the autoscaler keeps its moving averages across restarts.",
    ),
    Setting(
        "database_url",
        "--database-url",
        "LINGO_DATABASE_URL",
        "",
        str,
        "Batches API state: sqlite:///PATH or postgresql://… (default: sqlite under LINGO_DATA_DIR).",
    ),
    Setting(
        "data_dir",
        "--data-dir",
        "LINGO_DATA_DIR",
        "./lingo-data",
        str,
        "Folder of the default SQLite database of the Batches API.",
    ),
    Setting(
        "batch_api_concurrency",
        "--batch-api-concurrency",
        "LINGO_BATCH_API_CONCURRENCY",
        "64",
        parse_positive_int,
        "Lines of one Batches API batch in flight at once.",
    ),
    Setting(
        "batch_api_max_jobs",
        "--batch-api-max-jobs",
        "LINGO_BATCH_API_MAX_JOBS",
        "4",
        parse_positive_int,
        "Batches one lingo process runs at once.",
    ),
    Setting(
        "batch_api_lease",
        "--batch-api-lease",
        "LINGO_BATCH_API_LEASE",
        "30s",
        parse_duration,
        "How long a process's claim on a batch lasts unless renewed; another takes over after it.",
    ),
    Setting(
        "batch_api_poll_interval",
        "--batch-api-poll-interval",
        "LINGO_BATCH_API_POLL_INTERVAL",
        "1s",
        parse_duration,
        "How often a process looks for batches to run (new ones on this process start at once).",
    ),
    Setting(
        "batch_api_window",
        "--batch-api-window",
        "LINGO_BATCH_API_WINDOW",
        "24h",
        parse_duration,
        "Time from a batch's creation to its expiry (the API says 24h; shorter for tests only).",
    ),
)


@dataclass
class Settings:
    """Parsed settings of one `lingo serve` process; see `SETTINGS` for the meaning of each field."""

    platform: str = ""
    namespace: str = "default"
    models_file: str = ""
    proxy_address: tuple[str, int] = ("0.0.0.0", 8080)
    health_address: tuple[str, int] = ("0.0.0.0", 8081)
    metrics_address: tuple[str, int] = ("0.0.0.0", 8082)
    stats_address: tuple[str, int] = ("0.0.0.0", 8083)
    peer_service: str = "lingo"
    concurrency: int = 100
    scale_down_delay: float = 30.0
    backend_retries: int = 1
    messengers: list[str] = field(default_factory=list)
    messenger_error_max_backoff: float = 180.0
    batch_max_deliveries: int = 5
    autoscaling_interval: float = 3.0
    autoscaling_time_window: float = 30.0
    max_queue: int = 10000
    max_wait: float = 600.0
    flex_max_wait: float = 10.0
    batch_max_share: float = 0.75
    priority_aging: float = 15.0
    max_body: int = 64 * 1024 * 1024
    max_buffered: int = 1 << 30
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    upstream_timeout: float = 600.0
    upstream_idle_timeout: float = 300.0
    api_keys: list[str] = field(default_factory=list)
    shutdown_grace: float = 30.0
    shutdown_delay: float = 5.0
    access_log: bool = False
    log_dir: str = ""
    log_level: str = "INFO"
    pod_name: str = ""
    lease_name: str = "lingo-leader"
    state_configmap: str = "lingo-autoscaler"
    database_url: str = ""
    data_dir: str = "./lingo-data"
    batch_api_concurrency: int = 64
    batch_api_max_jobs: int = 4
    batch_api_lease: float = 30.0
    batch_api_poll_interval: float = 1.0
    batch_api_window: float = 86400.0

    def resolved_platform(self, environ: Mapping[str, str] | None = None) -> str:
        """The platform to run: the setting, else kubernetes inside a cluster, else local."""
        if self.platform:
            return self.platform
        env = os.environ if environ is None else environ
        return "kubernetes" if env.get("KUBERNETES_SERVICE_HOST") else "local"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; defaults stay None so the env fallback can be applied later."""
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            default=None,
            action="append" if setting.repeat else "store",
            help=f"{setting.help} [env {setting.env}, default {setting.default or 'empty'}]",
        )


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then env, then defaults; a bad value raises ConfigError naming it."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = getattr(args, setting.name, None) if args is not None else None
        source = setting.flag
        if isinstance(raw, list):
            raw = ",".join(raw)
        if raw is None:
            raw, source = env.get(setting.env), setting.env
        if raw is None:
            raw, source = setting.default, f"{setting.flag} (default)"
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {source}={raw!r}: {exc}") from None
    settings = Settings(**values)
    if settings.autoscaling_interval <= 0:
        raise ConfigError("invalid AUTOSCALING_INTERVAL: must be more than 0")
    if settings.batch_api_lease <= 0:
        raise ConfigError("invalid LINGO_BATCH_API_LEASE: must be more than 0")
    if settings.batch_api_poll_interval <= 0:
        raise ConfigError("invalid LINGO_BATCH_API_POLL_INTERVAL: must be more than 0")
    if settings.autoscaling_time_window < settings.autoscaling_interval:
        raise ConfigError("invalid AUTOSCALING_TIME_WINDOW: must be at least AUTOSCALING_INTERVAL")
    return settings
