"""docs/configuration.md lists every setting as lingo/config.py declares it; values.yaml explains each key."""

from __future__ import annotations

import re

import yaml
from chartlib import CHART, ROOT

from lingo import config

DOCS = ROOT / "docs" / "configuration.md"
INSTALL = ROOT / "docs" / "install.md"

# values.yaml keys holding Kubernetes objects passed through as they are: their fields are Kubernetes'
# own and are not commented one by one.
PASSTHROUGH = {"podSecurityContext", "securityContext", "resources", "hosts"}


def table_rows(text: str, heading: str) -> list[list[str]]:
    """Cells of the table under a `## heading`, header and separator left out; `\\|` stays in a cell."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows[2:]]


def code(cell: str) -> str:
    """The text of a cell that is one `code span`, '' for '(empty)'."""
    return "" if cell == "(empty)" else cell.strip("`")


def values_keys(cell: str) -> list[str]:
    """Dotted values keys named in a cell, e.g. `config.maxWait`."""
    keys = re.findall(r"`([a-z][A-Za-z]*(?:\.[A-Za-z]+)*)`", cell)
    return [key for key in keys if "." in key or key in ("replicaCount", "extraEnv")]


def has_key(values: dict, dotted: str) -> bool:
    node = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_setting_is_documented_as_declared():
    text = DOCS.read_text()
    rows = {code(row[0]): row for row in table_rows(text, "`lingo serve`")}
    assert set(rows) == {s.flag for s in config.SETTINGS}, "docs table and SETTINGS differ"
    for setting in config.SETTINGS:
        _flag, env, default, _values_key, meaning = rows[setting.flag]
        assert code(env) == setting.env, setting.flag
        assert code(default) == setting.default, f"{setting.flag}: docs say {default}"
        assert meaning, setting.flag
        assert setting.env in text and setting.flag in text


def test_values_keys_named_in_the_docs_exist():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = DOCS.read_text()
    named = [
        key
        for heading in ("`lingo serve`", "Broker and cloud environment")
        for row in table_rows(text, heading)
        for key in values_keys(row[-2])
    ]
    assert "config.concurrency" in named
    missing = [key for key in named if not has_key(values, key)]
    assert not missing, f"docs name values keys the chart does not have: {missing}"


def test_install_guide_links_exist():
    text = INSTALL.read_text()
    assert "helm install" in text
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in link:
            assert (INSTALL.parent / link).resolve().exists(), link
    for example in re.findall(r"examples/[\w.-]+\.yaml", text):
        assert (ROOT / example).exists(), example


def test_every_values_key_has_a_comment():
    lines = (CHART / "values.yaml").read_text().splitlines()
    key_line = re.compile(r"^(\s*)(?:- )?([A-Za-z][\w.-]*):")
    uncommented, passthrough_indent = [], None
    for number, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        if passthrough_indent is not None and indent > passthrough_indent:
            continue
        passthrough_indent = indent if match.group(2) in PASSTHROUGH else None
        previous = next((p.strip() for p in reversed(lines[:number]) if p.strip()), "")
        if not previous.startswith("#"):
            uncommented.append(f"{number + 1}: {line.strip()}")
    assert not uncommented, "values.yaml keys without a comment:\n" + "\n".join(uncommented)
