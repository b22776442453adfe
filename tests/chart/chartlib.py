"""Helpers of the chart tests: paths, the helm binary, and readers of rendered manifests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lingo"
VALUES_DIR = Path(__file__).parent / "values"
RELEASE = "edge"
NAMESPACE = "models"
KUBE_VERSION = "1.30"

Manifests = list[dict]


def helm_path() -> Path:
    """`$HELM`, else the copy scripts/get-helm.sh puts in .cache/bin; fails (never skips) when absent."""
    path = Path(os.environ.get("HELM") or ROOT / ".cache" / "bin" / "helm")
    if not os.access(path, os.X_OK):
        pytest.fail(f"helm not found at {path}: run scripts/get-helm.sh (make test runs it) or set $HELM")
    return path


def template_args(*values_files: Path, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    for path in values_files:
        args += ["--values", str(path)]
    return [*args, *extra]


def only(manifests: Manifests, kind: str) -> dict:
    """The one manifest of a kind; fails when there is none or more than one."""
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def lingo_container(manifests: Manifests) -> dict:
    containers = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "lingo")


def env_of(manifests: Manifests) -> dict[str, dict]:
    """The lingo container's env as name -> EnvVar."""
    return {e["name"]: e for e in lingo_container(manifests)["env"]}


def plain_env(manifests: Manifests, pod_name: str = "edge-lingo-abc12") -> dict[str, str]:
    """The env a pod would see: plain values, the downward API resolved, Secrets as placeholders."""
    result = {}
    for name, var in env_of(manifests).items():
        if "value" in var:
            result[name] = var["value"]
        elif "fieldRef" in var.get("valueFrom", {}):
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            result[name] = {"metadata.namespace": NAMESPACE, "metadata.name": pod_name}[path]
        else:
            result[name] = f"secret:{var['valueFrom']['secretKeyRef']['name']}"
    return result
