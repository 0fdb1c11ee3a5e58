"""The real IPVS adapter: reads and programs the kernel's IP Virtual Server table over generic netlink.

Owns `IPVSKernel` (base.IPVSAdapter): IPVS messages over the pipelined transport
of `vsop.adapters.netlink`, which the link adapter shares. The per-operation messages are packed with
`struct` because pyroute2's message classes cost ~130 µs each to encode, which alone
would be several times what `ipvsadm -R` spends per rule.
Must not import: kopf, kubernetes, jinja2, vsop.core.plan/desired (adapters implement, they do not plan).
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import socket
import struct
import sys
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from vsop.adapters.base import OperationFailed
from vsop.adapters.netlink import (
    NLM_F_REQUEST,
    NetlinkError,
    BE16_AT,
    iter_attrs,
    NETLINK_GENERIC,
    NLA_HEADER,
    U16_AT,
    U32_AT,
    NetlinkPipe,
    address_text,
    attr_offsets,
    genl_family,
    kernel_refused,
    nla,
)
from vsop.core import ops
from vsop.core.state import RealServer, RealServerKey, ServiceKey, Traffic, VirtualServer
from vsop.api.errors import KernelUnsupported

NO_IPVS = "this kernel has no IPVS: load ip_vs or use mode: keepalived"

log = logging.getLogger("vsop.adapters.ipvs")
T = TypeVar("T")

# IPVS uapi (include/uapi/linux/ip_vs.h)
GENL_NAME, GENL_VERSION = "IPVS", 1
IPVS_CMD_NEW_SERVICE, IPVS_CMD_SET_SERVICE, IPVS_CMD_DEL_SERVICE, IPVS_CMD_GET_SERVICE = 1, 2, 3, 4
IPVS_CMD_NEW_DEST, IPVS_CMD_SET_DEST, IPVS_CMD_DEL_DEST, IPVS_CMD_GET_DEST = 5, 6, 7, 8
IP_VS_SVC_F_PERSISTENT = 0x1
IP_VS_CONN_F_MASQ, IP_VS_CONN_F_LOCALNODE, IP_VS_CONN_F_TUNNEL, IP_VS_CONN_F_DROUTE = 0, 1, 2, 3
_CMD_ATTR_SERVICE, _CMD_ATTR_DEST = 1, 2
(_SVC_AF, _SVC_PROTOCOL, _SVC_ADDR, _SVC_PORT, _SVC_FWMARK, _SVC_SCHED, _SVC_FLAGS, _SVC_TIMEOUT, _SVC_NETMASK) = range(1, 10)
(_DST_ADDR, _DST_PORT, _DST_FWD, _DST_WEIGHT, _DST_UTHRESH, _DST_LTHRESH, _DST_ACTIVE, _DST_INACTIVE) = range(1, 9)
_DST_ADDR_FAMILY = 11
_SVC_STATS, _SVC_STATS64 = 10, 12
_DST_PERSIST, _DST_STATS, _DST_STATS64 = 9, 10, 12
# IPVS_STATS_ATTR_*: the counters since the service or real server was created, and the
# rates the kernel's estimator keeps (per second, smoothed over a few seconds).
STATS_FIELDS = ("connections", "inPackets", "outPackets", "inBytes", "outBytes", "cps", "inPps", "outPps", "inBps", "outBps")

_PROTO_NUMBER = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
_PROTO_NAME = {number: name for name, number in _PROTO_NUMBER.items()}
_FWD_METHOD = {"masq": IP_VS_CONN_F_MASQ, "tunnel": IP_VS_CONN_F_TUNNEL, "route": IP_VS_CONN_F_DROUTE}
# LOCALNODE is what kernels before 2.6.37 stored for a real server that is a local
# address; nothing vsop writes carries it. Local delivery leaves the packet as it is,
# which is direct routing's behaviour, so it reads back as "route".
_FWD_NAME = {IP_VS_CONN_F_MASQ: "masq", IP_VS_CONN_F_LOCALNODE: "route", IP_VS_CONN_F_TUNNEL: "tunnel", IP_VS_CONN_F_DROUTE: "route"}


# --- message packing -----------------------------------------------------------------

_U16 = struct.Struct("=HHH2x")  # nla header + u16 + padding
_U32 = struct.Struct("=HHI")
_BE16 = struct.Struct("=HH")
_FLAGS = struct.Struct("=HHII")
_GENL = struct.Struct("=BBH")  # genlmsghdr: cmd, version, reserved


def _packed_address(address: str) -> tuple[int, bytes]:
    """(address family, the 16-byte union nf_inet_addr ipvsadm sends)."""
    if ":" in address:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, address)
    return socket.AF_INET, socket.inet_pton(socket.AF_INET, address) + bytes(12)


def _service_key_attrs(key: ServiceKey) -> bytes:
    af, addr = _packed_address(key.vip)
    return b"".join(
        (
            _U16.pack(6, _SVC_AF, af),
            _U16.pack(6, _SVC_PROTOCOL, _PROTO_NUMBER[key.protocol]),
            NLA_HEADER.pack(20, _SVC_ADDR) + addr,
            _BE16.pack(6, _SVC_PORT) + struct.pack("!H2x", key.port),
        )
    )


def _service_attrs(service: VirtualServer) -> bytes:
    key = service.key
    persistent = service.persistence_timeout > 0
    # The kernel refuses an IPv6 service without a prefix length in 1..128 (the
    # netmask attribute doubles as one); IPv4 wants a real mask. Both only matter
    # for persistence granularity: per client address.
    netmask = 128 if key.family == 6 else 0xFFFFFFFF
    # The mask limits the change to the persistence bit, so flags vsop does not
    # model (one-packet scheduling, sh/mh scheduler flags) survive an edit.
    return nla(
        _CMD_ATTR_SERVICE,
        _service_key_attrs(key)
        + nla(_SVC_SCHED, service.scheduler.encode() + b"\0")
        + _FLAGS.pack(12, _SVC_FLAGS, IP_VS_SVC_F_PERSISTENT if persistent else 0, IP_VS_SVC_F_PERSISTENT)
        + _U32.pack(8, _SVC_TIMEOUT, service.persistence_timeout if persistent else 0)
        + _U32.pack(8, _SVC_NETMASK, netmask),
    )


def _dest_attrs(key: RealServerKey, real_server: RealServer | None) -> bytes:
    af, addr = _packed_address(key.address)
    attrs = [
        NLA_HEADER.pack(20, _DST_ADDR) + addr,
        _BE16.pack(6, _DST_PORT) + struct.pack("!H2x", key.port),
        _U16.pack(6, _DST_ADDR_FAMILY, af),
    ]
    if real_server is not None:
        attrs += [
            _U32.pack(8, _DST_FWD, _FWD_METHOD[real_server.forwarding]),
            _U32.pack(8, _DST_WEIGHT, real_server.weight),
            _U32.pack(8, _DST_UTHRESH, 0),
            _U32.pack(8, _DST_LTHRESH, 0),
        ]
    return nla(_CMD_ATTR_DEST, b"".join(attrs))


def _genl(cmd: int, attrs: bytes) -> bytes:
    return _GENL.pack(cmd, GENL_VERSION, 0) + attrs


def encode(op: ops.Op) -> bytes:
    """The IPVS generic netlink body (genlmsghdr and attributes) doing `op`."""
    match op:
        case ops.AddService(service=service):
            return _genl(IPVS_CMD_NEW_SERVICE, _service_attrs(service))
        case ops.EditService(service=service):
            return _genl(IPVS_CMD_SET_SERVICE, _service_attrs(service))
        case ops.DeleteService(key=key):
            return _genl(IPVS_CMD_DEL_SERVICE, nla(_CMD_ATTR_SERVICE, _service_key_attrs(key)))
        case ops.AddRealServer(real_server=rs) | ops.EditRealServer(real_server=rs):
            # pyroute2's "update" verb sends IPVS_CMD_DEL_DEST; SET_DEST edits in place.
            cmd = IPVS_CMD_NEW_DEST if isinstance(op, ops.AddRealServer) else IPVS_CMD_SET_DEST
            return _genl(cmd, nla(_CMD_ATTR_SERVICE, _service_key_attrs(rs.key.service)) + _dest_attrs(rs.key, rs))
        case ops.DeleteRealServer(key=key):
            return _genl(IPVS_CMD_DEL_DEST, nla(_CMD_ATTR_SERVICE, _service_key_attrs(key.service)) + _dest_attrs(key, None))
    raise TypeError(f"the IPVS adapter does not handle {type(op).__name__}")


# --- message parsing -----------------------------------------------------------------


def _top_attr(payload: bytes, attr: int) -> tuple[int, int] | None:
    """(start, end) of the nested attribute `attr` right after the genlmsghdr."""
    at = attr_offsets(payload, 4, len(payload))
    if attr not in at:
        return None
    start = at[attr]
    return start, start - 4 + U16_AT.unpack_from(payload, start - 4)[0]


def _parse_service(buf: bytes, start: int, end: int) -> tuple[ServiceKey, VirtualServer] | None:
    at = attr_offsets(buf, start, end)
    if _SVC_FWMARK in at or _SVC_ADDR not in at:
        return None  # fwmark services have no VIP:port; never vsop's
    protocol = _PROTO_NAME.get(U16_AT.unpack_from(buf, at[_SVC_PROTOCOL])[0])
    if protocol is None:
        return None
    family = U16_AT.unpack_from(buf, at[_SVC_AF])[0]
    key = ServiceKey(protocol, address_text(family, buf, at[_SVC_ADDR]), BE16_AT.unpack_from(buf, at[_SVC_PORT])[0])
    flags = U32_AT.unpack_from(buf, at[_SVC_FLAGS])[0] if _SVC_FLAGS in at else 0
    timeout = U32_AT.unpack_from(buf, at[_SVC_TIMEOUT])[0] if _SVC_TIMEOUT in at else 0
    scheduler = ""
    if _SVC_SCHED in at:
        offset = at[_SVC_SCHED]
        length = U16_AT.unpack_from(buf, offset - 4)[0] - 4
        scheduler = buf[offset : offset + length].rstrip(b"\0").decode()
    return key, VirtualServer(key, scheduler, timeout if flags & IP_VS_SVC_F_PERSISTENT else 0)


def _parse_dest(service: ServiceKey, buf: bytes, start: int, end: int) -> RealServer:
    at = attr_offsets(buf, start, end)
    u32 = U32_AT.unpack_from
    if _DST_ADDR_FAMILY in at:
        family = U16_AT.unpack_from(buf, at[_DST_ADDR_FAMILY])[0]
    else:  # kernels before 4.x only had same-family real servers
        family = socket.AF_INET6 if service.family == 6 else socket.AF_INET
    key = RealServerKey(service, address_text(family, buf, at[_DST_ADDR]), BE16_AT.unpack_from(buf, at[_DST_PORT])[0])
    return RealServer(
        key,
        forwarding=_FWD_NAME.get(u32(buf, at[_DST_FWD])[0] & 0x7, "route") if _DST_FWD in at else "masq",  # type: ignore[arg-type]
        weight=u32(buf, at[_DST_WEIGHT])[0] if _DST_WEIGHT in at else 0,
        active_connections=u32(buf, at[_DST_ACTIVE])[0] if _DST_ACTIVE in at else 0,
        inactive_connections=u32(buf, at[_DST_INACTIVE])[0] if _DST_INACTIVE in at else 0,
    )


def _parse_traffic(service: ServiceKey, buf: bytes, start: int, end: int) -> tuple[RealServerKey, Traffic]:
    """A destination's key and its first three counters (connections, packets in, packets out), read
    from its STATS64 (else STATS) nest without parsing the rest: at 10k services, parsing every field
    of 20k destinations (`_parse_dest`, `parse_stats`) was most of a look's time."""
    at = attr_offsets(buf, start, end)
    if _DST_ADDR_FAMILY in at:
        family = U16_AT.unpack_from(buf, at[_DST_ADDR_FAMILY])[0]
    else:
        family = socket.AF_INET6 if service.family == 6 else socket.AF_INET
    key = RealServerKey(service, address_text(family, buf, at[_DST_ADDR]), BE16_AT.unpack_from(buf, at[_DST_PORT])[0])
    nest = at.get(_DST_STATS64, at.get(_DST_STATS))
    if nest is None:
        return key, Traffic()
    values = [0, 0, 0]
    offset, stop, seen = nest, nest + U16_AT.unpack_from(buf, nest - 4)[0] - 4, 0
    while offset + 4 <= stop and seen < 3:
        length, atype = NLA_HEADER.unpack_from(buf, offset)
        if length < 4:
            break
        if 1 <= atype <= 3:  # IPVS_STATS_ATTR_CONNS, _INPKTS, _OUTPKTS: u32 in STATS, u64 in STATS64
            values[atype - 1] = int.from_bytes(buf[offset + 4 : offset + length], sys.byteorder)
            seen += 1
        offset += (length + 3) & ~3
    return key, Traffic(*values)


