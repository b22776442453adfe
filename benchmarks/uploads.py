"""Peak memory of lingo under concurrent large uploads (ten 60 MB bodies at once, by default).

A model server that holds every request until all have arrived keeps all bodies in flight at once,
so lingo must hold them all: its peak resident set (VmHWM) over its idle baseline, divided by the
bytes in flight, says how many copies of a body lingo keeps (the target is below 1.2). A second run
with `LINGO_MAX_BUFFERED` below the bytes sent shows the budget bounding memory instead (there the
model server answers each request as it arrives). Both run with uvloop, as `lingo serve` does.

`python -m benchmarks.uploads [--size-mb N] [--count N]`; `run()` returns the figures and writes
them into their own block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report, targets

MB = 1024 * 1024
#: How long one run may take before it is abandoned.
RUN_TIMEOUT = 300.0
BEGIN = "<!-- uploads:begin (written by `make bench` / `--only uploads`) -->"
END = "<!-- uploads:end -->"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


async def _read_request(reader: asyncio.StreamReader) -> bool:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return False
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while length:  # read and drop: the backend keeps nothing
        chunk = await reader.read(min(length, 1 << 20))
        if not chunk:
            return False
        length -= len(chunk)
    return True


async def _upload(port: int, head: bytes, body: bytes) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        writer.write(body)
        await writer.drain()
        return (await reader.readline()).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def _measure(
    workdir: Path, name: str, size: int, count: int, hold: bool, env: dict, header: bytes = b""
) -> dict:
    arrived = 0
    all_in = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        with contextlib.suppress(ConnectionError):
            if await _read_request(reader):
                arrived += 1
                if arrived == count:
                    all_in.set()
                if hold:
                    await all_in.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    lingo = await asyncio.to_thread(targets.lingo, name, workdir, targets.static_models(url), env=env)
    try:
        pid = lingo.process.pid
        baseline = targets.status_value(pid, "VmHWM")
        body = b'{"model": "bench", "p": "' + b"x" * size + b'"}'
        head = b"POST /v1/completions HTTP/1.1\r\nHost: lingo\r\n%bContent-Length: %d\r\n\r\n" % (
            header,
            len(body),
        )
        port = int(lingo.url.rsplit(":", 1)[1])
        started = time.monotonic()
        async with asyncio.timeout(RUN_TIMEOUT):
            answers = await asyncio.gather(*(_upload(port, head, body) for _ in range(count)))
        elapsed = time.monotonic() - started
        peak = targets.status_value(pid, "VmHWM")
    finally:
        lingo.stop()
        server.close()
    # Bodies lingo may hold at once: all of them, or the budget plus the one body read past it.
    in_flight = size * count if hold else min(size * count, _budget(env) + size)
    return {
        "uploads": count,
        "size_mb": size / MB,
        "ok": sum(answers),
        "seconds": round(elapsed, 2),
        "baseline_mb": round(baseline / MB, 1),
        "peak_growth_mb": round((peak - baseline) / MB, 1),
        "sent_mb": round(size * count / MB, 1),
        "ratio_to_in_flight": round((peak - baseline) / in_flight, 2),
        "max_buffered": env.get("LINGO_MAX_BUFFERED", "1GiB"),
        "all_held_at_once": hold,
    }


def _budget(env: dict) -> int:
    from lingo.config import parse_size

    return parse_size(env.get("LINGO_MAX_BUFFERED", "1GiB"))


def run(workdir: Path, size_mb: float = 60.0, count: int = 10, docs: bool = True) -> dict:
    """Both runs; their figures (also written to docs/benchmarks.md when `docs`)."""
    size = int(size_mb * MB)
    budget = f"{max(1, int(size_mb * count * 0.4))}MiB"  # well below what is sent
    figures = {
        "all_in_flight": asyncio.run(_measure(workdir, "lingo-uploads", size, count, True, {})),
        # The model named in a header: no JSON parse of the body (orjson's copy of a 60 MB string).
        "x_model": asyncio.run(
            _measure(workdir, "lingo-uploads-x-model", size, count, True, {}, b"X-Model: bench\r\n")
        ),
        "budget": asyncio.run(
            _measure(workdir, "lingo-uploads-budget", size, count, False, {"LINGO_MAX_BUFFERED": budget})
        ),
    }
    if docs:
        report.replace_block(DOCS, BEGIN, END, f"{BEGIN}\n{render(figures)}{END}")
    return figures


def render(figures: dict) -> str:
    held, header, budget = figures["all_in_flight"], figures["x_model"], figures["budget"]
    lines = [
        "### Memory under concurrent uploads",
        "",
        f"{held['uploads']} uploads of {held['size_mb']:.0f} MB each sent at once to lingo (uvloop) on one",
        "connection each; lingo's peak resident set (VmHWM) over its idle baseline "
        f"({held['baseline_mb']:.0f} MB). `python -m benchmarks.uploads`.",
        "",
        "| run | sent | lingo peak growth | ratio to bytes in flight | answered 200 |",
        "|---|---|---|---|---|",
        f"| model server holds every request until all arrived (all bodies in flight at once) "
        f"| {held['sent_mb']:.0f} MB | {held['peak_growth_mb']:.0f} MB | {held['ratio_to_in_flight']:.2f}x "
        f"| {held['ok']}/{held['uploads']} |",
        f"| the same, model named in `X-Model` (lingo parses no JSON: the body alone) "
        f"| {header['sent_mb']:.0f} MB | {header['peak_growth_mb']:.0f} MB "
        f"| {header['ratio_to_in_flight']:.2f}x | {header['ok']}/{header['uploads']} |",
        f"| `LINGO_MAX_BUFFERED={budget['max_buffered']}`, model server answers each as it arrives "
        f"| {budget['sent_mb']:.0f} MB | {budget['peak_growth_mb']:.0f} MB "
        f"| {budget['ratio_to_in_flight']:.2f}x of the budget plus one body "
        f"| {budget['ok']}/{budget['uploads']} |",
        "",
        "Lingo keeps one copy of each body. Finding `model` in a JSON body costs passing copies of one",
        "body at a time (the parsed document's string values, about twice that body here): the",
        "difference between the first two rows.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.uploads", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=60.0, help="size of each upload (default 60)")
    parser.add_argument("--count", type=int, default=10, help="concurrent uploads (default 10)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="uploads-") as workdir:
        figures = run(Path(workdir), args.size_mb, args.count, not args.no_docs)
    print(render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
