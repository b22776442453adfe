"""Batch through pub/sub: request messages from a broker go through the shared per-model queue,
and their responses are published back (see docs/batch.md).

- `envelope` — request/response messages, parsed and built (pure);
- `urls` — stream specs and broker URLs (pure);
- `handler` — one message → one response, with retries;
- `streams` — receive loops, bounded concurrency, backoff, shutdown (`BatchStreams`);
- `brokers` — one adapter per broker behind one small interface;
- `jobs`, `cli` — `lingo batch run|publish|collect`.
"""

from lingo.batch.streams import BatchStream, BatchStreams

__all__ = ["BatchStream", "BatchStreams"]
