"""Priority classes under load: interactive time to first byte while a saturating batch runs through
NATS JetStream, with the batch share (0.75) and without it (1.0); and flex next to default requests
when more is asked than the model can serve.

Backend: `lingo fake-model`, whose answers take `max_tokens` x 20 ms (a batch request 1 s, an
interactive one a few tokens), behind `lingo serve` with a per-endpoint `concurrency`. Interactive
requests stream and arrive at a steady rate; their time to first byte is queue wait + first token.

`python -m benchmarks.priorities [--seconds N]`; `run(workdir, seconds)` returns the figures and
`update_docs` writes them into their own block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson

from benchmarks import targets
from benchmarks.batch import NATS_URL, _nats_cleanup, _nats_setup, _reachable
from benchmarks.report import replace_block
from benchmarks.streaming import percentile, run_async

BEGIN = "<!-- priorities:begin (written by `make bench` / `--only priorities`) -->"
END = "<!-- priorities:end -->"

#: Seconds per generated token of the fake model.
TOKEN_DELAY = 0.02
#: Slots of the model endpoint in the batch scenario.
SLOTS = 8
#: Tokens of a batch request (1 s of work each).
BATCH_TOKENS = 50
#: Batch messages published: more than the run can answer, so the batch saturates throughout.
BATCH_MESSAGES = 2000
#: Batch handlers of the stream (messages lingo holds at once).
MAX_HANDLERS = 64
#: Tokens of an interactive (streamed) request.
INTERACTIVE_TOKENS = 5
#: Interactive arrivals per second while the batch runs.
INTERACTIVE_RATE = 5.0
#: Slots of the model endpoint in the overload scenario.
OVERLOAD_SLOTS = 4
#: Tokens of a request in the overload scenario (0.2 s: capacity 20 requests/s).
OVERLOAD_TOKENS = 10
#: Arrivals per second in the overload scenario, half default, half flex: 1.5 x capacity.
OVERLOAD_RATE = 30.0
#: LINGO_FLEX_MAX_WAIT in the overload scenario.
FLEX_MAX_WAIT = "2s"
#: Longest any one request of the benchmark may take.
REQUEST_TIMEOUT = 60.0


def _models(backend_url: str, slots: int) -> dict:
    return {"models": [{"name": "bench", "endpoints": [backend_url], "concurrency": slots}]}


def _body(tokens: int, label: str, **extra: object) -> dict:
    return {"model": "bench", "messages": [{"role": "user", "content": label}], "max_tokens": tokens, **extra}


async def _first_byte(session: aiohttp.ClientSession, url: str) -> float:
    """Seconds until the first streamed chunk of one interactive request."""
    started = time.perf_counter()
    async with session.post(
        url + targets.PATH, json=_body(INTERACTIVE_TOKENS, "hi", stream=True)
    ) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.startswith(b"data: {"):
                first = time.perf_counter() - started
                await response.read()
                return first
    raise RuntimeError("the stream ended without a chunk")


async def _in_flight(session: aiohttp.ClientSession, metrics_url: str) -> float:
    async with session.get(metrics_url) as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith('lingo_requests_in_flight{model="bench"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _under_batch(lingo: targets.Server, requests_subject: str, seconds: float, share: float) -> dict:
    """Publish a large batch, wait until it fills its share, then time interactive requests."""
    import nats

    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    for index in range(BATCH_MESSAGES):
        envelope = {
            "path": targets.PATH,
            "metadata": {"custom_id": str(index)},
            "body": _body(BATCH_TOKENS, f"batch {index}"),
        }
        await js.publish(requests_subject, orjson.dumps(envelope), timeout=30)
    await client.close()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        saturated = int(SLOTS * share)
        deadline = time.monotonic() + 60
        while await _in_flight(session, lingo.extra["metrics"]) < saturated:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the batch never filled {saturated} slots")
            await asyncio.sleep(0.1)
        tasks = []
        for _ in range(int(seconds * INTERACTIVE_RATE)):
            tasks.append(asyncio.create_task(_first_byte(session, lingo.url)))
            await asyncio.sleep(1 / INTERACTIVE_RATE)
        firsts = await asyncio.gather(*tasks)
    return {
        "share": share,
        "interactive": len(firsts),
        "ttfb_p50_ms": round(percentile(firsts, 50) * 1000, 1),
        "ttfb_p99_ms": round(percentile(firsts, 99) * 1000, 1),
    }


async def _overload(url: str, seconds: float) -> dict:
    """Half default, half flex requests at 1.5 x capacity: latency of each, and flex refusals."""
    results: dict[str, list[tuple[int, float]]] = {"default": [], "flex": []}

    async def one(session: aiohttp.ClientSession, tier: str) -> None:
        started = time.perf_counter()
        async with session.post(
            url + targets.PATH, json=_body(OVERLOAD_TOKENS, tier, service_tier=tier)
        ) as r:
            await r.read()
            results[tier].append((r.status, time.perf_counter() - started))

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = []
        for index in range(int(seconds * OVERLOAD_RATE)):
            tasks.append(asyncio.create_task(one(session, "flex" if index % 2 else "default")))
            await asyncio.sleep(1 / OVERLOAD_RATE)
        await asyncio.gather(*tasks)
    figures: dict = {"rate": OVERLOAD_RATE, "capacity": OVERLOAD_SLOTS / (OVERLOAD_TOKENS * TOKEN_DELAY)}
    for tier, answers in results.items():
        served = [seconds for status, seconds in answers if status == 200]
        figures[tier] = {
            "sent": len(answers),
            "served": len(served),
            "refused_429": sum(1 for status, _ in answers if status == 429),
            "p50_ms": round(percentile(served, 50) * 1000, 1) if served else None,
            "p99_ms": round(percentile(served, 99) * 1000, 1) if served else None,
        }
    return figures


def run(workdir: Path, seconds: float = 20.0) -> dict:
    """Both scenarios; `seconds` is how long interactive / overload traffic is sent in each run."""
    figures: dict = {"seconds": seconds, "slots": SLOTS}
    backend = targets.fake_model(workdir, "--token-delay", str(TOKEN_DELAY))
    try:
        if _reachable(NATS_URL):
            figures["batch"] = [_batch_run(workdir, backend.url, seconds, share) for share in (0.75, 1.0)]
        else:
            figures["batch"] = f"skipped: no NATS server at {NATS_URL}"
        lingo = targets.lingo(
            "lingo-overload",
            workdir,
            _models(backend.url, OVERLOAD_SLOTS),
            env={"LINGO_FLEX_MAX_WAIT": FLEX_MAX_WAIT},
        )
        try:
            figures["overload"] = run_async(_overload(lingo.url, seconds))
        finally:
            lingo.stop()
    finally:
        backend.stop()
    return figures


def _batch_run(workdir: Path, backend_url: str, seconds: float, share: float) -> dict:
    unique = uuid.uuid4().hex[:8]
    req, resp = f"bench.{unique}.req", f"bench.{unique}.resp"
    req_stream, resp_stream = f"PRIOREQ_{unique}", f"PRIORESP_{unique}"
    asyncio.run(_nats_setup(resp, resp_stream))
    try:
        lingo = targets.lingo(
            f"lingo-batch-{share}",
            workdir,
            _models(backend_url, SLOTS),
            env={
                "NATS_SERVER_URL": NATS_URL,
                "MESSENGER_URLS": f"nats://{req}?stream={req_stream}|nats://{resp}|{MAX_HANDLERS}",
                "LINGO_BATCH_MAX_SHARE": str(share),
            },
        )
        try:
            # The requests stream is created by lingo: wait for it before publishing.
            return run_async(_after_stream(lingo, req, seconds, share))
        finally:
            lingo.stop(grace=15)
    finally:
        asyncio.run(_nats_cleanup(req_stream, resp_stream))


async def _after_stream(lingo: targets.Server, subject: str, seconds: float, share: float) -> dict:
    import nats

    client = await nats.connect(NATS_URL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(Exception):
                await client.jetstream().find_stream_name_by_subject(subject)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"lingo did not create a stream for {subject}")
            await asyncio.sleep(0.1)
    finally:
        await client.close()
    return await _under_batch(lingo, subject, seconds, share)


def render(figures: dict) -> str:
    """Markdown for the priorities block of docs/benchmarks.md."""
    lines = ["### Priority classes", ""]
    if "failed" in figures:
        return "\n".join([*lines, f"Failed: `{figures['failed']}`", ""])
    batch = figures["batch"]
    lines.append(
        f"Interactive streamed requests ({INTERACTIVE_RATE:g}/s for {figures['seconds']:g} s, "
        f"{INTERACTIVE_TOKENS} tokens) while a NATS batch of 1-second requests saturates one endpoint of "
        f"{figures['slots']} slots; time to first byte:"
    )
    lines.append("")
    if isinstance(batch, str):
        lines.append(batch)
    else:
        lines += ["| LINGO_BATCH_MAX_SHARE | requests | p50 ms | p99 ms |", "|---|---|---|---|"]
        for r in batch:
            lines.append(f"| {r['share']:g} | {r['interactive']} | {r['ttfb_p50_ms']} | {r['ttfb_p99_ms']} |")
    overload = figures["overload"]
    lines += [
        "",
        f"Overload: {overload['rate']:g} requests/s (half `service_tier: flex`) against a capacity of "
        f"{overload['capacity']:g}/s, `LINGO_FLEX_MAX_WAIT={FLEX_MAX_WAIT}`; time to the whole answer:",
        "",
        "| class | sent | served | 429 | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for tier in ("default", "flex"):
        t = overload[tier]
        cells = (tier, t["sent"], t["served"], t["refused_429"], t["p50_ms"], t["p99_ms"])
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def update_docs(path: Path, figures: dict) -> None:
    replace_block(path, BEGIN, END, f"{BEGIN}\n{render(figures)}{END}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.priorities", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="traffic per run in seconds (default 20)")
    args = parser.parse_args(argv)
    targets.raise_nofile()
    targets.pin(targets.LOAD_CORES)
    return run(Path(tempfile.mkdtemp(prefix="lingo-bench-priorities-")), args.seconds)


if __name__ == "__main__":
    figures = main(sys.argv[1:])
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    print(render(figures))
