"""Who announces a VIP (vsop.kube.announce): one node's state per object, the controller's announcedBy,
the BGP sessions a NodeReport carries, and the report patch that writes them only when they change."""

from __future__ import annotations

from vsop.bgp.sessions import Session
from vsop.kube.announce import EVERY_NODE, announced_by, bgp_state, object_state, session_entries, sessions_up
from vsop.kube.report import new_report, sessions_of, with_sessions
from vsop.kube.status import Facts, NodeEntry, normalize_node_status, summarize

UP = Session("vsop_peer_1", "10.0.0.1", 65000, "up", "Established", "07:00", "")
DOWN = Session("vsop_peer_2", "10.0.1.1", None, "start", "Active", "07:00", "Hold timer expired " + "x" * 400)


def test_a_nodes_state_for_each_kind_of_announcement() -> None:
    assert object_state("vrrp", "192.0.2.1", False, {"192.0.2.1": "master"}, None) == "master"
    assert object_state("vrrp", "192.0.2.2", False, {"192.0.2.1": "master"}, None) == "unknown"
    assert object_state("vrrp", "192.0.2.1", False, None, None) is None  # keepalived's transitions not read here
    assert object_state("none", "192.0.2.1", True, {}, True) is None
    assert [bgp_state(True, True), bgp_state(True, None), bgp_state(True, False), bgp_state(False, True)] == [
        "announced", "announced", "nosession", "withdrawn"]
    assert sessions_up(None) is None and sessions_up([DOWN]) is False and sessions_up([DOWN, UP]) is True


def test_sessions_are_bounded_in_the_report() -> None:
    entries = session_entries([UP, DOWN] * 20)
    assert len(entries) == 32
    assert entries[0] == {"peer": "10.0.0.1", "up": True, "bgpState": "Established", "asn": 65000}
    assert "asn" not in entries[1] and len(entries[1]["lastError"]) == 256


def test_announced_by_names_the_announcing_nodes_bounded() -> None:
    nodes = [f"node-{i}" for i in range(8)]
    assert announced_by("vrrp", {"node-1": "backup", "node-2": "master"}, nodes, True) == "node-2"
    assert announced_by("vrrp", {"node-1": "master", "node-2": "master"}, nodes, True) == "node-1, node-2"  # two masters: shown
    assert announced_by("vrrp", {"node-1": "fault"}, nodes, True) == "none"
    assert announced_by("vrrp", {}, nodes, True) is None and announced_by("none", {"node-1": "master"}, nodes, True) is None
    every = dict.fromkeys(nodes, "announced")
    assert announced_by("bgp", every, nodes, True) == EVERY_NODE
    assert announced_by("bgp", every, nodes, False) == "node-0, node-1, node-2, node-3, node-4 and 3 more"
    assert announced_by("bgp", {**every, "node-7": "withdrawn"}, nodes, True) == "node-0, node-1, node-2, node-3, node-4 and 2 more"
    assert announced_by("bgp", {"node-0": "announced", "gone": "announced"}, ["node-0"], True) == EVERY_NODE  # programmed nodes only


def test_the_controller_sums_up_the_entries() -> None:
    def entry(announced: str) -> dict[str, object]:
        return NodeEntry(True, 1, 1, "", 3, announced).as_status()

    facts = Facts(generation=3, expected=("a", "b"), nodes={"a": entry("backup"), "b": entry("master")}, announce="vrrp")
    assert summarize(facts).announced_by == "b"
    stale = Facts(generation=4, expected=("a", "b"), nodes={"a": entry("backup"), "b": entry("master")}, announce="vrrp")
    assert summarize(stale).announced_by is None  # entries of another generation say nothing
    assert normalize_node_status(entry("master"))["announced"] == "master"  # type: ignore[index]
    assert "announced" not in NodeEntry(True).as_status()


def test_sessions_are_written_when_they_change_and_read_back() -> None:
    sessions = session_entries([UP])
    assert with_sessions(None, sessions, list(sessions)) is None
    patch = with_sessions(None, None, sessions)
    assert patch == {"status": {"virtualServices": {}, "bgpSessions": sessions}}
    assert with_sessions({"status": {"virtualServices": {"a/b": None}}}, sessions, None) == {
        "status": {"virtualServices": {"a/b": None}, "bgpSessions": None}}
    body = new_report("node-a", patch)
    assert sessions_of(body) == sessions and sessions_of(new_report("node-a", {"status": {"virtualServices": {}}})) is None


def test_a_node_is_drained_when_cordoned_or_excluded_from_load_balancers() -> None:
    from vsop.kube.endpoints import node_draining

    assert not node_draining({"metadata": {"labels": {"a": "b"}}, "spec": {}})
    assert node_draining({"spec": {"unschedulable": True}})
    assert node_draining({"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": ""}}})
    assert not node_draining({"spec": {"unschedulable": False}})


def test_the_speaker_for_a_node_and_its_router_id() -> None:
    import pytest

    from vsop.api.errors import InvalidInput
    from vsop.api.speaker import parse_bgp_speaker
    from vsop.bgp.render import render_bird
    from vsop.kube.speakers import choose

    def speaker(name: str, created: str, labels: dict[str, str], router_id: str | None = None) -> object:
        spec = {"localASN": 65001, "nodeSelector": {"matchLabels": labels}, "peers": [{"address": "10.99.0.2", "asn": 65000}]}
        if router_id:
            spec["routerID"] = router_id
        return parse_bgp_speaker({"apiVersion": "vsop.dev/v1alpha1", "kind": "BGPSpeaker",
                                  "metadata": {"name": name, "creationTimestamp": created}, "spec": spec})

    old, new, elsewhere = speaker("old", "2026-01-01T00:00:00Z", {}), speaker("new", "2026-02-01T00:00:00Z", {}), speaker("b", "2025-01-01T00:00:00Z", {"zone": "b"})
    chosen, router_id, why = choose([new, elsewhere, old], "node-a", {"zone": "a"}, ["fd00::1", "10.0.0.11"])
    assert (chosen, router_id) == (old, "10.0.0.11") and why == "BGPSpeakers old, new all select node node-a; old (the oldest) is used"
    assert choose([elsewhere], "node-a", {}, []) == (None, None, "no BGPSpeaker selects node node-a")
    assert "router id 10.0.0.11;" in render_bird(old, router_id="10.0.0.11")  # type: ignore[arg-type]
    assert "router id 10.5.5.5;" in render_bird(speaker("own", "", {}, "10.5.5.5"), router_id="10.0.0.11")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="spec.routerID: is required on a host"):
        render_bird(old)  # type: ignore[arg-type]


def test_a_speaker_with_a_secret_ref_is_not_used_without_its_password() -> None:
    from vsop.api.speaker import parse_bgp_speaker
    from vsop.kube.speakers import choose

    speaker = parse_bgp_speaker({"apiVersion": "vsop.dev/v1alpha1", "kind": "BGPSpeaker", "metadata": {"name": "edge"},
                                 "spec": {"localASN": 65001, "peers": [{"address": "10.99.0.2", "asn": 65000,
                                                                        "passwordSecretRef": {"name": "bgp", "key": "password"}}]}})
    chosen, _, why = choose([speaker], "node-a", {}, ["10.0.0.11"])
    assert chosen is None and why is not None and "spec.peers[0].passwordSecretRef is not read by the agent yet" in why
