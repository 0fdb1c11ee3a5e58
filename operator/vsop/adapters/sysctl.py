"""Kernel settings through /proc/sys: read them, and write a value only when it differs.

Owns the mapping of a dotted name (net.ipv4.vs.conntrack) to its /proc/sys file and
the SetSysctl op, and the record of the values vsop found before changing them
(FileRecord, /run/vsop/sysctls.json). net.* files belong to the network namespace of the thread that
opens them, so this adapter acts on the namespace it is called in.
Must not import: kopf, kubernetes, jinja2.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from typing import Iterable, Protocol, Sequence

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

    def ipv6_interfaces(self) -> list[str]:
        try:
            found = os.listdir(os.path.join(self._root, "net/ipv6/conf"))
        except FileNotFoundError:  # no IPv6 in this kernel (or ipv6.disable=1)
            return []
        return sorted(name for name in found if name not in ("all", "default"))

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


# --- the record of what vsop changed ----------------------------------------------------

DEFAULT_RECORD = "/run/vsop/sysctls.json"


class SysctlRecord(Protocol):
    """The value of each setting before vsop's first change (see vsop.core.sysctls)."""

    def load(self) -> dict[str, str]: ...

    def save(self, values: dict[str, str]) -> None: ...


class FileRecord:
    """The record as a JSON file, written atomically.

    It lives under /run on purpose: a tmpfs, so the record lasts exactly as long as the
    values it describes. A reboot resets the kernel's settings and the record together;
    a record kept across reboots would "restore" values from an older boot.
    """

    def __init__(self, path: str = DEFAULT_RECORD):
        self.path = path

    def load(self) -> dict[str, str]:
        try:
            with open(self.path, encoding="utf-8") as file:
                data = json.load(file)
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise OSError(f"{self.path}: not a sysctl record ({exc})") from None
        return {str(k): str(v) for k, v in (data.get("before") or {}).items()}

    def save(self, values: dict[str, str]) -> None:
        if not values:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump({"comment": "values before vsop's first change; vsop cleanup --restore-sysctls puts them back", "before": dict(sorted(values.items()))}, file, indent=2)
        os.replace(temporary, self.path)


class MemoryRecord:
    def __init__(self, values: dict[str, str] | None = None):
        self.values = dict(values or {})

    def load(self) -> dict[str, str]:
        return dict(self.values)

    def save(self, values: dict[str, str]) -> None:
        self.values = dict(values)