def parse_stats(buf: bytes, start: int, end: int, kind: str) -> dict[str, int]:
    """The STATS64 (else STATS) nest of a service or destination message, as {field: value}.

    STATS carries u32 counters except the byte counts (u64); STATS64 is u64 throughout.
    The attribute's length says which, so both read the same way.
    """
    at = attr_offsets(buf, start, end)
    wide, narrow = (_SVC_STATS64, _SVC_STATS) if kind == "service" else (_DST_STATS64, _DST_STATS)
    nest = wide if wide in at else narrow if narrow in at else None
    if nest is None:
        return {}
    offset = at[nest]
    length = U16_AT.unpack_from(buf, offset - 4)[0] - 4
    stats: dict[str, int] = {}
    for atype, value in iter_attrs(buf[offset : offset + length]):
        if 1 <= atype <= len(STATS_FIELDS):
            stats[STATS_FIELDS[atype - 1]] = int.from_bytes(value, sys.byteorder)
    return stats


# --- errors in a person's words -------------------------------------------------------


def _reason(op: ops.Op, code: int, text: str) -> str:
    if code == errno.EPERM:
        return "permission denied: programming IPVS needs root (CAP_NET_ADMIN)"
    match op:
        case ops.AddService(service=s) | ops.EditService(service=s):
            if code == errno.EEXIST:
                return f"IPVS service {s.key} already exists"
            if code == errno.ESRCH:
                return f"IPVS service {s.key} does not exist"
            if code == errno.ENOENT:
                return f"scheduler {s.scheduler!r} is not available in this kernel (module ip_vs_{s.scheduler})"
        case ops.DeleteService(key=key):
            if code in (errno.ESRCH, errno.ENOENT):
                return f"IPVS service {key} does not exist"
        case ops.AddRealServer(real_server=rs) | ops.EditRealServer(real_server=rs):
            if code == errno.EINVAL:
                # ip_vs_new_dest refuses an IPv4 real server unless inet_addr_type()
                # says unicast or local: a broadcast address, or any address while
                # the namespace has no IPv4 address (no local table). A plain lookup
                # miss counts as unicast, so "no route" alone is accepted.
                return f"backend {rs.key.address} is not routable from this node"
            if code == errno.EEXIST:
                return f"real server {rs.key} of {rs.key.service} already exists"
            if code == errno.ESRCH:
                return f"IPVS service {rs.key.service} does not exist"
            if code == errno.ENOENT:
                return f"real server {rs.key} of {rs.key.service} does not exist"
        case ops.DeleteRealServer(key=key):
            if code == errno.ESRCH:
                return f"IPVS service {key.service} does not exist"
            if code == errno.ENOENT:
                return f"real server {key} of {key.service} does not exist"
    return kernel_refused(code, text)


