"""Who announces a VIP (vsop.kube.announce): one node's state per object, the controller's announcedBy,
the BGP sessions a NodeReport carries, and the report patch that writes them only when they change."""

from __future__ import annotations

from typing import Any

import pytest

from vsop.api.errors import InvalidInput
from vsop.bgp.render import render_bird
from vsop.bgp.sessions import Session
from vsop.kube.announce import EVERY_NODE, announced_by, bgp_state, object_state, session_entries, sessions_up
from vsop.kube.report import new_report, sessions_of, with_node_fields
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
    assert with_node_fields(None, {"bgpSessions": sessions}, {"bgpSessions": list(sessions)}) is None
    patch = with_node_fields(None, {}, {"bgpSessions": sessions})
    assert patch == {"status": {"virtualServices": {}, "bgpSessions": sessions}}
    assert with_node_fields({"status": {"virtualServices": {"a/b": None}}}, {"bgpSessions": sessions}, {"bgpSessions": None}) == {
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
    from vsop.api.speaker import parse_bgp_speaker
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


class Secrets:
    """A SecretReader on a dict: name -> data (plain text, encoded as the API serves it) or an HTTP status."""

    def __init__(self, found: dict[str, Any]):
        self.found = found
        self.asked: list[tuple[str, str]] = []

    async def read_secret(self, namespace: str, name: str) -> tuple[int, Any]:
        import base64

        self.asked.append((namespace, name))
        data = self.found.get(name, 404)
        if isinstance(data, int):
            return data, f"secrets \"{name}\" is not allowed"
        return 200, {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}


def secret_speaker(*refs: tuple[str, str]) -> Any:
    from vsop.api.speaker import parse_bgp_speaker

    return parse_bgp_speaker({"apiVersion": "vsop.dev/v1alpha1", "kind": "BGPSpeaker", "metadata": {"name": "edge"},
                              "spec": {"localASN": 65001, "routerID": "10.0.0.11", "peers": [
                                  {"address": f"10.99.0.{i + 2}", "asn": 65000, "passwordSecretRef": {"name": name, "key": key}}
                                  for i, (name, key) in enumerate(refs)]}})


def test_a_peers_secret_is_read_in_the_agents_namespace_when_named_and_again_a_resync_period_later() -> None:
    import asyncio

    from vsop.kube.speakers import SpeakerPasswords

    secrets = Secrets({"bgp": {"r1": "s3cret-One", "r2": "s3cret-Two\n"}})
    now = [0.0]
    passwords = SpeakerPasswords(secrets, "vsop-ns", refresh_seconds=30, clock=lambda: now[0])
    speaker = secret_speaker(("bgp", "r1"), ("bgp", "r2"))
    book = asyncio.run(passwords.take(speaker))
    assert book is not None
    conf = render_bird(speaker, password_of=book)
    assert 'password "s3cret-One";' in conf and 'password "s3cret-Two";' in conf  # a trailing newline (echo > file) dropped
    assert "s3cret" not in repr(book) and "s3cret" not in str(book)
    assert secrets.asked == [("vsop-ns", "bgp")]  # one GET for both keys
    now[0] = 29.9
    asyncio.run(passwords.take(speaker))
    assert secrets.asked == [("vsop-ns", "bgp")]  # known: not read again before a resync period
    secrets.found["bgp"] = {"r1": "s3cret-New", "r2": "s3cret-Two"}
    now[0] = 30.0
    again = asyncio.run(passwords.take(speaker))
    assert again != book and 'password "s3cret-New";' in render_bird(speaker, password_of=again)
    assert asyncio.run(passwords.take(None)) is None and len(secrets.asked) == 2


@pytest.mark.parametrize(("found", "ref", "says"), [
    ({}, ("bgp", "r1"), "Secret vsop-ns/bgp not found (create it: kubectl -n vsop-ns create secret generic bgp"),
    ({"bgp": {"r2": "s3cret-Two"}}, ("bgp", "r1"), "the Secret bgp has no key 'r1' (its keys: r2)"),
    ({"bgp": 403}, ("bgp", "r1"), "Secret vsop-ns/bgp cannot be read: forbidden"),
    ({"bgp": {"r1": 's3cret "quoted"'}}, ("bgp", "r1"), "the password must be 1-80 printable ASCII"),
])
def test_a_peer_whose_secret_or_key_is_missing_is_never_rendered_and_the_reason_names_no_value(found: dict[str, Any], ref: tuple[str, str],
                                                                                                 says: str) -> None:
    import asyncio

    from vsop.kube.speakers import SpeakerPasswords

    speaker = secret_speaker(ref)
    book = asyncio.run(SpeakerPasswords(Secrets(found), "vsop-ns").take(speaker))
    with pytest.raises(InvalidInput) as failure:
        render_bird(speaker, password_of=book)  # type: ignore[arg-type]
    (error,) = failure.value.errors
    assert (error.obj, error.path) == ("edge", "spec.peers[0].passwordSecretRef") and says in error.reason, error.reason
    assert "s3cret" not in str(failure.value)


def test_the_agents_namespace_is_the_pods_then_the_service_accounts(tmp_path: Any) -> None:
    from vsop.kube.speakers import own_namespace

    account = tmp_path / "namespace"
    assert own_namespace({"POD_NAMESPACE": "vsop-ns"}, account) == "vsop-ns"
    assert own_namespace({}, account) == "vsop-system"
    account.write_text("from-token\n")
    assert own_namespace({}, account) == "from-token"
