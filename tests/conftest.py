"""Shared test helpers: building VirtualServices from small dicts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vsop.api.model import VirtualService, parse_virtual_service

SEED: dict[str, Any] = {
    "apiVersion": "vsop.dev/v1alpha1",
    "kind": "VirtualService",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "vip": "169.254.11.2",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        "backends": [{"address": "192.168.2.111"}, {"address": "192.168.2.222"}],
    },
}


def make_vs(name: str = "web", namespace: str = "default", created: str | None = None, **spec: Any) -> VirtualService:
    doc = copy.deepcopy(SEED)
    doc["metadata"] = {"name": name, "namespace": namespace}
    if created:
        doc["metadata"]["creationTimestamp"] = created
    doc["spec"].update(spec)
    return parse_virtual_service(doc)


@pytest.fixture
def seed_doc() -> dict[str, Any]:
    return copy.deepcopy(SEED)