# --- /proc/net/ip_vs ------------------------------------------------------------------

_PROC_FWD = {"Masq": "masq", "Local": "route", "Tunnel": "tunnel", "Route": "route"}


def _proc_address(text: str) -> tuple[str, int]:
    """ "A9FE0B02:0050" or "[fd00:0000:...:000a]:0035" -> ("169.254.11.2", 80)."""
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        return str(ipaddress.IPv6Address(host[1:-1])), int(port, 16)
    # The hex digits are the address in network order (ntohl, "%08X"); inet_ntop spells it
    # as ipaddress does, at a fraction of the cost.
    return socket.inet_ntop(socket.AF_INET, bytes.fromhex(host)), int(port, 16)


def parse_proc_ip_vs(text: str) -> dict[RealServerKey, RealServer]:
    """The real servers in /proc/net/ip_vs (ip_vs_info_seq_show's format), under their services.

    Services are read over netlink (their flags and timeouts are exact there); this
    only maps every destination line to the service line above it. Firewall-mark
    services have no VIP:port and are skipped with their destinations.
    """
    return _parse_proc(text, {}, {})


_Lines = dict[tuple[str, str], "RealServer | None"]


def _parse_proc(text: str, previous: _Lines, fresh: _Lines, listed: set[ServiceKey] | None = None) -> dict[RealServerKey, RealServer]:
    """parse_proc_ip_vs, reusing the real server parsed last time from the same (service line, line).

    `fresh` receives this read's lines: a line whose counters moved is parsed again, the
    others (all of them on an idle node) cost a dictionary lookup. `listed` receives the
    services whose lines the text has (a service without real servers has one too).
    """
    found: dict[RealServerKey, RealServer] = {}
    service: ServiceKey | None = None
    service_line = ""
    backends: dict[str, tuple[str, int]] = {}  # the same few real servers recur under many services
    for line in text.splitlines()[3:]:
        if line.startswith("  ->"):
            if service is None:
                continue
            # Interned: a destination's line is the same text under every service it serves
            # (thousands of copies of a few lines otherwise, kept as keys until the next read).
            pair = (service_line, sys.intern(line))
            rs = previous.get(pair)
            if rs is None:
                words = line.split()
                if len(words) < 6:
                    continue
                where = backends.get(words[1])
                if where is None:
                    where = backends[words[1]] = _proc_address(words[1])
                address, port = where
                key = RealServerKey(service, address, port)
                rs = RealServer(
                    key,
                    forwarding=_PROC_FWD.get(words[2], "route"),  # type: ignore[arg-type]
                    weight=int(words[3]),
                    active_connections=int(words[4]),
                    inactive_connections=int(words[5]),
                )
            fresh[pair] = rs
            found[rs.key] = rs
            continue
        words = line.split()
        if not words:
            continue
        protocol = words[0].lower()
        if protocol not in _PROTO_NUMBER or len(words) < 2:
            service = None  # FWM, or a protocol vsop never programs
            continue
        vip, port = _proc_address(words[1])
        service = ServiceKey(protocol, vip, port)  # type: ignore[arg-type]
        service_line = line
        if listed is not None:
            listed.add(service)
    return found


