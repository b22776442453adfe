"""The chart sets every lingo setting from values, and what it sets parses with lingo's own config code."""

from __future__ import annotations

import dataclasses

import pytest
from chartlib import NAMESPACE, RELEASE, env_of, plain_env

from lingo import config

# Settings the chart does not render, and why.
NOT_IN_CHART = {
    "LINGO_MODELS_FILE": "models file of the local platform; the chart runs the kubernetes platform",
    "LINGO_LOG_DIR": "output folder of local replicas; local platform only",
}

# Settings the chart renders only when a values key asks for them: env -> values set that does.
ONLY_WHEN_SET = {
    "LINGO_API_KEYS": "apikeys",  # from apiKeys.existingSecret; without it the check is off
    "LINGO_DATABASE_URL": "database",  # from database.existingSecret; without it SQLite on the data volume
}

# What the chart decides itself, whatever the values: these differ from the code's defaults on purpose.
FIXED_BY_CHART = {
    "platform",
    "namespace",
    "peer_service",
    "pod_name",
    "lease_name",
    "state_configmap",
    "data_dir",  # the mount point of the data volume
}


def load(manifests) -> config.Settings:
    """The settings a lingo pod started from this Deployment would run with."""
    try:
        return config.load(environ=plain_env(manifests))
    except config.ConfigError as exc:
        pytest.fail(f"the chart renders a setting lingo refuses: {exc}")


def test_every_setting_is_rendered(rendered):
    assert set(NOT_IN_CHART).isdisjoint(ONLY_WHEN_SET)
    names = {s.env for s in config.SETTINGS}
    assert set(NOT_IN_CHART) | set(ONLY_WHEN_SET) <= names, "exemption of a setting that does not exist"
    missing = names - set(NOT_IN_CHART) - set(ONLY_WHEN_SET) - set(env_of(rendered["defaults"]))
    assert not missing, f"settings not rendered by the chart: {sorted(missing)}"
    for env, values_set in ONLY_WHEN_SET.items():
        assert env not in env_of(rendered["defaults"])
        assert env in env_of(rendered[values_set])
    for env in NOT_IN_CHART:
        assert all(env not in env_of(manifests) for manifests in rendered.values())


def test_every_values_set_renders_settings_lingo_accepts(rendered):
    for manifests in rendered.values():
        load(manifests)


def test_chart_defaults_are_the_code_defaults(rendered):
    from_chart = dataclasses.asdict(load(rendered["defaults"]))
    from_code = dataclasses.asdict(config.load(environ={}))
    for name in FIXED_BY_CHART:
        del from_chart[name], from_code[name]
    assert from_chart == from_code


def test_fixed_settings(rendered):
    settings = load(rendered["defaults"])
    assert settings.platform == "kubernetes"
    assert settings.namespace == NAMESPACE
    assert settings.peer_service == f"{RELEASE}-lingo"
    assert settings.pod_name == "edge-lingo-abc12"
    assert settings.lease_name == f"{RELEASE}-lingo-leader"
    assert settings.state_configmap == f"{RELEASE}-lingo-autoscaler"


def test_each_config_value_reaches_its_setting(rendered):
    settings = load(rendered["batch"])
    assert settings.concurrency == 7
    assert settings.scale_down_delay == 120
    assert settings.backend_retries == 3
    assert settings.autoscaling_interval == 5
    assert settings.autoscaling_time_window == 90
    assert settings.max_queue == 250000
    assert settings.max_wait == 1200
    assert settings.max_body == 134217728
    assert settings.shutdown_grace == 90
    assert settings.log_level == "DEBUG"
    assert settings.lease_name == "batch-leader"
    assert settings.state_configmap == "batch-state"
    assert settings.messenger_error_max_backoff == 300
    assert settings.messengers == [
        "gcppubsub://projects/my-project/subscriptions/lingo-requests"
        "|gcppubsub://projects/my-project/topics/lingo-responses|100",
        "nats://lingo.requests?stream=LINGO&consumer=lingo|nats://lingo.responses|2000000",
        "rabbit://lingo-requests|rabbit://lingo-responses",
    ]


def test_broker_servers_and_google_credentials_from_secrets(rendered):
    manifests = rendered["batch"]
    env = env_of(manifests)
    assert env["NATS_SERVER_URL"]["valueFrom"] == {"secretKeyRef": {"name": "nats-server", "key": "address"}}
    # The Secret wins over a URL in values.
    assert env["RABBIT_SERVER_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "rabbit-server", "key": "amqp-url"}
    }
    assert env["PUBSUB_EMULATOR_HOST"]["value"] == "pubsub-emulator:8085"
    path = env["GOOGLE_APPLICATION_CREDENTIALS"]["value"]
    pod = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "pubsub-credentials"
    assert path.endswith("/service-account.json")
    for name in ("NATS_SERVER_URL", "RABBIT_SERVER_URL", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert name not in env_of(rendered["defaults"])


def test_broker_server_url_from_values(render):
    manifests = render(extra=("--set", "messenger.nats.url=nats://nats:4222"))
    assert env_of(manifests)["NATS_SERVER_URL"] == {"name": "NATS_SERVER_URL", "value": "nats://nats:4222"}


def test_api_keys_from_an_existing_secret(rendered):
    var = env_of(rendered["apikeys"])["LINGO_API_KEYS"]
    assert var["valueFrom"] == {"secretKeyRef": {"name": "lingo-api-keys", "key": "keys"}}
