"""Load generators: `wrk` (the one every table uses) and `hey` (a cross-check), run and parsed."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson

from benchmarks.targets import LOAD_CORES, PATH, REQUEST

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass
class LoadResult:
    """One load-generator run against one target."""

    tool: str
    connections: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    #: Non-2xx answers plus socket errors.
    errors: int


def wrk_script(directory: Path) -> Path:
    """The Lua script that makes wrk POST `REQUEST` as JSON."""
    script = directory / "chat.lua"
    body = orjson.dumps(REQUEST).decode()
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = [[{body}]]\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    return script


def _taskset(argv: list[str]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, sorted(LOAD_CORES))), *argv]


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(text: str, connections: int) -> LoadResult:
    percentiles = {p: _duration_ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", text, re.M)}
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if socket:
        errors += sum(int(n) for n in socket.groups())
    return LoadResult("wrk", connections, requests, rps, percentiles["50"], percentiles["99"], errors)


def wrk(url: str, connections: int, seconds: float, script: Path, log: Path | None = None) -> LoadResult:
    """`wrk` with one thread for `seconds` at `connections`, POSTing the chat completion."""
    argv = _taskset(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            url + PATH,
        ]
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    if log is not None:
        with log.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    return parse_wrk(done.stdout, connections)


def parse_hey(text: str, connections: int) -> LoadResult:
    head, _, failures = text.partition("Error distribution:")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", head).group(1))  # type: ignore[union-attr]
    percentiles = {p: float(v) * 1e3 for p, v in re.findall(r"(\d+)% in ([\d.]+) secs", head)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", head)}
    failed = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", failures, re.M))
    answered = sum(codes.values())
    errors = answered - sum(n for c, n in codes.items() if 200 <= c < 400) + failed
    return LoadResult("hey", connections, answered, rps, percentiles["50"], percentiles["99"], errors)


def hey(url: str, connections: int, seconds: float, log: Path | None = None) -> LoadResult:
    """`hey` for `seconds` at `connections` (HTTP/1.1 keep-alive), POSTing the chat completion."""
    argv = _taskset(
        [
            "hey",
            "-z",
            f"{seconds:g}s",
            "-c",
            str(connections),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-d",
            orjson.dumps(REQUEST).decode(),
            url + PATH,
        ]
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    if log is not None:
        with log.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    return parse_hey(done.stdout, connections)
