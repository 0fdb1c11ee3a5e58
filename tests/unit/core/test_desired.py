"""Desired state: what one node should hold for a set of VirtualServices."""

from __future__ import annotations

from tests.conftest import make_vs
from vsop.core.desired import TCP_LIBERAL_SYSCTL, Endpoint, EndpointPort, Node, desired_state, resolve_conflicts, tcp_liberal
from vsop.core.state import ChainKey, RealServerKey, ServiceKey

NODE = Node("node-a", {"kubernetes.io/hostname": "node-a", "zone": "a"})
WEB = ServiceKey("tcp", "169.254.11.2", 80)


def test_seed_becomes_one_service_two_real_servers_and_set_members() -> None:
    state = desired_state([make_vs()], NODE).state
    assert list(state.services) == [WEB]
    assert state.services[WEB].scheduler == "rr" and state.services[WEB].owner == "default/web"
    assert {(k.address, k.port, v.forwarding, v.weight) for k, v in state.real_servers.items()} == {
        ("192.168.2.111", 8080, "masq", 1),
        ("192.168.2.222", 8080, "masq", 1),
    }
    assert state.addresses == {"169.254.11.2/32"}
    assert state.link is not None and state.link.name == "vsop0"
    assert state.ipsets["VSOP-VIP-PORTS"].members == {"169.254.11.2,tcp:80": "default/web"}
    assert state.ipsets["VSOP-VIPS"].members == {"169.254.11.2": "default/web"}
    assert state.ipsets["VSOP-VIP-PORTS-NOMASQ"].members == {}
    assert state.sysctls["net.ipv4.vs.conntrack"] == "1"
    assert {(j.table, j.chain) for j in state.jumps} == {("nat", "PREROUTING"), ("nat", "OUTPUT"), ("nat", "POSTROUTING"), ("filter", "INPUT"), ("filter", "FORWARD")}


def test_rule_count_is_constant_however_many_services() -> None:
    one = desired_state([make_vs()], NODE).state
    many = desired_state(
        [make_vs(f"s{i}", vip=f"10.50.{i // 250}.{i % 250 + 1}") for i in range(600)], NODE
    ).state
    rules = lambda s: sum(len(r) for r in s.chains.values()) + len(s.jumps)  # noqa: E731
    assert rules(one) == rules(many) == 16  # 11 rules in 5 chains, 5 jumps
    assert len(many.services) == 600 and len(many.ipsets["VSOP-VIP-PORTS"].members) == 600


def test_source_ranges_keep_the_rule_count_from_1_to_1000_vips() -> None:
    """kube-proxy's KUBE-LOAD-BALANCER-FW / -SOURCE-CIDR pair: ranges are set members, never rules."""
    ranges = ["10.0.0.0/8", "192.168.0.0/16"]
    rules = lambda s: {k: len(r) for k, r in s.chains.items()}  # noqa: E731
    without = desired_state([make_vs()], NODE).state
    one = desired_state([make_vs(sourceRanges=ranges)], NODE).state
    many = desired_state([make_vs(f"s{i}", vip=f"10.50.{i // 250}.{i % 250 + 1}", sourceRanges=ranges) for i in range(1000)], NODE).state
    assert rules(without) == rules(one) == rules(many)
    assert without.jumps == one.jumps == many.jumps
    assert len(many.ipsets["VSOP-SRC-FW"].members) == 1000 and len(many.ipsets["VSOP-SRC-CIDR"].members) == 2000
    assert many.chains[ChainKey(4, "filter", "VSOP-FILTER")][0] == (
        "-m set --match-set VSOP-SRC-FW dst,dst -m set ! --match-set VSOP-SRC-CIDR dst,dst,src -j DROP"
    )


