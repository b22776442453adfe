"""Docs that point at tests must point at tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_named_in_the_lessons_page_exists() -> None:
    text = (ROOT / "docs" / "lessons.md").read_text()
    references = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert references
    missing = []
    for path, name in references:
        source = ROOT / path
        if not source.exists() or (name and f"def {name}(" not in source.read_text()):
            missing.append(f"{path}::{name}" if name else path)
    assert not missing, f"docs/lessons.md names tests that do not exist: {missing}"


#: Where users read: every doc, and the code and tests they may open.
READ_BY_USERS = [
    ROOT / "README.md",
    ROOT / "Makefile",
    ROOT / "Dockerfile",
    *(ROOT / "docs").glob("*.md"),
    *(ROOT / "charts").rglob("*.*"),
    *(ROOT / "lingo").rglob("*.py"),
    *(ROOT / "tests").rglob("*.py"),
    *(ROOT / "benchmarks").rglob("*.py"),
    *(ROOT / "scripts").rglob("*.sh"),
]
#: References to the design notes of the project's authors, which users do not have.
PRIVATE_REFERENCES = re.compile(r"SPEC\s*§|\.\./shared/|LESSONS\.md")


def test_nothing_points_at_files_users_do_not_have() -> None:
    found = []
    for path in READ_BY_USERS:
        if path.is_file():
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if PRIVATE_REFERENCES.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "references to files users do not have:\n" + "\n".join(found)


def test_batch_retry_backoff_is_documented_as_the_code_does_it() -> None:
    import inspect

    from lingo.backoff import backoff_delay
    from lingo.batch.handler import RetryPolicy

    policy = RetryPolicy()
    jitter = inspect.signature(backoff_delay).parameters["jitter"].default
    [row] = [
        line
        for line in (ROOT / "docs" / "batch.md").read_text().splitlines()
        if "502/503/504, or 429" in line
    ]
    assert (
        f"({policy.base:g} s, {2 * policy.base:g} s, {4 * policy.base:g} s, … up to {policy.cap:g} s" in row
    )
    assert f"`max_attempts` (default {policy.max_attempts})" in row
    # The pause is drawn from the upper `jitter` share of its step: "upper half" is jitter 0.5.
    assert jitter == 0.5 and "upper half" in row and "±" not in row
    assert backoff_delay(3, policy.base, policy.cap, random_fraction=lambda: 0.0) == 2 * policy.base


def test_min_replicas_above_max_is_documented_as_the_code_does_it() -> None:
    from lingo.platforms.kubernetes.discovery import MAX_REPLICAS, MIN_REPLICAS, Defaults, read_deployment

    deployment = {
        "metadata": {
            "name": "m",
            "annotations": {"lingo.substratus.ai/models": "m", MIN_REPLICAS: "5", MAX_REPLICAS: "2"},
        }
    }
    model, problems = read_deployment(deployment, Defaults(concurrency=1, scale_down_delay=30))
    assert model is not None and problems
    assert (model.group.min_replicas, model.group.max_replicas) == (2, 2)
    text = " ".join((ROOT / "docs" / "kubernetes.md").read_text().split())
    assert (
        "a `min-replicas` above `max-replicas` is logged the same way and lowered to `max-replicas`" in text
    )


def test_idle_stop_times_in_the_readme_match_the_demo_and_the_defaults() -> None:
    from lingo import demo
    from lingo.config import SETTINGS, parse_duration

    default = {
        s.name: parse_duration(s.default) for s in SETTINGS if s.name.startswith(("autoscaling", "scale"))
    }
    text = " ".join((ROOT / "README.md").read_text().split())
    assert f"~{demo.idle_stop_seconds('fake-chat'):g} s after the last one the replica stops again" in text
    assert f"demo's {demo.AUTOSCALING_WINDOW:g} s autoscaling window" in text
    window, delay = default["autoscaling_time_window"], default["scale_down_delay"]
    assert f"defaults, {window:g} s + {delay:g} s" in text


def test_held_requests_peak_rss_quoted_anywhere_is_the_measured_one() -> None:
    bench = (ROOT / "docs" / "benchmarks.md").read_text()
    measured = re.search(r"lingo RSS idle → peak \(VmHWM\) \| (\d+) → (\d+) MB", bench)
    assert measured, "the cold-start block of docs/benchmarks.md has no peak RSS row"
    idle, peak = measured.groups()
    readme = (ROOT / "README.md").read_text()
    quoted = re.search(r"10,000 requests held during a cold start \| all 200, (\d+) MB peak RSS", readme)
    assert quoted, "the README's figures table has no held-requests row"
    assert quoted.group(1) == peak, "README and docs/benchmarks.md give different peaks"
    for page in ("lessons.md", "benchmarks.md"):
        prose = (ROOT / "docs" / page).read_text().split("<!-- bench:begin", 1)[0]
        sentences = re.split(r"(?<=\.)\s|\|", " ".join(prose.split()))
        about_holding = [x for x in sentences if "peak" in x or "held" in x]
        quoted_mb = {mb for sentence in about_holding for mb in re.findall(r"(\d+) MB", sentence)}
        assert quoted_mb <= {idle, peak, "200"}, f"docs/{page} quotes an RSS the bench did not measure"
