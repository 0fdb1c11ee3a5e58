"""ipsets: vsop's sets listed over netlink; members added and deleted over netlink, sets made and destroyed by `ipset restore`.

Owns reading vsop's sets by name (type, family, members with their comments, in the
text `ipset save` prints) and writing CreateSet / DestroySet / AddSetMember /
DeleteSetMember.

The rule: every AddSetMember of a new member and every DeleteSetMember goes over
hand-packed netlink, however few there are; CreateSet, DestroySet and AddSetMember with
replace (a comment changed in place) go through `ipset restore`, and so does everything
where ipset over netlink does not answer (ip_set not loaded yet, which the command
loads; a filtered socket). Why: each `ipset restore` is a process start, and the command
looks up every member's protocol and port in /etc/protocols and /etc/services when it
parses (getprotobyname, getservbyname even for a number). Natively that is cheap; where
starting a process and reading a file are slow (the VM's emulated CPU and 9p root) one
restore of one line costs about 0.2 s, and a new VIP needs two (its member in the VIP set
and in the VIP:port set, in two applies). A netlink message costs a round trip and reads
no file; in bulk it is as fast as the command natively (20k adds in about 0.2 s). (The
slow netlink was pyroute2's IPSet, one request and acknowledgement per member through its
generic machinery: 1000 adds in ~285 ms against the command's ~14 ms.) Adds are
pipelined, a refusal taking back what the kernel added after it; deletes go one
acknowledged message at a time (why: `_delete`). A set is made or destroyed rarely, and
a replaced comment could not be taken back after a later refusal: those stay with the
command.
Reading lists each set over netlink, spelling members as `ipset save` does, except what
only the command spells reliably (other set types, ICMP members, ranges): `ipset save
NAME` reads those (the command calls getprotobynumber for every member it prints).
Both paths are kept (`netlink_from=None`: the command alone); the contract tests run on both.
Must not import: kopf, kubernetes, jinja2.
"""

from __future__ import annotations

import errno
import hashlib
import re
import sys
import shutil
import socket
import struct
import subprocess
from itertools import groupby
from typing import Sequence

from vsop.adapters.base import OperationFailed
from vsop.adapters.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HEADER, NetlinkError, NetlinkPipe, attr_offsets, kernel_refused, nla
from vsop.core import ops
from vsop.core.state import IPSet
from vsop.api.errors import KernelUnsupported

# The ipset command refuses longer comments (the kernel's IPSET_MAX_COMMENT_SIZE).
MAX_COMMENT_LENGTH = 255
_FAMILY_WORD = {4: "inet", 6: "inet6"}
_FAMILY_NUMBER = {"inet": 4, "inet6": 6}
_MISSING_SET = "The set with the given name does not exist"
_FAILED_LINE = re.compile(r"Error in line (\d+):\s*(.*)")
_COMMENT = re.compile(r'(?:^| )comment "([^"]*)"')

