"""The real IPVS adapter: reads and programs the kernel's IP Virtual Server table over generic netlink.

Owns `IPVSKernel` (base.IPVSAdapter) and `NetlinkPipe`, the pipelined netlink transport
it shares with the link adapter. pyroute2 provides the network-namespace-aware socket
and the generic netlink family lookup; the per-operation messages are packed with
`struct` because pyroute2's message classes cost ~130 µs each to encode, which alone
would be several times what `ipvsadm -R` spends per rule.
Must not import: kopf, kubernetes, jinja2, vsop.core.plan/desired (adapters implement, they do not plan).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from typing import Callable, Iterable, Iterator, Sequence

from pyroute2 import netns as _netns
from pyroute2.netlink import GENL_ID_CTRL, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, ctrlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import ipvs as _ipvs

from vsop.adapters.base import OperationFailed
from vsop.core import ops
from vsop.core.state import RealServer, RealServerKey, ServiceKey, VirtualServer
from vsop.errors import KernelUnsupported

NO_IPVS = "this kernel has no IPVS: load ip_vs or use mode: keepalived"

NETLINK_GENERIC = 16
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
SOL_NETLINK = 270
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
CTRL_CMD_GETFAMILY = 3

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NLA = struct.Struct("=HH")

# IPVS uapi (include/uapi/linux/ip_vs.h)
IP_VS_SVC_F_PERSISTENT = 0x1
IP_VS_CONN_F_MASQ, IP_VS_CONN_F_LOCALNODE, IP_VS_CONN_F_TUNNEL, IP_VS_CONN_F_DROUTE = 0, 1, 2, 3
_CMD_ATTR_SERVICE, _CMD_ATTR_DEST = 1, 2
(_SVC_AF, _SVC_PROTOCOL, _SVC_ADDR, _SVC_PORT, _SVC_FWMARK, _SVC_SCHED, _SVC_FLAGS, _SVC_TIMEOUT, _SVC_NETMASK) = range(1, 10)
(_DST_ADDR, _DST_PORT, _DST_FWD, _DST_WEIGHT, _DST_UTHRESH, _DST_LTHRESH, _DST_ACTIVE, _DST_INACTIVE) = range(1, 9)
_DST_ADDR_FAMILY = 11

_PROTO_NUMBER = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
_PROTO_NAME = {number: name for name, number in _PROTO_NUMBER.items()}
_FWD_METHOD = {"masq": IP_VS_CONN_F_MASQ, "tunnel": IP_VS_CONN_F_TUNNEL, "route": IP_VS_CONN_F_DROUTE}
# LOCALNODE is what kernels before 2.6.37 stored for a real server that is a local
# address; nothing vsop writes carries it. Local delivery leaves the packet as it is,
# which is direct routing's behaviour, so it reads back as "route".
_FWD_NAME = {IP_VS_CONN_F_MASQ: "masq", IP_VS_CONN_F_LOCALNODE: "route", IP_VS_CONN_F_TUNNEL: "tunnel", IP_VS_CONN_F_DROUTE: "route"}


# --- netlink transport ---------------------------------------------------------------


class NetlinkPipe:
    """One netlink socket, optionally inside a named network namespace, that pipelines requests.

    `pipeline()` packs up to `batch` requests into one sendmsg() without waiting for
    each answer: only the last request of a batch asks for an ACK, and the kernel
    answers any failing request with an error carrying that request's sequence
    number (netlink_rcv_skb acks on error even without NLM_F_ACK). The kernel
    handles a netlink request synchronously inside sendmsg(), so when the last
    request's ACK arrives every error of the batch is already queued before it.
    """

    def __init__(self, protocol: int, netns: str | None = None):
        self.protocol = protocol
        self.netns = netns
        self._sock: socket.socket | None = None
        self._seq = (os.getpid() << 12) & 0x7FFFFFFF
        self._buf = bytearray(1 << 16)
        self.lock = threading.RLock()

    # Socket lifetime --------------------------------------------------------------

    @property
    def sock(self) -> socket.socket:
        if self._sock is None:
            if self.netns:
                try:
                    # flags=0: pyroute2 would otherwise create a missing namespace (O_CREAT).
                    sock = _netns.create_socket(self.netns, socket.AF_NETLINK, socket.SOCK_RAW, self.protocol, flags=0)
                except OSError as e:
                    raise OSError(e.errno, f"network namespace {self.netns}: {e.strerror}") from None
            else:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, self.protocol)
            for option, forced, value in ((socket.SO_SNDBUF, SO_SNDBUFFORCE, 1 << 20), (socket.SO_RCVBUF, SO_RCVBUFFORCE, 4 << 20)):
                try:  # the FORCE variants (root only) may exceed net.core.[rw]mem_max
                    sock.setsockopt(socket.SOL_SOCKET, forced, value)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, option, value)
            # Error replies carry only the failed request's header, plus the kernel's text.
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            sock.bind((0, 0))
            self._sock = sock
        return self._sock

    def close(self) -> None:
        with self.lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _reserve(self, count: int) -> None:
        """Keep the next `count` sequence numbers contiguous (no wrap inside a batch)."""
        if self._seq + count >= 0x7FFFFFFF:
            self._seq = 0

    # Receiving ----------------------------------------------------------------------

    def _messages(self) -> Iterator[tuple[int, int, int, memoryview]]:
        """(type, flags, seq, payload) of every message in the next datagram."""
        try:
            n = self.sock.recv_into(self._buf)
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                # Replies were dropped: which requests failed is unknown. Start afresh.
                self.close()
            raise
        view = memoryview(self._buf)[:n]
        offset = 0
        while offset + 16 <= n:
            length, mtype, flags, seq, _pid = _HDR.unpack_from(view, offset)
            if length < 16:
                break
            yield mtype, flags, seq, view[offset + 16 : offset + length]
            offset += (length + 3) & ~3

    @staticmethod
    def error_of(payload: memoryview, flags: int) -> tuple[int, str]:
        """(positive errno or 0, the kernel's extended-ACK text) of an NLMSG_ERROR payload."""
        code = -struct.unpack_from("=i", payload, 0)[0]
        text = ""
        if flags & NLM_F_ACK_TLVS:
            # With NETLINK_CAP_ACK the echoed request is only its 16-byte header.
            for atype, value in iter_attrs(payload, 4 + 16):
                if atype == NLMSGERR_ATTR_MSG:
                    text = bytes(value).rstrip(b"\0").decode(errors="replace")
        return code, text

    # Requests -----------------------------------------------------------------------

    def request(self, mtype: int, body: bytes, flags: int = NLM_F_REQUEST | NLM_F_ACK) -> list[bytes]:
        """One request; its replies' payloads (a dump's messages). Raises NetlinkError on error."""
        with self.lock:
            self._reserve(1)
            seq = self._next_seq()
            self.sock.send(_HDR.pack(16 + len(body), mtype, flags, seq, 0) + body)
            replies: list[bytes] = []
            while True:
                for rtype, rflags, rseq, payload in self._messages():
                    if rseq != seq:
                        continue  # a late reply to an abandoned request
                    if rtype == NLMSG_ERROR:
                        code, text = self.error_of(payload, rflags)
                        if code:
                            raise NetlinkError(code, text or os.strerror(code))
                        return replies
                    if rtype == NLMSG_DONE:
                        code = -struct.unpack_from("=i", payload, 0)[0] if len(payload) >= 4 else 0
                        if code > 0:
                            raise NetlinkError(code, os.strerror(code))
                        return replies
                    if rtype == NLMSG_OVERRUN:
                        raise NetlinkError(errno.EIO, "netlink dump overrun")
                    replies.append(bytes(payload))
                    if not rflags & 0x2:  # NLM_F_MULTI: a single answer to a get
                        if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                            return replies

    def dump(self, mtype: int, body: bytes) -> list[bytes]:
        return self.request(mtype, body, NLM_F_REQUEST | NLM_F_DUMP)

    def dump_many(self, mtype: int, bodies: Iterable[bytes], handle: Callable[[int, bytes], None]) -> dict[int, int]:
        """One dump per body, in turn; handle(body index, payload) for each reply.

        Returns {body index: errno} for the dumps the kernel refused. A netlink
        socket runs one dump at a time (a second request gets EBUSY until the first
        has sent NLMSG_DONE), so this cannot be pipelined; it is the tight loop of
        `request` for the thousands of per-service destination dumps.
        """
        failed: dict[int, int] = {}
        flags = NLM_F_REQUEST | NLM_F_DUMP
        unpack = _HDR.unpack_from
        with self.lock:
            sock, buf = self.sock, self._buf
            view = memoryview(buf)
            for i, body in enumerate(bodies):
                self._reserve(1)
                seq = self._next_seq()
                sock.send(_HDR.pack(16 + len(body), mtype, flags, seq, 0) + body)
                done = False
                while not done:
                    n = sock.recv_into(buf)
                    offset = 0
                    while offset + 16 <= n:
                        length, rtype, _flags, rseq, _pid = unpack(buf, offset)
                        if length < 16:
                            break
                        if rseq == seq:
                            if rtype == NLMSG_DONE:
                                done = True
                            elif rtype == NLMSG_ERROR:
                                code = -struct.unpack_from("=i", buf, offset + 16)[0]
                                if code:
                                    failed[i] = code
                                done = True
                            elif rtype != NLMSG_OVERRUN:
                                handle(i, bytes(view[offset + 16 : offset + length]))
                        offset += (length + 3) & ~3
        return failed

    def pipeline(self, requests: Sequence[tuple[int, int, bytes]], batch: int) -> tuple[int, int, str] | None:
        """Send (type, extra flags, body) requests `batch` at a time; stop after the first batch with an error.

        Returns None when all succeeded, else (index of the first failed request,
        errno, kernel text). Requests after the failed one within its batch were
        sent too (the kernel went on processing them); later batches were not sent.
        """
        with self.lock:
            for start in range(0, len(requests), batch):
                chunk = requests[start : start + batch]
                self._reserve(len(chunk))
                first_seq = self._seq + 1
                parts = []
                last = len(chunk) - 1
                for i, (mtype, extra, body) in enumerate(chunk):
                    flags = NLM_F_REQUEST | extra | (NLM_F_ACK if i == last else 0)
                    parts.append(_HDR.pack(16 + len(body), mtype, flags, self._next_seq(), 0))
                    parts.append(body)
                last_seq = self._seq
                self.sock.send(b"".join(parts))
                failed: tuple[int, int, str] | None = None
                done = False
                while not done:
                    try:
                        messages = list(self._messages())
                    except OSError as e:
                        if e.errno != errno.ENOBUFS:
                            raise
                        return start, e.errno, "netlink replies were lost (receive buffer overrun); the next sync re-reads the kernel"
                    for rtype, rflags, rseq, payload in messages:
                        if rtype != NLMSG_ERROR or not first_seq <= rseq <= last_seq:
                            continue
                        code, text = self.error_of(payload, rflags)
                        if code and (failed is None or rseq - first_seq < failed[0] - start):
                            failed = (start + rseq - first_seq, code, text)
                        if rseq == last_seq:
                            done = True
                if failed is not None:
                    return failed
        return None


def iter_attrs(data: memoryview | bytes, offset: int = 0) -> Iterator[tuple[int, memoryview]]:
    """(type without flag bits, payload) of each netlink attribute from `offset`."""
    view = memoryview(data)
    end = len(view)
    while offset + 4 <= end:
        length, atype = _NLA.unpack_from(view, offset)
        if length < 4:
            break
        yield atype & 0x3FFF, view[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def nla(atype: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _NLA.pack(length, atype) + payload + b"\0" * (-length & 3)


def genl_family(pipe: NetlinkPipe, name: str) -> int:
    """The generic netlink family id of `name`; NetlinkError(ENOENT) when the kernel has none."""
    msg = ctrlmsg()
    msg["cmd"] = CTRL_CMD_GETFAMILY
    msg["version"] = 1
    msg["attrs"] = [["CTRL_ATTR_FAMILY_NAME", name]]
    msg.encode()
    (reply,) = pipe.request(GENL_ID_CTRL, bytes(msg.data[16:]), NLM_F_REQUEST)
    parsed = ctrlmsg(_HDR.pack(16 + len(reply), GENL_ID_CTRL, 0, 0, 0) + reply)
    parsed.decode()
    return parsed.get_attr("CTRL_ATTR_FAMILY_ID")


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
            _NLA.pack(20, _SVC_ADDR) + addr,
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
        _NLA.pack(20, _DST_ADDR) + addr,
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
    return _GENL.pack(cmd, _ipvs.GENL_VERSION, 0) + attrs


def encode(op: ops.Op) -> bytes:
    """The IPVS generic netlink body (genlmsghdr and attributes) doing `op`."""
    match op:
        case ops.AddService(service=service):
            return _genl(_ipvs.IPVS_CMD_NEW_SERVICE, _service_attrs(service))
        case ops.EditService(service=service):
            return _genl(_ipvs.IPVS_CMD_SET_SERVICE, _service_attrs(service))
        case ops.DeleteService(key=key):
            return _genl(_ipvs.IPVS_CMD_DEL_SERVICE, nla(_CMD_ATTR_SERVICE, _service_key_attrs(key)))
        case ops.AddRealServer(real_server=rs) | ops.EditRealServer(real_server=rs):
            # pyroute2's "update" verb sends IPVS_CMD_DEL_DEST; SET_DEST edits in place.
            cmd = _ipvs.IPVS_CMD_NEW_DEST if isinstance(op, ops.AddRealServer) else _ipvs.IPVS_CMD_SET_DEST
            return _genl(cmd, nla(_CMD_ATTR_SERVICE, _service_key_attrs(rs.key.service)) + _dest_attrs(rs.key, rs))
        case ops.DeleteRealServer(key=key):
            return _genl(_ipvs.IPVS_CMD_DEL_DEST, nla(_CMD_ATTR_SERVICE, _service_key_attrs(key.service)) + _dest_attrs(key, None))
    raise TypeError(f"the IPVS adapter does not handle {type(op).__name__}")


# --- message parsing -----------------------------------------------------------------


_U16_AT = struct.Struct("=H")
_BE16_AT = struct.Struct("!H")
_U32_AT = struct.Struct("=I")


def attr_offsets(buf: bytes, offset: int, end: int) -> dict[int, int]:
    """{attribute type: offset of its payload} for the attributes in buf[offset:end].

    Offsets rather than slices: reading 10k services and 20k real servers walks
    some 400k attributes, and this is where read() spends its time.
    """
    found = {}
    unpack = _NLA.unpack_from
    while offset + 4 <= end:
        length, atype = unpack(buf, offset)
        if length < 4:
            break
        found[atype & 0x3FFF] = offset + 4
        offset += (length + 3) & ~3
    return found


def address_text(family: int, buf: bytes, offset: int) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, buf[offset : offset + 4])
    return str(ipaddress.IPv6Address(buf[offset : offset + 16]))  # the model's canonical spelling


def _top_attr(payload: bytes, attr: int) -> tuple[int, int] | None:
    """(start, end) of the nested attribute `attr` right after the genlmsghdr."""
    at = attr_offsets(payload, 4, len(payload))
    if attr not in at:
        return None
    start = at[attr]
    return start, start - 4 + _U16_AT.unpack_from(payload, start - 4)[0]


def _parse_service(buf: bytes, start: int, end: int) -> tuple[ServiceKey, VirtualServer] | None:
    at = attr_offsets(buf, start, end)
    if _SVC_FWMARK in at or _SVC_ADDR not in at:
        return None  # fwmark services have no VIP:port; never vsop's
    protocol = _PROTO_NAME.get(_U16_AT.unpack_from(buf, at[_SVC_PROTOCOL])[0])
    if protocol is None:
        return None
    family = _U16_AT.unpack_from(buf, at[_SVC_AF])[0]
    key = ServiceKey(protocol, address_text(family, buf, at[_SVC_ADDR]), _BE16_AT.unpack_from(buf, at[_SVC_PORT])[0])
    flags = _U32_AT.unpack_from(buf, at[_SVC_FLAGS])[0] if _SVC_FLAGS in at else 0
    timeout = _U32_AT.unpack_from(buf, at[_SVC_TIMEOUT])[0] if _SVC_TIMEOUT in at else 0
    scheduler = ""
    if _SVC_SCHED in at:
        offset = at[_SVC_SCHED]
        length = _U16_AT.unpack_from(buf, offset - 4)[0] - 4
        scheduler = buf[offset : offset + length].rstrip(b"\0").decode()
    return key, VirtualServer(key, scheduler, timeout if flags & IP_VS_SVC_F_PERSISTENT else 0)


def _parse_dest(service: ServiceKey, buf: bytes, start: int, end: int) -> RealServer:
    at = attr_offsets(buf, start, end)
    u32 = _U32_AT.unpack_from
    if _DST_ADDR_FAMILY in at:
        family = _U16_AT.unpack_from(buf, at[_DST_ADDR_FAMILY])[0]
    else:  # kernels before 4.x only had same-family real servers
        family = socket.AF_INET6 if service.family == 6 else socket.AF_INET
    key = RealServerKey(service, address_text(family, buf, at[_DST_ADDR]), _BE16_AT.unpack_from(buf, at[_DST_PORT])[0])
    return RealServer(
        key,
        forwarding=_FWD_NAME.get(u32(buf, at[_DST_FWD])[0] & 0x7, "route") if _DST_FWD in at else "masq",  # type: ignore[arg-type]
        weight=u32(buf, at[_DST_WEIGHT])[0] if _DST_WEIGHT in at else 0,
        active_connections=u32(buf, at[_DST_ACTIVE])[0] if _DST_ACTIVE in at else 0,
        inactive_connections=u32(buf, at[_DST_INACTIVE])[0] if _DST_INACTIVE in at else 0,
    )


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
    detail = f": {text}" if text else ""
    return f"the kernel refused it: {os.strerror(code).lower()} ({errno.errorcode.get(code, code)}){detail}"


# --- the adapter ---------------------------------------------------------------------


class IPVSKernel:
    """IPVS through generic netlink, in this network namespace or the named one.

    `netns`: a name under /var/run/netns or a path to a namespace file; None for the
    process's own. `batch`: how many operations go to the kernel in one write before
    their answers are read (1 = strictly one at a time).
    """

    handles = (ops.AddService, ops.EditService, ops.DeleteService, ops.AddRealServer, ops.EditRealServer, ops.DeleteRealServer)

    def __init__(self, netns: str | None = None, batch: int = 64):
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.batch = batch
        self._pipe = NetlinkPipe(NETLINK_GENERIC, netns)
        self._family: int | None = None

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
                self._family = genl_family(self._pipe, _ipvs.GENL_NAME)
            except NetlinkError as e:
                if e.code == errno.ENOENT:
                    raise KernelUnsupported(NO_IPVS) from None
                raise
        return self._family

    def probe(self) -> None:
        self.family_id

    def read(self) -> tuple[dict[ServiceKey, VirtualServer], dict[RealServerKey, RealServer]]:
        family = self.family_id
        services: dict[ServiceKey, VirtualServer] = {}
        for payload in self._pipe.dump(family, _genl(_ipvs.IPVS_CMD_GET_SERVICE, b"")):
            where = _top_attr(payload, _CMD_ATTR_SERVICE)
            parsed = _parse_service(payload, *where) if where is not None else None
            if parsed is not None:
                services[parsed[0]] = parsed[1]
        real_servers: dict[RealServerKey, RealServer] = {}
        keys = list(services)

        def on_dest(index: int, payload: bytes) -> None:
            where = _top_attr(payload, _CMD_ATTR_DEST)
            if where is not None:
                rs = _parse_dest(keys[index], payload, *where)
                real_servers[rs.key] = rs

        bodies = (_genl(_ipvs.IPVS_CMD_GET_DEST, nla(_CMD_ATTR_SERVICE, _service_key_attrs(key))) for key in keys)
        for index, code in self._pipe.dump_many(family, bodies, on_dest).items():
            if code not in (errno.ESRCH, errno.ENOENT):  # those: deleted since the service dump
                raise NetlinkError(code, f"dumping the real servers of {keys[index]}: {os.strerror(code)}")
        return services, real_servers

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
        family = self.family_id
        for run in runs_of_one_kind(operations):
            requests = [(family, 0, encode(op)) for op in run]
            failed = self._pipe.pipeline(requests, self.batch)
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
