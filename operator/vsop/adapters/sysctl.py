"""Kernel settings through /proc/sys: read them, and write a value only when it differs.

Owns the mapping of a dotted name (net.ipv4.vs.conntrack) to its /proc/sys file and
the SetSysctl op. net.* files belong to the network namespace of the thread that
opens them, so this adapter acts on the namespace it is called in.
Must not import: kopf, kubernetes, jinja2.
"""

from __future__ import annotations

import errno
import os
from typing import Iterable, Sequence

from vsop.adapters.base import OperationFailed
from vsop.core import ops

PROC_SYS = "/proc/sys"


class SysctlKernel:
    """The SysctlAdapter of a real kernel; `root` is only replaced in tests."""

    handles = (ops.SetSysctl,)

    def __init__(self, root: str = PROC_SYS):
        self._root = root

    def path(self, name: str) -> str:
        # As sysctl(8): with a "/" in it the name is a path already, which is how a key
        # holding a dotted interface name is spelled (net/ipv4/conf/eth0.100/rp_filter).
        relative = name.strip("/") if "/" in name else name.replace(".", "/")
        if ".." in relative.split("/"):
            raise FileNotFoundError(errno.ENOENT, "not a sysctl name", name)
        return os.path.join(self._root, relative)

    def read(self, names: Iterable[str]) -> dict[str, str]:
        values: dict[str, str] = {}
        for name in names:
            try:
                values[name] = self._read_one(name)
            except FileNotFoundError:
                continue
        return values

    def apply(self, operations: Sequence[ops.Op]) -> int:
        written = 0
        for op in operations:
            if not isinstance(op, ops.SetSysctl):
                raise TypeError(f"SysctlKernel does not handle {type(op).__name__}")
            try:
                if self._read_one(op.name) == _normalized(op.value):
                    continue
                with open(self.path(op.name), "w") as file:
                    file.write(op.value)
            except OSError as error:
                raise OperationFailed(op, _reason(error)) from None
            written += 1
        return written

    def _read_one(self, name: str) -> str:
        with open(self.path(name)) as file:
            return _normalized(file.read())


def _normalized(value: str) -> str:
    # Multi-value keys print tab-separated (ip_local_port_range: "32768\t60999"); the
    # kernel accepts any whitespace back, so compare with single spaces.
    return " ".join(value.split())


def _reason(error: OSError) -> str:
    if error.errno == errno.ENOENT:
        return "this kernel has no such setting (is the module that provides it loaded?)"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not allowed to change it (not root, or /proc/sys is mounted read-only in this container)"
    if error.errno == errno.EINVAL:
        return "the kernel refused the value"
    return error.strerror or str(error)
