"""Markdown from the figures: the report printed at the end and kept in docs/benchmarks.md."""

from __future__ import annotations

import re
from pathlib import Path

BEGIN, END = "<!-- bench:begin (written by `make bench`) -->", "<!-- bench:end -->"
#: Targets from the issue, checked in the report.
THROUGHPUT_TARGET = 0.25  # lingo / nginx proxy at c=64, at least
ADDED_P50_TARGET_MS = 0.3  # lingo p50 minus direct p50 at c=1, at most
RSS_TARGET_MB = 200.0
COLD_START_TARGET_MS = 200.0
TIMES = "\N{MULTIPLICATION SIGN}"

_NAMES = {
    "direct": "direct (nginx backend)",
    "lingo": "lingo",
    "nginx": "nginx proxy_pass",
    "haproxy": "haproxy",
    "lingo-asyncio": "lingo, asyncio loop",
}


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def machine(info: dict) -> list[str]:
    return [
        f"Run {info['date']} on {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, "
        f"Python {info['python']}, aiohttp {info['aiohttp']}, uvloop {info['uvloop']}; "
        f"{info['wrk']}, {info['nginx']}, {info['haproxy']}; lingo at `{info['commit']}`.",
        f"Pinning: {info['pinning']}. The run took {info.get('elapsed_s', 0):.0f} s.",
    ]


def overhead(o: dict) -> list[str]:
    # Connection counts are int keys in memory, strings once read back from results.json.
    figures = {name: {int(c): f for c, f in by_c.items()} for name, by_c in o["targets"].items()}
    direct, lingo, nginx = figures["direct"], figures["lingo"], figures["nginx"]
    rows = []
    for c in sorted(direct):
        for name in ("direct", "lingo", "nginx", "haproxy"):
            f = figures[name].get(c)
            if f is None:
                continue
            ratio = f["rps"] / nginx[c]["rps"]
            added = f["p50_ms"] - direct[c]["p50_ms"]
            rows.append(
                [
                    c,
                    _NAMES[name],
                    f"{f['rps']:,.0f}",
                    f"{f['p50_ms']:.3f}",
                    f"{f['p99_ms']:.3f}",
                    f"{ratio:.3f}{TIMES}",
                    "" if name == "direct" else f"{added:+.3f}",
                    f["errors"] or "",
                ]
            )
    header = [
        "c",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "req/s ÷ nginx proxy",
        "p50 added vs direct ms",
        "errors",
    ]
    ratio64 = lingo[64]["rps"] / nginx[64]["rps"]
    added1 = lingo[1]["p50_ms"] - direct[1]["p50_ms"]
    lines = [
        f"`wrk -t1 -d{o['seconds']:g}s --latency`, POST of a small chat completion; "
        f"median of {o['rounds']} runs.",
        "",
        *_table(header, rows),
        "",
        f"- lingo ÷ nginx proxy throughput at c=64: **{ratio64:.3f}{TIMES}** "
        f"(target ≥ {THROUGHPUT_TARGET}{TIMES}: "
        f"{_verdict(ratio64 >= THROUGHPUT_TARGET)}).",
        f"- lingo's added p50 at c=1: **{added1:.3f} ms** (target ≤ {ADDED_P50_TARGET_MS} ms: "
        f"{_verdict(added1 <= ADDED_P50_TARGET_MS)}).",
    ]
    asyncio_loop = figures.get("lingo-asyncio")
    if asyncio_loop:
        lines += [
            "",
            "uvloop experiment: the same lingo started with `_install_uvloop` disabled "
            "(default asyncio loop).",
            "",
        ]
        rows = [
            [
                c,
                f"{lingo[c]['rps']:,.0f}",
                f"{asyncio_loop[c]['rps']:,.0f}",
                f"{lingo[c]['rps'] / asyncio_loop[c]['rps']:.2f}{TIMES}",
                f"{lingo[c]['p50_ms']:.3f} / {asyncio_loop[c]['p50_ms']:.3f}",
            ]
            for c in sorted(asyncio_loop)
        ]
        lines += _table(
            ["c", "uvloop req/s", "asyncio req/s", "uvloop ÷ asyncio", "p50 ms uvloop / asyncio"], rows
        )
    hey = o.get("hey_c64")
    if hey:
        lines += [
            "",
            f"Cross-check with `hey -c 64 -z {o['seconds']:g}s` (one run; Go client, costlier per request):",
            "",
        ]
        rows = [
            [_NAMES[n], f"{r['rps']:,.0f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}"]
            for n, r in hey.items()
        ]
        lines += _table(["target", "req/s", "p50 ms", "p99 ms"], rows)
    return lines


