"""Unit tier: the IPVS adapter's hand-packed netlink messages, without a kernel.

pyroute2's own IPVS message class must decode what vsop packs to the attributes
ipvsadm sends, and vsop's parser must read its own messages back (the kernel's dump
replies use the same attributes).
"""

from __future__ import annotations

import socket

import pytest
from pyroute2.netlink.generic import ipvs as pyroute2_ipvs

from vsop.adapters import ipvs, netlink
from vsop.core import ops
from vsop.core.state import RealServer, RealServerKey, ServiceKey, VirtualServer

WEB = ServiceKey("tcp", "192.0.2.10", 80)
WEB6 = ServiceKey("sctp", "2001:db8::10", 9000)


def decoded(body: bytes) -> pyroute2_ipvs.ipvsmsg:
    msg = pyroute2_ipvs.ipvsmsg(netlink.NLMSG_HEADER.pack(16 + len(body), 0x20, 0, 0, 0) + body)
    msg.decode()
    return msg


def test_add_service_carries_what_the_kernel_requires():
    msg = decoded(ipvs.encode(ops.AddService(VirtualServer(WEB, "wrr", 300))))
    assert msg["cmd"] == pyroute2_ipvs.IPVS_CMD_NEW_SERVICE
    service = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert service.get_attr("IPVS_SVC_ATTR_AF") == socket.AF_INET
    assert service.get_attr("IPVS_SVC_ATTR_PROTOCOL") == socket.IPPROTO_TCP
    assert service.get_attr("IPVS_SVC_ATTR_PORT") == 80
    assert service.get_attr("IPVS_SVC_ATTR_SCHED_NAME") == "wrr"
    assert service.get_attr("IPVS_SVC_ATTR_TIMEOUT") == 300
    assert service.get_attr("IPVS_SVC_ATTR_FLAGS")["flags"] == ipvs.IP_VS_SVC_F_PERSISTENT
    assert service.get_attr("IPVS_SVC_ATTR_NETMASK") == "255.255.255.255"


def test_edits_use_set_commands_never_delete():
    edit = decoded(ipvs.encode(ops.EditService(VirtualServer(WEB))))
    assert edit["cmd"] == pyroute2_ipvs.IPVS_CMD_SET_SERVICE
    rs = RealServer(RealServerKey(WEB, "10.0.0.1", 8080), "masq", 0)
    assert decoded(ipvs.encode(ops.EditRealServer(rs)))["cmd"] == pyroute2_ipvs.IPVS_CMD_SET_DEST


@pytest.mark.parametrize("forwarding,method", [("masq", 0), ("tunnel", 2), ("route", 3)])
def test_real_server_forwarding_method(forwarding, method):
    rs = RealServer(RealServerKey(WEB, "10.0.0.1", 8080), forwarding, 7)  # type: ignore[arg-type]
    dest = decoded(ipvs.encode(ops.AddRealServer(rs))).get_attr("IPVS_CMD_ATTR_DEST")
    assert dest.get_attr("IPVS_DEST_ATTR_FWD_METHOD") == method
    assert dest.get_attr("IPVS_DEST_ATTR_WEIGHT") == 7
    assert dest.get_attr("IPVS_DEST_ATTR_PORT") == 8080


@pytest.mark.parametrize(
    "service",
    [VirtualServer(WEB, "rr", 0), VirtualServer(WEB, "sh", 60), VirtualServer(WEB6, "mh", 0), VirtualServer(WEB6, "lc", 3600)],
)
def test_parses_its_own_service_messages(service):
    payload = ipvs.encode(ops.AddService(service))
    where = ipvs._top_attr(payload, ipvs._CMD_ATTR_SERVICE)
    assert ipvs._parse_service(payload, *where) == (service.key, service)


@pytest.mark.parametrize(
    "rs",
    [
        RealServer(RealServerKey(WEB, "10.0.0.1", 8080), "masq", 1),
        RealServer(RealServerKey(WEB, "10.0.0.2", 80), "route", 0),
        RealServer(RealServerKey(WEB6, "fd00::2", 9000), "tunnel", 65535),
        RealServer(RealServerKey(WEB6, "10.0.0.3", 9000), "tunnel", 2),  # a mixed-family tunnel
    ],
)
def test_parses_its_own_real_server_messages(rs):
    payload = ipvs.encode(ops.AddRealServer(rs))
    where = ipvs._top_attr(payload, ipvs._CMD_ATTR_DEST)
    parsed = ipvs._parse_dest(rs.key.service, payload, *where)
    assert (parsed.key, parsed.forwarding, parsed.weight) == (rs.key, rs.forwarding, rs.weight)


