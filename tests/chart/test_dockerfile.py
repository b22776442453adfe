"""The Dockerfile (no Docker engine here): non-root numeric user, `lingo serve` entrypoint, the four ports."""

from __future__ import annotations

import fnmatch
import json

import yaml
from chartlib import CHART, ROOT


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    result, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
            pending = ""
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    start = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[start:]


def last(word: str) -> str:
    return [args for w, args in final_stage() if w == word][-1]


def test_base_image_is_python_3_11_slim():
    for word, args in instructions():
        if word == "FROM":
            assert args.split()[0] == "python:3.11-slim"


def test_runs_as_a_non_root_numeric_user():
    user = last("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, user
    security = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
    assert security["runAsUser"] == int(uid), "the chart should run as the image's user"


def test_entrypoint_is_lingo_serve():
    assert json.loads(last("ENTRYPOINT")) == ["lingo"]
    assert json.loads(last("CMD")) == ["serve"]


def test_exposes_the_four_ports():
    exposed = {int(p.split("/")[0]) for w, args in final_stage() if w == "EXPOSE" for p in args.split()}
    assert exposed == {8080, 8081, 8082, 8083}


def test_installs_the_package_from_the_source_tree():
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert "pip install" in runs and " ." in runs
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for word, args in instructions():
        if word != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), (
                f"{source} is dockerignored"
            )
