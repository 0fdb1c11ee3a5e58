"""The real IPSetKernel: the shared contract, plus what only a real kernel shows (foreign sets made with the CLI)."""

from __future__ import annotations

import subprocess

import pytest

from tests.contracts.ipset_contract import MEMBERS, OWNER, VIP, IPSetContract, create_ops, vip_ports_set, vips_set
from vsop.adapters.base import OperationFailed
from vsop.adapters.ipset import IPSetKernel
from vsop.core import ops
from vsop.core.state import IPSet, Names


class TestIPSetKernel(IPSetContract):
    """The default adapter (the conftest's IPSetKernel()): members over netlink, sets through the command."""


def ipset(*arguments: str) -> str:
    return subprocess.run(["ipset", *arguments], check=True, capture_output=True, text=True).stdout


def test_foreign_sets_survive_every_operation(ipset_adapter: IPSetKernel):
    ipset("create", "FOREIGN", "hash:ip,port", "family", "inet", "comment")
    ipset("add", "FOREIGN", f"{VIP[4]},tcp:80", "comment", "someone else")
    ipset("create", "FOREIGN-NETS", "hash:net", "family", "inet6")
    ipset("add", "FOREIGN-NETS", "fd00::/64")
    before = ipset("save", "FOREIGN") + ipset("save", "FOREIGN-NETS")

    lifecycle = [
        create_ops(4) + create_ops(6),
        [ops.AddSetMember(vip_ports_set(f), m, OWNER) for f in (4, 6) for m in MEMBERS[f]],
        [ops.AddSetMember(vip_ports_set(4), MEMBERS[4][0], "other/owner", replace=True)],
        [ops.DeleteSetMember(vip_ports_set(4), MEMBERS[4][0])],
        [ops.DestroySet(name) for name in (vip_ports_set(4), vips_set(4), vip_ports_set(6), vips_set(6))],
    ]
    for operations in lifecycle:
        ipset_adapter.apply(operations)
        assert ipset("save", "FOREIGN") + ipset("save", "FOREIGN-NETS") == before
    assert {"FOREIGN", "FOREIGN-NETS"} <= set(ipset("list", "-n").split())
    assert ipset_adapter.read(Names().owned_set_names()) == {}


def test_reads_a_set_of_vsops_name_made_with_other_options(ipset_adapter: IPSetKernel):
    name = vip_ports_set(4)
    ipset("create", name, "hash:ip,port", "family", "inet", "counters", "comment", "timeout", "600", "skbinfo")
    ipset("add", name, MEMBERS[4][0], "comment", OWNER)
    ipset("add", name, MEMBERS[4][1], "timeout", "0")
    found = ipset_adapter.read(frozenset({name}))[name]
    assert (found.kind, found.family) == ("hash:ip,port", 4)
    assert found.members == {MEMBERS[4][0]: OWNER, MEMBERS[4][1]: ""}


def test_reports_the_real_type_of_a_set_vsop_did_not_make(ipset_adapter: IPSetKernel):
    """So the planner can refuse it rather than fill a set of the wrong type."""
    ipset("create", vips_set(6), "hash:net", "family", "inet6")
    ipset("create", vips_set(4), "bitmap:port", "range", "1-100")
    found = ipset_adapter.read(frozenset({vips_set(6), vips_set(4)}))
    assert (found[vips_set(6)].kind, found[vips_set(6)].family) == ("hash:net", 6)
    assert found[vips_set(4)].kind == "bitmap:port"


def test_members_read_back_in_the_text_ipset_save_prints(ipset_adapter: IPSetKernel):
    name = vip_ports_set(6)
    ipset_adapter.apply(create_ops(6) + [ops.AddSetMember(name, m, OWNER) for m in MEMBERS[6]])
    saved = {line.split()[2] for line in ipset("save", name).splitlines() if line.startswith("add ")}
    assert saved == set(MEMBERS[6]) == set(ipset_adapter.read(frozenset({name}))[name].members)


def test_a_comment_ipset_cannot_hold_fails_before_the_kernel_sees_it(ipset_adapter: IPSetKernel):
    name = vip_ports_set(4)
    quoted = ops.AddSetMember(name, MEMBERS[4][1], 'with "quotes"')
    with pytest.raises(OperationFailed) as failed:
        ipset_adapter.apply(create_ops(4) + [ops.AddSetMember(name, MEMBERS[4][0], OWNER), quoted])
    assert failed.value.op == quoted
    assert ipset_adapter.read(frozenset({name}))[name].members == {MEMBERS[4][0]: OWNER}


def test_a_failure_names_the_kernels_reason(ipset_adapter: IPSetKernel):
    duplicate = create_ops(4)[0]
    with pytest.raises(OperationFailed) as failed:
        ipset_adapter.apply([duplicate, duplicate])
    assert failed.value.op == duplicate
    assert "already exists" in failed.value.reason


