"""The pure parts of the kube layer: EndpointSlices and Nodes into core types, and the status arithmetic."""

from __future__ import annotations

from vsop.core.desired import Endpoint, EndpointPort
from vsop.kube import endpoints as eps
from vsop.kube.status import Facts, node_reason, summarize, transition_events, with_transition_times

PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}, {"port": None, "protocol": "UDP"}]
HTTP = (EndpointPort("http", 8080, "TCP"),)


def slice_of(*endpoints: dict, address_type: str = "IPv4") -> dict:
    return {"addressType": address_type, "endpoints": list(endpoints), "ports": PORTS,
            "metadata": {"namespace": "web", "labels": {"kubernetes.io/service-name": "nginx"}}}


def test_endpoint_conditions_follow_the_api_defaults() -> None:
    found = eps.slice_endpoints(slice_of(
        {"addresses": ["10.1.0.1", "10.1.0.99"]},  # no conditions: ready (and serving)
        {"addresses": ["10.1.0.2"], "conditions": {"ready": False}},  # serving follows ready
        {"addresses": ["10.1.0.3"], "conditions": {"ready": False, "serving": True, "terminating": True}},
        {"addresses": ["not-an-ip"]},
        {"addresses": []},
    ))
    assert found == (
        Endpoint("10.1.0.1", HTTP, ready=True, serving=True, terminating=False),
        Endpoint("10.1.0.2", HTTP, ready=False, serving=False, terminating=False),
        Endpoint("10.1.0.3", HTTP, ready=False, serving=True, terminating=True),
    )
    assert eps.slice_endpoints(slice_of({"addresses": ["web.example"]}, address_type="FQDN")) == ()
    assert eps.slice_service(slice_of()) == ("web", "nginx")
    assert eps.slice_service({"metadata": {"labels": {}}}) is None


def test_an_endpoint_names_the_node_its_pod_runs_on() -> None:
    found = eps.slice_endpoints(slice_of({"addresses": ["10.1.0.1"], "nodeName": "node-a"}, {"addresses": ["10.1.0.2"], "nodeName": ""}))
    assert [(e.address, e.node_name) for e in found] == [("10.1.0.1", "node-a"), ("10.1.0.2", None)]


def test_an_endpoint_in_two_slices_counts_once_at_its_best() -> None:
    terminating = Endpoint("10.1.0.1", HTTP, ready=False, serving=True, terminating=True)
    ready = Endpoint("10.1.0.1", HTTP)
    other = Endpoint("10.1.0.2", HTTP, ready=False, serving=False)
    assert eps.merge_endpoints([(terminating, other), (ready,)]) == (ready, other)


def test_node_addresses_are_the_ips_the_api_reports() -> None:
    node = {"status": {"addresses": [
        {"type": "InternalIP", "address": "10.0.0.11"}, {"type": "ExternalIP", "address": "2001:db8::0011"},
        {"type": "Hostname", "address": "node-a"}, {"type": "InternalIP", "address": "10.0.0.11"},
    ]}, "metadata": {"labels": {"zone": "a"}}}
    assert eps.node_addresses(node) == ("10.0.0.11", "2001:db8::11")
    assert eps.node_labels(node) == {"zone": "a"}


def entry(programmed: bool = True, healthy: int = 2, message: str = "", generation: int = 3) -> dict:
    return {"programmed": programmed, "backends": {"total": 2, "healthy": healthy}, "message": message, "observedGeneration": generation}


def by_type(conditions: tuple) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def test_summary_of_nodes() -> None:
    summary = summarize(Facts(3, expected=("a", "b"), nodes={"a": entry(), "b": entry(healthy=1), "gone": entry()},
                              known_nodes=frozenset({"a", "b"})))
    assert by_type(summary.conditions) == {
        "Ready": ("True", "Ready"), "Programmed": ("True", "Programmed"),
        "Degraded": ("False", "AsExpected"), "Conflict": ("False", "NoConflict"),
    }
    assert summary.backends == {"total": 2, "healthy": 1} and summary.stale == ("gone",)
    assert all(c["observedGeneration"] == 3 for c in summary.conditions)

    assert by_type(summarize(Facts(3)).conditions)["Programmed"] == ("False", "NoMatchingNodes")
    failing = summarize(Facts(3, expected=("a", "b"), nodes={"a": entry(), "b": entry(False, 0, "KernelError: EINVAL")}))
    assert by_type(failing.conditions)["Degraded"] == ("True", "KernelError")
    assert by_type(failing.conditions)["Ready"] == ("True", "Ready")  # a's VIP serves
    mixed = summarize(Facts(3, expected=("a", "b"), nodes={"a": entry(False, 0, "VIPRefused: x"), "b": entry(False, 0, "oops")}))
    assert by_type(mixed.conditions)["Degraded"] == ("True", "NodeErrors")
    assert by_type(mixed.conditions)["Ready"] == ("False", "NotProgrammed")
    invalid = summarize(Facts(3, invalid="spec is invalid: spec.vip: nope", expected=("a",), nodes={"a": entry(message="InvalidSpec: ...")}))
    assert by_type(invalid.conditions) == {
        "Ready": ("False", "InvalidSpec"), "Programmed": ("False", "InvalidSpec"),
        "Degraded": ("True", "InvalidSpec"), "Conflict": ("False", "NoConflict"),
    }


def test_traffic_policy_local_nodes_without_a_local_endpoint_are_programmed_and_say_so() -> None:
    none_here = entry(True, 0, "NoLocalEndpoints: trafficPolicy Local: no ready endpoint ...")
    some = summarize(Facts(3, expected=("a", "b"), nodes={"a": none_here, "b": entry(True, 1)}))
    assert by_type(some.conditions)["Ready"] == ("True", "Ready") and by_type(some.conditions)["Degraded"] == ("False", "AsExpected")
    assert some.backends == {"total": 2, "healthy": 1}  # b's, not the minimum with a's none
    nowhere = summarize(Facts(3, expected=("a", "b"), nodes={"a": none_here, "b": none_here}))
    assert by_type(nowhere.conditions)["Ready"] == ("False", "NoLocalEndpoints")
    assert by_type(nowhere.conditions)["Degraded"] == ("True", "NoLocalEndpoints")
    assert by_type(nowhere.conditions)["Programmed"] == ("True", "Programmed")


def test_transition_times_and_events() -> None:
    old = [{"type": "Ready", "status": "True", "reason": "Ready", "message": "x", "lastTransitionTime": "T1"},
           {"type": "Conflict", "status": "False", "reason": "NoConflict", "message": "", "lastTransitionTime": "T1"}]
    new = [{"type": "Ready", "status": "True", "reason": "Ready", "message": "y"},
           {"type": "Conflict", "status": "True", "reason": "Conflict", "message": "claimed by a/b"}]
    stamped = with_transition_times(new, old, "T2")
    assert [c["lastTransitionTime"] for c in stamped] == ["T1", "T2"]
    assert [(e.type, e.reason) for e in transition_events(old, stamped)] == [("Warning", "Conflict")]
    assert transition_events(stamped, stamped) == []


def test_node_reason() -> None:
    assert node_reason("VIPRefused: VIP 10.0.0.1 is ...") == "VIPRefused"
    assert node_reason("the kernel said: no") == ""
    assert node_reason("") == ""
