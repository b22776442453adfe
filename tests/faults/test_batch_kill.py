"""`lingo serve` SIGKILLed while 1,000 batch messages are in flight, then restarted: every message is
answered at least once, none is lost, and the duplicates at-least-once delivery allows are counted."""

from __future__ import annotations

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


async def batch_in_flight(serve: ServeProcess) -> float:
    """`lingo_batch_in_flight` summed over streams: messages received and not settled."""
    async with aiohttp.ClientSession() as session:
        samples = await scrape(session, serve.metrics_url.removesuffix("/metrics"))
    return sum(value for (name, _), value in samples.items() if name == "lingo_batch_in_flight")


async def test_every_message_in_flight_when_lingo_is_sigkilled_is_answered_after_a_restart(
    durable_kit: BrokerKit, tmp_path: Path
) -> None:
    kit = durable_kit
    await kit.setup()
    models_yaml = models(
        fake_model_entry("fake", "--latency", "0.2", min_replicas=1, max_replicas=1, concurrency=50)
    )
    messenger = kit.messenger(max_handlers=MAX_HANDLERS)
    first = ServeProcess(tmp_path, models_yaml, messenger, broker_env(kit))
    second: ServeProcess | None = None
    try:
        await first.ready()
        wanted = {f"kill-{i:04d}" for i in range(MESSAGES)}
        for custom_id in sorted(wanted):
            await kit.publish(envelope(custom_id))
        await kit.collect(MESSAGES // 4, timeout=90)
        in_flight = await batch_in_flight(first)

        first.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        answered_before = len({r.custom_id for r in kit.collected})
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
        f"collected_before_kill={answered_before} all_answered_after={recovered:.1f}s"
    )
    assert in_flight > 0 and answered_before < MESSAGES, "the kill should happen mid-run"
    assert not missing
    assert set(answers) == wanted
    assert {r.status_code for r in kit.collected} == {200}
    assert left == 0, f"{left} request(s) never acked"
