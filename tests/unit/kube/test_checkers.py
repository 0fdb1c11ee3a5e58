"""vsop.kube.checkers: who checks a static backend, and the verdict the controller publishes."""

from __future__ import annotations

from typing import Any

from tests.conftest import follow_changes, make_vs
from vsop.kube import checkers

NODES = [f"node-{i:02d}" for i in range(20)]


def test_the_choice_depends_only_on_the_backend_and_the_nodes() -> None:
    chosen = checkers.choose("10.0.0.1:80", NODES)
    assert len(chosen) == checkers.CHECKERS and set(chosen) <= set(NODES)
    assert checkers.choose("10.0.0.1:80", list(reversed(NODES))) == chosen
    assert set(checkers.choose("10.0.0.1:80", ["node-01", "node-02"])) == {"node-01", "node-02"}  # fewer nodes than K: all
    # Backends spread over the nodes.
    assert len({node for i in range(50) for node in checkers.choose(f"10.0.1.{i}:80", NODES)}) > 10


def test_a_node_leaving_or_joining_moves_only_what_it_held_or_wins() -> None:
    backends = [f"10.0.1.{i}:80" for i in range(200)]
    before = {b: checkers.choose(b, NODES) for b in backends}
    after = {b: checkers.choose(b, NODES[1:]) for b in backends}
    moved = [b for b in backends if before[b] != after[b]]
    assert moved == [b for b in backends if NODES[0] in before[b]]
    joined = {b: checkers.choose(b, NODES + ["node-new"]) for b in backends}
    assert all(set(joined[b]) - set(before[b]) <= {"node-new"} for b in backends)


def test_published_health_is_a_majority_of_the_checkers_that_reported() -> None:
    vs = make_vs("web", backends=[{"address": "10.0.0.1"}], ports=[{"port": 80, "targetPort": 8080}], healthCheck={"type": "tcp"})
    [backend] = checkers.static_backends(vs)
    assert backend == "10.0.0.1:8080"
    chosen = checkers.choose(backend, NODES)

    def with_results(*results: bool) -> dict:
        reports = {node: {"default/web": {"checks": {backend: ok}}} for node, ok in zip(chosen, results)}
        [item] = checkers.published_health(vs, "default/web", NODES, reports)
        return item

    assert with_results() == {"backend": backend, "checkers": list(chosen), "healthy": True}
    assert with_results(False)["healthy"] is False  # the only one that reported
    assert with_results(False, True)["healthy"] is True
    item = with_results(False, False, True)
    assert item["healthy"] is False and item["failingOn"] == sorted(chosen[:2])
    # Only the designated checkers count.
    others = {node: {"default/web": {"checks": {backend: False}}} for node in NODES if node not in chosen}
    assert checkers.published_health(vs, "default/web", NODES, others)[0]["healthy"] is True


def test_no_published_health_without_a_check_or_static_backends() -> None:
    assert checkers.static_backends(make_vs("web", backends=[{"address": "10.0.0.1"}])) == []
    assert checkers.published_health(make_vs("web", backends=[{"address": "10.0.0.1"}], healthCheck={"type": "tcp"}), "default/web", [], {}) == []


def test_roles_kept_per_object_equal_the_ones_from_scratch_after_every_turn() -> None:
    """RoleKeeper, fed as the in-cluster agent feeds it (the loop's per-object target changes, the
    objects whose published health was just taken, everything on a full turn), equals
    `checkers.roles` over every target before and after each turn, and a checker following its
    changes probes the same targets; a health flip's turn changes nothing. Run with the objects
    handed over in both orders: a real server passing from a deleted object to its twin in one
    turn is one target on both sides, whose role its new owner's published health decides. Run
    with the objects' forwarding unknown (every non-checker target slow) and masquerade (watched)."""
    for descending in (False, True):
        for forwarding in (None, "masq"):
            _drive_roles(descending, forwarding)


