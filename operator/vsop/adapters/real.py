"""This host's kernel, through the real adapters.

Owns the wiring of the real adapters into the `Kernel` port (vsop.adapters.kernel) and
reading the host into an observed `KernelState`. The adapters are imported here and nowhere in the
core, so `vsop plan --from-empty` and the tests never need them.
"""

from __future__ import annotations

from vsop.core.state import KernelState, Names
from vsop.adapters.kernel import Kernel, read_observed


def real_kernel(proc_sys: str = "/proc/sys") -> Kernel:
    """The real adapters; `proc_sys` is where net sysctls are written (a container mounts the host's elsewhere)."""
    from vsop.adapters.conntrack import ConntrackTool
    from vsop.adapters.ipset import IPSetKernel
    from vsop.adapters.iptables import IPTablesKernel
    from vsop.adapters.ipvs import IPVSKernel
    from vsop.adapters.links import LinkKernel
    from vsop.adapters.routes import RouteKernel
    from vsop.adapters.sysctl import FileRecord, SysctlKernel

    return Kernel(
        IPVSKernel(), LinkKernel(), IPSetKernel(), IPTablesKernel(), SysctlKernel(root=proc_sys), ConntrackTool(), FileRecord(), RouteKernel(),
        reader=lambda: real_kernel(proc_sys),
    )


def read_host(names: Names, kernel: Kernel | None = None) -> KernelState:
    return read_observed(kernel or real_kernel(), names)