def streaming(s: dict) -> list[str]:
    rows = []
    parallel = s["parallel_triples"]
    for mode, label in (("sequential", "1 at a time"), ("parallel", f"{parallel} at once")):
        m = s[mode]
        for proxy in ("lingo", "nginx"):
            f = m[proxy]
            rows.append(
                [
                    f"{label} ({3 if mode == 'sequential' else 3 * parallel} streams)",
                    _NAMES[proxy],
                    f"{f['added_median_ms']:.3f}",
                    f"{f['added_p99_ms']:.3f}",
                    f"{m['ttft_direct_ms']:.1f} → {f['ttft_ms']:.1f}",
                ]
            )
    return [
        f"{s['tokens']} chunks at {s['token_delay'] * 1e3:.0f} ms from `lingo fake-model`; "
        "triples (direct, lingo, nginx unbuffered) started together, "
        f"{s['sequential_triples']} triples one after another, then {parallel} at once; "
        f"median of {len(s['rounds'])} rounds.",
        "",
        *_table(
            [
                "triples",
                "proxy",
                "added per chunk, median ms",
                "p99 ms",
                "time to first token ms, direct → proxied",
            ],
            rows,
        ),
    ]


def coldstart(c: dict) -> list[str]:
    rows = [
        ["requests answered 200", f"{c['ok']:.0f} / {c['requests']:.0f}", ""],
        ["most held at once (queued + in flight)", f"{c['peak_held']:.0f}", ""],
        [
            "lingo RSS idle → peak (VmHWM)",
            f"{c['idle_rss_mb']:.0f} → {c['peak_rss_mb']:.0f} MB",
            f"≤ {RSS_TARGET_MB:.0f} MB: {_verdict(c['peak_rss_mb'] <= RSS_TARGET_MB)}",
        ],
        [
            "backend ready → first response byte",
            f"{c['cold_start_overhead_ms']:.1f} ms",
            f"≤ {COLD_START_TARGET_MS:.0f} ms: "
            f"{_verdict(c['cold_start_overhead_ms'] <= COLD_START_TARGET_MS)}",
        ],
        ["client start → replica spawned / ready", f"{c['spawn_s']:.2f} s / {c['ready_s']:.2f} s", ""],
        [
            "client start → all requests held",
            f"{c['all_held_s']:.2f} s" if c.get("all_held_s") else "n/a",
            "",
        ],
        ["total time to drain (client start → last answer)", f"{c['drain_s']:.2f} s", ""],
        ["backend ready → last answer", f"{c['drain_after_ready_s']:.2f} s", ""],
        ["client CPU time (aiohttp, one process)", f"{c['client_cpu_s']:.1f} s", ""],
    ]
    return [
        f"{c['requests']:.0f} concurrent requests to a model at 0 replicas "
        "(`lingo fake-model --startup-delay 2`, max_replicas 1, concurrency 256); "
        f"median of {len(c['rounds'])} runs.",
        "",
        *_table(["figure", "value", "target"], rows),
    ]


def profile(p: dict) -> list[str]:
    if "error" in p:
        return [f"Not profiled: {p['error']}."]
    lines = [
        f"py-spy, 10 s at c=64 ({p['samples']} samples, {p['rps_while_sampled']:,.0f} req/s while sampled; "
        f"raw stacks and flame graph in the results folder). Self time by layer (C code is charged to the "
        "Python line that called it):",
        "",
        *_table(["layer", "% of samples"], [[k, v] for k, v in p["layers"]]),
        "",
        "Top self time by line:",
        "",
        *_table(["frame", "%"], [[f"`{k}`", v] for k, v in p["self_by_line"]]),
        "",
        "Inclusive time (lingo and aiohttp frames):",
        "",
        *_table(["function", "%"], [[f"`{k}`", v] for k, v in p["inclusive"]]),
    ]
    return lines


def batch(b: object) -> list[str]:
    if isinstance(b, str):
        return [b]
    if isinstance(b, dict):
        return _table(["figure", "value"], [[k, v] for k, v in b.items()])
    return [f"`benchmarks.batch.main()` returned {b!r}."]


def _noise(value: dict) -> list[str]:
    busy = value.get("foreign_max") if isinstance(value, dict) else None
    if busy is None:
        return []
    return ["", f"Other processes on the machine used at most {busy:.0%} of a core during a kept run."]


def render(figures: dict) -> str:
    lines = ["## Results", "", *machine(figures["machine"])]
    sections = (
        ("overhead", "### 1. Proxy overhead", overhead),
        ("streaming", "### 2. Streaming", streaming),
        ("coldstart", "### 3. Cold start while holding 10,000 requests", coldstart),
        ("profile", "### 4. Where lingo's time goes (c=64)", profile),
        ("batch", "### 5. Batch", batch),
    )
    for key, title, render_section in sections:
        if key not in figures:
            continue
        lines += ["", title, ""]
        value = figures[key]
        if isinstance(value, dict) and "failed" in value:
            lines.append(f"Failed: `{value['failed']}`")
        else:
            lines += render_section(value)
            lines += _noise(value)
    return "\n".join(lines) + "\n"


