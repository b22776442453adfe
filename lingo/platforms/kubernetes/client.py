"""Connecting to the API server: in-cluster config inside a pod, else a kubeconfig file."""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration

from lingo import __version__
from lingo.config import ConfigError


def kubeconfig_path(environ: dict[str, str] | None = None) -> str:
    """KUBECONFIG (read now, not at import like kubernetes_asyncio does), else ~/.kube/config."""
    env = os.environ if environ is None else environ
    return env.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


async def connect(identity: str, kubeconfig: str | None = None) -> ApiClient:
    """An API client: from `kubeconfig` when given, else in-cluster when KUBERNETES_SERVICE_HOST is
    set, else from KUBECONFIG or ~/.kube/config. Its User-Agent names this replica, so API server
    audit logs (and the tests) can tell lingo replicas apart."""
    configuration = Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            await config.load_kube_config(
                config_file=kubeconfig or kubeconfig_path(),
                client_configuration=configuration,
                persist_config=False,
            )
    except (config.ConfigException, OSError) as error:
        raise ConfigError(
            f"cannot configure the Kubernetes client: {error} (run inside a cluster, or set KUBECONFIG)"
        ) from None
    client = ApiClient(configuration)
    client.user_agent = f"lingo/{__version__} ({identity})"
    return client
