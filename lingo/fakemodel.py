"""`lingo fake-model`: a small, fast OpenAI-compatible model server for demos, tests and benchmarks.

It answers completions, chat completions (also as SSE with `stream: true`), embeddings, `/v1/models`
and `/health`, with knobs for startup delay, latency, per-token delay and failures. Every response
carries `X-Served-By: <port>` so tests can see how requests spread across replicas.

With `--prefix-cache-blocks N` it simulates a model server's prefix (KV) cache: the prompt is cut
into blocks exactly as lingo's routing key cuts it (`lingo.prompt_key`), the replica remembers the
last N blocks it saw (LRU), and the time to first token is `--ttft-base` plus
`--ttft-per-uncached-block` for each block after the longest cached prefix, spent in a prefill lane
of `--prefill-concurrency` requests at a time (the GPU's compute). Answers carry
`X-Prefix-Cache-Hit-Blocks` and `X-Prefix-Cache-Blocks`; `GET /stats` sums them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson
from aiohttp import web

from lingo.prompt_key import BLOCK_SIZE, block_hashes, canonical_prompt

#: Blocks of one prompt the simulated cache looks at, at most.
MAX_PROMPT_BLOCKS = 100_000


@dataclass
class FakeModelOptions:
    """How the fake behaves."""

    #: Port to listen on.
    port: int
    #: Interface to listen on.
    host: str = "127.0.0.1"
    #: Seconds before the server starts listening (a model loading).
    startup_delay: float = 0.0
    #: Seconds added before every answer.
    latency: float = 0.0
    #: Seconds between generated tokens (streamed or not).
    token_delay: float = 0.0
    #: Probability of answering 500 instead.
    failure_rate: float = 0.0
    #: The first N generation requests are answered 503 (to test retries deterministically).
    fail_first: int = 0
    #: Tokens generated when the request sets no max_tokens.
    tokens: int = 8
    #: Model name reported by /v1/models.
    model: str = "fake"
    #: Length of embedding vectors.
    dimensions: int = 8
    #: Prompt blocks the simulated prefix cache holds; 0 turns the simulation off.
    prefix_cache_blocks: int = 0
    #: Bytes of canonical prompt per simulated cache block.
    block_size: int = BLOCK_SIZE
    #: Seconds of every prefill (time to first token with the whole prompt cached).
    ttft_base: float = 0.0
    #: Seconds of prefill per prompt block not found in the cache.
    ttft_per_uncached_block: float = 0.0
    #: Prefills that run at the same time; the others wait their turn.
    prefill_concurrency: int = 1


class PrefixCache:
    """An LRU of prompt block hashes: how much of a prompt a model server would not recompute."""

    def __init__(self, capacity: int) -> None:
        #: Blocks held at most.
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def lookup_and_insert(self, blocks: list[int]) -> int:
        """How many leading `blocks` were cached; then all of them are (most recent first)."""
        hits = 0
        for block in blocks:
            if block not in self._blocks:
                break
            hits += 1
        for block in reversed(blocks):
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return hits


class FakeModel:
    """The request handlers; state is only counters."""

    def __init__(self, options: FakeModelOptions) -> None:
        self.options = options
        #: Generation requests answered so far.
        self.requests = 0
        #: Generation requests being answered now, and the most at once.
        self.in_flight = 0
        self.max_in_flight = 0
        #: Prompt blocks seen, and those found in the simulated cache.
        self.prompt_blocks = 0
        self.cached_blocks = 0
        #: Seconds prefills waited for the prefill lane, and seconds spent in it (summed).
        self.prefill_wait = 0.0
        self.prefill_time = 0.0
        #: The simulated prefix cache, when enabled.
        self.cache = PrefixCache(options.prefix_cache_blocks) if options.prefix_cache_blocks else None
        self._prefill = asyncio.Semaphore(max(1, options.prefill_concurrency))
        self._served_by = {"X-Served-By": str(options.port)}

    def application(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_route("*", "/echo/{tail:.*}", self.echo)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, headers=self._served_by)

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": self.options.model, "object": "model", "created": 0, "owned_by": "fake"}]
        return web.json_response({"object": "list", "data": data}, headers=self._served_by)

    async def stats(self, request: web.Request) -> web.Response:
        """Counters for benchmarks: requests, in flight, simulated cache hits."""
        body = {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "prompt_blocks": self.prompt_blocks,
            "cached_blocks": self.cached_blocks,
            "prefill_wait_s": round(self.prefill_wait, 6),
            "prefill_s": round(self.prefill_time, 6),
        }
        return web.json_response(body, headers=self._served_by)

    async def echo(self, request: web.Request) -> web.Response:
        """Reflects the request: lets tests see exactly what the proxy sent upstream."""
        body = await request.read()
        document = {
            "method": request.method,
            "path": request.path_qs,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        return web.Response(
            body=orjson.dumps(document), content_type="application/json", headers=self._served_by
        )

    async def _prelude(self, request: web.Request) -> tuple[dict, web.Response | None]:
        self.requests += 1
        number = self.requests
        try:
            document = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return {}, self._error(400, "request body is not valid JSON")
        if not isinstance(document, dict):
            return {}, self._error(400, "request body must be a JSON object")
        document["_number"] = number
        if self.options.latency:
            await asyncio.sleep(self.options.latency)
        if number <= self.options.fail_first:
            return document, self._error(503, "fake model: failing on purpose (--fail-first)")
        if self.options.failure_rate and random.random() < self.options.failure_rate:
            return document, self._error(500, "fake model: failing on purpose (--failure-rate)")
        return document, None

    def _error(self, status: int, message: str) -> web.Response:
        body = {"error": {"message": message, "type": "server_error", "code": status}}
        return web.Response(
            status=status, body=orjson.dumps(body), content_type="application/json", headers=self._served_by
        )

    def _token_count(self, document: dict) -> int:
        wanted = document.get("max_tokens") or document.get("max_completion_tokens") or self.options.tokens
        return max(1, min(4096, int(wanted))) if isinstance(wanted, int) else self.options.tokens

    async def completions(self, request: web.Request) -> web.StreamResponse:
        document, failure = await self._prelude(request)
        if failure is not None:
            return failure
        return await self._generate(request, document, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        document, failure = await self._prelude(request)
        if failure is not None:
            return failure
        return await self._generate(request, document, chat=True)

    async def _generate(self, request: web.Request, document: dict, chat: bool) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            headers = await self._prefill_prompt(request.path, document)
            return await self._answer(request, document, chat, headers)
        finally:
            self.in_flight -= 1

    async def _prefill_prompt(self, path: str, document: dict) -> dict[str, str]:
        """Wait for the simulated prefill; the cache headers to answer with."""
        options = self.options
        if self.cache is None:
            return self._served_by
        prompt = canonical_prompt(path, document)
        text = prompt.text if prompt is not None else b""
        blocks = block_hashes(str(document.get("model", "")), text, options.block_size, MAX_PROMPT_BLOCKS)
        hits = self.cache.lookup_and_insert(blocks)
        self.prompt_blocks += len(blocks)
        self.cached_blocks += hits
        seconds = options.ttft_base + options.ttft_per_uncached_block * (len(blocks) - hits)
        if seconds > 0:
            queued = time.monotonic()
            async with self._prefill:
                started = time.monotonic()
                await asyncio.sleep(seconds)
            self.prefill_wait += started - queued
            self.prefill_time += time.monotonic() - started
        return {
            **self._served_by,
            "X-Prefix-Cache-Hit-Blocks": str(hits),
            "X-Prefix-Cache-Blocks": str(len(blocks)),
        }

    async def _answer(
        self, request: web.Request, document: dict, chat: bool, headers: dict[str, str]
    ) -> web.StreamResponse:
        model = str(document.get("model", self.options.model))
        count = self._token_count(document)
        created = int(time.time())
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{self.options.port}-{document['_number']}"
        kind = "chat.completion" if chat else "text_completion"
        if document.get("stream") is True:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
            )
            await response.prepare(request)
            for i in range(count):
                # With the simulated cache, the prefill was the wait for the first token.
                if self.options.token_delay and (i or self.cache is None):
                    await asyncio.sleep(self.options.token_delay)
                text = f" token{i}"
                choice: dict = {"index": 0, "finish_reason": None, "logprobs": None}
                if chat:
                    choice["delta"] = {"role": "assistant", "content": text} if i == 0 else {"content": text}
                else:
                    choice["text"] = text
                chunk = {
                    "id": ident,
                    "object": f"{kind}.chunk" if chat else kind,
                    "created": created,
                    "model": model,
                    "choices": [choice],
                }
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            final: dict[str, object] = {"index": 0, "finish_reason": "length", "logprobs": None}
            if chat:
                final["delta"] = {}
            else:
                final["text"] = ""
            done = {
                "id": ident,
                "object": f"{kind}.chunk" if chat else kind,
                "created": created,
                "model": model,
                "choices": [final],
            }
            await response.write(b"data: " + orjson.dumps(done) + b"\n\ndata: [DONE]\n\n")
            await response.write_eof()
            return response
        if self.options.token_delay:
            await asyncio.sleep(self.options.token_delay * count)
        text = "".join(f" token{i}" for i in range(count))
        choice = {"index": 0, "finish_reason": "length", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        body = {
            "id": ident,
            "object": kind,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": count + 1},
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)

    async def embeddings(self, request: web.Request) -> web.Response:
        document, failure = await self._prelude(request)
        if failure is not None:
            return failure
        inputs = document.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {"object": "embedding", "index": i, "embedding": self._vector(str(item))}
            for i, item in enumerate(items)
        ]
        body = {
            "object": "list",
            "data": data,
            "model": str(document.get("model", self.options.model)),
            "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=self._served_by)

    def _vector(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        return [round(digest[i % len(digest)] / 255.0, 6) for i in range(self.options.dimensions)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=_port, required=True, help="port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds before listening")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="probability of a 500 answer")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N requests with 503")
    parser.add_argument("--tokens", type=int, default=8, help="tokens generated without max_tokens")
    parser.add_argument("--model", default="fake", help="model name listed by /v1/models")
    cache = parser.add_argument_group("simulated prefix cache (time to first token)")
    cache.add_argument(
        "--prefix-cache-blocks",
        type=int,
        default=0,
        help="prompt blocks the simulated prefix cache holds (LRU); 0 (default) disables it",
    )
    cache.add_argument(
        "--block-size",
        type=int,
        default=BLOCK_SIZE,
        help=f"bytes of canonical prompt per cache block (default {BLOCK_SIZE}, as lingo's routing key)",
    )
    cache.add_argument("--ttft-base", type=float, default=0.0, help="seconds of every prefill")
    cache.add_argument(
        "--ttft-per-uncached-block",
        type=float,
        default=0.0,
        help="seconds of prefill per prompt block after the longest cached prefix",
    )
    cache.add_argument(
        "--prefill-concurrency", type=int, default=1, help="prefills running at once; others wait (default 1)"
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port from 0 to 65535")
    return port


def run(args: argparse.Namespace) -> int:
    options = FakeModelOptions(
        port=args.port,
        host=args.host,
        startup_delay=args.startup_delay,
        latency=args.latency,
        token_delay=args.token_delay,
        failure_rate=args.failure_rate,
        fail_first=args.fail_first,
        tokens=args.tokens,
        model=args.model,
        prefix_cache_blocks=args.prefix_cache_blocks,
        block_size=max(1, args.block_size),
        ttft_base=args.ttft_base,
        ttft_per_uncached_block=args.ttft_per_uncached_block,
        prefill_concurrency=args.prefill_concurrency,
    )
    if options.startup_delay:
        time.sleep(options.startup_delay)
    try:
        web.run_app(
            FakeModel(options).application(),
            host=options.host,
            port=options.port,
            access_log=None,
            print=None,
            handle_signals=True,
        )
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"lingo fake-model: cannot listen on {options.host}:{options.port}: {reason}", file=sys.stderr)
        return 1
    return 0
