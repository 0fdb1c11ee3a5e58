"""One node's pipeline: from what a source declares to its kernel, the same for both agents.

The flow: sources (the host folder / store, the kopf indexes) -> `reconciler.Reconciler`
-> the Kernel port (vsop.adapters.kernel); sinks (status file, Kubernetes status, metrics)
beside it. The modules, in reading order:

- reconciler.py: the orchestration of one reconcile (change, resync, whole plan).
- objects.py: the declared objects, their claims and indexes, one Fragment per object, verdicts.
- cache.py: the kernel as last read plus the writes since, indexed by VIP and by owner.
- resync.py: drift between a fresh read and the cache, the replan queue, the audit.
- whole.py: the whole-node path (derive -> keep held -> draining -> plan -> execute ->
  repairs -> log) for apply, cleanup and recovery; its middle step serves the reconciler too.
- execute.py: a plan executed on the kernel (probe, runs per adapter, sysctl record, conntrack).
- probes.py: active health checks of real servers.
- lock.py: the host's one writer lock.
- metrics.py: the node's metrics and its HTTP endpoints.
- heap.py: keeping a long-running agent's C heap close to what it holds.

Must not import kopf or kubernetes (the agents in vsop.host and vsop.kube wire it to them).
"""
