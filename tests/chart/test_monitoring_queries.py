"""Every Grafana dashboard query and every alert rule of the chart, evaluated by a real Prometheus
scraping a real lingo under traffic: none may error or come back empty. The queries are read from the
rendered chart, so they cannot drift from what users install. One model's command cannot start: the
LingoModelCannotStart alert must go pending for it (and only for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from chartlib import only

from lingo.app import Lingo
from lingo.batch.brokers import mem
from tests import conftest
from tests.conftest import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
#: What Grafana's template variables stand for when the queries run here.
VARIABLES = {"$__rate_interval": "15s", "$model": ".*"}
#: Bound of the whole scenario once traffic runs.
DEADLINE = 45.0
ALERTS = {
    "LingoModelCannotStart",
    "LingoRequestsRejected",
    "LingoBatchRedeliveries",
    "LingoBatchBacklogGrowing",
}


def chart_queries(render, tmp_path: Path) -> tuple[dict[str, str], dict]:
    """Dashboard queries by panel and target, and the rules file of the PrometheusRule.

    Every `for:` is one hour here, so alerts that hold stay pending for the whole test."""
    extra = ["--set", "grafanaDashboard.enabled=true", "--set", "prometheusRule.enabled=true"]
    for key in ("modelCannotStart", "requestsRejected", "batchRedeliveries", "batchBacklogGrowing"):
        extra += ["--set", f"prometheusRule.for.{key}=1h"]
    manifests = render(extra=tuple(extra))
    dashboard = json.loads(only(manifests, "ConfigMap")["data"]["lingo.json"])
    queries = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unknown template variable in {expr}"
            queries[f"{panel['title']} [{target['refId']}]"] = expr
    rules = {"groups": only(manifests, "PrometheusRule")["spec"]["groups"]}
    return queries, rules


class Prometheus:
    """A real Prometheus scraping one target every second and evaluating rules every second."""

    def __init__(self, workdir: Path, target: str, rules: dict) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{"job_name": "lingo", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def ready(self, session: aiohttp.ClientSession, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            assert self.process.poll() is None, f"prometheus exited: {self.process.returncode}"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.url + "/-/ready") as r:
                    if r.status == 200:
                        return
            assert loop.time() < deadline, "prometheus not ready in time"
            await asyncio.sleep(0.1)

    async def query(self, session: aiohttp.ClientSession, expr: str) -> list[dict]:
        """The instant vector of `expr`; fails the test on a query error."""
        async with session.get(self.url + "/api/v1/query", params={"query": expr}) as r:
            body = await r.json()
        assert body["status"] == "success", f"{expr}: {body.get('errorType')}: {body.get('error')}"
        assert body["data"]["resultType"] == "vector", expr
        return list(body["data"]["result"])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture
async def monitored(tmp_path: Path, render) -> AsyncIterator[tuple[Lingo, Prometheus, dict[str, str], str]]:
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("prometheus is not installed (scripts/services.sh installs Debian's package)")
    queries, rules = chart_queries(render, tmp_path)
    suffix = uuid.uuid4().hex[:8]
    models = tmp_path / "models.yaml"
    models.write_text(
        textwrap.dedent(f"""
        models:
          - name: chat
            command: [lingo, fake-model, --port, "{{port}}"]
            max_replicas: 1
            concurrency: 4
          - name: broken
            command: [lingo-no-such-model-server-{suffix}, --port, "{{port}}"]
            max_replicas: 1
            concurrency: 1
        """)
    )
    topics = [f"mon-{name}-{suffix}" for name in ("chat-req", "chat-resp", "broken-req", "broken-resp")]
    settings = conftest.test_settings(
        models_file=str(models),
        log_dir=str(tmp_path / "logs"),
        max_wait=3.0,
        scale_down_delay=120.0,  # no flapping of the healthy model between bursts
        messengers=[
            f"mem://{topics[0]}?model=chat|mem://{topics[1]}|4",
            f"mem://{topics[2]}?model=broken|mem://{topics[3]}|1",
        ],
    )
    lingo = Lingo(settings)
    await lingo.start()
    _host, port = lingo.addresses["metrics"]
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{port}", rules)
    try:
        yield lingo, prometheus, queries, suffix
    finally:
        prometheus.stop()
        await lingo.stop()
        for name in topics:
            mem.delete_topic(name)


async def traffic(lingo: Lingo, suffix: str) -> None:
    """Until cancelled: answered and failing HTTP requests, batch messages answered, invalid and retried."""
    chat = mem.topic(f"mon-chat-req-{suffix}")
    broken = mem.topic(f"mon-broken-req-{suffix}")
    pending: set[asyncio.Task[None]] = set()

    async def completion(session: aiohttp.ClientSession, model: str) -> None:
        body = orjson.dumps({"model": model, "prompt": "hi", "max_tokens": 2})
        async with session.post(lingo.url() + "/v1/completions", data=body) as r:
            await r.read()

    async with aiohttp.ClientSession() as session:
        try:
            for tick in range(10_000):
                for model in ("chat", "broken"):  # broken: queued, then 503 after max_wait
                    task = asyncio.create_task(completion(session, model))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                chat.publish(orjson.dumps({"metadata": {}, "body": {"model": "chat", "prompt": "x"}}))
                if tick % 5 == 0:
                    chat.publish(b"not an envelope")
                    # 503 after a second, retried, then answered 503: one message per two seconds at
                    # most on a stream of one handler, while one arrives every second.
                    options = {"timeout_seconds": 1, "max_attempts": 2}
                    body = {"model": "broken", "prompt": "x"}
                    broken.publish(orjson.dumps({"metadata": {}, "body": body, "options": options}))
                await asyncio.sleep(0.2)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def has_data(result: list[dict]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


async def test_every_dashboard_query_and_alert_rule_returns_data_from_a_real_prometheus(monitored) -> None:
    lingo, prometheus, queries, suffix = monitored
    loop = asyncio.get_running_loop()
    load = asyncio.create_task(traffic(lingo, suffix))
    async with aiohttp.ClientSession() as session:
        try:
            await prometheus.ready(session)
            deadline = loop.time() + DEADLINE
            empty = dict(queries)
            pending_alerts: dict[str, set[str]] = {}
            while True:
                for name, expr in list(empty.items()):
                    if has_data(await prometheus.query(session, expr)):
                        del empty[name]
                alerts = await prometheus.query(session, 'ALERTS{alertstate="pending"}')
                pending_alerts = {}
                for sample in alerts:
                    labels = sample["metric"]
                    pending_alerts.setdefault(labels["alertname"], set()).add(
                        labels.get("model") or labels.get("stream", "")
                    )
                # The healthy model may be flagged while it starts; the broken one must stay flagged.
                flagged = pending_alerts.get("LingoModelCannotStart")
                if not empty and set(pending_alerts) == ALERTS and flagged == {"broken"}:
                    break
                if loop.time() > deadline:
                    missing = sorted(ALERTS - set(pending_alerts))
                    pytest.fail(
                        f"empty dashboard queries: {empty}; alerts never pending: {missing};"
                        f" cannot start: {flagged}"
                    )
                await asyncio.sleep(0.5)
        finally:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
        assert "broken" in pending_alerts["LingoRequestsRejected"]
        assert pending_alerts["LingoBatchBacklogGrowing"] == {f"mem://mon-broken-req-{suffix}?model=broken"}
        async with session.get(prometheus.url + "/api/v1/rules") as r:
            groups = (await r.json())["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert {rule["name"] for rule in rules} == ALERTS
        for rule in rules:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
            assert has_data(await prometheus.query(session, rule["query"])), rule["name"]
