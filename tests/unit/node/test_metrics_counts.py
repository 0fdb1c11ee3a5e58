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
