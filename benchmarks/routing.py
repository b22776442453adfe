"""Cache-aware routing: multi-turn chat against 4 fake replicas with a simulated prefix cache.

Four `lingo fake-model` replicas simulate a model server's prefix (KV) cache: an LRU of prompt
blocks, time to first token = base + cost per uncached block, spent in one prefill lane per replica
(the GPU's compute), then a per-token delay. One `lingo serve` routes to them as static endpoints.

Workload: conversations of several turns, each opening with one of a handful of shared system prompts
(2-4 k characters), a think time between turns; conversations arrive open-loop (Poisson) at ~70 % of
the replicas' prefill capacity under cache-blind routing (capacity = replicas / mean prefill time of a
`least-load` calibration run on 40 of the conversations). Each turn streams; TTFT is the time to the first SSE
chunk. Runs, each on fresh replicas (empty caches):

- `least-load`, `prefix`, and `prefix` with `X-Session-Id` per conversation;
- hot prefix: a quarter of the conversations share one long system prompt (`prefix`);
- two lingo processes routing the same workload, turns alternating between them (`prefix`): the
  share of turns served by their conversation's home (the ring owner both compute alike).

Figures per run: mean and p99 TTFT, simulated cache hit rate (cached / prompt blocks), mean (sampled
every 50 ms from the replicas' `/stats`) and max requests in flight per replica, and in the hot runs
the share of the hot-prefix turns each replica served.

`python -m benchmarks.routing [--short]` runs it alone and updates its block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from benchmarks import targets
from benchmarks.report import replace_block
from lingo.balancing import HashRing
from lingo.prompt_key import BLOCK_SIZE, canonical_prompt, routing_key

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- routing:begin (written by `make bench` / `--only routing`) -->", "<!-- routing:end -->"
PATH = "/v1/chat/completions"
MODEL = "chat"
REPLICAS = 4
LOAD_FACTOR = 1.25
#: Share of the cache-blind prefill capacity offered.
LOAD = 0.70
#: Simulated replica: prefill seconds (base, per uncached block), seconds per token, tokens, cache.
TTFT_BASE, PER_BLOCK, TOKEN_DELAY, TOKENS, CACHE_BLOCKS = 0.020, 0.010, 0.008, 128, 512
SAMPLE_S = 0.05
#: Tries to start a server (another process may take its free port first).
START_ATTEMPTS = 3
#: Conversations of the calibration run that measures the cache-blind capacity.
CALIBRATION_CONVERSATIONS = 40
REQUEST_TIMEOUT = 120.0


@dataclass(frozen=True)
class Size:
    """How big a run is."""

    #: Conversations per run.
    conversations: int
    #: Turns per conversation.
    turns: int
    #: Mean seconds between a reply and the next question.
    think: float


FULL = Size(conversations=200, turns=8, think=1.0)
SHORT = Size(conversations=40, turns=6, think=0.3)
_WORDS = [
    "gear",
    "chain",
    "brake",
    "wheel",
    "saddle",
    "pedal",
    "frame",
    "tyre",
    "spoke",
    "valve",
    "lever",
    "cable",
    "hub",
    "rim",
    "fork",
    "stem",
    "bar",
]


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    length = 0
    while length < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def _answer() -> str:
    return "".join(f" token{i}" for i in range(TOKENS))  # what `lingo fake-model` streams


@dataclass
class Conversation:
    """One simulated user: a system prompt and the questions it will ask."""

    name: str
    system: str
    questions: list[str]
    hot: bool = False

    def prompts(self) -> list[list[dict]]:
        """The messages of each turn, as the client sends them."""
        history: list[dict] = [{"role": "system", "content": self.system}]
        out = []
        for question in self.questions:
            history.append({"role": "user", "content": question})
            out.append(list(history))
            history.append({"role": "assistant", "content": _answer()})
        return out


def workload(size: Size, hot: bool, seed: int = 1) -> list[Conversation]:
    rng = random.Random(seed)
    systems = [f"System prompt {i}. " + _text(rng, rng.randint(2000, 4000)) for i in range(5)]
    hot_system = "Hot shared prefix. " + _text(rng, 8000)
    conversations = []
    for i in range(size.conversations):
        is_hot = hot and i % 4 == 0
        questions = [_text(rng, rng.randint(300, 900)) + "?" for _ in range(size.turns)]
        system = hot_system if is_hot else systems[i % len(systems)]
        conversations.append(Conversation(f"conversation-{i}", system, questions, is_hot))
    return conversations


def blind_prefill_seconds(conversations: list[Conversation]) -> float:
    """Mean prefill per request when only the system prompts are cached (cache-blind routing)."""
    total = count = 0.0
    for conversation in conversations:
        system_blocks = len(orjson.dumps({"role": "system", "content": conversation.system})) // BLOCK_SIZE
        for messages in conversation.prompts():
            prompt = canonical_prompt(PATH, {"model": MODEL, "messages": messages})
            assert prompt is not None
            blocks = -(-len(prompt.text) // BLOCK_SIZE)
            total += TTFT_BASE + PER_BLOCK * (blocks - system_blocks)
            count += 1
    return total / count


@dataclass
class Result:
    """What one run measured."""

    ttft: list[float] = field(default_factory=list)
    errors: int = 0
    served: list[tuple[str, str]] = field(default_factory=list)  # (conversation, replica port)
    hot_served: list[str] = field(default_factory=list)  # replica ports of the hot-prefix turns
    homes: int = 0
    samples: list[list[int]] = field(default_factory=list)
    cache: list[dict] = field(default_factory=list)  # each replica's /stats at the end


async def _turn(
    session: aiohttp.ClientSession, url: str, messages: list[dict], session_id: str | None, result: Result
) -> str | None:
    body = orjson.dumps({"model": MODEL, "messages": messages, "stream": True, "max_tokens": TOKENS})
    headers = {"Content-Type": "application/json"}
    if session_id:
        headers["X-Session-Id"] = session_id
    started = time.perf_counter()
    first = None
    try:
        async with session.post(url + PATH, data=body, headers=headers) as response:
            if response.status != 200:
                result.errors += 1
                await response.read()
                return None
            async for line in response.content:
                if first is None and line.startswith(b"data: {"):
                    first = time.perf_counter() - started
            port = response.headers.get("X-Served-By", "")
    except (aiohttp.ClientError, TimeoutError):
        result.errors += 1
        return None
    if first is None:
        result.errors += 1
        return None
    result.ttft.append(first)
    return port


async def _sample(
    session: aiohttp.ClientSession, replicas: list[str], result: Result, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            stats = [await (await session.get(url + "/stats")).json(content_type=None) for url in replicas]
            result.samples.append([s["in_flight"] for s in stats])
        except aiohttp.ClientError:
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_S)


async def _drive(
    lingos: list[str],
    replicas: list[str],
    conversations: list[Conversation],
    size: Size,
    rate: float,
    session_ids: bool,
) -> Result:
    result = Result()
    ring = HashRing(replicas)
    rng = random.Random(2)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(session, replicas, result, stop))

        async def talk(conversation: Conversation, start: float, thinks: list[float]) -> None:
            await asyncio.sleep(start)
            for turn, messages in enumerate(conversation.prompts()):
                lingo = lingos[turn % len(lingos)]
                port = await _turn(
                    session, lingo, messages, conversation.name if session_ids else None, result
                )
                if port is not None:
                    result.served.append((conversation.name, port))
                    if conversation.hot:
                        result.hot_served.append(port)
                    session_id = conversation.name if session_ids else None
                    key = routing_key(PATH, {"model": MODEL, "messages": messages}, MODEL, session_id)
                    home = ring.owner(key.home) if key else None
                    result.homes += home is not None and home.endswith(":" + port)
                await asyncio.sleep(thinks[turn])

        start, tasks = 0.0, []
        for conversation in conversations:
            start += rng.expovariate(rate / size.turns)
            thinks = [rng.uniform(0.5, 1.5) * size.think for _ in range(size.turns)]
            tasks.append(asyncio.create_task(talk(conversation, start, thinks)))
        budget = start + size.turns * (size.think * 1.5 + 10) + 60
        try:
            async with asyncio.timeout(budget):
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            stop.set()
            await sampler
        result.cache = [await (await session.get(url + "/stats")).json(content_type=None) for url in replicas]
    return result


def _figures(result: Result) -> dict:
    ttft = sorted(result.ttft)
    cache = result.cache
    prompt_blocks = sum(s["prompt_blocks"] for s in cache)
    per_replica_mean = (
        [statistics.fmean(s[i] for s in result.samples) for i in range(REPLICAS)] if result.samples else []
    )
    ports = sorted({port for _, port in result.served})
    hot = collections.Counter(result.hot_served)
    sticky = _stickiness(result.served)
    return {
        "requests": len(ttft),
        "errors": result.errors,
        "ttft_mean_ms": round(statistics.fmean(ttft) * 1e3, 1) if ttft else None,
        "ttft_p50_ms": round(ttft[len(ttft) // 2] * 1e3, 1) if ttft else None,
        "ttft_p99_ms": round(ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))] * 1e3, 1)
        if ttft
        else None,
        "prefill_wait_ms": round(sum(s["prefill_wait_s"] for s in cache) / len(ttft) * 1e3, 1) if ttft else 0,
        "prefill_ms": round(sum(s["prefill_s"] for s in cache) / len(ttft) * 1e3, 1) if ttft else 0,
        "cache_hit_rate": round(sum(s["cached_blocks"] for s in cache) / prompt_blocks, 3)
        if prompt_blocks
        else 0,
        "in_flight_mean": [round(m, 2) for m in per_replica_mean],
        "in_flight_max": [s["max_in_flight"] for s in cache],
        "hot_share": [round(hot[port] / len(result.hot_served), 2) for port in ports] if hot else [],
        "turns_at_home": round(result.homes / len(result.served), 3) if result.served else 0,
        "turns_on_previous_replica": sticky,
    }


def _stickiness(served: list[tuple[str, str]]) -> float:
    last: dict[str, str] = {}
    same = later = 0
    for name, port in served:
        if name in last:
            later += 1
            same += last[name] == port
        last[name] = port
    return round(same / later, 3) if later else 0.0


def _started(start: Callable[[], targets.Server]) -> targets.Server:
    """`start()`, tried again when the free port it picked was taken before it could listen."""
    for attempt in range(START_ATTEMPTS):
        try:
            return start()
        except RuntimeError:
            if attempt == START_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _one(
    workdir: Path,
    name: str,
    size: Size,
    strategy: str,
    *,
    hot: bool = False,
    lingos: int = 1,
    session_ids: bool = False,
    rate: float | None = None,
) -> dict:
    """One run on fresh replicas; `rate` req/s offered (default: LOAD of the cache-blind estimate)."""
    flags = [
        "--prefix-cache-blocks", str(CACHE_BLOCKS),
        "--ttft-base", str(TTFT_BASE),
        "--ttft-per-uncached-block", str(PER_BLOCK),
        "--token-delay", str(TOKEN_DELAY),
        "--tokens", str(TOKENS),
        "--model", MODEL,
    ]  # fmt: skip
    servers: list[targets.Server] = []
    try:
        replicas = [_started(lambda: targets.fake_model(workdir, *flags)) for _ in range(REPLICAS)]
        servers += replicas
        urls = [r.url for r in replicas]
        models = {
            "models": [
                {"name": MODEL, "endpoints": urls, "concurrency": 64, "load_balancing": strategy,
                 "load_factor": LOAD_FACTOR}
            ]
        }  # fmt: skip
        fronts = [
            _started(lambda i=i: targets.lingo(f"lingo-routing-{name}-{i}", workdir, models))  # type: ignore[misc]
            for i in range(lingos)
        ]
        servers += fronts
        conversations = workload(size, hot)
        prefill = blind_prefill_seconds(conversations)
        rate = rate or LOAD * REPLICAS / prefill
        result = asyncio.run(_drive([f.url for f in fronts], urls, conversations, size, rate, session_ids))
        figures = _figures(result)
        figures["strategy"] = strategy + (" + X-Session-Id" if session_ids else "")
        figures["offered_req_per_s"] = round(rate, 1)
        figures["blind_prefill_ms"] = round(prefill * 1e3, 1)
        return figures
    finally:
        for server in servers:
            server.stop()


def _capacity(workdir: Path, size: Size, hot: bool) -> float:
    """Requests/s the replicas' prefill lanes sustain under `least-load`, from the mean prefill time
    of a calibration run (a subset of the conversations at the cache-blind estimate of 70 %)."""
    subset = Size(min(CALIBRATION_CONVERSATIONS, size.conversations), size.turns, size.think)
    print("   routing: calibration" + (" (hot)" if hot else ""), flush=True)
    figures = _one(workdir, "calibration", subset, "least-load", hot=hot)
    return REPLICAS / (figures["prefill_ms"] / 1e3)


def run(workdir: Path, short: bool = False, only: list[str] | None = None) -> dict:
    """Every run of the section (or those in `only`); figures by run name."""
    size = SHORT if short else FULL
    runs = {
        "least-load": dict(strategy="least-load"),
        "prefix": dict(strategy="prefix"),
        "session": dict(strategy="prefix", session_ids=True),
        "hot-least-load": dict(strategy="least-load", hot=True),
        "hot-prefix": dict(strategy="prefix", hot=True),
        "two-lingos": dict(strategy="prefix", lingos=2),
    }
    figures: dict = {
        "size": {"conversations": size.conversations, "turns": size.turns, "think_s": size.think},
        "replica": {
            "ttft_base_ms": TTFT_BASE * 1e3, "per_uncached_block_ms": PER_BLOCK * 1e3,
            "token_delay_ms": TOKEN_DELAY * 1e3, "tokens": TOKENS, "cache_blocks": CACHE_BLOCKS,
            "block_bytes": BLOCK_SIZE,
        },
    }  # fmt: skip
    rates: dict[bool, float] = {}
    for name, options in runs.items():
        if only and name not in only:
            continue
        hot = bool(options.get("hot"))
        print(f"   routing: {name}", flush=True)
        try:
            if hot not in rates:
                rates[hot] = _capacity(workdir, size, hot) * LOAD
                figures["capacity" + ("-hot" if hot else "")] = round(rates[hot] / LOAD, 1)
            figures[name] = _one(workdir, name, size, rate=rates[hot], **options)  # type: ignore[arg-type]
        except Exception as exc:  # one failed run must not hide the others
            figures[name] = {"failed": repr(exc)}
    return figures


def render(figures: dict) -> str:
    """The section's markdown."""
    size, replica = figures["size"], figures["replica"]
    lines = [
        "## Cache-aware routing",
        "",
        f"{size['conversations']} conversations x {size['turns']} turns (5 shared system prompts of 2-4 k "
        f"characters, questions of 300-900, think time ~{size['think_s']:g} s), streamed through lingo to "
        f"{REPLICAS} `lingo fake-model` replicas with a simulated prefix cache of {replica['cache_blocks']} "
        f"blocks of {replica['block_bytes']} bytes each; TTFT = {replica['ttft_base_ms']:g} ms + "
        f"{replica['per_uncached_block_ms']:g} ms per uncached block in one prefill lane per replica, then "
        f"{replica['tokens']} tokens at {replica['token_delay_ms']:g} ms. Conversations arrive open-loop at "
        f"{LOAD:.0%} of the prefill capacity under `least-load` ({figures.get('capacity', '?')} req/s, "
        f"measured by a calibration run; hot workload {figures.get('capacity-hot', '?')} req/s); "
        f"load factor {LOAD_FACTOR}.",
        "",
    ]
    header = [
        "run",
        "requests (req/s offered)",
        "TTFT mean ms",
        "TTFT p99 ms",
        "cache hit rate",
        "prefill wait / prefill ms",
        "in flight per replica: mean",
        "max",
        "hot-prefix turns per replica",
        "turns at home",
        "turns on previous replica",
        "errors",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in ("least-load", "prefix", "session", "hot-least-load", "hot-prefix", "two-lingos"):
        f = figures.get(name)
        if f is None:
            continue
        if "failed" in f:
            lines.append(f"| {name} | failed: `{f['failed']}` |" + " |" * (len(header) - 2))
            continue
        cells = [
            f"{name} ({f['strategy']})",
            f"{f['requests']} ({f['offered_req_per_s']})",
            f["ttft_mean_ms"],
            f["ttft_p99_ms"],
            f"{f['cache_hit_rate']:.1%}",
            f"{f['prefill_wait_ms']} / {f['prefill_ms']}",
            ", ".join(map(str, f["in_flight_mean"])),
            ", ".join(map(str, f["in_flight_max"])),
            ", ".join(f"{share:.0%}" for share in f["hot_share"]) or "-",
            f"{f['turns_at_home']:.1%}",
            f"{f['turns_on_previous_replica']:.1%}",
            f["errors"],
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    lines += [
        "",
        "*hot*: a quarter of the conversations share one 8 k-character system prompt. *two-lingos*: two "
        "lingo processes, each conversation's turns alternating between them. *turns at home*: served by "
        "the ring owner of the conversation's home (what every lingo computes alike, without shared "
        "state); with `X-Session-Id` the home is the session's.",
    ]
    return "\n".join(lines) + "\n"


def update_docs(path: Path, figures: dict) -> None:
    replace_block(path, BEGIN, END, f"{BEGIN}\n{render(figures)}{END}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing", description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="40 conversations x 4 turns (a quick check)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--run", action="append", help="only this run (repeatable), e.g. prefix")
    args = parser.parse_args(argv)
    targets.raise_nofile()
    targets.pin(targets.LOAD_CORES)
    workdir = Path(tempfile.mkdtemp(prefix="lingo-bench-routing-"))
    figures = run(workdir, args.short, args.run)
    (workdir / "routing.json").write_text(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    if not args.no_docs:
        update_docs(ROOT / "docs" / "benchmarks.md", figures)
    print(render(figures))
    return figures


if __name__ == "__main__":
    main()
