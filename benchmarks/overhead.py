"""Proxy overhead: the same fast nginx backend called directly, through lingo, nginx and haproxy.

Every figure is the median of `rounds` runs of `wrk` (one thread, `--latency`); rounds are the
outer loop so slow drift of the machine spreads over all targets alike. The uvloop experiment runs
lingo a second time on the default asyncio loop (see `targets._NO_UVLOOP`), at c=1 and c=64 only.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks import load, noise, profiling, targets

CONNECTIONS = (1, 16, 64, 256)
#: Target name → which connection counts it is measured at.
TARGETS = {
    "direct": CONNECTIONS,
    "lingo": CONNECTIONS,
    "nginx": CONNECTIONS,
    "haproxy": CONNECTIONS,
    "lingo-asyncio": (1, 64),
}


def _median(runs: list[load.LoadResult], foreign: list[float]) -> dict:
    return {
        "rps": statistics.median(r.rps for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "errors": sum(r.errors for r in runs),
        "runs": [{**r.__dict__, "foreign_cores": busy} for r, busy in zip(runs, foreign, strict=True)],
    }


def run(workdir: Path, results: Path, seconds: float = 5.0, rounds: int = 3, profile: bool = True) -> dict:
    """The overhead table; then, with lingo still up, its py-spy profile at c=64 (`profile`)."""
    servers: list[targets.Server] = []
    try:
        backend = targets.nginx_backend(workdir)
        servers.append(backend)
        models = targets.static_models(backend.url)
        lingo = targets.lingo("lingo", workdir, models)
        servers.append(lingo)
        started = {"direct": backend, "lingo": lingo}
        for name, start in (
            ("nginx", lambda: targets.nginx_proxy(workdir, backend)),
            ("haproxy", lambda: targets.haproxy(workdir, backend)),
            ("lingo-asyncio", lambda: targets.lingo("lingo-asyncio", workdir, models, uvloop=False)),
        ):
            started[name] = start()
            servers.append(started[name])
        urls = {name: server.url for name, server in started.items()}
        script = load.wrk_script(workdir)
        log = results / "wrk.log"
        for url in urls.values():  # warm up: connections, pools, caches
            load.wrk(url, 16, 1, script)
        runs: dict[str, dict[int, list[load.LoadResult]]] = {name: {} for name in TARGETS}
        foreign: dict[str, dict[int, list[float]]] = {name: {} for name in TARGETS}
        for round_ in range(rounds):
            for connections in CONNECTIONS:
                for name, url in urls.items():
                    if connections not in TARGETS[name]:
                        continue
                    label = f"round {round_ + 1}/{rounds} c={connections:<3} {name:<13}"
                    result, busy = noise.measured(
                        lambda url=url, c=connections: load.wrk(url, c, seconds, script, log), label
                    )
                    foreign[name].setdefault(connections, []).append(busy)
                    runs[name].setdefault(connections, []).append(result)
                    print(
                        f"  {label} {result.rps:9.0f} req/s  p50 {result.p50_ms:7.3f} ms  "
                        f"p99 {result.p99_ms:7.3f} ms  (others: {busy:.0%} of a core)",
                        flush=True,
                    )
        cross_check = {
            name: load.hey(urls[name], 64, seconds, log).__dict__ for name in ("direct", "lingo", "nginx")
        }
        figures = {
            name: {c: _median(r, foreign[name][c]) for c, r in by_c.items()} for name, by_c in runs.items()
        }
        result = {
            "seconds": seconds,
            "rounds": rounds,
            "targets": figures,
            "hey_c64": cross_check,
            "foreign_max": max(max(v) for by_c in foreign.values() for v in by_c.values()),
        }
        if profile:
            print("  profiling lingo at c=64 with py-spy ...", flush=True)
            result["profile"] = profiling.record(lingo.process.pid, lingo.url, script, results)
        return result
    finally:
        for server in reversed(servers):
            server.stop()