def _drive_roles(descending: bool, masq: str | None = None) -> None:
    from vsop.adapters.kernel import fake_kernel
    from vsop.core.desired import Node
    from vsop.core.health import HealthTracker, Thresholds
    from vsop.core.state import RealServerKey, ServiceKey
    from vsop.node.loop import Feed, NodeLoop
    from vsop.node.reconciler import Reconciler

    first = RealServerKey(ServiceKey("tcp", "169.254.11.2", 80), "192.168.2.111", 8080)
    kernel, _ = fake_kernel()
    loop = NodeLoop(Reconciler(kernel, Node("me")), HealthTracker())
    forwarding = lambda ref: masq  # noqa: E731
    keeper = checkers.RoleKeeper("me", forwarding)
    published: dict[str, dict[str, checkers.Published]] = {}
    checker: set[Any] = set()

    def follow(refs: set[str] | None, taken: set[str], everything: bool) -> checkers.Roles:
        if refs is not None:
            refs |= taken
        given = None if everything or refs is None else sorted(refs, reverse=descending)
        roles = keeper.follow(given, loop.targets_by_ref, published)
        scratch = checkers.roles("me", loop.targets, loop.reconciler.configured, published, forwarding)
        assert (roles.targets, roles.checking, roles.published_down, roles.watched) == (
            scratch.targets, scratch.checking, scratch.published_down, scratch.watched)
        assert follow_changes(checker, keeper.take_changes(), roles.targets) == roles.targets
        return roles

    def pub(*items: tuple[str, tuple[str, ...], bool]) -> dict[str, checkers.Published]:
        return {backend: checkers.Published(names, healthy) for backend, names, healthy in items}

    tcp = {"type": "tcp", "failureThreshold": 1}
    web = make_vs(healthCheck=tcp)
    api = make_vs("api", vip="169.254.11.3", healthCheck=tcp)
    a, b = "192.168.2.111:8080", "192.168.2.222:8080"
    # (full, feed, published health taken with it)
    steps: list[tuple[bool, dict[str, Any], dict[str, dict[str, checkers.Published] | None]]] = [
        (True, {"default/web": web}, {}),
        (False, {"default/api": api}, {"default/api": pub((a, ("x", "y"), False), (b, ("me", "x"), True))}),
        (False, {}, {"default/web": pub((a, ("me",), True), (b, ("x",), False))}),  # published only
        (False, {}, {}),  # a health flip
        (False, {"default/web": make_vs(healthCheck=tcp, backends=[{"address": "192.168.2.111"}])}, {}),
        (False, {"default/api": make_vs("api", vip="169.254.11.3")}, {"default/api": None}),  # check removed
        (False, {}, {"default/web": pub((a, ("x",), False))}),
        (True, {}, {"default/web": pub((a, ("x",), True))}),
        (False, {"default/web": None}, {"default/web": None}),
        (False, {"default/web": web, "default/api": api}, {"default/web": pub((a, ("me",), True))}),
        # The same VIP:port claimed twice: the twin waits, then takes the VIP:port in the turn that
        # deletes web: FIRST's target is the same on both sides, its role is now the twin's.
        (False, {"default/twin": make_vs("twin", healthCheck=tcp)}, {"default/twin": pub((a, ("x",), False), (b, ("me",), True))}),
        (False, {"default/web": None}, {"default/web": None}),
    ]
    for number, (full, changed, health) in enumerate(steps):
        for ref, value in health.items():
            if value is None:
                published.pop(ref, None)
            else:
                published[ref] = value
        if number == 3:
            loop.tracker.record(first, False, Thresholds(1, 1), "refused")
        taken = set(changed) | set(health)
        down = follow(loop.take_ref_changes("roles"), taken, full).published_down
        turn = loop.turn(full, lambda others: Feed(changed=changed, out_of_service=down))
        assert turn.ok
        roles = follow(loop.take_ref_changes("roles"), set(), False)
        if number == 3:
            assert keeper.take_changes() == (set(), set())
    assert first not in roles.checking and roles.published_down == frozenset({first})
    slow = {t.key for t in roles.targets if t.check.interval_seconds > make_vs(healthCheck=tcp).spec.health_check.interval_seconds}
    if masq is None:
        assert slow == {first} and roles.watched == {}
    else:  # watched through the counters instead, not probed
        assert slow == set() and set(roles.watched) == {first} and first not in {t.key for t in roles.targets}


# --- a non-checker probes a watched real server only when its data path shows trouble ----------


def _target(protocol: str = "tcp", address: str = "192.0.2.1") -> Any:
    from vsop.core.state import RealServerKey, ServiceKey
    from vsop.node.probes import Target

    return Target(RealServerKey(ServiceKey(protocol, "169.254.11.2", 80), address, 8080), make_vs(healthCheck={"type": "tcp"}).spec.health_check)


def test_trouble_is_new_connections_without_a_reply_packet() -> None:
    from vsop.core.state import Traffic

    before = Traffic(connections=10, in_packets=50, out_packets=40)
    assert checkers.trouble(before, Traffic(12, 53, 40))  # two new connections, nothing back
    assert not checkers.trouble(before, Traffic(12, 53, 41))  # a reply came back
    assert not checkers.trouble(before, Traffic(10, 55, 40))  # no new connection (no client tried)
    assert not checkers.trouble(before, before)  # quiet
    assert not checkers.trouble(None, Traffic(5, 5, 0))  # one look only: nothing to compare
    assert not checkers.trouble(before, None)  # not read (the service is gone)
    assert not checkers.trouble(before, Traffic(2, 2, 0))  # counting from zero again: added anew since


