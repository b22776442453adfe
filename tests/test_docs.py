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
