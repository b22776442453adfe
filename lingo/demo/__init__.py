"""`lingo demo`: the whole process on the local platform with two fake models at 0 replicas."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from importlib import resources

from lingo import logs
from lingo.app import Lingo
from lingo.config import ConfigError, Settings, parse_address

BANNER = """
lingo demo is running: proxy {proxy}, metrics {metrics}/metrics
Both models start at 0 replicas; the first request starts one (about 2 s), idle ones stop after ~30 s.

  curl {proxy}/v1/models
  curl {proxy}/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "fake-chat", "messages": [{{"role": "user", "content": "hello"}}]}}'
  curl -N {proxy}/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "gpt-4o-mini", "stream": true, "messages": [{{"role": "user", "content": "hi"}}]}}'

  .venv/bin/python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{proxy}/v1", api_key="unused")
  print(client.chat.completions.create(model="fake-chat", messages=[{{"role": "user", "content": "hi"}}]))
  print(client.embeddings.create(model="fake-embed", input="hello").data[0].embedding)
  PY

Press Ctrl-C to stop (replicas are stopped with it).
"""


def _print_scale(group: str, current: int, target: int) -> None:
    arrow = "up" if target > current else "down"
    print(f"[scale {arrow}] {group}: {current} -> {target} replica(s)", flush=True)


async def _run(port: int) -> None:
    models_file = resources.files("lingo.demo").joinpath("models.yaml")
    with resources.as_file(models_file) as path:
        settings = Settings(
            models_file=str(path),
            platform="local",
            proxy_address=parse_address(f"127.0.0.1:{port}"),
            health_address=parse_address(f"127.0.0.1:{port + 1}"),
            metrics_address=parse_address(f"127.0.0.1:{port + 2}"),
            stats_address=parse_address(f"127.0.0.1:{port + 3}"),
            autoscaling_interval=1.0,
            autoscaling_time_window=10.0,
            shutdown_grace=5.0,
            shutdown_delay=0.0,  # nothing balances onto the demo: stop at once on Ctrl-C
            log_level="WARNING",
        )
        lingo = Lingo(settings)
        lingo.autoscaler.listeners.append(_print_scale)
        task = asyncio.create_task(lingo.run())
        while "proxy" not in lingo.addresses and not task.done():
            await asyncio.sleep(0.05)
        if not task.done():
            print(BANNER.format(proxy=lingo.url("proxy"), metrics=lingo.url("metrics")), flush=True)
        await task


def run(port: int = 8080) -> int:
    logs.setup("WARNING")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_run(port))
    except ConfigError as exc:
        print(
            f"lingo demo: {exc} (is another lingo demo running? pick other ports with --port)",
            file=sys.stderr,
        )
        return 1
    print("lingo demo stopped", file=sys.stderr)
    return 0