def test_ipv6_netmask_is_a_prefix_length():
    payload = ipvs.encode(ops.AddService(VirtualServer(WEB6, "rr", 60)))
    start, end = ipvs._top_attr(payload, ipvs._CMD_ATTR_SERVICE)
    at = ipvs.attr_offsets(payload, start, end)
    assert netlink.U32_AT.unpack_from(payload, at[ipvs._SVC_NETMASK])[0] == 128


def test_other_operations_are_refused():
    with pytest.raises(TypeError):
        ipvs.encode(ops.CreateLink("vsop0"))


def test_proc_net_ip_vs_destinations_are_read_under_their_services() -> None:
    from vsop.adapters.ipvs import parse_proc_ip_vs
    from vsop.core.state import RealServerKey, ServiceKey

    text = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
        "TCP  A9FE0B02:0050 rr \n"
        "  -> C0A8026F:1F90      Masq    1      3          0         \n"
        "  -> C0A802DE:1F90      Route   0      0          7         \n"
        "FWM  00000001 rr \n"
        "  -> C0A802DE:1F90      Masq    1      0          0         \n"
        "UDP  [fd00:0000:0000:0000:0000:0000:0000:000a]:0035 wlc persistent 60 FFFFFFFF\n"
        "  -> [fd00:0001:0000:0000:0000:0000:0000:0001]:0035      Tunnel  2      0          0         \n"
        "TCP  A9FE0B03:0050 rr \n"
        "  -> A9FE0B03:1F90      Local   1      0          0         \n"
    )
    found = parse_proc_ip_vs(text)
    web, dns, local = ServiceKey("tcp", "169.254.11.2", 80), ServiceKey("udp", "fd00::a", 53), ServiceKey("tcp", "169.254.11.3", 80)
    assert {k: (v.forwarding, v.weight, v.active_connections, v.inactive_connections) for k, v in found.items()} == {
        RealServerKey(web, "192.168.2.111", 8080): ("masq", 1, 3, 0),
        RealServerKey(web, "192.168.2.222", 8080): ("route", 0, 0, 7),
        RealServerKey(dns, "fd00:1::1", 53): ("tunnel", 2, 0, 0),
        RealServerKey(local, "169.254.11.3", 8080): ("route", 1, 0, 0),  # the fwmark service's destination is skipped
    }


def test_proc_lines_parsed_before_are_reused_and_moved_counters_are_read_again() -> None:
    from vsop.adapters.ipvs import _parse_proc, parse_proc_ip_vs

    head = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
    before = head + "TCP  A9FE0B02:0050 rr \n  -> C0A8026F:1F90      Masq    1      0          0         \nTCP  A9FE0B03:0050 rr \n  -> C0A8026F:1F90      Masq    1      0          0         \n"
    after = before.replace("TCP  A9FE0B03:0050 rr \n  -> C0A8026F:1F90      Masq    1      0          0", "TCP  A9FE0B03:0050 rr \n  -> C0A8026F:1F90      Masq    1      4          0")
    lines: dict = {}
    first = _parse_proc(before, {}, lines)
    again: dict = {}
    second = _parse_proc(after, lines, again)
    assert second == parse_proc_ip_vs(after)
    (quiet, busy) = sorted(second, key=lambda key: key.service.vip)
    assert second[quiet] is first[quiet]  # the same service line and line: the same object
    assert second[busy].active_connections == 4 and first[busy].active_connections == 0
    (one, quiet_line), (other, busy_line) = sorted(again)
    assert one != other and quiet_line == busy_line.replace(" 4 ", " 0 ")
    kept = {id(line) for _, line in lines}
    assert len(kept) == 1  # one destination line under two services: kept once, not per service


def test_the_ipvs_commands_are_the_kernels_numbers() -> None:
    """Spelled out here (pyroute2 is not imported by the adapters); pyroute2 agrees."""
    for name in ("GENL_NAME", "GENL_VERSION", "IPVS_CMD_NEW_SERVICE", "IPVS_CMD_SET_SERVICE", "IPVS_CMD_DEL_SERVICE",
                 "IPVS_CMD_GET_SERVICE", "IPVS_CMD_NEW_DEST", "IPVS_CMD_SET_DEST", "IPVS_CMD_DEL_DEST", "IPVS_CMD_GET_DEST"):
        assert getattr(ipvs, name) == getattr(pyroute2_ipvs, name), name


