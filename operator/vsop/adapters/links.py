"""The real link adapter: vsop's dummy link and the VIPs bound to it, over rtnetlink.

Owns `LinkKernel` (base.LinkAdapter). Everything goes through `NetlinkPipe` with
hand-packed rtnetlink messages: address writes and the address dump (one per VIP:
thousands with many services) pipelined, because pyroute2 spends ~100 µs encoding or
decoding each address message; the few link messages (get, create, up, delete) too,
because importing pyroute2's IPRoute loads all of pyroute2 (10 MB of the agent's RSS).
Must not import: kopf, kubernetes, jinja2, vsop.core.plan/desired.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
from typing import Sequence

from vsop.adapters.base import OperationFailed
from vsop.adapters.netlink import NLM_F_ACK, NLM_F_REQUEST, NetlinkError, NetlinkPipe, address_text, attr_offsets, kernel_refused, nla
from vsop.core import ops
from vsop.core.state import LinkState
from vsop.api.errors import KernelUnsupported

NO_DUMMY = "this kernel cannot create dummy links: load the dummy module or use mode: keepalived"

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 18, 1
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
IFF_UP = 0x1

_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, ifindex
_IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change (the flags' mask)
_ADDRESS_OPS = (ops.AddAddress, ops.DeleteAddress)


def _encode_address(op: ops.AddAddress | ops.DeleteAddress, index: int) -> tuple[int, int, bytes]:
    ip, _, prefix = op.address.partition("/")
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    packed = socket.inet_pton(family, ip)
    prefixlen = int(prefix) if prefix else (128 if family == socket.AF_INET6 else 32)
    # A VIP must answer at once: skip IPv6 duplicate address detection, during which
    # the address is "tentative" and unusable as a local address.
    flags = IFA_F_NODAD if family == socket.AF_INET6 and isinstance(op, ops.AddAddress) else 0
    body = _IFADDRMSG.pack(family, prefixlen, flags, 0, index) + nla(IFA_LOCAL, packed) + nla(IFA_ADDRESS, packed)
    if isinstance(op, ops.AddAddress):
        return RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body + nla(IFA_FLAGS, struct.pack("=I", flags))
    return RTM_DELADDR, 0, body


def _name(name: str) -> bytes:
    return nla(IFLA_IFNAME, name.encode() + b"\0")


def _reason(op: ops.Op, code: int, text: str = "") -> str:
    if code == errno.EPERM:
        return "permission denied: changing links and addresses needs root (CAP_NET_ADMIN)"
    match op:
        case ops.CreateLink(name=name):
            if code == errno.EEXIST:
                return f"a link named {name} already exists"
            if code == errno.EOPNOTSUPP:
                return NO_DUMMY
        case ops.SetLinkUp(name=name) | ops.DeleteLink(name=name):
            if code == errno.ENODEV:
                return f"link {name} does not exist"
        case ops.AddAddress(link=link, address=address):
            if code == errno.ENODEV:
                return f"link {link} does not exist"
            if code == errno.EEXIST:
                return f"{address} is already bound to {link}"
        case ops.DeleteAddress(link=link, address=address):
            if code == errno.ENODEV:
                return f"link {link} does not exist"
            if code == errno.EADDRNOTAVAIL:
                return f"{address} is not bound to {link}"
    return kernel_refused(code, text)


class LinkKernel:
    """The dummy link and its addresses, in this network namespace or the named one.

    `netns`: a name under /var/run/netns or a path to a namespace file; None for the
    process's own. `batch`: address operations sent in one write before their
    answers are read (1 = strictly one at a time).
    """

    handles = (ops.CreateLink, ops.SetLinkUp, ops.DeleteLink, ops.AddAddress, ops.DeleteAddress)

    def __init__(self, netns: str | None = None, batch: int = 64):
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.netns = netns
        self.batch = batch
        self._pipe = NetlinkPipe(NETLINK_ROUTE, netns)
        # A digest of the last address dump (with the link's index) and its parse: the same
        # bytes return the same sets (callers never mutate what a read returns).
        self._last: tuple[int | None, bytes, frozenset[str], frozenset[str]] | None = None

    def close(self) -> None:
        self._pipe.close()

    def __enter__(self) -> "LinkKernel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- links ---

    def _link(self, name: str) -> tuple[int, int] | None:
        """(ifindex, flags) of the link, or None."""
        try:
            (reply,) = self._pipe.request(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name(name))
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(reply)
        return index, flags

    def _create_dummy(self, name: str, up: bool) -> None:
        flags = IFF_UP if up else 0
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, flags, flags) + _name(name) + nla(IFLA_LINKINFO, nla(IFLA_INFO_KIND, b"dummy"))
        self._pipe.request(RTM_NEWLINK, body, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)

    def _delete(self, index: int) -> None:
        self._pipe.request(RTM_DELLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))

    def probe(self, link: str) -> None:
        if self._link(link) is not None:
            return
        # Creating and deleting a throwaway dummy is the only sure test: the kernel
        # may have the driver built in, as a module it autoloads, or not at all.
        name = f"vsopprobe{os.getpid() % 100000}"
        try:
            self._create_dummy(name, up=False)
        except NetlinkError as e:
            if e.code == errno.EOPNOTSUPP:
                raise KernelUnsupported(NO_DUMMY) from None
            if e.code != errno.EEXIST:  # left behind by a probe that was killed
                raise
        found = self._link(name)
        if found is not None:
            self._delete(found[0])

    # --- reading ---

    def read(self, link: str) -> tuple[LinkState | None, frozenset[str], frozenset[str]]:
        found = self._link(link)
        index = found[0] if found else None
        state = LinkState(link, up=bool(found[1] & IFF_UP)) if found else None
        own: set[str] = set()
        others: set[str] = set()
        payloads = self._pipe.dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        raw = hashlib.blake2b(b"".join(payloads), digest_size=16).digest()  # not the dump itself (600 KB at 10k VIPs)
        last = self._last
        if last is not None and last[0] == index and last[1] == raw:
            return state, last[2], last[3]
        for payload in payloads:
            family, prefixlen, _flags, _scope, ifindex = _IFADDRMSG.unpack_from(payload)
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            at = attr_offsets(payload, _IFADDRMSG.size, len(payload))
            # IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on a
            # point-to-point IPv4 link, and IPv6 sends IFA_LOCAL only with a peer.
            offset = at.get(IFA_LOCAL, at.get(IFA_ADDRESS))
            if offset is None:
                continue
            if ifindex == index and family == socket.AF_INET6 and payload[offset] == 0xFE and payload[offset + 1] & 0xC0 == 0x80:
                # The kernel gives a link that goes up an fe80::/64 address of its
                # own; it is not a VIP (those are never link-local) and not vsop's to remove.
                continue
            ip = address_text(family, payload, offset)
            if ifindex == index:
                own.add(f"{ip}/{prefixlen}")
            else:
                others.add(ip)
        self._last = (index, raw, frozenset(own), frozenset(others))
        return state, self._last[2], self._last[3]

    # --- writing ---

    def apply(self, operations: Sequence[ops.Op]) -> int:
        """Link operations one by one; each run of AddAddress (or DeleteAddress) pipelined.

        On a refusal raises OperationFailed for the first refused operation.
        Operations before it are applied; in a pipelined run, those after it in the
        same batch (at most `batch - 1`, all of the same kind) were sent too, and the
        kernel applied whichever it could. Nothing of another kind is sent past it.
        """
        indexes: dict[str, int | None] = {}

        def index_of(name: str) -> int | None:
            if name not in indexes:
                found = self._link(name)
                indexes[name] = found[0] if found else None
            return indexes[name]

        i = 0
        while i < len(operations):
            op = operations[i]
            if isinstance(op, _ADDRESS_OPS):
                # One kind per pipelined run: nothing of a later kind is sent past a failure.
                run: list[ops.AddAddress | ops.DeleteAddress] = []
                while i < len(operations) and type(operations[i]) is type(op):
                    run.append(operations[i])  # type: ignore[arg-type]
                    i += 1
                requests = []
                for address_op in run:
                    index = index_of(address_op.link)
                    if index is None:
                        # Nothing of the run was sent yet past this point.
                        self._send_run(run[: len(requests)], requests)
                        raise OperationFailed(address_op, _reason(address_op, errno.ENODEV))
                    requests.append(_encode_address(address_op, index))
                self._send_run(run, requests)
                continue
            try:
                self._link_op(op)
            except NetlinkError as e:
                raise OperationFailed(op, _reason(op, e.code, "")) from None
            indexes.clear()
            i += 1
        return len(operations)

    def _send_run(self, run: Sequence[ops.Op], requests: list[tuple[int, int, bytes]]) -> None:
        if not requests:
            return
        failed = self._pipe.pipeline(requests, self.batch)
        if failed is not None:
            index, code, text = failed
            raise OperationFailed(run[index], _reason(run[index], code, text))

    def _link_op(self, op: ops.Op) -> None:
        match op:
            case ops.CreateLink(name=name):
                self._create_dummy(name, up=True)
            case ops.SetLinkUp(name=name):
                found = self._link(name)
                if found is None:
                    raise NetlinkError(errno.ENODEV)
                self._pipe.request(RTM_NEWLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, found[0], IFF_UP, IFF_UP))
            case ops.DeleteLink(name=name):
                found = self._link(name)
                if found is None:
                    raise NetlinkError(errno.ENODEV)
                self._delete(found[0])
            case _:
                raise TypeError(f"the link adapter does not handle {type(op).__name__}")
