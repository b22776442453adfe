"""Where lingo's time goes at saturation: py-spy samples of the running process, summarised.

py-spy attaches to the process from outside (`--nonblocking`: it does not pause lingo to sample)
and runs on the load core, so it takes nothing from the core lingo runs on. The summary counts
*self* time (the innermost Python frame: time in C code called from it — socket syscalls, the
uvloop loop, C parsers — is charged to the Python line that called it) and *inclusive* time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks import load, targets

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?):(?P<line>\d+)\)$")
#: Leaf-frame file prefixes → layer names, first match wins.
_LAYERS = (
    ("lingo/", "lingo"),
    ("aiohttp/", "aiohttp"),
    ("multidict/", "multidict/yarl"),
    ("yarl/", "multidict/yarl"),
    ("prometheus_client/", "prometheus_client"),
    ("asyncio/runners.py", "event loop (uvloop, C; incl. socket reads, epoll)"),
    ("asyncio/", "asyncio (Python)"),
)


def py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


def record(pid: int, url: str, script: Path, results: Path, seconds: int = 10) -> dict:
    """Drive lingo at c=64 with wrk while py-spy samples it; raw samples and an SVG flame graph."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not found (pip install py-spy)"}
    raw, svg = results / "profile.txt", results / "profile.svg"
    pinned = ["taskset", "-c", ",".join(map(str, sorted(targets.LOAD_CORES)))]
    base = [*pinned, spy, "record", "--nonblocking", "--pid", str(pid)]
    wrk = subprocess.Popen(
        [
            *pinned,
            "wrk",
            "-t1",
            "-c64",
            f"-d{2 * seconds + 6}s",
            "--latency",
            "-s",
            str(script),
            url + targets.PATH,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        subprocess.run(
            [*base, "-d", str(seconds), "--format", "raw", "-o", str(raw)],
            check=True,
            timeout=seconds + 30,
            capture_output=True,
        )
        subprocess.run(
            [*base, "-d", str(seconds), "-o", str(svg)], check=True, timeout=seconds + 30, capture_output=True
        )
        output, _ = wrk.communicate(timeout=60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    summary = summarise(raw.read_text())
    summary["rps_while_sampled"] = load.parse_wrk(output, 64).rps
    summary["files"] = [raw.name, svg.name]
    return summary


def _split(frame: str) -> tuple[str, str, str]:
    match = _FRAME.match(frame)
    if not match:
        return frame or "(unknown)", "", ""
    path = match["file"]
    return match["function"], path, match["line"]


def _layer(path: str) -> str:
    for prefix, name in _LAYERS:
        if prefix in path:
            return name
    return "other Python"


def summarise(raw: str, top: int = 15) -> dict:
    """Self time by line and by function, inclusive time by function, and self time by layer."""
    by_line: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for entry in raw.splitlines():
        stack, _, count = entry.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_split(frame) for frame in stack.split(";")]
        function, path, line = frames[-1]
        by_line[f"{function} ({path}:{line})"] += n
        by_function[f"{function} ({path})"] += n
        layers[_layer(path)] += n
        for key in {f"{f} ({p})" for f, p, _ in frames}:
            inclusive[key] += n

    def share(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(key, round(100 * n / total, 1)) for key, n in counter.most_common(limit)]

    return {
        "samples": total,
        "self_by_line": share(by_line, top),
        "self_by_function": share(by_function, top),
        "inclusive": [
            (key, pct)
            for key, pct in share(inclusive, 80)
            if ("lingo/" in key or "aiohttp/" in key or "prometheus" in key or "contextlib" in key)
            and not key.startswith(("main (lingo/cli", "<module>"))
        ][:top],
        "layers": share(layers, 20),
    }
