"""The examples are valid Kubernetes objects that lingo can use, and the Pub/Sub values file renders."""

from __future__ import annotations

import tomllib

import kubernetes_validate
import pytest
import yaml
from chartlib import KUBE_VERSION, ROOT, env_of

from lingo.platforms.kubernetes.discovery import Defaults, read_deployment

EXAMPLES = ROOT / "examples"
MODEL_FILES = ["fake-model.yaml", "vllm.yaml", "ollama.yaml"]
ANNOTATION = "lingo.substratus.ai/"


def load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((EXAMPLES / name).read_text()) if doc]


def models(name: str) -> list[tuple[dict, dict]]:
    """(Deployment, the Service lingo reads its endpoints from) for each model in an example file."""
    docs = load(name)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    result = []
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        annotations = deployment["metadata"]["annotations"]
        service_name = annotations.get(ANNOTATION + "service", deployment["metadata"]["name"])
        assert service_name in services, f"{name}: no Service {service_name}"
        result.append((deployment, services[service_name]))
    assert result, f"{name} has no model"
    return result


@pytest.mark.parametrize("name", MODEL_FILES)
def test_examples_are_valid_kubernetes(name):
    for doc in load(name):
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} at {list(exc.path)}: {exc.message}")


@pytest.mark.parametrize("name", MODEL_FILES)
def test_models_have_the_annotations_and_a_matching_service(name):
    for deployment, service in models(name):
        annotations = deployment["metadata"]["annotations"]
        assert annotations[ANNOTATION + "models"].split(",")[0]
        low, high = (
            int(annotations[ANNOTATION + "min-replicas"]),
            int(annotations[ANNOTATION + "max-replicas"]),
        )
        assert 0 <= low <= high
        assert int(annotations[ANNOTATION + "concurrency"]) >= 1
        pod = deployment["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        container_ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
        assert service["spec"]["ports"][0]["targetPort"] in container_ports
        assert all("readinessProbe" in c for c in pod["spec"]["containers"]), "ready must mean able to answer"


def test_one_example_names_a_service_other_than_the_deployment():
    pairs = [pair for name in MODEL_FILES for pair in models(name)]
    assert any(d["metadata"]["name"] != s["metadata"]["name"] for d, s in pairs)


def test_fake_model_runs_the_lingo_image():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    ((deployment, _service),) = models("fake-model.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"lingo:{version}"
    assert "command" not in container, "keep the image's `lingo` entrypoint"
    assert container["args"][:3] == ["fake-model", "--port", "8000"]
    assert [p["containerPort"] for p in container["ports"]] == [8000]


def test_pubsub_values_render_a_batch_setup(render):
    manifests = render(EXAMPLES / "values-pubsub.yaml")
    env = env_of(manifests)
    requests, responses, handlers = env["MESSENGER_URLS"]["value"].split("|")
    assert requests.startswith("gcppubsub://projects/") and "/subscriptions/" in requests
    assert responses.startswith("gcppubsub://projects/") and "/topics/" in responses
    assert int(handlers) > 0
    account = next(m for m in manifests if m["kind"] == "ServiceAccount")
    assert "iam.gke.io/gcp-service-account" in account["metadata"]["annotations"]
    for manifest in manifests:
        if manifest["kind"] != "ServiceMonitor":  # a CRD: no schema in kubernetes-validate
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_load_balancing_annotations_in_examples_are_ones_lingo_accepts(name):
    for deployment, _ in models(name):
        model, problems = read_deployment(deployment, Defaults(concurrency=100, scale_down_delay=30))
        assert model is not None and problems == [], problems
    strategies = {
        d["metadata"]["annotations"].get(ANNOTATION + "load-balancing")
        for n in MODEL_FILES
        for d, _ in models(n)
    }
    assert {"prefix", "least-load"} <= strategies, "the examples show both strategies"
