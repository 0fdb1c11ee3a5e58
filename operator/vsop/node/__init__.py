"""One node's pipeline: from what a source declares to its kernel, the same for both agents.

The flow: a source (the host's folder, vsop.host.folder; the kopf indexes, vsop.kube.source)
hands what changed to `loop` -> `reconciler.Reconciler` -> the Kernel port (vsop.adapters.kernel);
a sink (the host's status file, vsop.host.status_file; the NodeReport, vsop.kube.sink) reports
what each turn did. The modules, in reading order:

- wake.py: the wake-up trigger (a change after a quiet spell at once, bursts coalesced).
- loop.py: the one turn both agents drive (writer lock, feeding the reconciler, health targets,
  keepalived after a good sync, metrics) and its schedule (periodic full resync, drift left to
  plan, drain timing, retries).
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
- heap.py: keeping a long-running agent's heap close to what it holds, its collector off what it keeps.
- remember.py: health verdicts and drains kept across restarts (/run/vsop/state.json).
- logs.py: klog-style logging, set up by every vsop process (agents, controller, commands).

Must not import: vsop.host, vsop.kube, vsop.cli, kopf, kubernetes (the agents in vsop.host and
vsop.kube wire their sources and sinks to it; checked by import-linter).
"""