def test_the_family_lookup_asks_and_reads_what_pyroute2_would() -> None:
    from pyroute2.netlink import GENL_ID_CTRL, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, ctrlmsg

    assert (netlink.GENL_ID_CTRL, netlink.NLM_F_ACK, netlink.NLM_F_DUMP, netlink.NLM_F_REQUEST) == (GENL_ID_CTRL, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST)
    sent: list[tuple[int, bytes]] = []

    class Pipe:
        def request(self, mtype: int, body: bytes, flags: int) -> list[bytes]:
            sent.append((mtype, body))
            reply = ctrlmsg()
            reply["cmd"], reply["version"] = 1, 2  # CTRL_CMD_NEWFAMILY
            reply["attrs"] = [["CTRL_ATTR_FAMILY_NAME", "IPVS"], ["CTRL_ATTR_FAMILY_ID", 37]]
            reply.encode()
            return [bytes(reply.data[16:])]

    assert netlink.genl_family(Pipe(), "IPVS") == 37  # type: ignore[arg-type]
    (mtype, body), = sent
    asked = ctrlmsg(netlink.NLMSG_HEADER.pack(16 + len(body), mtype, 0, 0, 0) + body)
    asked.decode()
    assert mtype == GENL_ID_CTRL and asked["cmd"] == 3 and asked.get_attr("CTRL_ATTR_FAMILY_NAME") == "IPVS"


def test_a_netlink_error_has_pyroute2s_shape() -> None:
    error = netlink.NetlinkError(2)
    assert error.code == 2 and error.args == (2, "No such file or directory")
    assert netlink.NetlinkError(17, "exists").args == (17, "exists")


class ReloadablePipe:
    """A generic netlink socket whose IPVS family gets a new id when ip_vs is reloaded: a request
    to an id the kernel no longer has answers ENOENT, as genl_rcv_msg does."""

    def __init__(self, family: int = 37):
        self.family: int | None = family
        self.lookups = 0
        self.applied: list[bytes] = []

    def reload(self, family: int | None) -> None:
        self.family = family

    def request(self, mtype: int, body: bytes, flags: int) -> list[bytes]:
        from pyroute2.netlink import ctrlmsg

        assert mtype == netlink.GENL_ID_CTRL
        self.lookups += 1
        if self.family is None:
            raise netlink.NetlinkError(2)
        reply = ctrlmsg()
        reply["cmd"], reply["version"] = 1, 2
        reply["attrs"] = [["CTRL_ATTR_FAMILY_NAME", "IPVS"], ["CTRL_ATTR_FAMILY_ID", self.family]]
        reply.encode()
        return [bytes(reply.data[16:])]

    def dump(self, mtype: int, body: bytes) -> list[bytes]:
        if mtype != self.family:
            raise netlink.NetlinkError(2)
        return []

    def dump_many(self, mtype: int, bodies: object, handle: object) -> dict[int, int]:
        return {index: 2 for index, _ in enumerate(bodies)} if mtype != self.family else {}  # type: ignore[call-overload]

    def pipeline(self, requests: list[tuple[int, int, bytes]], batch: int) -> tuple[int, int, str] | None:
        for index, (mtype, _flags, body) in enumerate(requests):
            if mtype != self.family:
                return index, 2, ""
            if b"ip_vs_missing" in body:
                return index, 2, ""
            self.applied.append(body)
        return None


def test_after_ip_vs_is_reloaded_read_and_apply_use_the_new_family_id() -> None:
    pipe = ReloadablePipe(37)
    kernel = ipvs.IPVSKernel(pipe=pipe)  # type: ignore[arg-type]
    assert kernel.read() == ({}, {}) and pipe.lookups == 1
    pipe.reload(41)  # rmmod ip_vs; modprobe ip_vs
    assert kernel.read() == ({}, {}) and pipe.lookups == 2 and kernel.family_id == 41
    pipe.reload(43)
    add = ops.AddService(VirtualServer(WEB, "rr"))
    assert kernel.apply([add]) == 1 and pipe.applied == [ipvs.encode(add)]
    pipe.reload(47)
    assert kernel.read_real_servers([WEB]) == {} and kernel.family_id == 47


