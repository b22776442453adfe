"""`lingo serve` SIGKILLed while 1,000 batch messages are in flight, then restarted: every message is
answered at least once, none is lost, and the duplicates at-least-once delivery allows are counted."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path

import aiohttp

from tests.batch.conftest import (
    BrokerKit,
    collect_ids,
    envelope,
    fake_model_entry,
)
from tests.batch.support import ServeProcess, models
from tests.faults.support import scrape

MESSAGES = 1000
MAX_HANDLERS = 200
#: Longer than the NATS kit's `ack_wait=3s`: a message answered but not acked before the kill comes
#: back within it, and its second answer is counted.
QUIET = 4.0


def broker_env(kit: BrokerKit) -> dict[str, str]:
    return kit.environment()


async def batch_progress(serve: ServeProcess) -> tuple[float, float]:
    """(messages answered, messages in flight: received and not settled), over all streams."""
    async with aiohttp.ClientSession() as session:
        samples = await scrape(session, serve.metrics_url.removesuffix("/metrics"))
    answered = sum(
        value
        for (name, labels), value in samples.items()
        if name == "lingo_batch_messages_total" and dict(labels).get("outcome") == "answered"
    )
    in_flight = sum(value for (name, _), value in samples.items() if name == "lingo_batch_in_flight")
    return answered, in_flight


async def until_a_quarter_is_answered_with_more_in_flight(serve: ServeProcess) -> tuple[float, float]:
    """(answered, in flight) once lingo answered a quarter of them and holds more (lingo's own count:
    a slow broker (moto) may deliver the responses much later); polled, bounded."""
    deadline = time.monotonic() + 90
    while True:
        answered, in_flight = await batch_progress(serve)
        if answered >= MESSAGES // 4 and in_flight > 0:
            return answered, in_flight
        assert time.monotonic() < deadline, f"after 90 s: answered={answered} in_flight={in_flight}"
        await asyncio.sleep(0.005)


async def test_every_message_in_flight_when_lingo_is_sigkilled_is_answered_after_a_restart(
    durable_kit: BrokerKit, tmp_path: Path
) -> None:
    kit = durable_kit
    await kit.setup()
    models_yaml = models(
        fake_model_entry("fake", "--latency", "0.2", min_replicas=1, max_replicas=1, concurrency=50)
    )
    messenger = kit.messenger(max_handlers=MAX_HANDLERS)
    wanted = {f"kill-{i:04d}" for i in range(MESSAGES)}
    requests = [envelope(custom_id) for custom_id in sorted(wanted)]
    if kit.slow_publisher:  # lingo would keep pace with it: let the requests pile up first
        await kit.publish_many(requests)
    first = ServeProcess(tmp_path, models_yaml, messenger, broker_env(kit))
    second: ServeProcess | None = None
    try:
        await first.ready()
        if not kit.slow_publisher:
            await kit.publish_many(requests)
        answered_by_first, in_flight = await until_a_quarter_is_answered_with_more_in_flight(first)

        first.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        second = ServeProcess(tmp_path, models_yaml, messenger, broker_env(kit))
        await second.ready()
        await collect_ids(kit, wanted, timeout=180)
        recovered = time.monotonic() - killed_at
        await kit.quiet(QUIET)
        second.kill(signal.SIGTERM)
        left = await kit.requests_left()
    finally:
        first.kill()
        if second is not None:
            second.kill(signal.SIGTERM)

    answers = collections.Counter(r.custom_id for r in kit.collected)
    missing = wanted - set(answers)
    duplicates = sum(count - 1 for count in answers.values())
    print(
        f"\nFIGURE batch-kill broker={kit.name} sent={MESSAGES} answered={len(set(answers) & wanted)} "
        f"missing={len(missing)} duplicates={duplicates} in_flight_at_kill={in_flight:.0f} "
        f"answered_before_kill={answered_by_first:.0f} all_answered_after={recovered:.1f}s"
    )
    assert in_flight > 0 and answered_by_first < MESSAGES, "the kill should happen mid-run"
    assert not missing
    assert set(answers) == wanted
    assert {r.status_code for r in kit.collected} == {200}
    assert left == 0, f"{left} request(s) never acked"
