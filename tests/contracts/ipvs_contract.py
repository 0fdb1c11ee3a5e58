"""What every IPVSAdapter does, asserted through its read(): the real one and the fake alike.

The `ipvs_adapter` fixture is an adapter over an IPVS table with no services, on a
node where every address in 10.77.0.0/16 is routable (the kernel refuses an IPv4
real server it has no route to). IPv6 real servers need no route.
Must not import: kopf, kubernetes, jinja2, or any real adapter.
"""

from __future__ import annotations

import pytest

from vsop.adapters.base import OperationFailed
from vsop.core import ops
from vsop.core.state import RealServer, RealServerKey, ServiceKey, Traffic, VirtualServer

WEB = ServiceKey("tcp", "192.0.2.10", 80)
API = ServiceKey("tcp", "192.0.2.11", 443)
DNS = ServiceKey("udp", "192.0.2.12", 53)
SIG = ServiceKey("sctp", "192.0.2.13", 9000)
WEB6 = ServiceKey("tcp", "2001:db8::10", 80)


def service(key: ServiceKey, scheduler: str = "rr", persistence: int = 0) -> VirtualServer:
    return VirtualServer(key, scheduler, persistence)


def real(key: ServiceKey, address: str, port: int = 8080, forwarding: str = "masq", weight: int = 1) -> RealServer:
    return RealServer(RealServerKey(key, address, port), forwarding, weight)  # type: ignore[arg-type]


def kernel_config(services: dict, real_servers: dict) -> tuple[dict, dict]:
    """What the kernel holds, without vsop's bookkeeping (owner) and live counters."""
    return (
        {k: (v.scheduler, v.persistence_timeout) for k, v in services.items()},
        {k: (v.forwarding, v.weight) for k, v in real_servers.items()},
    )


