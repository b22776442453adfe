"""`lingo demo`: the whole process on the local platform with two fake models at 0 replicas."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from importlib import resources

import yaml

from lingo import logs
from lingo.app import Lingo
from lingo.config import ConfigError, Settings, parse_address

BANNER = """
lingo demo is running: proxy {proxy}, metrics {metrics}/metrics
Live status: {health}/status  (or in a terminal: lingo status --url {health} --watch)
Both models start at 0 replicas; the first request starts one (about 2 s); a replica stops about
{chat_idle:g} s (fake-chat) or {embed_idle:g} s (fake-embed) after its last request.

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


#: Seconds between autoscaler ticks in the demo (short, so scaling is quick to see).
AUTOSCALING_INTERVAL = 1.0
#: The demo's moving-average window of demand.
AUTOSCALING_WINDOW = 10.0


def idle_stop_seconds(group: str) -> float:
    """About how long after its last request a demo model's replica stops: the average must
    decay (one window), then demand must stay lower for the model's scale-down delay."""
    document = yaml.safe_load(resources.files("lingo.demo").joinpath("models.yaml").read_text())
    [entry] = [entry for entry in document["models"] if entry["name"] == group]
    return AUTOSCALING_WINDOW + float(entry["scale_down_delay"])


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
            autoscaling_interval=AUTOSCALING_INTERVAL,
            autoscaling_time_window=AUTOSCALING_WINDOW,
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
            banner = BANNER.format(
                proxy=lingo.url("proxy"),
                metrics=lingo.url("metrics"),
                health=lingo.url("health"),
                chat_idle=idle_stop_seconds("fake-chat"),
                embed_idle=idle_stop_seconds("fake-embed"),
            )
            print(banner, flush=True)
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
