"""Finding the API server: kubeconfig from KUBECONFIG, in-cluster config inside a pod."""

from __future__ import annotations

import pytest

from lingo import __version__
from lingo.config import ConfigError
from lingo.platforms.kubernetes.client import connect
from tests.fakekube import FakeKube


async def test_kubeconfig_comes_from_the_KUBECONFIG_variable_read_at_connect_time(
    fake: FakeKube, kubeconfig: str, monkeypatch
):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    api = await connect("lingo-7")
    try:
        assert api.configuration.host == fake.url
        assert api.user_agent == f"lingo/{__version__} (lingo-7)"
    finally:
        await api.close()


async def test_a_missing_kubeconfig_is_a_configuration_error_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="KUBECONFIG"):
        await connect("x")


async def test_inside_a_cluster_the_service_account_is_used(monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    # No service account token is mounted here: the in-cluster loader was the one tried.
    with pytest.raises(ConfigError, match=r"[Ss]ervice token"):
        await connect("x")
