"""A model server killed with SIGKILL while streaming: its clients see a cut stream, nobody else notices."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import openai
import orjson

from tests.faults.support import models_file, static_model

STREAMS = 8
DONE = b"data: [DONE]"


@dataclass
class StreamOutcome:
    """What one streaming client saw."""

    served_by: str = ""
    data: bytearray = field(default_factory=bytearray)
    error: BaseException | None = None
    ended_at: float = 0.0


async def stream(session: aiohttp.ClientSession, url: str, started: asyncio.Event) -> StreamOutcome:
    outcome = StreamOutcome()
    body = orjson.dumps({"model": "chat", "stream": True, "max_tokens": 80, "prompt": "x"})
    try:
        async with session.post(url + "/v1/completions", data=body) as response:
            assert response.status == 200
            outcome.served_by = response.headers["X-Served-By"]
            async for chunk in response.content.iter_any():
                outcome.data += chunk
                started.set()
    except aiohttp.ClientError as exc:
        outcome.error = exc
    outcome.ended_at = time.monotonic()
    return outcome


async def test_killed_backend_cuts_its_streams_and_spares_the_other_replica(start_lingo, fake_model) -> None:
    victim, survivor = fake_model("--token-delay", "0.05"), fake_model("--token-delay", "0.05")
    lingo = await start_lingo(models_file(static_model("chat", victim.url, survivor.url)), backend_retries=1)
    async with aiohttp.ClientSession() as session:
        started = [asyncio.Event() for _ in range(STREAMS)]
        tasks = [asyncio.create_task(stream(session, lingo.url(), event)) for event in started]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), timeout=30)
        killed_at = time.monotonic()
        victim.kill()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)

        cut = [o for o in outcomes if o.served_by == str(victim.port)]
        whole = [o for o in outcomes if o.served_by == str(survivor.port)]
        assert len(cut) + len(whole) == STREAMS and cut and whole, [o.served_by for o in outcomes]
        for outcome in cut:
            assert isinstance(outcome.error, aiohttp.ClientPayloadError), outcome.error
            assert DONE not in outcome.data
        for outcome in whole:
            assert outcome.error is None
            assert outcome.data.endswith(DONE + b"\n\n")

        after = []
        for _ in range(5):
            async with session.post(lingo.url() + "/v1/completions", data=b'{"model": "chat"}') as response:
                after.append((response.status, response.headers.get("X-Served-By")))
    assert after == [(200, str(survivor.port))] * 5
    detect = max(o.ended_at for o in cut) - killed_at
    print(
        f"\nFIGURE killed mid-stream: {len(cut)}/{len(cut)} streams on the killed replica cut "
        f"(no [DONE], ClientPayloadError) within {detect * 1000:.0f} ms; "
        f"{len(whole)}/{len(whole)} on the other replica complete; 5/5 requests after it answered 200"
    )


async def test_openai_sdk_stream_raises_when_its_backend_is_killed(start_lingo, fake_model) -> None:
    backend = fake_model("--token-delay", "0.05")
    spare = fake_model()
    lingo = await start_lingo(
        models_file(static_model("chat", backend.url), static_model("spare", spare.url)), backend_retries=1
    )
    client = openai.AsyncOpenAI(base_url=lingo.url() + "/v1", api_key="unused", max_retries=0)
    chunks: list[str] = []
    error: BaseException | None = None
    try:
        response = await client.chat.completions.create(
            model="chat", stream=True, max_tokens=80, messages=[{"role": "user", "content": "hi"}]
        )
        async for chunk in response:
            chunks.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
            if len(chunks) == 3:
                backend.kill()
    except Exception as exc:  # the SDK surfaces the transport's error as it is
        error = exc
    assert error is not None, f"stream completed after its backend was killed: {len(chunks)} chunks"
    assert 3 <= len(chunks) < 80
    reply = await client.completions.create(model="spare", prompt="x")
    assert reply.choices
    await client.close()
    print(
        f"\nFIGURE openai SDK mid-stream kill: raised {type(error).__name__} after {len(chunks)}/80 chunks; "
        "lingo answered the next request"
    )
