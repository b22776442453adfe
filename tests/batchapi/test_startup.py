"""A database lingo cannot use fails `lingo serve` at start-up with one line naming the setting."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://db/lingo", "invalid LINGO_DATABASE_URL='mysql://db/lingo'"),
        # Nothing listens there; the password is never printed.
        (
            "postgresql://lingo:s3cret@127.0.0.1:{port}/lingo",
            "cannot open LINGO_DATABASE_URL='postgresql://lingo:***@127.0.0.1:",
        ),
    ],
)
async def test_lingo_serve_refuses_a_database_it_cannot_use_in_one_line(
    tmp_path: Path, url: str, shown: str
) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text("models:\n  - name: x\n    endpoints: ['http://127.0.0.1:9']\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lingo",
        "serve",
        *("--platform", "local", "--models-file", str(models_file)),
        *("--proxy-address", "127.0.0.1:0", "--health-probe-bind-address", "127.0.0.1:0"),
        *("--metrics-bind-address", "127.0.0.1:0", "--stats-address", "127.0.0.1:0"),
        *("--database-url", url.format(port=free_port())),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    report = stderr.decode()
    assert process.returncode == 2, report
    assert shown in report and "s3cret" not in report
    assert "Traceback" not in report
