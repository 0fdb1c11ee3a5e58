"""One node's reconciler and what feeds and reports it.

The flow: sources (the host folder / store, the kopf indexes) -> `reconciler.Reconciler`
-> adapters (vsop.node.execute.Kernel); sinks (status file, Kubernetes status, metrics) beside it.
"""