def test_invalid_segments_to_a_vip_port_are_dropped_unless_conntrack_is_liberal() -> None:
    """kubernetes#74839: an out-of-window segment is INVALID to conntrack, so MASQUERADE skips it and the
    real server answers the client's own address with a RST. One rule, scoped to masqueraded VIP ports (a
    route or tunnel port has one side of its flows only: conntrack calls them INVALID), ahead of
    the ACCEPT; kube-proxy leaves its rule out when nf_conntrack_tcp_be_liberal is 1, and so does vsop."""
    invalid = "-m set --match-set VSOP-VIP-PORTS dst,dst -m set ! --match-set VSOP-VIP-PORTS-NOMASQ dst,dst -m conntrack --ctstate INVALID -j DROP"
    strict = desired_state([make_vs()], NODE).state.chains[ChainKey(4, "filter", "VSOP-FILTER")]
    assert strict.index(invalid) == 1 and strict[2] == "-m set --match-set VSOP-VIP-PORTS dst,dst -j ACCEPT"
    liberal = desired_state([make_vs()], NODE, liberal=True).state.chains[ChainKey(4, "filter", "VSOP-FILTER")]
    assert liberal == tuple(rule for rule in strict if rule != invalid)
    six = desired_state([make_vs(vip="fd00::2", backends=[{"address": "fd00:1::2", "port": 8080}])], NODE).state.chains[ChainKey(6, "filter", "VSOP-FILTER")]
    assert "-m set --match-set VSOP-VIP-PORTS-V6 dst,dst -m set ! --match-set VSOP-VIP-PORTS-NOMASQ-V6 dst,dst -m conntrack --ctstate INVALID -j DROP" in six
    assert tcp_liberal({TCP_LIBERAL_SYSCTL: "1\n"}) and not tcp_liberal({TCP_LIBERAL_SYSCTL: "0"}) and not tcp_liberal({})


def test_source_ranges_become_members_per_port_and_every_address_is_two_halves() -> None:
    vs = make_vs(ports=[{"port": 80}, {"port": 53, "protocol": "UDP"}], sourceRanges=["10.1.2.3/8", "0.0.0.0/0", "192.0.2.9/32"])
    state = desired_state([vs, make_vs("open", vip="169.254.11.3")], NODE).state
    assert state.ipsets["VSOP-SRC-FW"].members == {"169.254.11.2,tcp:80": "default/web", "169.254.11.2,udp:53": "default/web"}
    assert set(state.ipsets["VSOP-SRC-CIDR"].members) == {
        f"169.254.11.2,{port},{net}" for port in ("tcp:80", "udp:53") for net in ("10.0.0.0/8", "0.0.0.0/1", "128.0.0.0/1", "192.0.2.9")
    }
    v6 = desired_state([make_vs(vip="fd00::11", backends=[{"address": "fd00::2"}], sourceRanges=["::/0", "fd01::1/128"])], NODE).state
    assert set(v6.ipsets["VSOP-SRC-CIDR-V6"].members) == {"fd00::11,tcp:80,::/1", "fd00::11,tcp:80,8000::/1", "fd00::11,tcp:80,fd01::1"}


def test_ipv6_gets_its_own_sets_chains_and_host_prefix() -> None:
    state = desired_state([make_vs(vip="fd00::11", backends=[{"address": "fd00::2"}])], NODE).state
    assert state.addresses == {"fd00::11/128"}
    assert set(state.ipsets) == {"VSOP-VIP-PORTS-V6", "VSOP-VIPS-V6", "VSOP-VIP-PORTS-NOMASQ-V6", "VSOP-SRC-FW-V6", "VSOP-SRC-CIDR-V6"}
    assert {k.family for k in state.chains} == {6}
    assert "net.ipv6.conf.all.forwarding" in state.sysctls
    assert any("icmp6-port-unreachable" in r for rules in state.chains.values() for r in rules)


