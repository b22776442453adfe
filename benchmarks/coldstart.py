"""Cold start while holding: 10,000 concurrent requests to a model at 0 replicas.

The harness starts lingo with one scalable model (a `lingo fake-model` with a 2 s startup delay,
max 1 replica, concurrency 256), then a separate client process (`python -m benchmarks.coldstart`)
that sends all requests at once and waits. Meanwhile a watcher thread in the harness finds the
replica lingo starts, pins it to the load core and polls its /health every 2 ms to note the
instant the backend is ready; a sampler thread reads lingo's RSS and queue gauges. Cold-start
overhead is the first response byte at the client minus that instant (lingo itself polls
readiness every 20 ms). All instants are CLOCK_MONOTONIC, shared by all processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp

from benchmarks import noise, targets
from benchmarks.streaming import run_async

REQUESTS = 10_000
TIMEOUT = 120.0


def models() -> dict:
    command = ["lingo", "fake-model", "--port", "{port}", "--startup-delay", "2"]
    return {"models": [{"name": "bench", "command": command, "max_replicas": 1, "concurrency": 256}]}


# -- the client (its own process) ----------------------------------------------------------------


async def _client(url: str, requests: int, timeout: float) -> dict:
    targets.raise_nofile()
    statuses: Counter[str] = Counter()
    firsts: list[float] = []
    connector = aiohttp.TCPConnector(limit=requests)
    timeouts = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeouts) as session:

        async def one() -> None:
            try:
                async with session.post(url + targets.PATH, json=targets.REQUEST) as response:
                    if not firsts:
                        firsts.append(time.monotonic())
                    await response.read()
                    statuses[str(response.status)] += 1
            except Exception as exc:
                statuses[type(exc).__name__] += 1

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(requests)))
        ended = time.monotonic()
    first = firsts[0] if firsts else None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    return {"started": started, "first_byte": first, "ended": ended, "statuses": statuses, "cpu_s": cpu}


def client_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cold-start load: N concurrent chat completions")
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--timeout", type=float, default=TIMEOUT)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = run_async(_client(args.url, args.requests, args.timeout))
    Path(args.out).write_text(json.dumps(result))
    return 0


# -- the harness side ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Children of `pid` (no /proc/PID/task/*/children here): newer processes whose parent it is."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) > pid:
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _port(pid: int) -> int | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return int(argv[argv.index(b"--port") + 1]) if b"--port" in argv else None


def _healthy(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return sock.recv(64).split(b" ", 2)[1:2] == [b"200"]
    except OSError:
        return False


def _gauges(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found = re.findall(r'^(lingo_requests_(?:queued|in_flight))\{model="bench"\} ([\d.e+]+)$', text, re.M)
    return {name: float(value) for name, value in found}


class Watcher(threading.Thread):
    """Finds lingo's replica, pins it to the load core and notes when its /health first answers 200."""

    def __init__(self, lingo_pid: int) -> None:
        super().__init__(daemon=True)
        self.lingo_pid = lingo_pid
        self.stopped = threading.Event()
        self.spawned: float | None = None
        self.ready: float | None = None

    def run(self) -> None:
        port = None
        while not self.stopped.is_set() and self.ready is None:
            if port is None:
                for child in _children(self.lingo_pid):
                    port = _port(child)
                    if port is not None:
                        self.spawned = time.monotonic()
                        targets.pin(targets.LOAD_CORES, child)
                        break
            elif _healthy(port):
                self.ready = time.monotonic()
            time.sleep(0.002 if port else 0.01)


class Sampler(threading.Thread):
    """Samples lingo's RSS and its queued + in-flight gauges every 250 ms."""

    def __init__(self, lingo: targets.Server) -> None:
        super().__init__(daemon=True)
        self.lingo = lingo
        self.stopped = threading.Event()
        self.series: list[tuple[float, int, float]] = []

    def run(self) -> None:
        while not self.stopped.wait(0.25):
            rss = targets.status_value(self.lingo.process.pid, "VmRSS")
            held = sum(_gauges(self.lingo.extra["metrics"]).values())
            self.series.append((time.monotonic(), rss, held))


def _once(workdir: Path, results: Path, index: int, requests: int) -> dict:
    lingo = targets.lingo(f"lingo-coldstart-{index}", workdir, models())
    watcher, sampler = Watcher(lingo.process.pid), Sampler(lingo)
    try:
        idle_rss = targets.status_value(lingo.process.pid, "VmRSS")
        watcher.start()
        sampler.start()
        out = results / f"coldstart-client-{index}.json"
        argv = [sys.executable, "-m", "benchmarks.coldstart", "--url", lingo.url, "--requests", str(requests)]
        log = results / "coldstart-client.log"
        client = targets.spawn([*argv, "--out", str(out)], log, targets.LOAD_CORES)
        try:
            client.wait(TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
            raise
        peak = targets.status_value(lingo.process.pid, "VmHWM")
        outcome = json.loads(out.read_text())
    finally:
        watcher.stopped.set()
        sampler.stopped.set()
        lingo.stop()
    first, ready, started = outcome["first_byte"], watcher.ready, outcome["started"]
    return {
        "requests": requests,
        "statuses": outcome["statuses"],
        "ok": outcome["statuses"].get("200", 0),
        "idle_rss_mb": idle_rss / 2**20,
        "peak_rss_mb": peak / 2**20,
        "peak_held": max((held for _, _, held in sampler.series), default=0),
        "spawn_s": watcher.spawned - started if watcher.spawned else None,
        "ready_s": ready - started if ready else None,
        "cold_start_overhead_ms": (first - ready) * 1e3 if first and ready else None,
        "drain_s": outcome["ended"] - started,
        "drain_after_ready_s": outcome["ended"] - ready if ready else None,
        "all_held_s": next((t - started for t, _, held in sampler.series if held >= requests), None),
        "client_cpu_s": outcome["cpu_s"],
        "series": [(round(t - started, 3), round(rss / 2**20, 1), held) for t, rss, held in sampler.series],
    }


def run(workdir: Path, results: Path, rounds: int = 3, requests: int = REQUESTS) -> dict:
    runs = []
    for index in range(rounds):
        figures, busy = noise.measured(
            lambda index=index: _once(workdir, results, index, requests), f"round {index + 1}/{rounds}"
        )
        figures["foreign_cores"] = busy
        runs.append(figures)
        print(
            f"  round {index + 1}/{rounds}: {figures['ok']}/{requests} got 200, peak RSS "
            f"{figures['peak_rss_mb']:.0f} MB, held {figures['peak_held']:.0f}, cold-start overhead "
            f"{figures['cold_start_overhead_ms']} ms, drained in {figures['drain_s']:.1f} s",
            flush=True,
        )
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and k != "foreign_cores"]
    summary = {k: statistics.median(r[k] for r in runs if r.get(k) is not None) for k in keys}
    return {**summary, "foreign_max": max(r["foreign_cores"] for r in runs), "rounds": runs}


if __name__ == "__main__":
    sys.exit(client_main())
