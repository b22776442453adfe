"""`python -m benchmarks.run`: every benchmark, one after another, then the report.

Sections: proxy overhead (+ uvloop experiment, hey cross-check), py-spy profile at c=64, streaming,
cold start while holding 10,000 requests, batch when `benchmarks/batch.py` exists, priority classes
under a saturating batch and under overload, the Batches API, a soak (mixed HTTP + batch for
minutes), peak memory under ten concurrent 60 MB uploads, and cache-aware routing (multi-turn chat on
simulated-cache replicas). Each section is bounded in time; one that fails is reported as failed and
the others still run. The soak and the sections in `OWN_BLOCKS` have their own blocks of
docs/benchmarks.md, below the generated part, so `--only soak` (or any of those) leaves the other
figures there alone.

Raw results go to `benchmarks/results/<UTC stamp>/` (git-ignored): results.json, report.md, wrk
output, py-spy samples and flame graph, server logs. The report also replaces the generated part of
docs/benchmarks.md (between the bench:begin/end markers), leaving the analysis around it alone.

Batch hook: `benchmarks.batch.main()` runs in a child process (on the load core, like the harness;
`benchmarks.targets` pins the servers it starts), bounded in time, its output in batch.log; it may
return a dict of figures (name → value) or a markdown string, which the report includes.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import (
    batchapi,
    coldstart,
    overhead,
    priorities,
    report,
    routing,
    soak,
    streaming,
    targets,
    uploads,
)

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("wrk", "hey", "nginx", "haproxy", "taskset")
BATCH_TIMEOUT = 900
#: Sections that keep their own block of docs/benchmarks.md (each module has `render(figures)`).
OWN_BLOCKS = {"priorities": priorities, "batchapi": batchapi, "uploads": uploads, "routing": routing}


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return f"{argv[0]} (unknown version)"
    return (done.stdout or done.stderr).strip().splitlines()[0]


def machine_info() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commit = _first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": importlib.metadata.version("aiohttp"),
        "uvloop": importlib.metadata.version("uvloop"),
        "wrk": _first_line(["wrk", "-v"]).split(" [")[0],
        "nginx": _first_line(["nginx", "-v"]).replace("nginx version: ", ""),
        "haproxy": "haproxy " + _first_line(["haproxy", "-v"]).split()[2],
        "commit": commit,
        "pinning": targets.PINNING,
    }


def run_batch(results: Path) -> object:
    """`benchmarks.batch.main()` in a child process; its return value, or None without the module."""
    if importlib.util.find_spec("benchmarks.batch") is None:
        return None
    out = results / "batch.json"
    code = (
        "import json, os; from benchmarks import batch; "
        "open(os.environ['LINGO_BENCH_OUT'], 'w').write(json.dumps(batch.main(), default=str))"
    )
    with open(results / "batch.log", "wb") as log:
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "LINGO_BENCH_OUT": str(out)},
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=BATCH_TIMEOUT,
            check=True,
        )
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=(
            "overhead",
            "streaming",
            "coldstart",
            "batch",
            "priorities",
            "batchapi",
            "soak",
            "uploads",
            "routing",
        ),
        help="run only these sections (repeatable; overhead includes the profile)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk duration per run (default 5)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs per figure; the median is kept (default 3)"
    )
    parser.add_argument(
        "--soak-seconds", type=float, default=300.0, help="soak duration in seconds (default 300)"
    )
    parser.add_argument(
        "--priorities-seconds",
        type=float,
        default=20.0,
        help="interactive / overload traffic per priorities run in seconds (default 20)",
    )
    parser.add_argument(
        "--batchapi-lines", type=int, default=10_000, help="lines of the Batches API batch (default 10000)"
    )
    parser.add_argument(
        "--upload-mb",
        type=float,
        default=60.0,
        help="size of each of the ten concurrent uploads (default 60)",
    )
    parser.add_argument(
        "--routing-short",
        action="store_true",
        help="routing section at its quick size (40 conversations x 6 turns)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--render", metavar="RESULTS_JSON", help="only redo the report from a results.json")
    args = parser.parse_args(argv)
    if args.render:
        return publish(json.loads(Path(args.render).read_text()), Path(args.render).parent, not args.no_docs)

    missing = [tool for tool in TOOLS if not any(Path(d, tool).exists() for d in os.get_exec_path())]
    if missing:
        print(f"missing tools: {', '.join(missing)} (run scripts/bench-tools.sh)", file=sys.stderr)
        return 2
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop servers
    targets.pin(targets.LOAD_CORES)  # the harness is light; keep it off the proxy's core
    targets.raise_nofile()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results = ROOT / "benchmarks" / "results" / stamp
    results.mkdir(parents=True)
    workdir = Path(tempfile.mkdtemp(prefix="work-", dir=results))
    figures: dict = {"machine": machine_info()}
    print(f"lingo benchmarks → {results}\n{targets.PINNING}", flush=True)

    sections = {
        "overhead": lambda: overhead.run(workdir, results, args.seconds, args.rounds),
        "streaming": lambda: streaming.run(workdir, args.rounds),
        "coldstart": lambda: coldstart.run(workdir, results, args.rounds),
        "batch": lambda: run_batch(results),
        "priorities": lambda: priorities.run(workdir, args.priorities_seconds),
        "batchapi": lambda: batchapi.run(workdir, args.batchapi_lines, docs=not args.no_docs),
        "soak": lambda: soak.run(workdir, args.soak_seconds),
        "uploads": lambda: uploads.run(workdir, args.upload_mb, docs=not args.no_docs),
        "routing": lambda: routing.run(workdir, args.routing_short),
    }
    for name, section in sections.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        try:
            value = section()
        except Exception as exc:  # one broken section must not hide the others' figures
            print(f"   {name} failed: {exc!r}", flush=True)
            value = {"failed": repr(exc)}
        if value is not None:
            figures[name] = value
        if name == "overhead" and "profile" in value:
            figures["profile"] = value.pop("profile")

    figures["machine"]["elapsed_s"] = time.monotonic() - started
    (results / "results.json").write_text(json.dumps(figures, indent=2, default=str))
    return publish(figures, results, not args.no_docs)


def publish(figures: dict, results: Path, docs: bool) -> int:
    """Write report.md (and the docs' generated part), print it; 1 if a section failed."""
    markdown = report.render(figures)
    soak_markdown = report.render_soak(figures)  # its own section of the docs, below the generated part
    own = {
        name: "\n" + module.render(figures[name])
        for name, module in OWN_BLOCKS.items()
        if isinstance(figures.get(name), dict) and "failed" not in figures[name]
    }
    extra = "".join(own.values())
    (results / "report.md").write_text(markdown + soak_markdown + extra)
    if docs:
        # `--only` of sections with their own blocks keeps the generated part as it is.
        if set(figures) - {"machine", "soak", *OWN_BLOCKS}:
            report.update_docs(ROOT / "docs" / "benchmarks.md", markdown)
        if soak_markdown:
            report.update_soak_docs(ROOT / "docs" / "benchmarks.md", soak_markdown)
        for name in own:
            update = getattr(OWN_BLOCKS[name], "update_docs", None)
            if update is not None:  # the others wrote their block while they ran
                update(ROOT / "docs" / "benchmarks.md", figures[name])
    markdown += soak_markdown + extra
    print("\n" + markdown)
    return 1 if any(isinstance(v, dict) and "failed" in v for v in figures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
