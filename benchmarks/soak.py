"""Soak: minutes of mixed HTTP + batch at ~70 % of measured capacity against one `lingo serve`.

One lingo (pinned to the proxy core) in front of the nginx backend, with a NATS JetStream messenger.
Capacity is a 5 s `hey -c 64` first; then, for `seconds`, HTTP at ~60 % of it (`hey -q -c`, in
consecutive slices so p99 is known per slice) and batch at ~10 % of it (NATS envelopes published at a
steady rate from a background thread, answers counted by status code). Each slice records HTTP req/s,
p50/p99, errors, batch published/answered, lingo RSS (VmRSS) and lingo CPU. A leak shows as RSS that
keeps growing, a slow drift as p99 that climbs from slice to slice.

`python -m benchmarks.soak [--seconds N]`; `run()` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

from benchmarks import batch, load, targets

#: Share of the measured capacity for each kind of load.
HTTP_SHARE, BATCH_SHARE = 0.60, 0.10
#: hey workers for the rate-limited HTTP load (enough that each one's tick outlasts a request).
HTTP_WORKERS = 32
SLICE_S = 30.0
#: Batch handlers in lingo for the soak stream.
HANDLERS = 64
#: Bounded wait for the batch answers still outstanding at the end.
DRAIN_S = 60.0
MB = 1024 * 1024


def _hey_rate(url: str, seconds: float, workers: int, qps: float) -> load.LoadResult:
    """`hey -z seconds -c workers -q qps` (qps per worker), POSTing the chat completion."""
    argv = load._taskset(
        [
            "hey",
            "-z",
            f"{seconds:g}s",
            "-c",
            str(workers),
            *(["-q", f"{qps:.2f}"] if qps else []),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-d",
            orjson.dumps(targets.REQUEST).decode(),
            url + targets.PATH,
        ]
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return load.parse_hey(done.stdout, workers)


class BatchLoad:
    """Publishes envelopes at `rate`/s to NATS in a background thread and counts the answers."""

    def __init__(self, requests: str, responses: str, stream: str, rate: float) -> None:
        self.requests, self.responses, self.stream, self.rate = requests, responses, stream, rate
        self.sent = 0
        self.publish_errors = 0
        self.answered: set[str] = set()
        self.duplicates = 0
        self.statuses: collections.Counter[int | None] = collections.Counter()
        self.error: str | None = None
        self._stop = threading.Event()
        self._drain_until = math.inf
        self._thread = threading.Thread(target=self._main, name="soak-batch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, drain: float) -> None:
        """Stop publishing; wait at most `drain` s for the answers still outstanding."""
        self._drain_until = time.monotonic() + drain
        self._stop.set()
        self._thread.join(drain + 15)

    def _main(self) -> None:
        try:
            batch._run(self._loop())
        except Exception as exc:  # reported in the figures, the HTTP part goes on
            self.error = repr(exc)

    async def _loop(self) -> None:
        import nats

        client = await nats.connect(batch.NATS_URL)
        js = client.jetstream()
        pull = await js.pull_subscribe(self.responses, durable="soak", stream=self.stream)
        window = asyncio.Semaphore(batch.PUBLISH_WINDOW)
        pending: set[asyncio.Task] = set()

        async def publish(index: int) -> None:
            try:
                await js.publish(self.requests, batch.envelope(index, "soak"), timeout=30)
            except Exception:
                self.publish_errors += 1
            finally:
                window.release()

        async def publisher() -> None:
            started = time.monotonic()
            while not self._stop.is_set():
                due = int((time.monotonic() - started) * self.rate)
                while self.sent < due and not self._stop.is_set():
                    await window.acquire()
                    task = asyncio.create_task(publish(self.sent))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    self.sent += 1
                await asyncio.sleep(0.01)
            if pending:
                await asyncio.wait(pending, timeout=30)

        async def collector() -> None:
            while True:
                outstanding = self.sent - self.publish_errors - len(self.answered)
                if self._stop.is_set() and (outstanding <= 0 or time.monotonic() > self._drain_until):
                    return
                try:
                    messages = await pull.fetch(512, timeout=1)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                for message in messages:
                    answer = orjson.loads(message.data)
                    custom_id = (answer.get("metadata") or {}).get("custom_id")
                    if custom_id in self.answered:
                        self.duplicates += 1
                    else:
                        self.answered.add(custom_id)
                        self.statuses[answer.get("status_code")] += 1
                    await message.ack()

        try:
            await asyncio.gather(publisher(), collector())
        finally:
            await client.close()


def run(workdir: Path, seconds: float = 300.0, slice_s: float = SLICE_S) -> dict:
    """The soak: capacity first, then `seconds` of mixed load in slices; the figures."""
    if not batch._reachable(batch.NATS_URL):
        raise RuntimeError(f"no NATS server at {batch.NATS_URL}")
    unique = uuid.uuid4().hex[:8]
    req, resp = f"soak.{unique}.req", f"soak.{unique}.resp"
    req_stream, resp_stream = f"SOAKREQ_{unique}", f"SOAKRESP_{unique}"
    servers: list[targets.Server] = []
    figures: dict = {"seconds": seconds, "slice_s": slice_s, "handlers": HANDLERS}
    try:
        backend = targets.nginx_backend(workdir)
        servers.append(backend)
        asyncio.run(batch._nats_setup(resp, resp_stream))
        env = {
            "NATS_SERVER_URL": batch.NATS_URL,
            "MESSENGER_URLS": f"nats://{req}?stream={req_stream}|nats://{resp}|{HANDLERS}",
        }
        lingo = targets.lingo("lingo-soak", workdir, targets.static_models(backend.url), env=env)
        servers.append(lingo)
        pid = lingo.process.pid
        figures["rss_idle_mb"] = round(targets.status_value(pid, "VmRSS") / MB, 1)

        _hey_rate(lingo.url, 1, 16, 0)  # warm up
        capacity = _hey_rate(lingo.url, 5, 64, 0)
        figures["capacity_rps"] = round(capacity.rps, 1)
        http_target = HTTP_SHARE * capacity.rps
        qps = http_target / HTTP_WORKERS
        batch_rate = BATCH_SHARE * capacity.rps
        figures["http_target_rps"] = round(http_target, 1)
        figures["batch_target_msgs_per_s"] = round(batch_rate, 1)
        print(
            f"capacity (hey -c64, 5 s): {capacity.rps:.0f} req/s → HTTP {http_target:.0f} req/s "
            f"({HTTP_WORKERS} workers at {qps:.1f}), batch {batch_rate:.0f} msg/s, {seconds:g} s",
            flush=True,
        )

        rss_start = targets.status_value(pid, "VmRSS")
        figures["rss_start_mb"] = round(rss_start / MB, 1)
        load_batch = BatchLoad(req, resp, resp_stream, batch_rate)
        load_batch.start()
        slices: list[dict] = []
        began = time.monotonic()
        count = max(1, math.ceil(seconds / slice_s - 1e-9))
        try:
            for index in range(count):
                length = min(slice_s, seconds - index * slice_s)
                cpu, t0 = batch.cpu_seconds(pid), time.monotonic()
                result = _hey_rate(lingo.url, length, HTTP_WORKERS, qps)
                busy = (batch.cpu_seconds(pid) - cpu) / (time.monotonic() - t0)
                rss = targets.status_value(pid, "VmRSS")
                row = {
                    "t_s": round(time.monotonic() - began, 1),
                    "http_rps": round(result.rps, 1),
                    "p50_ms": round(result.p50_ms, 2),
                    "p99_ms": round(result.p99_ms, 2),
                    "http_requests": result.requests,
                    "http_errors": result.errors,
                    "batch_sent": load_batch.sent,
                    "batch_answered": len(load_batch.answered),
                    "rss_mb": round(rss / MB, 1),
                    "lingo_cpu": round(busy, 2),
                }
                slices.append(row)
                print(
                    f"slice {index + 1}/{count} t={row['t_s']:.0f}s: {row['http_rps']:.0f} req/s "
                    f"p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms, errors {row['http_errors']}; "
                    f"batch {row['batch_sent']} sent / {row['batch_answered']} answered; "
                    f"RSS {row['rss_mb']:.1f} MB, lingo CPU {busy:.0%}",
                    flush=True,
                )
                if load_batch.error:
                    print(f"   batch publisher failed: {load_batch.error}", flush=True)
        finally:
            elapsed = time.monotonic() - began
            load_batch.stop(DRAIN_S)
        rss_end = targets.status_value(pid, "VmRSS")
        sent, answered = load_batch.sent, len(load_batch.answered)
        figures.update(
            {
                "elapsed_s": round(elapsed, 1),
                "rss_end_mb": round(rss_end / MB, 1),
                "rss_max_mb": round(max([rss_end, rss_start, *(s["rss_mb"] * MB for s in slices)]) / MB, 1),
                "rss_peak_hwm_mb": round(targets.status_value(pid, "VmHWM") / MB, 1),
                "http_requests": sum(s["http_requests"] for s in slices),
                "http_errors": sum(s["http_errors"] for s in slices),
                "http_rps_mean": round(sum(s["http_requests"] for s in slices) / elapsed, 1)
                if elapsed
                else None,
                "batch_sent": sent,
                "batch_publish_errors": load_batch.publish_errors,
                "batch_answered": answered,
                "batch_missing": sent - answered,
                "batch_duplicates": load_batch.duplicates,
                "batch_statuses": {str(k): v for k, v in sorted(load_batch.statuses.items(), key=str)},
                "batch_non_200": sum(v for k, v in load_batch.statuses.items() if k != 200),
                "batch_msgs_per_s": round(sent / elapsed, 1) if elapsed else None,
                "batch_error": load_batch.error,
                "slices": slices,
            }
        )
        first, last = slices[0]["p99_ms"], slices[-1]["p99_ms"]
        figures["p99_first_ms"], figures["p99_last_ms"] = first, last
        figures["p99_last_vs_first"] = round(last / first, 2) if first else None
        grew = figures["rss_end_mb"] - figures["rss_start_mb"]
        figures["rss_growth_mb"] = round(grew, 1)
        figures["verdict"] = (
            f"RSS grew {grew:+.1f} MB over {elapsed / 60:.1f} min "
            f"({figures['rss_start_mb']:.1f} → {figures['rss_end_mb']:.1f} MB, "
            f"max {figures['rss_max_mb']:.1f}); "
            f"p99 last/first slice {figures['p99_last_vs_first']}x; "
            f"{figures['http_errors']} HTTP errors; batch {answered}/{sent} answered, "
            f"{figures['batch_missing']} missing, {figures['batch_non_200']} non-200"
        )
        print(figures["verdict"], flush=True)
    finally:
        for server in reversed(servers):
            server.stop()
        with contextlib.suppress(Exception):
            asyncio.run(batch._nats_cleanup(req_stream, resp_stream))
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="soak duration (default 300)")
    parser.add_argument("--slice", type=float, default=SLICE_S, help="seconds per hey slice (default 30)")
    args = parser.parse_args(argv)
    targets.raise_nofile()
    targets.pin(targets.LOAD_CORES)
    return run(Path(tempfile.mkdtemp(prefix="lingo-bench-soak-")), args.seconds, args.slice)


if __name__ == "__main__":
    print(orjson.dumps(main(), option=orjson.OPT_INDENT_2).decode())