def test_only_a_non_checkers_masquerade_tcp_real_server_is_watched_instead_of_probed() -> None:
    owners = {}
    targets = {name: _target(protocol, address) for name, protocol, address in
               (("web", "tcp", "192.0.2.1"), ("dns", "udp", "192.0.2.2"), ("mine", "tcp", "192.0.2.3"), ("new", "tcp", "192.0.2.4"))}
    for name, target in targets.items():
        owners[target.key] = f"default/{name}"
    published = {f"default/{name}": {checkers.backend_id(t.key.address, t.key.port): checkers.Published(("x", "me" if name == "mine" else "y"), True)}
                 for name, t in targets.items() if name != "new"}
    slow = lambda t: checkers.Target(t.key, t.check.model_copy(update={"interval_seconds": t.check.interval_seconds * checkers.SLOW_FACTOR}))  # noqa: E731
    masq = checkers.roles("me", targets.values(), owners, published, lambda ref: "masq")
    assert masq.watched == {targets["web"].key: targets["web"]}
    assert masq.targets == {slow(targets["dns"]), targets["mine"], targets["new"]}  # UDP: slow; checker and unpublished: full rate
    route = checkers.roles("me", targets.values(), owners, published, lambda ref: "route")
    assert route.watched == {} and route.targets == {slow(targets["web"]), slow(targets["dns"]), targets["mine"], targets["new"]}


def test_a_watched_real_server_is_probed_from_the_look_showing_trouble_until_it_answers_again() -> None:
    from vsop.core.state import Traffic

    web, api = _target(address="192.0.2.1"), _target(address="192.0.2.2")
    watched = {web.key: web, api.key: api}
    down: set[Any] = set()
    local = checkers.LocalProbes()
    healthy = lambda key: key not in down  # noqa: E731
    assert local.services(watched) == [web.key.service]

    assert local.look({web.key: Traffic(5, 9, 7), api.key: Traffic(1, 1, 1)}, watched) == set()  # the first look: a baseline
    assert local.follow(watched, healthy) == (set(), set())  # no trouble: nothing probed
    assert local.look({web.key: Traffic(9, 9, 12), api.key: Traffic(1, 1, 1)}, watched) == set()  # busy and answering, idle
    assert local.follow(watched, healthy) == (set(), set())

    assert local.look({web.key: Traffic(12, 14, 12), api.key: Traffic(1, 1, 1)}, watched) == {web.key}  # 3 connections, no reply
    assert local.follow(watched, healthy) == ({web}, set())  # probed at the spec's interval
    down.add(web.key)  # its own probe fails: taken out here, no new connection comes to it
    assert local.follow(watched, healthy) == (set(), set())
    assert local.look({web.key: Traffic(12, 14, 12), api.key: Traffic(1, 1, 1)}, watched) == set()
    assert local.follow(watched, healthy) == (set(), set())  # quiet, yet still down: the probe goes on
    down.discard(web.key)  # it answers again
    assert local.follow(watched, healthy) == (set(), {web})
    assert local.running == {}


def test_a_real_server_no_longer_watched_is_no_longer_probed_by_the_local_probes() -> None:
    from vsop.core.state import Traffic

    web = _target()
    local = checkers.LocalProbes()
    local.look({web.key: Traffic(1, 1, 0)}, {web.key: web})
    local.look({web.key: Traffic(4, 4, 0)}, {web.key: web})
    assert local.follow({web.key: web}, lambda key: True) == ({web}, set())
    assert local.follow({}, lambda key: False) == (set(), {web})  # this node became its checker (it probes it as such)
    assert local.look({}, {}) == set() and local.last == {} and local.troubled == set()


def test_a_watched_real_server_held_down_by_this_nodes_own_verdict_is_probed_until_it_answers() -> None:
    """A verdict recalled from before a restart: no trouble seen yet, but only a probe brings it back."""
    web, api = _target(address="192.0.2.1"), _target(address="192.0.2.2")
    watched = {web.key: web}
    local = checkers.LocalProbes()
    assert local.follow(watched, lambda key: False, down=[web.key, api.key]) == ({web}, set())  # api: not watched here
    assert local.follow(watched, lambda key: True) == (set(), {web})


def test_the_real_servers_probed_here_are_named_with_their_owner_for_the_report() -> None:
    from vsop.core.state import Traffic

    web, api = _target(address="192.0.2.1"), _target(address="192.0.2.2")
    watched = {web.key: web, api.key: api}
    local = checkers.LocalProbes()
    by_ref = {"default/web": [web], "default/api": [api]}
    assert local.probed_here(by_ref) == []
    local.look({web.key: Traffic(1, 1, 0), api.key: Traffic(1, 1, 1)}, watched)
    local.look({web.key: Traffic(4, 4, 0), api.key: Traffic(3, 3, 3)}, watched)  # web: trouble; api answers
    local.follow(watched, lambda key: True)
    assert local.probed_here(by_ref) == [("default/web", "192.0.2.1:8080")]

