"""The chart lints, renders valid Kubernetes 1.30 manifests for every values set, and has the right shape."""

from __future__ import annotations

import json
import tomllib

import kubernetes_validate
import pytest
import yaml
from chartlib import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    ROOT,
    VALUES_DIR,
    env_of,
    lingo_container,
    only,
    template_args,
)

VALUES_SETS = sorted(path.stem for path in VALUES_DIR.glob("*.yaml"))

# CRDs: kubernetes-validate ships schemas for built-in kinds only, so these are checked by the
# assertions below instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

PORTS = {"http": 8080, "health": 8081, "metrics": 8082, "stats": 8083}


def test_helm_lint_strict(helm):
    for values in [None, *sorted(VALUES_DIR.glob("*.yaml"))]:
        args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
        result = helm(*args, *(["--values", str(values)] if values else []))
        assert result.returncode == 0, f"helm lint {values or ''}:\n{result.stdout}\n{result.stderr}"


def test_every_values_set_renders_the_core_resources(rendered):
    assert set(rendered) == set(VALUES_SETS)
    for name, manifests in rendered.items():
        kinds = {m["kind"] for m in manifests}
        assert {"ServiceAccount", "Role", "RoleBinding", "Service", "Deployment"} <= kinds, name
        for manifest in manifests:
            assert manifest["metadata"]["namespace"] == NAMESPACE, (name, manifest["kind"])


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_manifests_are_valid_kubernetes(rendered, values_set):
    for manifest in rendered[values_set]:
        if (manifest["apiVersion"], manifest["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = f"{values_set}: {manifest['kind']} {manifest['metadata']['name']} at {list(exc.path)}"
            pytest.fail(f"{where}: {exc.message}")


def test_chart_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


def test_image_defaults_to_the_app_version(rendered):
    assert lingo_container(rendered["defaults"])["image"] == "lingo:0.1.0"
    assert lingo_container(rendered["defaults"])["args"] == ["serve"]


def test_namespace_and_pod_name_come_from_the_downward_api(rendered):
    for manifests in rendered.values():
        env = env_of(manifests)
        assert env["NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["LINGO_PLATFORM"]["value"] == "kubernetes"


def test_ports_and_probes(rendered):
    container = lingo_container(rendered["defaults"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == PORTS
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert (live["path"], by_name[live["port"]]) == ("/healthz", 8081)
    assert (ready["path"], by_name[ready["port"]]) == ("/readyz", 8081)
    env = env_of(rendered["defaults"])
    assert env["LINGO_PROXY_ADDRESS"]["value"] == ":8080"
    assert env["HEALTH_PROBE_BIND_ADDRESS"]["value"] == ":8081"
    assert env["METRICS_BIND_ADDRESS"]["value"] == ":8082"
    assert env["LINGO_STATS_ADDRESS"]["value"] == ":8083"


def test_security_context_and_writable_tmp(rendered):
    deployment = only(rendered["defaults"], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = lingo_container(rendered["defaults"])
    context = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_service_ports_and_peer_service(rendered):
    for manifests in rendered.values():
        service = only(manifests, "Service")
        deployment = only(manifests, "Deployment")
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
        assert ports["metrics"] == (8082, "metrics")
        assert ports["stats"] == (8083, "stats")
        assert ports["http"][1] == "http"
        assert env_of(manifests)["LINGO_PEER_SERVICE"]["value"] == service["metadata"]["name"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
    assert only(rendered["defaults"], "Service")["metadata"]["name"] == f"{RELEASE}-lingo"
    assert {p["name"]: p["port"] for p in only(rendered["defaults"], "Service")["spec"]["ports"]}[
        "http"
    ] == 80
    assert {p["name"]: p["port"] for p in only(rendered["ingress"], "Service")["spec"]["ports"]}[
        "http"
    ] == 8000


def test_role_rules_are_exactly_rbac_rules_yaml(rendered):
    expected = yaml.safe_load((CHART / "rbac-rules.yaml").read_text())["rules"]
    for manifests in rendered.values():
        role, binding = only(manifests, "Role"), only(manifests, "RoleBinding")
        assert role["rules"] == expected
        account = only(manifests, "ServiceAccount")["metadata"]["name"]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
        pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account


def test_termination_grace_is_longer_than_the_drain(rendered):
    for name, manifests in rendered.items():
        env = env_of(manifests)
        drain = float(env["LINGO_SHUTDOWN_DELAY"]["value"]) + float(env["LINGO_SHUTDOWN_GRACE"]["value"])
        period = only(manifests, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert period > drain, name
    assert (
        only(rendered["ha"], "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 150
    )


def test_a_termination_grace_not_above_the_drain_is_refused(helm):
    result = helm(*template_args(extra=("--set", "terminationGracePeriodSeconds=30")))
    assert result.returncode != 0
    assert "must be larger than config.shutdownDelaySeconds + config.shutdownGraceSeconds" in result.stderr


def test_a_misspelt_values_key_is_refused_by_the_schema(helm):
    result = helm(*template_args(extra=("--set", "config.concurency=5")))
    assert result.returncode != 0
    assert "concurency" in result.stderr


def test_pod_disruption_budget_only_with_several_replicas(rendered):
    assert not [m for m in rendered["defaults"] if m["kind"] == "PodDisruptionBudget"]
    pdb = only(rendered["ha"], "PodDisruptionBudget")
    deployment = only(rendered["ha"], "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_scheduling_values_reach_the_pod(rendered):
    pod = only(rendered["ha"], "Deployment")["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"example.com/team": "ml"}
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"
    assert "podAntiAffinity" in pod["spec"]["affinity"]


def test_service_monitor_and_workload_identity(rendered):
    manifests = rendered["servicemonitor"]
    monitor = only(manifests, "ServiceMonitor")
    service = only(manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    annotations = only(manifests, "ServiceAccount")["metadata"]["annotations"]
    assert annotations == {
        "iam.gke.io/gcp-service-account": "lingo@my-project.iam.gserviceaccount.com",
        "example.com/owner": "ml-platform",
    }
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in env_of(manifests)
    assert not [m for m in rendered["defaults"] if m["kind"] == "ServiceMonitor"]


def test_ingress_routes_to_the_service(rendered):
    manifests = rendered["ingress"]
    ingress, service = only(manifests, "Ingress"), only(manifests, "Service")
    assert service["metadata"]["name"] == "llm-gateway"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    assert path["backend"]["service"] == {"name": "llm-gateway", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "llm-tls"
    assert not [m for m in rendered["defaults"] if m["kind"] == "Ingress"]


def test_notes_tell_how_to_reach_the_proxy_and_metrics(helm):
    result = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"port-forward service/{RELEASE}-lingo 8080:80" in notes
    assert "/v1/models" in notes
    assert "8082" in notes and "/metrics" in notes


def test_dashboard_and_alert_rules_are_off_by_default(rendered):
    kinds = {m["kind"] for m in rendered["defaults"]}
    assert "PrometheusRule" not in kinds and "ConfigMap" not in kinds


def test_dashboard_is_a_configmap_grafana_loads(rendered):
    config_map = only(rendered["monitoring"], "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    dashboard = json.loads(config_map["data"]["lingo.json"])
    assert dashboard["uid"] == "lingo" and dashboard["panels"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "model"}
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def test_alert_rules_have_their_durations_severity_and_texts(rendered):
    rule = only(rendered["monitoring"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    [group] = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {
        "LingoModelCannotStart",
        "LingoRequestsRejected",
        "LingoBatchRedeliveries",
        "LingoBatchBacklogGrowing",
    }
    assert alerts["LingoModelCannotStart"]["for"] == "20m"  # from the values set
    assert alerts["LingoRequestsRejected"]["for"] == "10m"  # the chart's default
    for name, alert in alerts.items():
        assert alert["expr"] and alert["labels"] == {"severity": "warning"}, name
        assert set(alert["annotations"]) == {"summary", "description"}, name