# ipset over nfnetlink (include/uapi/linux/netfilter/ipset/ip_set.h); what pyroute2's ipset module sends.
NETLINK_NETFILTER = 12
NFNL_SUBSYS_IPSET = 6
IPSET_CMD_PROTOCOL, IPSET_CMD_LIST, IPSET_CMD_ADD, IPSET_CMD_DEL = 1, 7, 9, 10
IPSET_PROTOCOL = 7
_ATTR_PROTOCOL, _ATTR_SETNAME, _ATTR_TYPENAME, _ATTR_FAMILY, _ATTR_DATA, _ATTR_ADT = 1, 2, 3, 5, 7, 8
_ATTR_IP, _ATTR_IP_TO, _ATTR_CIDR, _ATTR_PORT, _ATTR_PORT_TO, _ATTR_PROTO, _ATTR_CADT_FLAGS, _ATTR_COMMENT = 1, 2, 3, 4, 5, 7, 8, 26
_ATTR_IP2, _ATTR_CIDR2 = 20, 21  # hash:ip,port,net's third part: the network and its prefix length
IPSET_FLAG_WITH_COMMENT = 1 << 4
_PROTO_NAME = {6: "tcp", 17: "udp", 132: "sctp"}  # as getprotobynumber spells them in `ipset save`
_NFPROTO_FAMILY = {2: 4, 10: 6}
_ATTR_IPADDR_IPV4, _ATTR_IPADDR_IPV6 = 1, 2
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NLM_F_EXCL = 0x200  # without it an add of a present member, or a delete of a missing one, succeeds (ipset's -exist)
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id
_PROTO_NUMBER = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
IPSET_ERR_EXIST, IPSET_ERR_COMMENT, IPSET_ERR_HASH_FULL = 4103, 4112, 4352
# The ipset command's words for the kernel's refusals (ipset's lib/errcode.c), so both paths
# read alike. IPSET_ERR_EXIST is per command: to an add the member is there, to a delete it is not.
_REFUSED = {
    IPSET_CMD_ADD: {
        errno.ENOENT: _MISSING_SET,
        IPSET_ERR_EXIST: "Element cannot be added to the set: it's already added",
        IPSET_ERR_COMMENT: "Comment cannot be used: set was created without comment support",
        IPSET_ERR_HASH_FULL: "Hash is full, cannot add more elements",
    },
    IPSET_CMD_DEL: {
        errno.ENOENT: _MISSING_SET,
        IPSET_ERR_EXIST: "Element cannot be deleted from the set: it's not added",
    },
}
# Runs of at least this many new members added or members deleted go over netlink (shorter
# ones: through `ipset restore`). 1: all of them; the module docstring says why.
NETLINK_FROM = 1


class _NoNetlink(Exception):
    """ipset over netlink is not answering here (no ip_set loaded yet, a filtered socket): use the command."""


class IPSetReadFailed(RuntimeError):
    """`ipset save` failed for a reason other than the set being absent."""


