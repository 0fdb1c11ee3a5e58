"""Model and API server (schema + CEL) on generated objects: the same verdict, for the same field.

The corpus holds the cases someone thought of; this draws specs from pools of values
around every rule's edges (both sides of each bound, each enum and a value outside it,
port names and numbers, address spellings, combinations of forwarding, ports, backends
and serviceRef) and requires the agreement of tests/crd/test_cel.py on each. Derandomized:
the same examples every run, so a failure reproduces.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SEED
from tests.crd import apiserver
from tests.crd.test_cel import ADDRESSES, same_field
from vsop.api.errors import InvalidInput
from vsop.api.model import parse_virtual_service

V4 = [a for a in ADDRESSES if ":" not in a][:14] + ["192.168.2.111", "10.1.2.3", "169.254.3.4"]
V6 = [a for a in ADDRESSES if ":" in a] + ["fd00::1:2", "2001:db8::2"]
GOOD4, GOOD6 = ["10.1.2.3", "192.168.2.111", "169.254.11.2"], ["fd00::1:2", "2001:db8::2", "fd00::11"]


def edge(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly good values, sometimes one beyond a rule: few errors per object, so each verdict is sharp."""
    return st.integers(0, 24).flatmap(lambda i: st.sampled_from(bad) if i == 0 else st.sampled_from(good))


ports = st.fixed_dictionaries(
    {"port": edge([1, 80, 443, 65535], [0, 65536])},
    optional={
        "protocol": edge(["TCP", "UDP", "SCTP"], ["ICMP"]),
        "name": edge(["http", "https", "a"], ["HTTP", "-a"]),
        "targetPort": edge([80, 8080, 1, 65535, "http", "metrics"], [0, 70000, "Bad_Name", "a" * 64]),
    },
)
backends = st.fixed_dictionaries(
    {"address": edge(GOOD4 + GOOD6, V4 + V6)},
    optional={"port": edge([80, 8080], [0]), "weight": edge([0, 1, 65535], [-1, 65536])},
)
health = st.fixed_dictionaries(
    {"type": edge(["none", "tcp", "http"], ["icmp"])},
    optional={"intervalSeconds": edge([1, 2, 3], [0, 3601]), "timeoutSeconds": edge([1, 2, 3], [0]),
              "path": edge(["/", "/healthz"], ["healthz"]), "expectStatus": edge([200, 204], [99, 600])},
)
requirement = st.fixed_dictionaries(
    {"key": edge(["zone"], [""]), "operator": edge(["In", "NotIn", "Exists", "DoesNotExist"], ["Equals"])},
    optional={"values": st.lists(edge(["a", "b"], ["v" * 64]), max_size=2)},
)
specs = st.fixed_dictionaries(
    {"vip": edge(GOOD4 + GOOD6, V4 + V6), "ports": st.lists(ports, min_size=1, max_size=3)},
    optional={
        "backends": st.lists(backends, max_size=3),
        "serviceRef": edge([{"name": "web"}], [{"name": "Web"}]),
        "forwarding": edge(["masq", "route", "tunnel"], ["nat"]),
        "scheduler": edge(["rr", "mh"], ["roundrobin"]),
        "healthCheck": health,
        "mode": st.sampled_from(["ipvs", "keepalived"]),
        "announce": st.sampled_from(["none", "vrrp", "bgp"]),
        "vrrp": st.fixed_dictionaries({"interface": edge(["eth0"], ["eth 0"]), "virtualRouterID": edge([1, 51], [256])}),
        "nodeSelector": st.fixed_dictionaries({}, optional={"matchExpressions": st.lists(requirement, max_size=2)}),
        "persistence": st.fixed_dictionaries({"timeoutSeconds": edge([0, 300], [31536001])}),
    },
)


def model_verdict(doc: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        parse_virtual_service(doc)
    except InvalidInput as exc:
        return [(e.path, e.reason) for e in exc.errors]
    return []


# Model errors the CRD cannot make (tests/crd/test_cel.py's MODEL_ONLY), by their reason.
MODEL_ONLY_REASONS = ("duplicate backend",)


@settings(max_examples=1000, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(specs)
def test_generated_objects_get_the_same_verdict(spec: dict[str, Any]) -> None:
    doc = {**copy.deepcopy(SEED), "spec": spec}
    model = model_verdict(doc)
    refusals = apiserver.admit(doc)[1]
    shown = [str(r) for r in refusals]
    if not model:
        assert refusals == [], f"model accepts, API server refuses: {shown}"
    for path, reason in model:
        if not reason.startswith(MODEL_ONLY_REASONS):
            assert any(same_field(r.path, path) for r in refusals), f"model refuses {path} ({reason}); API server: {shown or 'accepts'}"


def test_the_generator_reaches_both_verdicts() -> None:
    verdicts: set[bool] = set()

    @settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(specs)
    def collect(spec: dict[str, Any]) -> None:
        verdicts.add(not model_verdict({**copy.deepcopy(SEED), "spec": spec}))

    collect()
    assert verdicts == {True, False}
