"""Prometheus metrics of the controller; the node agent's are the node reconciler's.

Owns the controller's metric names and labels (each process has its own registry, so
tests can run several in one process). The node agent's metrics, the probes and the
HTTP endpoints live in vsop.node.metrics (the host agent serves them too) and are
re-exported here under their old names.
Must not import vsop.node.execute or vsop.adapters.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vsop.node.metrics import DURATION_BUCKETS, HttpEndpoints, NodeMetrics, Probes

AgentMetrics = NodeMetrics
__all__ = ["AgentMetrics", "ControllerMetrics", "HttpEndpoints", "Probes"]

log = logging.getLogger("vsop.kube.metrics")

class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.reconciles = Counter("vsop_controller_reconciles", "Status reconciliations of all VirtualServices, by result.", ["result"], registry=r)
        self.reconcile_duration = Histogram(
            "vsop_controller_reconcile_duration_seconds", "Time of one reconciliation.", buckets=DURATION_BUCKETS, registry=r
        )
        self.status_patches = Counter("vsop_controller_status_patches", "Status patches made.", registry=r)
        self.errors = Counter("vsop_controller_errors", "Errors, by source (api).", ["source"], registry=r)
        self.events = Counter("vsop_controller_events", "Events posted, by reason.", ["reason"], registry=r)
        self.relist_deletions = Counter(
            "vsop_controller_relist_deletions", "Objects a relist found gone and deleted (their deletion fell in a watch gap), by kind.",
            ["kind"], registry=r,
        )
        self.leader = Gauge("vsop_controller_leader", "1 while this controller holds the Lease and writes, 0 on standby.", registry=r)
        self.conditions = Gauge(
            "vsop_controller_virtualservices", "VirtualServices by condition type and status.", ["condition", "status"], registry=r
        )


