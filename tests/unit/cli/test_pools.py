"""`vsop pools`: VipPool manifests covering today's VirtualServices, valid, exact, and read from a kubectl listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vsop.api.model import parse_virtual_service
from vsop.api.pools import parse_vip_pool
from vsop.cli.main import main
from vsop.core.claims import covering_pools, vip_not_allowed

LISTING = """\
apiVersion: v1
kind: List
items:
- apiVersion: vsop.dev/v1alpha1
  kind: VirtualService
  metadata: {name: web, namespace: team-a, uid: abc, resourceVersion: "5"}
  spec: {vip: 192.0.2.10, ports: [{port: 80}], backends: [{address: 10.0.0.5}]}
  status: {conditions: [{type: Ready, status: "True", reason: Ok, lastTransitionTime: "2024-01-01T00:00:00Z"}]}
- apiVersion: vsop.dev/v1alpha1
  kind: VirtualService
  metadata: {name: meta, namespace: infra}
  spec: {vip: 169.254.169.254, ports: [{port: 80}], backends: [{address: 10.0.0.5}]}
- apiVersion: vsop.dev/v1alpha1
  kind: VirtualService
  metadata: {name: web6, namespace: team-a}
  spec: {vip: "fd00::0010", ports: [{port: 443}], backends: [{address: "fd00::5"}]}
"""


def test_the_pools_grant_each_namespace_exactly_its_vips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listing = tmp_path / "vs.yaml"
    listing.write_text(LISTING)
    assert main(["pools", "-f", str(listing)]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [(d["metadata"]["name"], d["spec"]["addresses"], d["spec"]["serviceAllocation"]["namespaces"], d["spec"]["autoAssign"]) for d in docs] == [
        ("upgrade-infra", ["169.254.169.254"], ["infra"], False),
        ("upgrade-team-a", ["192.0.2.10", "fd00::10"], ["team-a"], False),
    ]
    pools = [parse_vip_pool(d) for d in docs]
    # Under the pool rule every object keeps its VIP, the metadata address included, and nothing more is granted.
    for doc in yaml.safe_load(LISTING)["items"]:
        vs = parse_virtual_service(doc)
        assert vip_not_allowed(vs.spec.vip, vs.metadata.namespace, pools, None) is None
    assert vip_not_allowed("192.0.2.10", "team-b", pools, None) is not None
    assert vip_not_allowed("192.0.2.11", "team-a", pools, None) is not None
    assert main(["pools", "-f", str(listing), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == docs


def test_many_vips_are_split_over_pools_of_64() -> None:
    services = [parse_virtual_service({"apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService",
                                       "metadata": {"name": f"s{i}", "namespace": "big"},
                                       "spec": {"vip": f"10.1.{i // 200}.{i % 200 + 1}", "ports": [{"port": 80}], "backends": [{"address": "10.9.0.1"}]}})
                for i in range(130)]
    pools = covering_pools(services)
    assert [(p["metadata"]["name"], len(p["spec"]["addresses"])) for p in pools] == [("upgrade-big", 64), ("upgrade-big-2", 64), ("upgrade-big-3", 2)]
    for pool in pools:
        parse_vip_pool(pool)
