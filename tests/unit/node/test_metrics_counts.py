"""Node metrics count what the kernel holds of vsop's from the reconciler's cached state, which
each change updates in place: a scrape after a change counts the change."""

from __future__ import annotations

from tests.unit.node.test_reconciler import NODE, web
from vsop.adapters.kernel import fake_kernel
from vsop.node.metrics import NodeMetrics
from vsop.node.reconciler import Reconciler


def test_a_scrape_after_a_change_counts_it() -> None:
    kernel, _ = fake_kernel()
    reconciler = Reconciler(kernel, NODE)
    metrics = NodeMetrics()

    def vips() -> float | None:
        return metrics.registry.get_sample_value("vsop_vips_programmed")

    first = web("a")
    reconciler.update_objects({first.ref: first})
    metrics.record(reconciler.reconcile(), reconciler)
    assert vips() == 1
    second = web("b", "169.254.20.2")
    reconciler.update_objects({second.ref: second})
    outcome = reconciler.reconcile()
    assert not outcome.full
    metrics.record(outcome, reconciler)
    assert vips() == 2
    assert metrics.registry.get_sample_value("vsop_real_servers_programmed", {"state": "active"}) == 8


def test_vip_announced_is_one_for_the_current_vrrp_state_only() -> None:
    metrics = NodeMetrics()
    metrics.record_announced({"192.168.50.100": "backup", "192.168.50.101": "master"})
    metrics.record_announced({"192.168.50.100": "master"})
    value = metrics.registry.get_sample_value
    assert value("vsop_vip_announced", {"vip": "192.168.50.100", "state": "master"}) == 1
    assert value("vsop_vip_announced", {"vip": "192.168.50.100", "state": "backup"}) is None
    assert value("vsop_vip_announced", {"vip": "192.168.50.101", "state": "master"}) is None  # no longer announced here


def test_local_health_counts_this_nodes_real_servers_as_kube_proxy_does() -> None:
    """/health/NS/NAME for trafficPolicy: Local: 200 with the local endpoints, 503 with 0, None (404) otherwise."""
    from vsop.adapters.kernel import fake_kernel
    from vsop.core.desired import Endpoint, EndpointPort, Node
    from vsop.node.metrics import local_health
    from vsop.node.reconciler import Reconciler
    from tests.conftest import make_vs

    local = make_vs("local", backends=[], serviceRef={"name": "tell"}, trafficPolicy="Local", ports=[{"name": "tell", "port": 83}])
    plain = make_vs("plain", vip="169.254.11.9")
    ports = (EndpointPort("tell", 7101),)
    here, elsewhere = Endpoint("10.200.6.2", ports, node_name="n"), Endpoint("10.200.1.2", ports, node_name="other")
    kernel, _ = fake_kernel()
    reconciler = Reconciler(kernel, Node("n"))
    reconciler.update_objects({local.ref: local, plain.ref: plain})
    reconciler.update_endpoints({("default", "tell"): [here, elsewhere]})
    reconciler.reconcile(full=True)
    assert local_health(reconciler, "default", "local") == (200, {"service": {"namespace": "default", "name": "local"}, "localEndpoints": 1})
    assert local_health(reconciler, "default", "plain") is None and local_health(reconciler, "default", "gone") is None
    reconciler.update_endpoints({("default", "tell"): [elsewhere]})
    reconciler.reconcile()
    assert local_health(reconciler, "default", "local") == (503, {"service": {"namespace": "default", "name": "local"}, "localEndpoints": 0})


def test_local_probes_are_a_gauge_read_when_scraped_and_only_where_asked() -> None:
    probed: list[str] = []
    metrics = NodeMetrics()
    assert metrics.registry.get_sample_value("vsop_health_local_probes") is None  # the host agent has none
    metrics.watch_local_probes(lambda: len(probed))
    assert metrics.registry.get_sample_value("vsop_health_local_probes") == 0
    probed.append("192.0.2.1:8080")
    assert metrics.registry.get_sample_value("vsop_health_local_probes") == 1

