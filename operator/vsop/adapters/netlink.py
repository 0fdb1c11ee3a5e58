"""Pipelined netlink: the transport and attribute helpers the IPVS and link adapters share.

Owns `NetlinkPipe` (one socket in a chosen network namespace, requests written in
batches with one ACK per batch, errors mapped back to the request that caused them),
attribute packing and offset-based parsing, the generic-netlink family lookup, and the
sentence for a refusal no adapter has a better word for.
Must not import: kopf, kubernetes, jinja2, vsop.core.plan/desired.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from typing import Callable, Iterable, Iterator, Sequence

# No pyroute2 here, nor in the adapters a sync uses: importing any part of it runs its package's
# __init__, which loads all of pyroute2 (about 190 modules, 10 MB of every agent's RSS). Only a
# socket in a named namespace borrows pyroute2.netns (tests and tools; agents use their own).
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
GENL_ID_CTRL = 0x10
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
_GENL_HEADER = struct.Struct("=BBH")  # genlmsghdr: cmd, version, reserved


class NetlinkError(Exception):
    """The kernel refused a netlink request: `code` is the positive errno (pyroute2's shape)."""

    def __init__(self, code: int, msg: str | None = None):
        super().__init__(code, msg or os.strerror(code))
        self.code = code


NETLINK_GENERIC = 16
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
SOL_NETLINK = 270
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
CTRL_CMD_GETFAMILY = 3

NLMSG_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
NLA_HEADER = struct.Struct("=HH")



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
                from pyroute2 import netns as _netns

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
            length, mtype, flags, seq, _pid = NLMSG_HEADER.unpack_from(view, offset)
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
            self.sock.send(NLMSG_HEADER.pack(16 + len(body), mtype, flags, seq, 0) + body)
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
        unpack = NLMSG_HEADER.unpack_from
        with self.lock:
            sock, buf = self.sock, self._buf
            view = memoryview(buf)
            for i, body in enumerate(bodies):
                self._reserve(1)
                seq = self._next_seq()
                sock.send(NLMSG_HEADER.pack(16 + len(body), mtype, flags, seq, 0) + body)
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
                    parts.append(NLMSG_HEADER.pack(16 + len(body), mtype, flags, self._next_seq(), 0))
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
        length, atype = NLA_HEADER.unpack_from(view, offset)
        if length < 4:
            break
        yield atype & 0x3FFF, view[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def nla(atype: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return NLA_HEADER.pack(length, atype) + payload + b"\0" * (-length & 3)


def genl_family(pipe: NetlinkPipe, name: str) -> int:
    """The generic netlink family id of `name`; NetlinkError(ENOENT) when the kernel has none."""
    body = _GENL_HEADER.pack(CTRL_CMD_GETFAMILY, 1, 0) + nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    (reply,) = pipe.request(GENL_ID_CTRL, body, NLM_F_REQUEST)
    at = attr_offsets(reply, _GENL_HEADER.size, len(reply))
    if CTRL_ATTR_FAMILY_ID not in at:
        raise NetlinkError(errno.ENOENT, f"no generic netlink family id for {name}")
    return U16_AT.unpack_from(reply, at[CTRL_ATTR_FAMILY_ID])[0]


U16_AT = struct.Struct("=H")
BE16_AT = struct.Struct("!H")
U32_AT = struct.Struct("=I")


def attr_offsets(buf: bytes, offset: int, end: int) -> dict[int, int]:
    """{attribute type: offset of its payload} for the attributes in buf[offset:end].

    Offsets rather than slices: reading 10k services and 20k real servers walks
    some 400k attributes, and this is where read() spends its time.
    """
    found = {}
    unpack = NLA_HEADER.unpack_from
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



def kernel_refused(code: int, text: str) -> str:
    """A refusal in a person's words when the adapter has no better sentence for that errno."""
    detail = f": {text}" if text else ""
    return f"the kernel refused it: {os.strerror(code).lower()} ({errno.errorcode.get(code, code)}){detail}"
