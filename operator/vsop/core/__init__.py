"""The pure core: desired state, diff and ordered plan, and the in-memory kernel.

In reading order:
- state.py: the shapes of kernel state, desired and observed alike (KernelState, Names).
- desired.py: from VirtualServices to the state one node should have (conflicts, refusals).
- health.py: health thresholds, and the rule that turns a failed check into a weight.
- fragments.py: that state cut per object, and a node's state cut around some VIPs.
- claims.py: who may claim an address (VipPools, metadata addresses, sharing, seniority).
- held.py: keeping what the kernel has for objects declared but unusable now.
- draining.py: removed real servers kept at weight 0 until their connections end.
- ops.py, plan.py: the operations, and the ordered plan from observed to desired.
- drift.py: which operations of a plan put back what changed behind vsop's back.
- memory.py: the in-memory kernel (the fakes and the reconciler's cache apply plans with it).
- stale.py, sysctls.py: conntrack entries a plan leaves stale; accept_ra and the sysctl record.
- commands.py: a plan rendered as the commands a person would type.

Must not import kopf, pyroute2, jinja2, kubernetes, subprocess, socket or asyncio;
the import-linter contract in pyproject.toml enforces it.
"""
