"""vsop.kube.checkers: who checks a static backend, and the verdict the controller publishes."""

from __future__ import annotations

from tests.conftest import make_vs
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