def _thread_netns() -> int | None:
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return None


# --- the adapter ---------------------------------------------------------------------


class IPVSKernel:
    """IPVS through generic netlink, in this network namespace or the named one.

    `netns`: a name under /var/run/netns or a path to a namespace file; None for the
    process's own. `batch`: how many operations go to the kernel in one write before
    their answers are read (1 = strictly one at a time).
    """

    handles = (ops.AddService, ops.EditService, ops.DeleteService, ops.AddRealServer, ops.EditRealServer, ops.DeleteRealServer)

    def __init__(self, netns: str | None = None, batch: int = 64, pipe: NetlinkPipe | None = None):
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.batch = batch
        self._pipe = pipe if pipe is not None else NetlinkPipe(NETLINK_GENERIC, netns)
        self._family: int | None = None
        # /proc/net/ip_vs lists every real server of every service in one read, but only
        # for the namespace of the thread reading it: used when that is the socket's.
        self._proc_netns = None if netns else _thread_netns()
        # The last read's raw bytes and what was parsed from them: a read that finds the same
        # bytes returns the same objects (an unchanged table costs the dump, not the parse;
        # callers never mutate what a read returns).
        # What the last read parsed, per service message and per /proc line (counters included,
        # so a busy service is parsed again): a read that finds them all again returns the same
        # objects, and a few busy services do not make the other 10k parsed again (callers
        # never mutate what a read returns).
        # Keyed by a digest of each message, not the message (10k of them, 300 bytes each).
        self._service_payloads: dict[bytes, tuple[ServiceKey, VirtualServer] | None] = {}
        self._last_services: dict[ServiceKey, VirtualServer] | None = None
        self._proc_lines: _Lines = {}
        self._last_proc: tuple[dict[ServiceKey, VirtualServer], dict[RealServerKey, RealServer]] | None = None
        # Services the netlink dump listed and /proc/net/ip_vs left out, summed over reads (see _all_real_servers).
        self.skipped_by_proc = 0

    def close(self) -> None:
        self._pipe.close()
        self._family = None

    def __enter__(self) -> "IPVSKernel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def family_id(self) -> int:
        if self._family is None:
            try:
                self._family = genl_family(self._pipe, GENL_NAME)
            except NetlinkError as e:
                if e.code == errno.ENOENT:
                    raise KernelUnsupported(NO_IPVS) from None
                raise
        return self._family

    def probe(self) -> None:
        self.family_id

    def family_moved(self) -> bool:
        """After ENOENT on the family: look its id up again. True when it changed (`rmmod ip_vs;
        modprobe ip_vs` gives the family a new id; every request to the old one answers ENOENT,
        which would otherwise read as a missing scheduler or service forever). KernelUnsupported
        when the kernel has no IPVS family now."""
        stale, self._family = self._family, None
        fresh = self.family_id
        if fresh == stale:
            return False
        log.warning("IPVS generic netlink family id changed, the ip_vs module was reloaded; using the new id old=%s new=%d", stale, fresh)
        return True

    def forget_reads(self) -> None:
        """Drop what the last reads parsed (the next read parses every message again). A resync's read
        made aside reads through another adapter (vsop.node.aside): once the cache holds what that one
        parsed, what this one keeps from the first read is a second copy of 10k services and their real
        servers that nothing else refers to."""
        self._service_payloads, self._last_services = {}, None
        self._proc_lines, self._last_proc = {}, None

    def generation(self) -> int:
        """The IPVS generic netlink family id, looked up afresh (one request): the kernel gives the
        family a new id each time ip_vs is loaded (ids are allocated cyclically), so a read made
        before a reload and one made after it answer different values."""
        if self._family is not None:
            self.family_moved()
        return self.family_id

    def _on_family(self, call: Callable[[int], T]) -> T:
        """`call(family id)`, once more with the id looked up again when the old one answers ENOENT."""
        try:
            return call(self.family_id)
        except NetlinkError as e:
            if e.code != errno.ENOENT or not self.family_moved():
                raise
        return call(self.family_id)

    def read(self) -> tuple[dict[ServiceKey, VirtualServer], dict[RealServerKey, RealServer]]:
        payloads = self._on_family(lambda family: self._pipe.dump(family, _genl(IPVS_CMD_GET_SERVICE, b"")))
        previous: dict[bytes, tuple[ServiceKey, VirtualServer] | None] = self._service_payloads
        fresh: dict[bytes, tuple[ServiceKey, VirtualServer] | None] = {}
        changed = len(payloads) != len(previous)
        for payload in payloads:
            digest = hashlib.blake2b(payload, digest_size=16).digest()
            if digest in previous:
                parsed = previous[digest]
            else:
                changed = True
                where = _top_attr(payload, _CMD_ATTR_SERVICE)
                parsed = _parse_service(payload, *where) if where is not None else None
            fresh[digest] = parsed
        self._service_payloads = fresh
        if changed or self._last_services is None:
            self._last_services = {parsed[0]: parsed[1] for parsed in fresh.values() if parsed is not None}
        services = self._last_services  # the same messages as last time: the same dict
        return services, self._all_real_servers(services)

    def _all_real_servers(self, services: dict[ServiceKey, VirtualServer]) -> dict[RealServerKey, RealServer]:
        """Every real server: one read of /proc/net/ip_vs where possible, else one dump per service.

        Netlink dumps destinations of one service per request and a socket runs one dump
        at a time, so at 10k services the per-service round trips dominate the whole read;
        the proc file is the same table rendered by the kernel in one pass.

        Kernel quirk: the proc file can leave services out. Reading it takes one read() per
        page or so, and each read() starts again from the position reached, which the
        kernel counts over the services of every network namespace (ip_vs_info_seq_next)
        but looks up over this namespace's only (ip_vs_info_array; Debian's 6.1 does). So
        when another namespace has IPVS services (a container runtime's, Docker Swarm's
        routing mesh, a lab's node), each read() after the first skips as many of this
        namespace's services as it passed of the others'. Their real servers would read as
        missing: the plan would add them again and the kernel refuse with EEXIST. The
        services the netlink dump listed (it counts positions consistently) and the proc
        file did not are therefore dumped over netlink, one request each.
        """
        if self._proc_netns is not None and self._proc_netns == _thread_netns():
            try:
                with open("/proc/thread-self/net/ip_vs", encoding="ascii") as f:
                    text = f.read()
            except OSError:
                self._proc_netns = None  # not readable here: netlink from now on
            else:
                lines: _Lines = {}
                listed: set[ServiceKey] = set()
                previous = self._proc_lines
                found = _parse_proc(text, previous, lines, listed)
                self._proc_lines = lines
                unlisted = [key for key in services if key not in listed]
                last = self._last_proc
                if not unlisted and last is not None and last[0] is services and len(lines) == len(previous) and all(pair in previous for pair in lines):
                    return last[1]  # every line as last time: the same dict
                found = {k: v for k, v in found.items() if k.service in services}
                if unlisted:
                    self.skipped_by_proc += len(unlisted)
                    found.update(self.read_real_servers(unlisted))
                # What the dumps read is not in the lines compared next time: no reuse after them.
                self._last_proc = None if unlisted else (services, found)
                return found
        return self.read_real_servers(services)

    def read_real_servers(self, services: Iterable[ServiceKey]) -> dict[RealServerKey, RealServer]:
        """One pipelined GET_DEST dump per service (many requests in flight, not one round trip each)."""
        real_servers: dict[RealServerKey, RealServer] = {}

        def take(service: ServiceKey, payload: bytes, start: int, end: int) -> None:
            rs = _parse_dest(service, payload, start, end)
            real_servers[rs.key] = rs

        self._each_dest(list(services), take, real_servers.clear)
        return real_servers

    def traffic(self, services: Iterable[ServiceKey]) -> dict[RealServerKey, Traffic]:
        """The counters of these services' real servers: one pipelined GET_DEST dump per service, as
        read_real_servers, keeping only the connections and packets of each destination's STATS64 nest
        (the in-cluster agent's look at the data path of the real servers it does not probe,
        vsop.kube.checkers.LocalProbes). A service that does not exist has none."""
        found: dict[RealServerKey, Traffic] = {}

        def take(service: ServiceKey, payload: bytes, start: int, end: int) -> None:
            key, counted = _parse_traffic(service, payload, start, end)
            found[key] = counted

        self._each_dest(list(services), take, found.clear)
        return found

    def _each_dest(self, keys: list[ServiceKey], take: Callable[[ServiceKey, bytes, int, int], None], restart: Callable[[], None]) -> None:
        """Every destination of these services, `take(service, message, start, end)` each: one pipelined
        GET_DEST dump per service; all of them again, after `restart()`, when ip_vs was reloaded under it."""

        def on_dest(index: int, payload: bytes) -> None:
            where = _top_attr(payload, _CMD_ATTR_DEST)
            if where is not None:
                take(keys[index], payload, *where)

        def bodies() -> Iterator[bytes]:
            return (_genl(IPVS_CMD_GET_DEST, nla(_CMD_ATTR_SERVICE, _service_key_attrs(key))) for key in keys)

        failed = self._pipe.dump_many(self.family_id, bodies(), on_dest)
        if errno.ENOENT in failed.values() and self.family_moved():  # not deleted: ip_vs reloaded under us
            restart()
            failed = self._pipe.dump_many(self.family_id, bodies(), on_dest)
        for index, code in failed.items():
            if code not in (errno.ESRCH, errno.ENOENT):  # those: deleted since the service dump
                raise NetlinkError(code, f"dumping the real servers of {keys[index]}: {os.strerror(code)}")

    def stats(self, keys: Sequence[ServiceKey]) -> tuple[dict[ServiceKey, dict[str, int]], dict[RealServerKey, dict[str, int]]]:
        """Counters and rates of the given services and of their real servers (`ipvsadm -Ln --stats --rate`).

        Separate from read(): the sync's read never pays for parsing counters; this is
        for `vsop explain`, which asks about a few services. A service that does not
        exist is left out.
        """
        family = self.family_id
        services: dict[ServiceKey, dict[str, int]] = {}
        dests: dict[RealServerKey, dict[str, int]] = {}
        wanted = list(keys)
        for key in wanted:
            try:
                replies = self._pipe.request(family, _genl(IPVS_CMD_GET_SERVICE, nla(_CMD_ATTR_SERVICE, _service_key_attrs(key))), NLM_F_REQUEST)
            except NetlinkError as e:
                if e.code in (errno.ESRCH, errno.ENOENT):
                    continue
                raise
            for payload in replies:
                where = _top_attr(payload, _CMD_ATTR_SERVICE)
                if where is not None:
                    services[key] = parse_stats(payload, *where, "service")

        def on_dest(index: int, payload: bytes) -> None:
            where = _top_attr(payload, _CMD_ATTR_DEST)
            if where is not None:
                rs = _parse_dest(present[index], payload, *where)
                dests[rs.key] = parse_stats(payload, *where, "dest")

        present = [key for key in wanted if key in services]
        bodies = (_genl(IPVS_CMD_GET_DEST, nla(_CMD_ATTR_SERVICE, _service_key_attrs(key))) for key in present)
        self._pipe.dump_many(family, bodies, on_dest)
        return services, dests

    def apply(self, operations: Sequence[ops.Op]) -> int:
        """Pipelined; on a refusal raises OperationFailed for the first refused operation.

        Operations before it are applied. A batch holds operations of one kind only
        (the plan groups them), so what may have been sent after the refused one
        (at most `batch - 1`, applied where the kernel could) is of the same kind and
        independent of it: a later kind, such as the removal of old real servers
        after new ones were added, is never sent past a failure. The next sync
        re-reads the kernel and converges.
        """
        if not operations:
            return 0
        for run in runs_of_one_kind(operations):
            failed = self._pipe.pipeline([(self.family_id, 0, encode(op)) for op in run], self.batch)
            if failed is not None and failed[1] == errno.ENOENT and self.family_moved():
                # Sent to a family id the kernel no longer has (ip_vs reloaded): nothing of this
                # run from the failed one on was applied; send it again to the new id, once.
                start = failed[0]
                failed = self._pipe.pipeline([(self.family_id, 0, encode(op)) for op in run[start:]], self.batch)
                failed = None if failed is None else (start + failed[0], failed[1], failed[2])
            if failed is not None:
                index, code, text = failed
                op = run[index]
                raise OperationFailed(op, _reason(op, code, text))
        return len(operations)


def runs_of_one_kind(operations: Sequence[ops.Op]) -> Iterator[Sequence[ops.Op]]:
    """Each maximal run of consecutive operations of one type."""
    start = 0
    for i in range(1, len(operations) + 1):
        if i == len(operations) or type(operations[i]) is not type(operations[start]):
            yield operations[start:i]
            start = i
