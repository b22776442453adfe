"""The Kubernetes platform: models are annotated Deployments, endpoints come from EndpointSlices,
replicas change through the scale subresource, and several lingo replicas share the work (one
leader scales, on the demand of all). See docs/kubernetes.md."""

from lingo.platforms.kubernetes.platform import KubernetesPlatform

__all__ = ["KubernetesPlatform"]