def test_an_unchanged_set_reads_as_the_same_object_and_a_hand_made_change_is_seen(ipset_adapter: IPSetKernel):
    """The adapter reuses its last parse only when `ipset save` prints the very same text."""
    name = vip_ports_set(4)
    ipset_adapter.apply(create_ops(4) + [ops.AddSetMember(name, m, OWNER) for m in MEMBERS[4]])
    first = ipset_adapter.read(frozenset({name}))[name]
    assert ipset_adapter.read(frozenset({name}))[name] is first
    ipset("del", name, MEMBERS[4][0])
    ipset("add", name, f"{VIP[4]},udp:9", "comment", OWNER)  # same count, other member: drift
    changed = ipset_adapter.read(frozenset({name}))[name]
    assert changed.members == {**{m: OWNER for m in MEMBERS[4][1:]}, f"{VIP[4]},udp:9": OWNER}


class TestIPSetKernelThroughTheCommand(IPSetContract):
    """The same contract with every write through `ipset restore` (the default, TestIPSetKernel,
    writes members over netlink)."""

    @pytest.fixture
    def ipset_adapter(self) -> IPSetKernel:
        return IPSetKernel(netlink_from=None)


def no_command(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Any run of the ipset command fails the test; returns the runs tried."""
    tried: list[list[str]] = []

    def refuse(self: IPSetKernel, arguments: list[str], stdin: str | None = None) -> object:
        tried.append(arguments)
        raise AssertionError(f"ipset {' '.join(arguments)} was run: {stdin!r}")

    monkeypatch.setattr(IPSetKernel, "_run", refuse)
    return tried


def test_the_default_adds_and_deletes_single_members_over_netlink(monkeypatch: pytest.MonkeyPatch):
    """A new VIP is one member in each of two applies: neither starts the command."""
    IPSetKernel(netlink_from=None).apply(create_ops(4))
    name, member = vip_ports_set(4), MEMBERS[4][0]
    tried = no_command(monkeypatch)
    adapter = IPSetKernel()
    adapter.apply([ops.AddAcceptMember(name, member, OWNER)])
    adapter.apply([ops.AddSetMember(vips_set(4), VIP[4], OWNER)])
    assert adapter.read(frozenset({name, vips_set(4)})) == {
        name: IPSet(name, "hash:ip,port", 4, {member: OWNER}),
        vips_set(4): IPSet(vips_set(4), "hash:ip", 4, {VIP[4]: OWNER}),
    }
    adapter.apply([ops.DeleteAcceptMember(name, member)])
    adapter.apply([ops.DeleteSetMember(vips_set(4), VIP[4])])
    assert all(not found.members for found in adapter.read(frozenset({name, vips_set(4)})).values())
    assert tried == []


@pytest.mark.parametrize("netlink_from", [1, None], ids=["netlink", "command"])
def test_a_refused_delete_reads_as_the_command_words_it(netlink_from: int | None):
    """Both paths name the refused op with the command's words (ipset's lib/errcode.c for IPSET_ERR_EXIST
    to a delete, ENOENT), and stop there."""
    adapter = IPSetKernel(netlink_from=netlink_from)
    first, second, third = MEMBERS[4]
    name = vip_ports_set(4)
    adapter.apply(create_ops(4) + [ops.AddSetMember(name, first, OWNER), ops.AddSetMember(name, third, OWNER)])
    absent = ops.DeleteSetMember(name, second)
    with pytest.raises(OperationFailed) as failed:
        adapter.apply([ops.DeleteSetMember(name, first), absent, ops.DeleteSetMember(name, third)])
    assert (failed.value.op, failed.value.reason) == (absent, "Element cannot be deleted from the set: it's not added")
    assert adapter.read(frozenset({name}))[name].members == {third: OWNER}
    orphan = ops.DeleteSetMember(vip_ports_set(6), MEMBERS[6][0])
    with pytest.raises(OperationFailed) as failed:
        adapter.apply([orphan, ops.DeleteSetMember(name, third)])
    assert (failed.value.op, failed.value.reason) == (orphan, "The set with the given name does not exist")
    assert adapter.read(frozenset({name}))[name].members == {third: OWNER}


def test_a_delete_over_netlink_keeps_the_other_members_extensions():
    """The kernel deletes by the member alone, as `ipset del` does: counters and comments of the rest stay."""
    name = vip_ports_set(4)
    ipset("create", name, "hash:ip,port", "family", "inet", "counters", "comment")
    for member in MEMBERS[4]:
        ipset("add", name, member, "comment", OWNER, "packets", "7", "bytes", "700")
    IPSetKernel(netlink_from=1).apply([ops.DeleteSetMember(name, MEMBERS[4][1])])
    lines = sorted(line for line in ipset("save", name).splitlines() if line.startswith("add "))
    assert lines == [f'add {name} {m} packets 7 bytes 700 comment "{OWNER}"' for m in sorted((MEMBERS[4][0], MEMBERS[4][2]))]


def test_a_member_netlink_does_not_spell_is_deleted_by_the_command():
    """An ICMP member put in vsop's set by hand is read through `ipset save` and deleted through `ipset restore`,
    between deletes that go over netlink."""
    name = vip_ports_set(4)
    IPSetKernel().apply(create_ops(4) + [ops.AddSetMember(name, m, OWNER) for m in MEMBERS[4][:2]])
    icmp = f"{VIP[4]},icmp:echo-request"
    ipset("add", name, icmp)
    adapter = IPSetKernel()
    assert set(adapter.read(frozenset({name}))[name].members) == {*MEMBERS[4][:2], icmp}
    adapter.apply([ops.DeleteSetMember(name, MEMBERS[4][0]), ops.DeleteSetMember(name, icmp), ops.DeleteSetMember(name, MEMBERS[4][1])])
    assert adapter.read(frozenset({name}))[name].members == {}


def test_netlink_and_restore_leave_the_same_set(ipset_adapter: IPSetKernel):
    """Members added (and deleted) over netlink read back exactly as those `ipset restore` adds (and deletes)."""
    members = [ops.AddSetMember(vip_ports_set(f), m, OWNER) for f in (4, 6) for m in MEMBERS[f]]
    members += [ops.AddSetMember(vips_set(f), VIP[f], OWNER) for f in (4, 6)]
    names = frozenset({vip_ports_set(4), vip_ports_set(6), vips_set(4), vips_set(6)})
    IPSetKernel(netlink_from=None).apply(create_ops(4) + create_ops(6) + members)
    def saved() -> dict[str, list[str]]:  # the members' lines: a create line carries a random initval
        return {name: sorted(line for line in ipset("save", name).splitlines() if line.startswith("add ")) for name in names}

    by_restore = saved()
    assert all(by_restore.values())
    ipset_adapter.apply([ops.DestroySet(name) for name in names])
    IPSetKernel(netlink_from=1).apply(create_ops(4) + create_ops(6) + members)
    assert saved() == by_restore
    deletes = [ops.DeleteSetMember(vip_ports_set(f), MEMBERS[f][1]) for f in (4, 6)]
    IPSetKernel(netlink_from=1).apply(deletes)
    by_netlink = saved()
    ipset_adapter.apply([ops.DestroySet(name) for name in names])
    IPSetKernel(netlink_from=None).apply(create_ops(4) + create_ops(6) + members + deletes)
    assert saved() == by_netlink != by_restore


def test_the_netlink_listing_reads_what_ipset_save_prints():
    """Both readers give the same sets, whatever was put in them by hand (odd ones fall back to the command)."""
    ipset("create", vip_ports_set(4), "hash:ip,port", "family", "inet", "comment")
    ipset("create", vip_ports_set(6), "hash:ip,port", "family", "inet6", "comment")
    ipset("create", vips_set(4), "hash:ip", "family", "inet")  # no comment extension
    ipset("create", vips_set(6), "hash:ip", "family", "inet6", "comment", "timeout", "600")
    for member in (f"{VIP[4]},tcp:80", f"{VIP[4]},udp:53", f"{VIP[4]},sctp:9", f"{VIP[4]},tcp:0", f"{VIP[4]},udp:65535"):
        ipset("add", vip_ports_set(4), member, "comment", OWNER)
    ipset("add", vip_ports_set(6), "fd00:0:0::a,tcp:443", "comment", "ns/other")
    ipset("add", vip_ports_set(6), "fd00::b,udp:53")
    ipset("add", vips_set(4), VIP[4])
    ipset("add", vips_set(6), "fd00::a", "comment", OWNER)
    names = Names().owned_set_names()
    by_listing, by_save = IPSetKernel().read(names), IPSetKernel(netlink_from=None).read(names)
    assert by_listing == by_save
    assert by_listing[vip_ports_set(6)].members == {"fd00::a,tcp:443": "ns/other", "fd00::b,udp:53": ""}
    assert not by_listing[vips_set(4)].comments and by_listing[vip_ports_set(4)].comments
    ipset("add", vip_ports_set(4), f"{VIP[4]},icmp:echo-request")  # ipset spells ICMP types by name: the command reads it
    assert IPSetKernel().read(names) == IPSetKernel(netlink_from=None).read(names)
    assert f"{VIP[4]},icmp:echo-request" in IPSetKernel().read(names)[vip_ports_set(4)].members


def test_without_ipset_over_netlink_the_command_does_it_all(monkeypatch: pytest.MonkeyPatch):
    """Where netlink does not answer (no ip_set loaded yet: the command loads it), reads and writes go through the command."""
    import vsop.adapters.ipset as ipset_module

    def no_netlink(pipe: object) -> int:
        raise ipset_module._NoNetlink("not here")

    monkeypatch.setattr(ipset_module, "_protocol", no_netlink)
    adapter = IPSetKernel(netlink_from=1)
    name = vip_ports_set(4)
    adapter.apply(create_ops(4) + [ops.AddSetMember(name, m, OWNER) for m in MEMBERS[4]])
    assert adapter.read(frozenset({name}))[name].members == {m: OWNER for m in MEMBERS[4]}
    adapter.apply([ops.DeleteSetMember(name, MEMBERS[4][0])])
    assert adapter.read(frozenset({name}))[name].members == {m: OWNER for m in MEMBERS[4][1:]}
