"""Kernel I/O: the Kernel port, the real adapters behind it, and their in-memory fakes.

Reading order: base (the small Protocols every adapter implements), kernel (the `Kernel`
bundle the node pipeline is handed, reading it whole), real (the real adapters wired
together) and fake (in-memory fakes sharing one `KernelState`, refusing what the kernel
refuses), then one module per kind of kernel object: netlink (the pipelined transport),
ipvs, links, routes (announce: bgp's table), ipset, iptables (iptables-restore on the
host's backend), sysctl, conntrack. The same contract tests (tests/contracts) run on a
fake and on its real adapter.
Must not import: vsop.node, vsop.host, vsop.kube, vsop.diagnose, vsop.cli, kopf, kubernetes.
"""