class IPSetKernel:
    """The IPSetAdapter of a real kernel, in the network namespace of the calling thread."""

    handles = (ops.CreateSet, ops.DestroySet, ops.AddSetMember, ops.DeleteSetMember)

    def __init__(self, binary: str = "ipset", *, timeout_seconds: float = 120.0, netlink_from: int | None = NETLINK_FROM, batch: int = 64):
        self._binary = binary
        self._netlink_from = netlink_from  # None: never netlink
        self._batch = batch
        self._timeout = timeout_seconds
        # Each set's last `ipset save` text and what was parsed from it: the same text next
        # time returns the same object (callers never mutate what a read returns).
        self._last: dict[str, tuple[str, IPSet | None]] = {}
        self._last_listed: dict[str, tuple[bytes, IPSet | None]] = {}  # the same for the netlink listing (a digest of it)

    def read(self, names: frozenset[str]) -> dict[str, IPSet]:
        """vsop's sets: listed over netlink when `netlink_from` is set, else (or for a set of a type
        or content the netlink reader does not spell) through `ipset save NAME`."""
        if self._netlink_from is None:
            return self._read_saved(names)
        found: dict[str, IPSet] = {}
        unusual: set[str] = set()
        pipe = NetlinkPipe(NETLINK_NETFILTER)  # in the calling thread's namespace, as the command would be
        try:
            try:
                protocol = _protocol(pipe)
            except _NoNetlink:
                return self._read_saved(names)  # the command says what is wrong, as before
            for name in sorted(names):
                try:
                    payloads = pipe.dump((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST, _list_body(name, protocol))
                except NetlinkError as exc:
                    if exc.code == errno.ENOENT:
                        continue  # no such set
                    raise IPSetReadFailed(f"listing ipset {name} over netlink: {exc}") from None
                raw = hashlib.blake2b(b"".join(payloads), digest_size=16).digest()  # not the listing itself: 1 MB at 10k members
                last = self._last_listed.get(name)
                if last is not None and last[0] == raw:
                    parsed = last[1]
                else:
                    parsed = parse_listed(name, payloads)
                    self._last_listed[name] = (raw, parsed)
                if parsed is None:
                    unusual.add(name)
                else:
                    found[name] = parsed
        finally:
            pipe.close()
        if unusual:
            found.update(self._read_saved(frozenset(unusual)))
        return found

    def _read_saved(self, names: frozenset[str]) -> dict[str, IPSet]:
        # `ipset list -n` prints names only, cheap however big the foreign sets are; then
        # one `ipset save NAME` per set of ours that exists (save takes a single name).
        listed = self._run(["list", "-n"])
        if listed.returncode != 0:
            raise IPSetReadFailed(f"ipset list -n: {_first_line(listed.stderr)}")
        found: dict[str, IPSet] = {}
        for name in sorted(names & set(listed.stdout.split())):
            result = self._run(["save", name])
            if result.returncode != 0:
                if _MISSING_SET in result.stderr:
                    continue  # destroyed since it was listed
                raise IPSetReadFailed(f"ipset save {name}: {_first_line(result.stderr)}")
            last = self._last.get(name)
            if last is not None and last[0] == result.stdout:
                parsed = last[1]
            else:
                parsed = parse_save(result.stdout).get(name)
                self._last[name] = (result.stdout, parsed)
            if parsed is not None:
                found[name] = parsed
        return found

    def apply(self, operations: Sequence[ops.Op]) -> int:
        """Each run of new members added and members deleted over netlink, the rest through `ipset restore`, in order."""
        packed = self._packed(operations)
        start = 0
        for begin, end in _netlink_runs(packed, self._netlink_from):
            self._apply_restore(operations[start:begin])
            self._apply_netlink(operations[begin:end], packed[begin:end])  # type: ignore[arg-type]
            start = end
        self._apply_restore(operations[start:])
        return len(operations)

    def _packed(self, operations: Sequence[ops.Op]) -> list[tuple[int, bytes] | None]:
        """Each op's member as netlink carries it (the message's family, its data attribute); None
        for an op the command writes: a set made or destroyed, a replaced comment (it could not
        be taken back after a later refusal), a member this module does not spell (an ICMP type
        or a range in a set made by hand), one `ipset restore` refuses (it refuses it alike)."""
        if self._netlink_from is None:
            return [None] * len(operations)
        packed: list[tuple[int, bytes] | None] = []
        for op in operations:
            data = None
            if isinstance(op, ops.DeleteSetMember) or (isinstance(op, ops.AddSetMember) and not op.replace):
                try:
                    restore_line(op)
                    data = member_data(op.member, op.comment if isinstance(op, ops.AddSetMember) else "")
                except ValueError:
                    pass
            packed.append(data)
        return packed

    def _apply_netlink(self, operations: Sequence[ops.Op], packed: Sequence[tuple[int, bytes]]) -> None:
        pipe = NetlinkPipe(NETLINK_NETFILTER)  # a socket in the calling thread's namespace, as the command would be
        try:
            try:
                protocol = _protocol(pipe)
            except _NoNetlink:
                self._apply_restore(operations)  # the command loads ip_set or says what is wrong, as before
                return
            # In the order given: each stretch of adds or of deletes is answered in full before the next is sent.
            start = 0
            for adding, stretch in groupby(operations, key=lambda op: isinstance(op, ops.AddSetMember)):
                chunk = list(stretch)
                bodies = [member_message(op.set_name, packed[start + i], protocol) for i, op in enumerate(chunk)]
                if adding:
                    self._add(pipe, chunk, bodies, protocol)  # type: ignore[arg-type]
                else:
                    self._delete(pipe, chunk, bodies)  # type: ignore[arg-type]
                start += len(chunk)
        finally:
            pipe.close()

    def _add(self, pipe: NetlinkPipe, adds: Sequence[ops.AddSetMember], bodies: Sequence[bytes], protocol: int) -> None:
        """Add new members, a batch per write, each message acknowledged; on a refusal, take back
        what the kernel added after it in that batch.

        `ipset restore` stops at the first failing line; the kernel goes on with the rest of a
        write. Every add here is exclusive (NLM_F_EXCL), so one that succeeded after the
        refused one added a member that was not there: deleting it leaves the set exactly as
        a restore stopping at that line would.
        """
        for start in range(0, len(adds), self._batch):
            chunk = adds[start : start + self._batch]
            requests = [((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_ADD, NLM_F_EXCL, body) for body in bodies[start : start + self._batch]]
            codes = _acknowledged(pipe, requests)
            failed = next((index for index, (code, _) in enumerate(codes) if code), None)
            if failed is None:
                continue
            undo = [
                ((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_DEL, 0, member_message(op.set_name, member_data(op.member, ""), protocol))
                for op, (code, _) in zip(chunk[failed + 1 :], codes[failed + 1 :])
                if code == 0
            ]
            if undo:
                _acknowledged(pipe, undo)
            code, text = codes[failed]
            raise OperationFailed(chunk[failed], _refused(IPSET_CMD_ADD, code, text))

    def _delete(self, pipe: NetlinkPipe, deletes: Sequence[ops.DeleteSetMember], bodies: Sequence[bytes]) -> None:
        """Delete members one acknowledged message at a time, stopping at the first refusal.

        Not pipelined with an undo as adds are, because a delete cannot be taken back
        exactly: the op carries no comment, and a member of a set made by hand may hold a
        timeout, counters or skbinfo that no re-add restores; and the kernel goes on with
        the messages after a refused one in the same write (ipset has no netlink batch to
        stop it). Waiting for each answer costs a round trip per member: natively about
        15 us, so 1 delete takes 0.1 ms against 3 ms through the command, and 5000 about
        90 ms against 75 ms (the command in one process); a change turn deletes a few.
        """
        for op, body in zip(deletes, bodies):
            # Exclusive: without NLM_F_EXCL the kernel takes a missing member as deleted (ipset's -exist).
            [(code, text)] = _acknowledged(pipe, [((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_DEL, NLM_F_EXCL, body)])
            if code:
                raise OperationFailed(op, _refused(IPSET_CMD_DEL, code, text))

    def _apply_restore(self, operations: Sequence[ops.Op]) -> int:
        lines: list[str] = []
        for op in operations:
            try:
                lines.append(restore_line(op))
            except ValueError as refused:
                # Refused before the kernel sees it; what precedes it must still be applied.
                self._restore(operations[: len(lines)], lines)
                raise OperationFailed(op, str(refused)) from None
        self._restore(operations, lines)
        return len(operations)

    def _restore(self, operations: Sequence[ops.Op], lines: list[str]) -> None:
        if not lines:
            return
        try:
            result = self._run(["restore"], "\n".join(lines) + "\n")
        except subprocess.TimeoutExpired:
            raise OperationFailed(
                operations[0], f"ipset restore did not finish in {self._timeout:g} s; how much of this batch was applied is unknown"
            ) from None
        if result.returncode == 0:
            return
        # ipset restore is not a transaction: lines before the failing one stay applied,
        # none after it run; so the op on that line is the first one not applied.
        failed = _FAILED_LINE.search(result.stderr)
        if failed is not None and 1 <= int(failed.group(1)) <= len(operations):
            raise OperationFailed(operations[int(failed.group(1)) - 1], failed.group(2).strip())
        raise OperationFailed(
            operations[0], f"ipset restore failed and named no line, so this batch's state is unknown: {_first_line(result.stderr)}"
        )

    def _run(self, arguments: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        binary = shutil.which(self._binary) or shutil.which(self._binary, path="/usr/sbin:/sbin")
        if binary is None:
            raise KernelUnsupported(f"the {self._binary} command is not installed")
        return subprocess.run(
            [binary, *arguments], input=stdin, capture_output=True, text=True, timeout=self._timeout, check=False
        )


def _netlink_runs(packed: Sequence[object], shortest: int | None) -> list[tuple[int, int]]:
    """(start, end) of each run of at least `shortest` consecutive ops with a packed member."""
    if shortest is None:
        return []
    found: list[tuple[int, int]] = []
    begin = None
    for index, data in enumerate([*packed, None]):
        if data is not None:
            begin = index if begin is None else begin
            continue
        if begin is not None and index - begin >= shortest:
            found.append((begin, index))
        begin = None
    return found


def _acknowledged(pipe: NetlinkPipe, requests: list[tuple[int, int, bytes]]) -> list[tuple[int, str]]:
    """Send the requests in one write, each asking for an ACK; (errno or 0, kernel text) of each, in order."""
    with pipe.lock:
        pipe._reserve(len(requests))
        first = pipe._seq + 1
        parts = []
        for mtype, extra, body in requests:
            parts.append(NLMSG_HEADER.pack(16 + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK | extra, pipe._next_seq(), 0))
            parts.append(body)
        pipe.sock.send(b"".join(parts))
        codes: dict[int, tuple[int, str]] = {}
        while len(codes) < len(requests):
            for rtype, rflags, rseq, payload in pipe._messages():
                if rtype == NLMSG_ERROR and first <= rseq < first + len(requests):
                    codes[rseq - first] = pipe.error_of(payload, rflags)
        return [codes[index] for index in range(len(requests))]


def _list_body(name: str, protocol: int) -> bytes:
    return _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0) + nla(_ATTR_PROTOCOL, bytes([protocol])) + nla(_ATTR_SETNAME, name.encode() + b"\0")


def parse_listed(name: str, payloads: Sequence[bytes]) -> IPSet | None:
    """The set as `parse_save` would read `ipset save NAME`, from the IPSET_CMD_LIST dump's messages.

    None for what only the command spells reliably: a type other than hash:ip and
    hash:ip,port, a protocol other than tcp/udp/sctp (ipset prints ICMP types by name),
    ranges or networks.
    """
    kind: str | None = None
    family: int | None = None
    comments = False
    members: dict[str, str] = {}
    for payload in payloads:
        top = attr_offsets(payload, _NFGENMSG.size, len(payload))
        if _ATTR_TYPENAME in top:
            kind = _string(payload, top[_ATTR_TYPENAME])
            family = _NFPROTO_FAMILY.get(payload[top[_ATTR_FAMILY]]) if _ATTR_FAMILY in top else None
            if _ATTR_DATA in top:
                header = attr_offsets(payload, top[_ATTR_DATA], _end(payload, top[_ATTR_DATA]))
                if _ATTR_CADT_FLAGS in header:
                    comments = bool(struct.unpack_from("!I", payload, header[_ATTR_CADT_FLAGS])[0] & IPSET_FLAG_WITH_COMMENT)
        if kind not in ("hash:ip", "hash:ip,port") or family is None:
            return None
        if _ATTR_ADT not in top:
            continue
        start = top[_ATTR_ADT]
        end = _end(payload, start)
        while start + 4 <= end:
            length = struct.unpack_from("=H", payload, start)[0]
            if length < 4:
                break
            element = attr_offsets(payload, start + 4, start + length)
            start += (length + 3) & ~3
            if _ATTR_IP not in element or _ATTR_IP_TO in element or _ATTR_CIDR in element or _ATTR_PORT_TO in element:
                return None
            address_at = element[_ATTR_IP] + 4  # the one attribute inside the IP nest
            if family == 4:
                member = socket.inet_ntop(socket.AF_INET, payload[address_at : address_at + 4])
            else:
                member = socket.inet_ntop(socket.AF_INET6, payload[address_at : address_at + 16])
            if kind == "hash:ip,port":
                proto = _PROTO_NAME.get(payload[element[_ATTR_PROTO]]) if _ATTR_PROTO in element else None
                if proto is None or _ATTR_PORT not in element:
                    return None
                member = f"{member},{proto}:{struct.unpack_from('!H', payload, element[_ATTR_PORT])[0]}"
            members[member] = sys.intern(_string(payload, element[_ATTR_COMMENT])) if _ATTR_COMMENT in element else ""  # an owner ref: shared
    if kind is None or family is None:
        return None
    return IPSet(name, kind, family, members, comments)  # type: ignore[arg-type]


def _end(payload: bytes, offset: int) -> int:
    """Where the attribute whose payload starts at `offset` ends."""
    return offset - 4 + struct.unpack_from("=H", payload, offset - 4)[0]


def _string(payload: bytes, offset: int) -> str:
    return bytes(payload[offset : _end(payload, offset)]).split(b"\0", 1)[0].decode(errors="replace")


def _protocol(pipe: NetlinkPipe) -> int:
    """The ipset protocol version to speak: the kernel's, at most the one this module knows."""
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0) + nla(_ATTR_PROTOCOL, bytes([IPSET_PROTOCOL]))
    try:
        replies = pipe.request((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_PROTOCOL, body)
    except (OSError, NetlinkError) as exc:
        raise _NoNetlink(str(exc)) from None
    for reply in replies:
        offset = _NFGENMSG.size
        while offset + 4 <= len(reply):
            length, atype = struct.unpack_from("=HH", reply, offset)
            if length < 4:
                break
            if atype & 0x3FFF == _ATTR_PROTOCOL:
                return min(reply[offset + 4], IPSET_PROTOCOL)
            offset += (length + 3) & ~3
    return IPSET_PROTOCOL


def member_data(member: str, comment: str) -> tuple[int, bytes]:
    """One member ("VIP", "VIP,proto:port" or "VIP,proto:port,NET") as IPSET_CMD_ADD and IPSET_CMD_DEL
    carry it: (NFPROTO family, the IPSET_ATTR_DATA attribute), with its comment when one is given
    (an add's). ValueError for what this module does not spell."""
    address, _, port_spec = member.partition(",")
    port_spec, _, network = port_spec.partition(",")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    ip_kind = _ATTR_IPADDR_IPV6 if family == socket.AF_INET6 else _ATTR_IPADDR_IPV4
    data = nla(NLA_F_NESTED | _ATTR_IP, nla(NLA_F_NET_BYTEORDER | ip_kind, _address(family, address)))
    if port_spec:
        proto, _, port = port_spec.partition(":")
        number = _PROTO_NUMBER.get(proto)
        if number is None or not port.isdigit() or int(port) > 0xFFFF:
            raise ValueError(f"cannot parse {port_spec!r} as a protocol and port")
        data += nla(NLA_F_NET_BYTEORDER | _ATTR_PORT, struct.pack("!H", int(port)))
        data += nla(NLA_F_NET_BYTEORDER | _ATTR_PROTO, bytes([number]))
    if network:
        net_address, _, length = network.partition("/")
        longest = 128 if family == socket.AF_INET6 else 32
        if length and not (length.isdigit() and int(length) <= longest):
            raise ValueError(f"cannot parse {network!r} as a network")
        data += nla(NLA_F_NESTED | _ATTR_IP2, nla(NLA_F_NET_BYTEORDER | ip_kind, _address(family, net_address)))
        data += nla(_ATTR_CIDR2, bytes([int(length) if length else longest]))
    if comment:
        data += nla(_ATTR_COMMENT, comment.encode() + b"\0")
    return (2 if family == socket.AF_INET else 10), nla(NLA_F_NESTED | _ATTR_DATA, data)  # NFPROTO_IPV4 / NFPROTO_IPV6


def member_message(set_name: str, packed: tuple[int, bytes], protocol: int = IPSET_PROTOCOL) -> bytes:
    """The nfnetlink body of IPSET_CMD_ADD or IPSET_CMD_DEL for a member packed by `member_data`."""
    family, data = packed
    return b"".join((
        _NFGENMSG.pack(family, 0, 0),
        nla(_ATTR_PROTOCOL, bytes([protocol])),
        nla(_ATTR_SETNAME, set_name.encode() + b"\0"),
        data,
    ))


def _address(family: int, text: str) -> bytes:
    try:
        return socket.inet_pton(family, text)
    except OSError:  # a ValueError as any other member this module does not spell: the command writes it
        raise ValueError(f"cannot parse {text!r} as an IPv{6 if family == socket.AF_INET6 else 4} address") from None


def _refused(command: int, code: int, text: str) -> str:
    """The command's words for the kernel's refusal of an add or delete; the kernel's own otherwise."""
    if code in _REFUSED[command]:
        return _REFUSED[command][code]
    if code >= 4096:  # ipset's own error numbers
        return f"the kernel refused it: ipset error {code}{': ' + text if text else ''}"
    return kernel_refused(code, text)


def restore_line(op: ops.Op) -> str:
    """One `ipset restore` line per op, so a failing line number names its op."""
    match op:
        case ops.CreateSet(ipset=ipset):
            return f"create {ipset.name} {ipset.kind} family {_FAMILY_WORD[ipset.family]} comment"
        case ops.DestroySet(name=name):
            return f"destroy {name}"
        case ops.AddSetMember(set_name=name, member=member, comment=comment, replace=replace):
            # -exist turns an add of a present member into an update of its comment; with
            # no comment given the kernel clears the old one.
            exist = "-exist " if replace else ""
            return f"add {exist}{name} {member}{_comment_words(comment)}"
        case ops.DeleteSetMember(set_name=name, member=member):
            return f"del {name} {member}"
    raise TypeError(f"IPSetKernel does not handle {type(op).__name__}")


def _comment_words(comment: str) -> str:
    if not comment:
        return ""
    if '"' in comment or "\n" in comment:
        raise ValueError('an ipset comment cannot contain a double quote or a newline')
    if len(comment) > MAX_COMMENT_LENGTH:
        raise ValueError(f"an ipset comment is at most {MAX_COMMENT_LENGTH} characters")
    return f' comment "{comment}"'


def parse_save(text: str) -> dict[str, IPSet]:
    """Sets from `ipset save` output: headers from `create` lines, members from `add` lines."""
    headers: dict[str, tuple[str, int, bool]] = {}
    members: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if line.startswith("add "):
            # No shlex here (it is the whole cost of reading a big set): only a comment is
            # quoted, and ipset refuses a double quote inside one.
            words = line.split(" ", 3)
            if len(words) >= 3:
                comment = _COMMENT.search(words[3]) if len(words) > 3 else None
                members.setdefault(words[1], {})[words[2]] = sys.intern(comment.group(1)) if comment else ""  # an owner ref: shared
        elif line.startswith("create "):
            words = line.split()
            if len(words) >= 3:
                # bitmap:* and list:set have no family; vsop never makes them, the planner refuses them.
                family = _FAMILY_NUMBER.get(_option(words[3:], "family") or "inet", 4)
                headers[words[1]] = (words[2], family, "comment" in words[3:])
                members.setdefault(words[1], {})
    return {
        name: IPSet(name, kind, family, members[name], comments)  # type: ignore[arg-type]
        for name, (kind, family, comments) in headers.items()
    }


def _option(words: list[str], key: str) -> str | None:
    """The value after `key`; flags like `counters` stand alone, so search rather than pair up."""
    for index, word in enumerate(words[:-1]):
        if word == key:
            return words[index + 1]
    return None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no error output"
