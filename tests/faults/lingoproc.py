"""`lingo serve` as a child process, so a test can read its memory from /proc while attacking it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lingo.platforms.local import die_with_parent
from tests.conftest import free_port


class LingoProcess:
    """One `lingo serve` process on free 127.0.0.1 ports, with the given models file and settings."""

    def __init__(self, workdir: Path, models_yaml: str, env: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        models = workdir / "models.yaml"
        models.write_text(models_yaml)
        #: Port of the OpenAI-compatible proxy.
        self.port = free_port()
        #: Port of /healthz.
        self.health_port = free_port()
        #: Output of the process (shown when a test fails).
        self.log = workdir / "lingo.log"
        settings = {
            "LINGO_PLATFORM": "local",
            "LINGO_MODELS_FILE": str(models),
            "LINGO_PROXY_ADDRESS": f"127.0.0.1:{self.port}",
            "HEALTH_PROBE_BIND_ADDRESS": f"127.0.0.1:{self.health_port}",
            "METRICS_BIND_ADDRESS": f"127.0.0.1:{free_port()}",
            "LINGO_STATS_ADDRESS": f"127.0.0.1:{free_port()}",
            "LINGO_LOG_LEVEL": "warning",
            "LINGO_LOG_DIR": str(workdir / "replicas"),
            "LINGO_SHUTDOWN_GRACE": "1s",
            **env,
        }
        with open(self.log, "ab") as output:
            #: The running process.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lingo", "serve"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **settings},
                preexec_fn=die_with_parent,
            )

    def wait_ready(self, timeout: float = 20.0) -> LingoProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lingo exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise TimeoutError(f"lingo not ready within {timeout}s")

    def memory(self, key: str = "VmRSS") -> int:
        """Bytes of `key` (VmRSS, VmHWM) from /proc/PID/status."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {key} in /proc/{self.process.pid}/status")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def lingo_process(tmp_path: Path) -> Iterator:
    """`lingo_process(models_yaml, **env)` → a ready `LingoProcess`, stopped after the test."""
    started: list[LingoProcess] = []

    def start(models_yaml: str, **env: str) -> LingoProcess:
        process = LingoProcess(tmp_path / f"lingo-{len(started)}", models_yaml, env)
        started.append(process)
        return process.wait_ready()

    yield start
    for process in started:
        process.stop()