def test_enoent_from_a_family_that_did_not_move_is_the_kernels_answer() -> None:
    pipe = ReloadablePipe(37)
    kernel = ipvs.IPVSKernel(pipe=pipe)  # type: ignore[arg-type]
    missing = ops.AddService(VirtualServer(WEB, "ip_vs_missing"))
    with pytest.raises(ipvs.OperationFailed, match="scheduler 'ip_vs_missing' is not available"):
        kernel.apply([missing])
    assert pipe.lookups == 2  # looked up again once, found the same id, reported the scheduler


def test_ip_vs_unloaded_reads_as_a_kernel_without_ipvs() -> None:
    pipe = ReloadablePipe(37)
    kernel = ipvs.IPVSKernel(pipe=pipe)  # type: ignore[arg-type]
    kernel.read()
    pipe.reload(None)  # rmmod ip_vs, not loaded again
    with pytest.raises(ipvs.KernelUnsupported, match="no IPVS"):
        kernel.read()


def test_a_destinations_traffic_is_its_first_three_counters_as_parse_stats_reads_them() -> None:
    """The look's lean parse (`_parse_traffic`) reads what `parse_stats` reads, STATS64 or STATS, a pad
    attribute before a u64 or not (nla_put_u64_64bit adds one where alignment wants it)."""
    import struct
    import sys

    from vsop.core.state import Traffic

    service = ServiceKey("tcp", "192.0.2.10", 80)
    head = (netlink.nla(1, socket.inet_aton("10.77.0.1") + bytes(12)) + netlink.nla(2, struct.pack("!H", 8080))
            + netlink.nla(11, struct.pack("=H", socket.AF_INET)))
    wide = netlink.nla(11, b"") + b"".join(netlink.nla(field, (field * 1000 + 7).to_bytes(8, sys.byteorder)) for field in range(1, 11))
    narrow = b"".join(netlink.nla(field, (field * 10).to_bytes(8 if field in (4, 5) else 4, sys.byteorder)) for field in range(1, 11))
    for nest, attr, expected in ((wide, 12, Traffic(1007, 2007, 3007)), (narrow, 10, Traffic(10, 20, 30))):
        payload = head + netlink.nla(attr, nest)
        key, traffic = ipvs._parse_traffic(service, payload, 0, len(payload))
        stats = ipvs.parse_stats(payload, 0, len(payload), "dest")
        assert key == RealServerKey(service, "10.77.0.1", 8080)
        assert traffic == expected == Traffic(stats["connections"], stats["inPackets"], stats["outPackets"])
    key, traffic = ipvs._parse_traffic(service, head, 0, len(head))  # no counters at all: zeros
    assert traffic == Traffic()


def test_services_the_proc_file_leaves_out_are_dumped_over_netlink(monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/net/ip_vs skips services of this namespace when another namespace has IPVS services
    (vsop.adapters.ipvs._all_real_servers says why): those the service dump listed and the file did
    not are dumped one by one, and the next read does not reuse the answer as the file's."""
    import io

    from vsop.adapters.ipvs import IPVSKernel
    from vsop.core.state import RealServer, RealServerKey, ServiceKey, VirtualServer

    head = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
    text = head + "TCP  A9FE0B02:0050 rr \n  -> C0A8026F:1F90      Masq    1      0          0         \n"
    listed, skipped = ServiceKey("tcp", "169.254.11.2", 80), ServiceKey("tcp", "169.254.11.3", 80)
    hidden = RealServer(RealServerKey(skipped, "192.168.2.111", 8080), forwarding="masq", weight=1)
    dumped: list[list[ServiceKey]] = []

    class Adapter(IPVSKernel):
        def read_real_servers(self, services):  # type: ignore[no-untyped-def]
            dumped.append(list(services))
            return {hidden.key: hidden} if skipped in dumped[-1] else {}

    monkeypatch.setattr(ipvs, "_thread_netns", lambda: 7)
    monkeypatch.setattr(ipvs, "open", lambda *args, **kwargs: io.StringIO(text), raising=False)
    adapter = Adapter()
    services = {listed: VirtualServer(listed), skipped: VirtualServer(skipped)}
    for _ in range(2):
        found = adapter._all_real_servers(services)
        assert set(found) == {RealServerKey(listed, "192.168.2.111", 8080), hidden.key}
    assert dumped == [[skipped], [skipped]] and adapter.skipped_by_proc == 2
    # Every service in the file: nothing is dumped.
    assert set(adapter._all_real_servers({listed: services[listed]})) == {RealServerKey(listed, "192.168.2.111", 8080)}
    assert len(dumped) == 2