def test_route_and_unmasqueraded_services_skip_masquerade() -> None:
    state = desired_state(
        [make_vs("dr", forwarding="route", ports=[{"port": 80}]), make_vs("plain", vip="169.254.11.3", masquerade=False)], NODE
    ).state
    assert set(state.ipsets["VSOP-VIP-PORTS-NOMASQ"].members) == {"169.254.11.2,tcp:80", "169.254.11.3,tcp:80"}
    assert {rs.forwarding for rs in state.real_servers.values() if rs.key.service.vip == "169.254.11.2"} == {"route"}
    assert {rs.key.port for rs in state.real_servers.values() if rs.key.service.vip == "169.254.11.2"} == {80}


def test_node_selector_excludes_node() -> None:
    selected = make_vs(nodeSelector={"matchLabels": {"zone": "b"}})
    assert desired_state([selected], NODE).state.services == {}
    assert desired_state([selected], NODE).state.link is None
    assert desired_state([make_vs(nodeSelector={"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]})], NODE).programmed


def test_vip_that_is_a_node_address_is_refused() -> None:
    result = desired_state([make_vs()], NODE, node_addresses=["169.254.11.2", "10.0.0.5"])
    assert result.state.services == {} and result.state.addresses == frozenset()
    assert [(p.obj, p.reason) for p in result.problems] == [("default/web", "VIPRefused")]


def test_a_reserved_address_is_refused_with_whose_it_is_even_with_vrrp() -> None:
    api = {"169.254.11.2": "the Kubernetes API server (endpoint of service default/kubernetes)"}
    vrrp = make_vs(mode="keepalived", announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 51})
    for vs in (make_vs(), vrrp):
        result = desired_state([vs], NODE, reserved=api)
        assert result.state.services == {} and result.state.addresses == frozenset() and not result.programmed
        [problem] = result.problems
        assert problem.reason == "VIPRefused" and problem.message.startswith("VIP 169.254.11.2 is an address of the Kubernetes API server (endpoint")


def test_conflict_older_wins_in_both_orders() -> None:
    old = make_vs("old", created="2026-01-01T00:00:00Z")
    new = make_vs("new", namespace="other", created="2026-02-01T00:00:00Z")
    for order in ([old, new], [new, old]):
        winners, problems = resolve_conflicts(order)
        assert [w.ref for w in winners] == ["default/old"]
        assert problems[0].obj == "other/new" and "default/old" in problems[0].message
    # Different protocol on the same VIP:port is no conflict.
    udp = make_vs("dns", ports=[{"port": 80, "protocol": "UDP"}])
    assert len(resolve_conflicts([old, udp])[0]) == 2


def test_keepalived_mode_keeps_everything_but_ipvs() -> None:
    state = desired_state([make_vs(mode="keepalived")], NODE).state
    assert state.services == {} and state.real_servers == {}
    assert state.addresses == {"169.254.11.2/32"} and state.ipsets["VSOP-VIP-PORTS"].members


def test_service_ref_endpoints_ready_terminating_and_named_ports() -> None:
    vs = make_vs(backends=[], serviceRef={"name": "nginx"}, ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    eps = [
        Endpoint("10.1.0.1", (EndpointPort("web", 8080),), ready=True),
        Endpoint("10.1.0.2", (EndpointPort("web", 8080),), ready=False, serving=True, terminating=True),
        Endpoint("10.1.0.3", (EndpointPort("web", 8080),), ready=False, serving=False),
        Endpoint("fd00::5", (EndpointPort("web", 8080),), ready=True),
    ]
    state = desired_state([vs], NODE, endpoints={("default", "nginx"): eps}).state
    assert {(k.address, k.port, v.weight) for k, v in state.real_servers.items()} == {("10.1.0.1", 8080, 1), ("10.1.0.2", 8080, 0)}


def test_health_takes_real_servers_out_unless_all_fail() -> None:
    vs = make_vs()
    a = RealServerKey(WEB, "192.168.2.111", 8080)
    b = RealServerKey(WEB, "192.168.2.222", 8080)
    one_out = desired_state([vs], NODE, out_of_service=frozenset({a})).state
    assert (one_out.real_servers[a].weight, one_out.real_servers[b].weight) == (0, 1)
    all_out = desired_state([vs], NODE, out_of_service=frozenset({a, b}))
    assert (all_out.state.real_servers[a].weight, all_out.state.real_servers[b].weight) == (1, 1)
    assert [(w.obj, w.reason) for w in all_out.warnings] == [("default/web", "AllBackendsFailing")]
    assert not all_out.problems  # still programmed
    assert desired_state([vs], NODE, out_of_service=frozenset({a})).warnings == ()


def test_nothing_desired_means_nothing_at_all() -> None:
    state = desired_state([], NODE).state
    assert state.link is None and not state.ipsets and not state.chains and not state.jumps and not state.sysctls


def test_conn_reuse_mode_follows_the_kernel_release() -> None:
    assert desired_state([make_vs()], NODE, kernel_version=(6, 1)).state.sysctls["net.ipv4.vs.conn_reuse_mode"] == "1"
    assert desired_state([make_vs()], NODE, kernel_version=(5, 4)).state.sysctls["net.ipv4.vs.conn_reuse_mode"] == "0"
    assert "net.ipv4.vs.conn_reuse_mode" not in desired_state([make_vs()], NODE).state.sysctls


def test_suppress_arp_sets_arp_ignore_and_announce() -> None:
    assert "net.ipv4.conf.all.arp_ignore" not in desired_state([make_vs()], NODE).state.sysctls
    sysctls = desired_state([make_vs(suppressARP=True)], NODE).state.sysctls
    assert (sysctls["net.ipv4.conf.all.arp_ignore"], sysctls["net.ipv4.conf.all.arp_announce"]) == ("1", "2")


def test_unhealthy_udp_real_server_is_removed_not_quiesced() -> None:
    vs = make_vs(ports=[{"port": 53, "protocol": "UDP"}])
    key = ServiceKey("udp", "169.254.11.2", 53)
    out = RealServerKey(key, "192.168.2.111", 53)
    state = desired_state([vs], NODE, out_of_service=frozenset({out})).state
    assert out not in state.real_servers and len(state.real_servers) == 1


def test_vrrp_vips_are_keepalived_s_to_bind_but_keep_sets_and_chains() -> None:
    vs = make_vs(mode="keepalived", announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 51})
    result = desired_state([vs], NODE, node_addresses=["169.254.11.2"])  # this node is the VRRP master
    state = result.state
    assert not result.problems and state.addresses == frozenset() and state.link is None
    assert state.ipsets["VSOP-VIP-PORTS"].members == {"169.254.11.2,tcp:80": "default/web"}
    assert state.chains and state.jumps and state.services == {}


def test_vrrp_in_ipvs_mode_binds_on_vsop0_everywhere_with_arp_suppressed() -> None:
    vs = make_vs(announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 51})
    for addresses in ([], ["169.254.11.2"]):  # a backup, then the VRRP master (keepalived added the VIP to eth0)
        result = desired_state([vs], NODE, node_addresses=addresses)
        state = result.state
        assert not result.problems and state.addresses == frozenset({"169.254.11.2/32"})
        assert len(state.services) == 1 and len(state.real_servers) == 2
        assert state.sysctls["net.ipv4.conf.all.arp_ignore"] == "1" and state.sysctls["net.ipv4.conf.all.arp_announce"] == "2"
    v6 = desired_state([make_vs(vip="fd00::100", backends=[{"address": "fd00::1"}], announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 51})], NODE)
    assert "net.ipv4.conf.all.arp_ignore" not in v6.state.sysctls  # IPv6: NS is answered only for the interface's own addresses


# --- serviceRef ports, resolved as Kubernetes resolves a Service's ports ---------------------

MULTI = (EndpointPort("http", 8080), EndpointPort("metrics", 9090), EndpointPort("dns", 53, "UDP"))


def ref_ports(ports: list[dict[str, object]], endpoint_ports=MULTI):
    vs = make_vs(backends=[], serviceRef={"name": "app"}, ports=ports)
    desired = desired_state([vs], NODE, endpoints={("default", "app"): [Endpoint("10.1.0.1", endpoint_ports)]})
    return {(k.service.port, k.port) for k in desired.state.real_servers}, [(p.reason, p.message) for p in desired.problems]


def test_service_ref_port_by_target_port_name_and_number() -> None:
    assert ref_ports([{"port": 80, "targetPort": "metrics"}]) == ({(80, 9090)}, [])
    assert ref_ports([{"port": 80, "targetPort": 7000}]) == ({(80, 7000)}, [])  # a number is taken as it is


def test_service_ref_port_by_the_vip_ports_name_then_number() -> None:
    assert ref_ports([{"name": "http", "port": 80}]) == ({(80, 8080)}, [])
    assert ref_ports([{"name": "other", "port": 9090}]) == ({(9090, 9090)}, [])  # no such name: by number
    assert ref_ports([{"port": 53, "protocol": "UDP"}]) == ({(53, 53)}, [])


def test_service_ref_single_port_service_needs_no_name() -> None:
    assert ref_ports([{"port": 80}], (EndpointPort(None, 8080),)) == ({(80, 8080)}, [])
    # the only TCP port: the UDP one does not make it ambiguous
    assert ref_ports([{"port": 80}], (EndpointPort("web", 8080), EndpointPort("dns", 53, "UDP"))) == ({(80, 8080)}, [])


def test_service_ref_ambiguous_port_is_refused_with_a_reason_not_guessed() -> None:
    servers, problems = ref_ports([{"port": 80}])
    assert servers == set()  # never the VIP port, never the first port
    [(reason, message)] = problems
    assert reason == "AmbiguousPort"
    assert "serviceRef app: port 80/TCP matches none of the Service's TCP ports by name or number" in message
    assert "http=8080, metrics=9090" in message and "set targetPort" in message


def test_service_ref_missing_named_port_is_reported() -> None:
    servers, problems = ref_ports([{"port": 80, "targetPort": "admin"}])
    assert servers == set() and problems[0][0] == "PortNotFound" and "'admin'" in problems[0][1]
    servers, problems = ref_ports([{"port": 80, "protocol": "SCTP"}])
    assert servers == set() and problems == [("PortNotFound", "serviceRef app: port 80/SCTP: the Service has no SCTP port; this port gets no real servers from it")]


def test_service_ref_named_port_missing_on_some_endpoints_only_is_not_a_problem() -> None:
    vs = make_vs(backends=[], serviceRef={"name": "app"}, ports=[{"port": 80, "targetPort": "http"}])
    endpoints = [Endpoint("10.1.0.1", (EndpointPort("http", 8080),)), Endpoint("10.1.0.2", (EndpointPort("web", 8080),))]
    desired = desired_state([vs], NODE, endpoints={("default", "app"): endpoints})
    assert {k.address for k in desired.state.real_servers} == {"10.1.0.1"} and desired.problems == ()


def test_a_ref_longer_than_an_ipset_comment_is_shortened_so_the_kernel_takes_it_and_held_finds_it() -> None:
    """A 63-character namespace and a 253-character name are valid Kubernetes input and a 317-byte
    ref; the kernel keeps at most 255 bytes of a comment (the fakes refuse more, as it does)."""
    from vsop.adapters.kernel import fake_kernel, read_observed
    from vsop.core.desired import ipset_comment
    from vsop.core.held import Held, held_owners
    from vsop.core.state import Names
    from vsop.node.whole import derive, program, sync

    namespace, name = "n" * 63, "a" * 126 + "." + "b" * 126
    vs = make_vs(name=name, namespace=namespace)
    other = make_vs(name=name[:-1] + "c", namespace=namespace, vip="169.254.11.3")  # the same first 238 characters
    assert len(vs.ref) == 317
    comment, others = ipset_comment(vs.ref), ipset_comment(other.ref)
    assert len(comment.encode()) == 255 and comment.startswith(namespace + "/" + "a" * 126) and comment[-17] == "~"
    assert comment == ipset_comment(vs.ref) != others and ipset_comment("default/web") == "default/web"
    state = desired_state([vs, other], NODE).state
    assert state.ipsets["VSOP-VIPS"].members == {"169.254.11.2": comment, "169.254.11.3": others}
    assert state.services[WEB].owner == vs.ref  # the model and problems keep the whole ref

    kernel, fake = fake_kernel()
    first = sync(kernel, [vs, other], NODE)  # raises if the kernel refused a write
    assert first.writes == len(first.plan.ops) > 0
    observed = read_observed(kernel, Names())
    assert observed.ipsets["VSOP-VIP-PORTS"].members == {"169.254.11.2,tcp:80": comment, "169.254.11.3,tcp:80": others}
    assert sync(kernel, [vs, other], NODE).plan.ops == ()  # the comment reads back as planned: idempotent
    # Declared but invalid now: held by its ref, its kernel state is kept; the other one is removed.
    assert held_owners(observed, Held(owners=frozenset({vs.ref})), Names()) == {comment}
    # Something unreadable: what is not known is kept, and the owners counted by the caller count the same.
    unknown = Held(unknown=True, known=frozenset({other.ref, "default/web"}))
    assert held_owners(observed, unknown, Names()) == held_owners(observed, unknown, Names(), present={comment, others}) == {comment}
    desired, the_plan = program(derive([], NODE, observed), observed, held=Held(owners=frozenset({vs.ref})))
    assert {s.owner for s in desired.state.services.values()} == {vs.ref}
    assert [p.obj for p in desired.warnings if p.reason == "KeptInvalid"] == [vs.ref]
    assert {op.key.vip for op in the_plan.ops if op.kind == "service.delete"} == {"169.254.11.3"}


def test_a_service_without_endpoints_keeps_its_ipvs_service_and_its_filter_acceptance() -> None:
    """kube-proxy's "should be rejected when no endpoints exist": the IPVS service with no real
    server stays (IPVS then answers ICMP port unreachable), and its port stays accepted by
    VSOP-FILTER, so the client's packet reaches IPVS instead of the node's own listeners."""
    vs = make_vs(backends=[], serviceRef={"name": "nginx"}, ports=[{"port": 80}, {"port": 53, "protocol": "UDP"}])
    state = desired_state([vs], NODE, endpoints={("default", "nginx"): []}).state
    assert set(state.services) == {ServiceKey("tcp", "169.254.11.2", 80), ServiceKey("udp", "169.254.11.2", 53)}
    assert state.real_servers == {}
    assert set(state.ipsets["VSOP-VIP-PORTS"].members) == {"169.254.11.2,tcp:80", "169.254.11.2,udp:53"}


def test_traffic_policy_local_keeps_this_nodes_endpoints_unmasqueraded() -> None:
    """kube-proxy's externalTrafficPolicy: Local: this node's endpoints only, the client's address kept."""
    vs = make_vs(backends=[], serviceRef={"name": "nginx"}, ports=[{"port": 80}], trafficPolicy="Local")
    http = (EndpointPort(None, 8080),)
    slices = {("default", "nginx"): [Endpoint("10.1.0.1", http, node_name="node-a"), Endpoint("10.1.0.2", http, node_name="node-b"),
                                     Endpoint("10.1.0.3", http, node_name=None)]}
    desired = desired_state([vs], NODE, endpoints=slices)
    assert {k.address for k in desired.state.real_servers} == {"10.1.0.1"}
    assert set(desired.state.ipsets["VSOP-VIP-PORTS-NOMASQ"].members) == {"169.254.11.2,tcp:80"}
    assert desired.warnings == ()
    cluster = desired_state([make_vs(backends=[], serviceRef={"name": "nginx"}, ports=[{"port": 80}])], NODE, endpoints=slices).state
    assert {k.address for k in cluster.real_servers} == {"10.1.0.1", "10.1.0.2", "10.1.0.3"}
    assert cluster.ipsets["VSOP-VIP-PORTS-NOMASQ"].members == {}


def test_traffic_policy_local_without_a_local_endpoint_refuses_and_says_so() -> None:
    vs = make_vs(backends=[], serviceRef={"name": "nginx"}, ports=[{"port": 80}], trafficPolicy="Local")
    slices = {("default", "nginx"): [Endpoint("10.1.0.2", (EndpointPort(None, 8080),), node_name="node-b")]}
    desired = desired_state([vs], NODE, endpoints=slices)
    assert set(desired.state.services) == {ServiceKey("tcp", "169.254.11.2", 80)} and desired.state.real_servers == {}
    assert desired.programmed == ("default/web",)
    assert [(w.obj, w.reason) for w in desired.warnings] == [("default/web", "NoLocalEndpoints")]
    assert "node-a" in desired.warnings[0].message


def test_traffic_policy_local_withdraws_the_bgp_route_of_a_node_without_a_local_endpoint() -> None:
    vs = make_vs(backends=[], serviceRef={"name": "nginx"}, ports=[{"port": 80}], trafficPolicy="Local", announce="bgp")
    http = (EndpointPort(None, 8080),)
    here = desired_state([vs], NODE, endpoints={("default", "nginx"): [Endpoint("10.1.0.1", http, node_name="node-a")]}).state
    elsewhere = desired_state([vs], NODE, endpoints={("default", "nginx"): [Endpoint("10.1.0.2", http, node_name="node-b")]}).state
    assert here.routes == {"169.254.11.2/32"} and elsewhere.routes == frozenset()


def test_topology_hints_pick_this_nodes_then_this_zones_endpoints_and_fall_back_to_all() -> None:
    """kube-proxy's pkg/proxy/topology.go: node hints (PreferSameNode) before zone hints (PreferSameZone,
    PreferClose), each only when every ready endpoint carries one and one is for here; else every endpoint."""
    from vsop.core.desired import topology_filter

    node = Node("node-a", {"topology.kubernetes.io/zone": "z1"})
    port = (EndpointPort(None, 8080),)

    def ep(address: str, zones: tuple[str, ...] = (), nodes: tuple[str, ...] = (), ready: bool = True) -> Endpoint:
        return Endpoint(address, port, ready=ready, serving=True, terminating=not ready, for_zones=zones, for_nodes=nodes)

    def kept(*endpoints: Endpoint, on: Node = node) -> list[str]:
        return [e.address for e in topology_filter(endpoints, on)]

    assert kept(ep("1", ("z1",)), ep("2", ("z2",))) == ["1"]
    assert kept(ep("1", ("z1",), ("node-a",)), ep("2", ("z1",), ("node-b",))) == ["1"]  # the node's hint first
    assert kept(ep("1", ("z1",), ("node-b",)), ep("2", ("z1",), ("node-c",))) == ["1", "2"]  # none for node-a: its zone's
    assert kept(ep("1", ("z2",)), ep("2", ("z3",))) == ["1", "2"]  # none for z1: fall back to all
    assert kept(ep("1", ("z1",)), ep("2")) == ["1", "2"]  # an endpoint without hints: all
    assert kept(ep("1", ("z1",)), ep("2", ("z2",)), on=Node("node-x")) == ["1", "2"]  # a node without a zone label: all
    assert kept(ep("1", ("z1",)), ep("2", ("z2",)), ep("3", ready=False)) == ["1", "3"]  # a draining one stays draining

    vs = make_vs(backends=[], serviceRef={"name": "nginx"}, ports=[{"port": 80}])
    state = desired_state([vs], node, endpoints={("default", "nginx"): [ep("10.1.0.1", ("z1",)), ep("10.1.0.2", ("z2",))]}).state
    assert {k.address for k in state.real_servers} == {"10.1.0.1"}
