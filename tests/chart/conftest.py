"""Fixtures of the chart tests: the real helm binary and the chart rendered once per values set."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from chartlib import VALUES_DIR, Manifests, helm_path, template_args


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs helm with its own config/cache folders; returns the finished process (check it yourself)."""
    binary = helm_path()
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    return run


@pytest.fixture(scope="session")
def render(helm) -> Callable[..., Manifests]:
    """Renders the chart with values files and extra helm args; fails the test on a helm error."""

    def run(*values_files: Path, extra: tuple[str, ...] = ()) -> Manifests:
        result = helm(*template_args(*values_files, extra=extra))
        if result.returncode != 0:
            pytest.fail(f"helm template failed:\n{result.stderr}")
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return run


@pytest.fixture(scope="session")
def rendered(render) -> dict[str, Manifests]:
    """Every values set in tests/chart/values, by file stem, rendered once per session (in parallel)."""
    files = sorted(VALUES_DIR.glob("*.yaml"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip((f.stem for f in files), pool.map(render, files), strict=True))
