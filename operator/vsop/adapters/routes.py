"""The real route adapter: blackhole routes in vsop's own routing table, over rtnetlink.

Owns `RouteKernel` (base.RouteAdapter): reading the blackhole routes with vsop's protocol
number from vsop's table, and adding and deleting them. They are the handoff to BIRD for
`announce: bgp` (BIRD's `protocol kernel { kernel table 4242; learn; }` reads them); no
`ip rule` references the table, so the kernel's forwarding never consults it.
Hand-packed messages through `NetlinkPipe`, as vsop.adapters.links does, for the same
reason: importing pyroute2's IPRoute loads all of pyroute2.
Must not import: kopf, kubernetes, jinja2, vsop.core.plan/desired.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Sequence

from vsop.adapters.base import OperationFailed
from vsop.adapters.netlink import SOL_NETLINK, NetlinkError, NetlinkPipe, U32_AT, address_text, attr_offsets, kernel_refused, nla
from vsop.core import ops

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTA_DST, RTA_TABLE = 1, 15
RTN_BLACKHOLE = 6
RT_TABLE_UNSPEC = 0
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NETLINK_GET_STRICT_CHK = 12

_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags


def _encode(op: ops.AddRoute | ops.DeleteRoute) -> tuple[int, int, bytes]:
    ip, _, prefix = op.prefix.partition("/")
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    packed = socket.inet_pton(family, ip)
    length = int(prefix) if prefix else 8 * len(packed)
    # rtm_table is one byte: a table above 255 goes in RTA_TABLE (rtm_table RT_TABLE_UNSPEC),
    # as iproute2 sends it. Scope universe: a blackhole has no link.
    body = _RTMSG.pack(family, length, 0, 0, RT_TABLE_UNSPEC, op.protocol, 0, RTN_BLACKHOLE, 0)
    body += nla(RTA_DST, packed) + nla(RTA_TABLE, struct.pack("=I", op.table))
    if isinstance(op, ops.AddRoute):
        return RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body
    # The kernel deletes only a route of this type and protocol: never a foreign one on the prefix.
    return RTM_DELROUTE, 0, body


def _reason(op: ops.Op, code: int, text: str = "") -> str:
    if code == errno.EPERM:
        return "permission denied: changing routes needs root (CAP_NET_ADMIN)"
    match op:
        case ops.AddRoute(prefix=prefix, table=table):
            if code == errno.EEXIST:
                return f"table {table} already has a route to {prefix} (another program's, or another protocol's)"
        case ops.DeleteRoute(prefix=prefix, table=table, protocol=protocol):
            if code in (errno.ESRCH, errno.ENOENT):
                return f"table {table} has no blackhole route to {prefix} with protocol {protocol}"
    return kernel_refused(code, text)


class RouteKernel:
    """vsop's routes, in this network namespace or the named one (see LinkKernel for `netns`)."""

    handles = (ops.AddRoute, ops.DeleteRoute)

    def __init__(self, netns: str | None = None, batch: int = 64):
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.netns = netns
        self.batch = batch
        self._pipe = NetlinkPipe(NETLINK_ROUTE, netns)

    def close(self) -> None:
        self._pipe.close()

    def __enter__(self) -> "RouteKernel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, table: int, protocol: int) -> frozenset[str]:
        found: set[str] = set()
        # Strict dump requests make the kernel filter by table and protocol itself: a node that
        # learns a full routing table must not hand all of it over at every resync. Kernels
        # without it (before 4.20) ignore the filter; the loop below filters again either way.
        try:
            self._pipe.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        except OSError:
            pass
        for family in (socket.AF_INET, socket.AF_INET6):
            request = _RTMSG.pack(family, 0, 0, 0, RT_TABLE_UNSPEC, protocol, 0, RTN_BLACKHOLE, 0) + nla(RTA_TABLE, struct.pack("=I", table))
            try:
                payloads = self._pipe.dump(RTM_GETROUTE, request)
            except NetlinkError as e:
                if e.code == errno.ENOENT:  # the table does not exist (yet): no routes
                    continue
                raise
            for payload in payloads:
                rfamily, dst_len, _src, _tos, rtable, rprotocol, _scope, rtype, _flags = _RTMSG.unpack_from(payload)
                at = attr_offsets(payload, _RTMSG.size, len(payload))
                if RTA_TABLE in at:
                    rtable = U32_AT.unpack_from(payload, at[RTA_TABLE])[0]
                if rfamily != family or rtable != table or rprotocol != protocol or rtype != RTN_BLACKHOLE or RTA_DST not in at:
                    continue
                found.add(f"{address_text(rfamily, payload, at[RTA_DST])}/{dst_len}")
        return frozenset(found)

    def apply(self, operations: Sequence[ops.Op]) -> int:
        """Pipelined, one kind per run (as LinkKernel.apply): nothing of a later kind is sent past a failure."""
        i = 0
        while i < len(operations):
            first = operations[i]
            if not isinstance(first, (ops.AddRoute, ops.DeleteRoute)):
                raise TypeError(f"the route adapter does not handle {type(first).__name__}")
            run: list[ops.AddRoute | ops.DeleteRoute] = []
            while i < len(operations) and type(operations[i]) is type(first):
                run.append(operations[i])  # type: ignore[arg-type]
                i += 1
            failed = self._pipe.pipeline([_encode(op) for op in run], self.batch)
            if failed is not None:
                index, code, text = failed
                raise OperationFailed(run[index], _reason(run[index], code, text))
        return len(operations)