SOAK_BEGIN, SOAK_END = "<!-- soak:begin (written by `make bench` / `--only soak`) -->", "<!-- soak:end -->"


def soak(s: dict) -> list[str]:
    rows = [
        [
            i + 1,
            f"{r['t_s']:.0f}",
            f"{r['http_rps']:,.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            r["http_errors"],
            f"{r['batch_sent']:,} / {r['batch_answered']:,}",
            f"{r['rss_mb']:.1f}",
            f"{r['lingo_cpu']:.0%}",
        ]
        for i, r in enumerate(s["slices"])
    ]
    statuses = ", ".join(f"{k}: {v:,}" for k, v in s["batch_statuses"].items()) or "none"
    figures = [
        ["capacity (`hey -c 64`, 5 s)", f"{s['capacity_rps']:,.0f} req/s"],
        [
            "load offered: HTTP / batch",
            f"{s['http_target_rps']:,.0f} req/s / {s['batch_target_msgs_per_s']:,.0f} msg/s",
        ],
        [
            "load achieved (mean): HTTP / batch",
            f"{s['http_rps_mean']:,.0f} req/s / {s['batch_msgs_per_s']:,.0f} msg/s",
        ],
        [
            "lingo RSS idle / start / end / max",
            f"{s['rss_idle_mb']:.1f} / {s['rss_start_mb']:.1f} / {s['rss_end_mb']:.1f} / "
            f"{s['rss_max_mb']:.1f} MB (VmHWM {s['rss_peak_hwm_mb']:.1f} MB)",
        ],
        ["RSS growth start → end", f"{s['rss_growth_mb']:+.1f} MB"],
        ["HTTP requests / errors (non-2xx + socket)", f"{s['http_requests']:,} / {s['http_errors']}"],
        [
            "batch sent / answered / missing",
            f"{s['batch_sent']:,} / {s['batch_answered']:,} / {s['batch_missing']:,}",
        ],
        ["batch answers by status (non-200)", f"{statuses} ({s['batch_non_200']})"],
        [
            "batch publish errors / duplicate answers",
            f"{s['batch_publish_errors']} / {s['batch_duplicates']}",
        ],
        [
            "p99 first → last slice",
            f"{s['p99_first_ms']:.2f} → {s['p99_last_ms']:.2f} ms ({s['p99_last_vs_first']}{TIMES})",
        ],
    ]
    lines = [
        f"{s['elapsed_s'] / 60:.1f} minutes against one lingo (nginx backend, NATS JetStream messenger, "
        f"{s['handlers']} handlers) at ~70 % of its measured capacity: HTTP ~60 % with "
        f"`hey -q -c 32` in {s['slice_s']:g} s slices, batch ~10 % as NATS messages at a steady rate; "
        "batch answers still outstanding at the end are waited for (60 s at most).",
        "",
        *_table(["figure", "value"], figures),
        "",
        f"Verdict: {s['verdict']}.",
        "",
        *_table(
            [
                "slice",
                "t s",
                "HTTP req/s",
                "p50 ms",
                "p99 ms",
                "HTTP errors",
                "batch sent / answered (so far)",
                "RSS MB",
                "lingo CPU",
            ],
            rows,
        ),
    ]
    if s.get("batch_error"):
        lines += ["", f"Batch publisher failed: `{s['batch_error']}`"]
    return lines


def render_soak(figures: dict) -> str:
    """The soak section (its own part of docs/benchmarks.md); "" when the soak did not run."""
    if "soak" not in figures:
        return ""
    value, info = figures["soak"], figures["machine"]
    lines = [
        "## Soak (5 minutes)",
        "",
        f"Run {info['date']} on {info['nproc']} CPUs ({info['cpu']}), lingo at `{info['commit']}`; "
        f"pinning: {info['pinning']}.",
        "",
    ]
    if isinstance(value, dict) and "failed" in value:
        lines.append(f"Failed: `{value['failed']}`")
    else:
        lines += soak(value)
    return "\n" + "\n".join(lines) + "\n"


def replace_block(path: Path, begin: str, end: str, block: str) -> None:
    """Put `block` (which starts with `begin` and ends with `end`) in place of the old one in `path`,
    or below the rest when there is none; the hand-written parts stay as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def update_soak_docs(path: Path, markdown: str) -> None:
    """Replace (or add, below the generated part) the soak section of docs/benchmarks.md."""
    replace_block(path, SOAK_BEGIN, SOAK_END, f"{SOAK_BEGIN}{markdown}{SOAK_END}")


def update_docs(path: Path, markdown: str) -> None:
    """Replace the generated part of docs/benchmarks.md, keeping the hand-written analysis."""
    replace_block(path, BEGIN, END, f"{BEGIN}\n{markdown}{END}")
