"""A fake Kubernetes API server for tests (see :mod:`tests.fakekube.server`)."""

from tests.fakekube.server import (
    ANY,
    RESOURCES,
    ApiError,
    Call,
    FakeKube,
    FieldSelector,
    LabelSelector,
    ResourceType,
    deployment,
    endpoint_slice,
    json_patch,
    merge_patch,
)

__all__ = [
    "ANY",
    "RESOURCES",
    "ApiError",
    "Call",
    "FakeKube",
    "FieldSelector",
    "LabelSelector",
    "ResourceType",
    "deployment",
    "endpoint_slice",
    "json_patch",
    "merge_patch",
]