class IPVSContract:
    """Needs fixture `ipvs_adapter`: an IPVSAdapter over an empty IPVS table, 10.77.0.0/16 routable."""

    def state(self, adapter) -> tuple[dict, dict]:
        return kernel_config(*adapter.read())

    def test_reads_nothing_from_an_empty_table(self, ipvs_adapter):
        assert ipvs_adapter.read() == ({}, {})

    def test_reads_the_real_servers_of_chosen_services_only(self, ipvs_adapter):
        web, dns = real(WEB, "10.77.0.1"), real(DNS, "10.77.0.2", 53)
        ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddService(service(DNS))])
        ipvs_adapter.apply([ops.AddRealServer(web), ops.AddRealServer(dns)])
        chosen = ipvs_adapter.read_real_servers([DNS, API])  # API does not exist: it has none
        assert {k: (v.forwarding, v.weight) for k, v in chosen.items()} == {dns.key: ("masq", 1)}
        assert ipvs_adapter.read_real_servers([]) == {}

    def test_reads_the_traffic_of_chosen_services_real_servers_from_zero(self, ipvs_adapter):
        web, web2, dns = real(WEB, "10.77.0.1"), real(WEB, "10.77.0.3"), real(DNS, "10.77.0.2", 53)
        ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddService(service(DNS))])
        ipvs_adapter.apply([ops.AddRealServer(web), ops.AddRealServer(web2), ops.AddRealServer(dns)])
        # No packet went through them: every counter 0; API does not exist, DNS was not asked for.
        assert ipvs_adapter.traffic([WEB, API]) == {web.key: Traffic(), web2.key: Traffic()}
        assert ipvs_adapter.traffic([]) == {}

    def test_adds_a_service_and_counts_writes(self, ipvs_adapter):
        assert ipvs_adapter.apply([ops.AddService(service(WEB))]) == 1
        services, real_servers = ipvs_adapter.read()
        assert services == {WEB: VirtualServer(WEB, "rr", 0)}
        assert real_servers == {}

    def test_adds_real_servers_with_each_forwarding_and_weight(self, ipvs_adapter):
        masq = real(WEB, "10.77.0.1", 8080, "masq", 1)
        route = real(WEB, "10.77.0.2", 80, "route", 5)
        tunnel = real(WEB, "10.77.0.3", 80, "tunnel", 0)
        written = ipvs_adapter.apply([ops.AddService(service(WEB, "wrr")), ops.AddRealServer(masq), ops.AddRealServer(route), ops.AddRealServer(tunnel)])
        assert written == 4
        services, real_servers = ipvs_adapter.read()
        assert services == {WEB: VirtualServer(WEB, "wrr", 0)}
        assert real_servers == {rs.key: rs for rs in (masq, route, tunnel)}
        for rs in real_servers.values():
            assert (rs.active_connections, rs.inactive_connections) == (0, 0)

    def test_persistent_service(self, ipvs_adapter):
        ipvs_adapter.apply([ops.AddService(service(API, "sh", 300))])
        assert self.state(ipvs_adapter) == ({API: ("sh", 300)}, {})

    def test_edits_scheduler_and_persistence_in_place(self, ipvs_adapter):
        backend = real(WEB, "10.77.0.1")
        ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddRealServer(backend)])
        edited = service(WEB, "wlc", 600)
        assert ipvs_adapter.apply([ops.EditService(edited, previous=service(WEB))]) == 1
        # In place: a delete and re-add would have dropped the real server.
        assert self.state(ipvs_adapter) == ({WEB: ("wlc", 600)}, {backend.key: ("masq", 1)})
        ipvs_adapter.apply([ops.EditService(service(WEB, "lc", 0), previous=edited)])
        assert self.state(ipvs_adapter) == ({WEB: ("lc", 0)}, {backend.key: ("masq", 1)})

    def test_edits_weight_and_forwarding_in_place(self, ipvs_adapter):
        backend = real(WEB, "10.77.0.1", 80, "masq", 1)
        other = real(WEB, "10.77.0.2", 80, "masq", 1)
        ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddRealServer(backend), ops.AddRealServer(other)])
        drained = real(WEB, "10.77.0.1", 80, "route", 0)
        assert ipvs_adapter.apply([ops.EditRealServer(drained, previous=backend)]) == 1
        assert self.state(ipvs_adapter)[1] == {backend.key: ("route", 0), other.key: ("masq", 1)}
        ipvs_adapter.apply([ops.EditRealServer(real(WEB, "10.77.0.1", 80, "tunnel", 7), previous=drained)])
        assert self.state(ipvs_adapter)[1] == {backend.key: ("tunnel", 7), other.key: ("masq", 1)}

    def test_deletes_one_real_server(self, ipvs_adapter):
        keep, drop = real(WEB, "10.77.0.1"), real(WEB, "10.77.0.2")
        ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddRealServer(keep), ops.AddRealServer(drop)])
        ipvs_adapter.apply([ops.DeleteRealServer(drop.key)])
        assert self.state(ipvs_adapter) == ({WEB: ("rr", 0)}, {keep.key: ("masq", 1)})

    def test_deleting_a_service_takes_its_real_servers_only(self, ipvs_adapter):
        web_backend, api_backend = real(WEB, "10.77.0.1"), real(API, "10.77.0.1", 8443)
        ipvs_adapter.apply(
            [ops.AddService(service(WEB)), ops.AddService(service(API)), ops.AddRealServer(web_backend), ops.AddRealServer(api_backend)]
        )
        assert ipvs_adapter.apply([ops.DeleteService(WEB)]) == 1
        assert self.state(ipvs_adapter) == ({API: ("rr", 0)}, {api_backend.key: ("masq", 1)})

    def test_same_real_server_in_two_services(self, ipvs_adapter):
        a, b = real(WEB, "10.77.0.1", 8080), real(API, "10.77.0.1", 8080, weight=3)
        ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddService(service(API)), ops.AddRealServer(a), ops.AddRealServer(b)])
        assert self.state(ipvs_adapter)[1] == {a.key: ("masq", 1), b.key: ("masq", 3)}

    def test_ipv6_service_and_real_servers(self, ipvs_adapter):
        masq, route = real(WEB6, "fd00:77::1", 8080), real(WEB6, "fd00:77::2", 80, "route", 2)
        ipvs_adapter.apply([ops.AddService(service(WEB6, "wrr", 120)), ops.AddRealServer(masq), ops.AddRealServer(route)])
        services, real_servers = ipvs_adapter.read()
        # Addresses read back in canonical text, so they compare equal to the model's.
        assert set(services) == {WEB6} and services[WEB6].key.vip == "2001:db8::10"
        assert kernel_config(services, real_servers) == ({WEB6: ("wrr", 120)}, {masq.key: ("masq", 1), route.key: ("route", 2)})
        ipvs_adapter.apply([ops.EditService(service(WEB6, "rr", 0)), ops.DeleteRealServer(route.key)])
        assert self.state(ipvs_adapter) == ({WEB6: ("rr", 0)}, {masq.key: ("masq", 1)})

    def test_udp_and_sctp_services(self, ipvs_adapter):
        dns, sig = real(DNS, "10.77.0.53", 53), real(SIG, "10.77.0.90", 9000)
        ipvs_adapter.apply([ops.AddService(service(DNS)), ops.AddService(service(SIG)), ops.AddRealServer(dns), ops.AddRealServer(sig)])
        assert self.state(ipvs_adapter) == ({DNS: ("rr", 0), SIG: ("rr", 0)}, {dns.key: ("masq", 1), sig.key: ("masq", 1)})

    def test_same_address_and_port_on_two_protocols(self, ipvs_adapter):
        udp = ServiceKey("udp", WEB.vip, WEB.port)
        ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddService(service(udp, "wrr"))])
        assert self.state(ipvs_adapter)[0] == {WEB: ("rr", 0), udp: ("wrr", 0)}
        ipvs_adapter.apply([ops.DeleteService(WEB)])
        assert self.state(ipvs_adapter)[0] == {udp: ("wrr", 0)}

    def test_adding_an_existing_service_fails_naming_it(self, ipvs_adapter):
        ipvs_adapter.apply([ops.AddService(service(WEB))])
        again = ops.AddService(service(WEB, "wrr"))
        with pytest.raises(OperationFailed) as failure:
            ipvs_adapter.apply([again])
        assert failure.value.op == again
        assert str(WEB) in str(failure.value)
        assert self.state(ipvs_adapter)[0] == {WEB: ("rr", 0)}

    def test_adding_an_existing_real_server_fails(self, ipvs_adapter):
        backend = real(WEB, "10.77.0.1")
        ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddRealServer(backend)])
        again = ops.AddRealServer(real(WEB, "10.77.0.1", weight=9))
        with pytest.raises(OperationFailed) as failure:
            ipvs_adapter.apply([again])
        assert failure.value.op == again
        assert self.state(ipvs_adapter)[1] == {backend.key: ("masq", 1)}

    @pytest.mark.parametrize(
        ("op", "named"),
        [
            (ops.EditService(service(WEB, "wrr")), str(WEB)),
            (ops.DeleteService(WEB), str(WEB)),
            (ops.AddRealServer(real(WEB, "10.77.0.1")), str(WEB)),
            (ops.EditRealServer(real(API, "10.77.0.1")), "10.77.0.1:8080"),
            (ops.DeleteRealServer(RealServerKey(API, "10.77.0.1", 8080)), "10.77.0.1:8080"),
        ],
        ids=["edit-service", "delete-service", "real-server-without-service", "edit-real-server", "delete-real-server"],
    )
    def test_operations_on_missing_objects_fail_naming_what_is_missing(self, ipvs_adapter, op, named):
        ipvs_adapter.apply([ops.AddService(service(API))])
        with pytest.raises(OperationFailed) as failure:
            ipvs_adapter.apply([op])
        assert failure.value.op == op
        assert named in failure.value.reason  # the reason itself, not only the op's description
        assert self.state(ipvs_adapter) == ({API: ("rr", 0)}, {})

    def test_a_failing_operation_leaves_the_ones_before_it_applied(self, ipvs_adapter):
        backend = real(WEB, "10.77.0.1")
        failing = ops.AddService(service(WEB, "wrr"))
        run = [ops.AddService(service(WEB)), ops.AddRealServer(backend), ops.AddService(service(API)), failing, ops.AddService(service(DNS))]
        with pytest.raises(OperationFailed) as failure:
            ipvs_adapter.apply(run)
        assert failure.value.op == failing
        services, real_servers = self.state(ipvs_adapter)
        # What follows the failure is unspecified (a pipelining adapter may have sent it).
        assert {WEB: ("rr", 0), API: ("rr", 0)}.items() <= services.items()
        assert real_servers == {backend.key: ("masq", 1)}

    def test_an_unknown_scheduler_is_refused_naming_it(self, ipvs_adapter):
        unknown = ops.AddService(service(WEB, "nosuch"))
        with pytest.raises(OperationFailed) as failure:
            ipvs_adapter.apply([ops.AddService(service(API)), unknown])
        assert failure.value.op == unknown
        assert failure.value.reason == "scheduler 'nosuch' is not available in this kernel (module ip_vs_nosuch)"
        edit = ops.EditService(service(API, "nosuch"), previous=service(API))
        with pytest.raises(OperationFailed) as failure:
            ipvs_adapter.apply([edit])
        assert failure.value.op == edit
        assert self.state(ipvs_adapter) == ({API: ("rr", 0)}, {})

    @pytest.mark.parametrize("address", ["10.77.255.255", "224.0.0.5", "255.255.255.255"],
                             ids=["subnet-broadcast", "multicast", "broadcast"])
    def test_a_backend_that_is_not_unicast_is_refused_naming_it(self, ipvs_adapter, address):
        """ip_vs_new_dest wants inet_addr_type() to say unicast or local: EINVAL otherwise."""
        kept = real(WEB, "10.77.0.1", 80)
        refused = ops.AddRealServer(real(WEB, address, 80))
        with pytest.raises(OperationFailed) as failure:
            ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddRealServer(kept), refused])
        assert failure.value.op == refused
        assert failure.value.reason == f"backend {address} is not routable from this node"
        assert self.state(ipvs_adapter) == ({WEB: ("rr", 0)}, {kept.key: ("masq", 1)})

    @pytest.mark.parametrize("address", ["198.51.100.7", "0.0.0.1"], ids=["no-route", "this-network"])
    def test_a_backend_with_no_route_is_accepted(self, ipvs_adapter, address):
        """A lookup miss counts as unicast: the kernel takes an address it has no route to, and
        (Debian's 6.1, measured in the vm tier) one in 0.0.0.0/8 too."""
        far = real(WEB, address, 80)
        ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddRealServer(far)])
        assert self.state(ipvs_adapter) == ({WEB: ("rr", 0)}, {far.key: ("masq", 1)})

    def test_an_empty_run_writes_nothing(self, ipvs_adapter):
        assert ipvs_adapter.apply([]) == 0
        assert ipvs_adapter.read() == ({}, {})

    def test_the_generation_stays_the_same_across_reads_and_writes(self, ipvs_adapter):
        # It moves only when the tables are replaced wholesale (ip_vs reloaded: vm test_read_faults.py);
        # a resync's read made aside is trusted only while it has not moved.
        before = ipvs_adapter.generation()
        ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddRealServer(real(WEB, "10.77.0.1"))])
        ipvs_adapter.read()
        ipvs_adapter.apply([ops.DeleteService(WEB)])
        assert ipvs_adapter.generation() == before

    def test_a_read_after_forgetting_answers_the_same(self, ipvs_adapter):
        ipvs_adapter.apply([ops.AddService(service(WEB)), ops.AddRealServer(real(WEB, "10.77.0.1"))])
        before = self.state(ipvs_adapter)
        ipvs_adapter.forget_reads()
        assert self.state(ipvs_adapter) == before
        ipvs_adapter.apply([ops.DeleteService(WEB)])
        ipvs_adapter.forget_reads()
        assert ipvs_adapter.read() == ({}, {})
