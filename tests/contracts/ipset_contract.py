"""What every IPSetAdapter does, asserted through its read(): the real one and the fake alike.

The `ipset_adapter` fixture is an adapter over a kernel with no sets.
Must not import: kopf, kubernetes, jinja2, or any real adapter.
"""

from __future__ import annotations

import pytest

from vsop.adapters.base import OperationFailed
from vsop.core import ops
from vsop.core.state import IPSet, Names

NAMES = Names()
OWNER = "default/web"
OTHER_OWNER = "shop/api"

# Per family: a VIP, and hash:ip,port members as `ipset save` prints them.
VIP = {4: "169.254.11.2", 6: "fd00::1"}
MEMBERS = {
    4: ("169.254.11.2,tcp:80", "169.254.11.2,udp:53", "169.254.11.3,sctp:9000"),
    6: ("fd00::1,tcp:80", "fd00::1,udp:53", "fd00::2,sctp:9000"),
}


def vip_ports_set(family: int) -> str:
    return NAMES.set_name(NAMES.vip_ports_set, family)


def vips_set(family: int) -> str:
    return NAMES.set_name(NAMES.vips_set, family)


def create_ops(family: int) -> list[ops.Op]:
    return [
        ops.CreateSet(IPSet(vip_ports_set(family), "hash:ip,port", family)),  # type: ignore[arg-type]
        ops.CreateSet(IPSet(vips_set(family), "hash:ip", family)),  # type: ignore[arg-type]
    ]


class IPSetContract:
    """Needs fixture `ipset_adapter`: an IPSetAdapter over a kernel with no sets."""

    @pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
    def family(self, request: pytest.FixtureRequest) -> int:
        return request.param

    def read_all(self, adapter) -> dict[str, IPSet]:
        return adapter.read(NAMES.owned_set_names())

    def test_reads_nothing_when_no_set_exists(self, ipset_adapter):
        assert self.read_all(ipset_adapter) == {}

    def test_creates_empty_sets_of_both_kinds(self, ipset_adapter, family):
        assert ipset_adapter.apply(create_ops(family)) == 2
        assert self.read_all(ipset_adapter) == {
            vip_ports_set(family): IPSet(vip_ports_set(family), "hash:ip,port", family, {}),
            vips_set(family): IPSet(vips_set(family), "hash:ip", family, {}),
        }

    def test_adds_members_with_their_owner_as_comment(self, ipset_adapter, family):
        first, second, third = MEMBERS[family]
        written = ipset_adapter.apply(
            create_ops(family)
            + [
                ops.AddSetMember(vip_ports_set(family), first, OWNER),
                ops.AddSetMember(vip_ports_set(family), second, OTHER_OWNER),
                ops.AddSetMember(vip_ports_set(family), third),
                ops.AddSetMember(vips_set(family), VIP[family], OWNER),
            ]
        )
        assert written == 6
        found = self.read_all(ipset_adapter)
        assert found[vip_ports_set(family)].members == {first: OWNER, second: OTHER_OWNER, third: ""}
        assert found[vips_set(family)].members == {VIP[family]: OWNER}

    def test_replacing_a_member_changes_only_its_comment(self, ipset_adapter, family):
        first, second, _ = MEMBERS[family]
        name = vip_ports_set(family)
        ipset_adapter.apply(
            create_ops(family) + [ops.AddSetMember(name, first, OWNER), ops.AddSetMember(name, second, OWNER)]
        )
        assert ipset_adapter.apply([ops.AddSetMember(name, first, OTHER_OWNER, replace=True)]) == 1
        assert self.read_all(ipset_adapter)[name].members == {first: OTHER_OWNER, second: OWNER}
        ipset_adapter.apply([ops.AddSetMember(name, first, "", replace=True)])
        assert self.read_all(ipset_adapter)[name].members == {first: "", second: OWNER}

    def test_deletes_members(self, ipset_adapter, family):
        first, second, third = MEMBERS[family]
        name = vip_ports_set(family)
        ipset_adapter.apply(create_ops(family) + [ops.AddSetMember(name, m, OWNER) for m in (first, second, third)])
        assert ipset_adapter.apply([ops.DeleteSetMember(name, first), ops.DeleteSetMember(name, third)]) == 2
        assert self.read_all(ipset_adapter)[name].members == {second: OWNER}

    def test_destroys_sets_with_their_members(self, ipset_adapter, family):
        ipset_adapter.apply(create_ops(family) + [ops.AddSetMember(vips_set(family), VIP[family], OWNER)])
        assert ipset_adapter.apply([ops.DestroySet(vips_set(family))]) == 1
        assert set(self.read_all(ipset_adapter)) == {vip_ports_set(family)}
        ipset_adapter.apply([ops.DestroySet(vip_ports_set(family))])
        assert self.read_all(ipset_adapter) == {}

    def test_reads_only_the_sets_it_is_asked_for(self, ipset_adapter):
        ipset_adapter.apply(create_ops(4) + create_ops(6))
        assert set(ipset_adapter.read(frozenset({vips_set(6), "VSOP-NEVER-CREATED"}))) == {vips_set(6)}

    def test_both_families_live_side_by_side(self, ipset_adapter):
        ipset_adapter.apply(
            create_ops(4)
            + create_ops(6)
            + [ops.AddSetMember(vip_ports_set(f), MEMBERS[f][0], OWNER) for f in (4, 6)]
        )
        found = self.read_all(ipset_adapter)
        assert {name: s.family for name, s in found.items()} == {
            vip_ports_set(4): 4, vips_set(4): 4, vip_ports_set(6): 6, vips_set(6): 6
        }
        assert found[vip_ports_set(6)].members == {MEMBERS[6][0]: OWNER}

    def test_many_members_in_one_apply(self, ipset_adapter):
        name = vip_ports_set(4)
        members = {f"10.{i // 250}.{i % 250}.1,tcp:{80 + i % 7}": f"ns{i % 13}/vs{i}" for i in range(2000)}
        operations = create_ops(4) + [ops.AddSetMember(name, m, c) for m, c in members.items()]
        assert ipset_adapter.apply(operations) == len(operations)
        assert self.read_all(ipset_adapter)[name].members == members

    # -- failures: the failing op is named, the ones before it applied, none after it ---------

    def test_adding_a_present_member_without_replace_fails_naming_it(self, ipset_adapter, family):
        first, second, _ = MEMBERS[family]
        name = vip_ports_set(family)
        duplicate = ops.AddSetMember(name, first, OTHER_OWNER)
        with pytest.raises(OperationFailed) as failed:
            ipset_adapter.apply(
                create_ops(family) + [ops.AddSetMember(name, first, OWNER), duplicate, ops.AddSetMember(name, second, OWNER)]
            )
        assert failed.value.op == duplicate
        assert "already added" in failed.value.reason
        assert self.read_all(ipset_adapter)[name].members == {first: OWNER}

    def test_deleting_an_absent_member_fails_naming_it(self, ipset_adapter, family):
        first, second, third = MEMBERS[family]
        name = vip_ports_set(family)
        ipset_adapter.apply(create_ops(family) + [ops.AddSetMember(name, first, OWNER), ops.AddSetMember(name, third, OWNER)])
        absent = ops.DeleteSetMember(name, second)
        with pytest.raises(OperationFailed) as failed:
            ipset_adapter.apply([ops.DeleteSetMember(name, first), absent, ops.DeleteSetMember(name, third)])
        assert failed.value.op == absent
        assert "not added" in failed.value.reason
        assert self.read_all(ipset_adapter)[name].members == {third: OWNER}

    def test_a_refused_delete_in_a_long_run_stops_the_run_there(self, ipset_adapter):
        name = vip_ports_set(4)
        members = [f"10.1.{i // 250}.{i % 250},tcp:80" for i in range(300)]
        ipset_adapter.apply(create_ops(4) + [ops.AddSetMember(name, m, OWNER) for m in members])
        absent = ops.DeleteSetMember(name, "10.2.0.1,tcp:80")
        deletes = [ops.DeleteSetMember(name, m) for m in members[:150]] + [absent] + [ops.DeleteSetMember(name, m) for m in members[150:]]
        with pytest.raises(OperationFailed) as failed:
            ipset_adapter.apply(deletes)
        assert failed.value.op == absent
        assert self.read_all(ipset_adapter)[name].members == {m: OWNER for m in members[150:]}

    def test_adds_and_deletes_apply_in_the_order_given(self, ipset_adapter, family):
        """Deleting and adding the same member, in both orders, in one apply; the accept set's own
        op kinds (subclasses) and a replaced comment among them."""
        first, second, third = MEMBERS[family]
        name = vip_ports_set(family)
        ipset_adapter.apply(create_ops(family) + [ops.AddSetMember(name, first, OWNER), ops.AddSetMember(name, second, OWNER)])
        operations = [
            ops.DeleteSetMember(name, first),
            ops.AddAcceptMember(name, first, OTHER_OWNER),
            ops.AddSetMember(name, third, OWNER),
            ops.DeleteAcceptMember(name, third),
            ops.AddSetMember(name, second, "", replace=True),
            ops.DeleteSetMember(name, second),
            ops.AddSetMember(name, second, OTHER_OWNER),
            ops.AddSetMember(vips_set(family), VIP[family], OWNER),
        ]
        assert ipset_adapter.apply(operations) == len(operations)
        found = self.read_all(ipset_adapter)
        assert found[name].members == {first: OTHER_OWNER, second: OTHER_OWNER}
        assert found[vips_set(family)].members == {VIP[family]: OWNER}

    def test_a_refused_add_after_deletes_leaves_the_deletes_and_nothing_after_it(self, ipset_adapter, family):
        first, second, third = MEMBERS[family]
        name = vip_ports_set(family)
        ipset_adapter.apply(create_ops(family) + [ops.AddSetMember(name, m, OWNER) for m in (first, second, third)])
        duplicate = ops.AddSetMember(name, third, OTHER_OWNER)
        with pytest.raises(OperationFailed) as failed:
            ipset_adapter.apply([ops.DeleteSetMember(name, first), duplicate, ops.DeleteSetMember(name, second)])
        assert failed.value.op == duplicate
        assert self.read_all(ipset_adapter)[name].members == {second: OWNER, third: OWNER}

    def test_deleting_from_a_missing_set_fails_naming_it(self, ipset_adapter, family):
        ipset_adapter.apply([create_ops(family)[1]])
        orphan = ops.DeleteSetMember(vip_ports_set(family), MEMBERS[family][0])
        with pytest.raises(OperationFailed) as failed:
            ipset_adapter.apply([orphan, create_ops(family)[0]])
        assert failed.value.op == orphan
        assert set(self.read_all(ipset_adapter)) == {vips_set(family)}

    def test_creating_an_existing_set_fails_naming_it(self, ipset_adapter, family):
        ipset_adapter.apply(create_ops(family))
        again = create_ops(family)[0]
        with pytest.raises(OperationFailed) as failed:
            ipset_adapter.apply([again, ops.AddSetMember(vip_ports_set(family), MEMBERS[family][0], OWNER)])
        assert failed.value.op == again
        assert self.read_all(ipset_adapter)[vip_ports_set(family)].members == {}

    def test_adding_to_a_missing_set_fails_naming_it(self, ipset_adapter, family):
        orphan = ops.AddSetMember(vip_ports_set(family), MEMBERS[family][0], OWNER)
        with pytest.raises(OperationFailed) as failed:
            ipset_adapter.apply([create_ops(family)[1], orphan, create_ops(family)[0]])
        assert failed.value.op == orphan
        assert set(self.read_all(ipset_adapter)) == {vips_set(family)}

    def test_a_comment_of_255_bytes_reads_back_whole(self, ipset_adapter, family):
        name, member = vip_ports_set(family), MEMBERS[family][0]
        longest = "n" * 63 + "/" + "x" * 191  # 255 bytes: what the kernel keeps at most
        assert ipset_adapter.apply(create_ops(family) + [ops.AddSetMember(name, member, longest)]) == 3
        assert self.read_all(ipset_adapter)[name].members == {member: longest}

    def test_a_comment_over_255_bytes_is_refused_naming_it(self, ipset_adapter, family):
        """A 63-character namespace and a 253-character name make a 317-byte ref: the kernel refuses it
        as a comment (core.desired shortens such a ref, see ipset_comment)."""
        name, (first, second, _) = vip_ports_set(family), MEMBERS[family]
        too_long = ops.AddSetMember(name, second, "n" * 63 + "/" + "x" * 253)
        with pytest.raises(OperationFailed) as failed:
            ipset_adapter.apply(create_ops(family) + [ops.AddSetMember(name, first, OWNER), too_long])
        assert failed.value.op == too_long
        assert failed.value.reason == "an ipset comment is at most 255 characters"
        assert self.read_all(ipset_adapter)[name].members == {first: OWNER}

    def test_destroying_a_missing_set_fails_naming_it(self, ipset_adapter, family):
        missing = ops.DestroySet(vips_set(family))
        with pytest.raises(OperationFailed) as failed:
            ipset_adapter.apply([missing])
        assert failed.value.op == missing

    # -- sourceRanges: hash:ip,port,net members, host prefixes spelled without their length ----

    def test_source_range_members_read_back_as_ipset_save_spells_them(self, ipset_adapter, family):
        name = NAMES.set_name(NAMES.source_cidr_set, family)
        members = {
            4: ("169.254.11.2,tcp:80,10.0.0.0/8", "169.254.11.2,udp:53,192.0.2.7", "169.254.11.2,tcp:80,128.0.0.0/1"),
            6: ("fd00::1,tcp:80,fd01::/64", "fd00::1,udp:53,2001:db8::7", "fd00::1,tcp:80,8000::/1"),
        }[family]
        written = ipset_adapter.apply(
            [ops.CreateSet(IPSet(name, "hash:ip,port,net", family))]  # type: ignore[arg-type]
            + [ops.AddSetMember(name, member, OWNER) for member in members]
        )
        assert written == 4
        found = self.read_all(ipset_adapter)[name]
        assert (found.kind, found.members) == ("hash:ip,port,net", {member: OWNER for member in members})
        assert ipset_adapter.apply([ops.DeleteSetMember(name, members[1])]) == 1
        assert self.read_all(ipset_adapter)[name].members == {members[0]: OWNER, members[2]: OWNER}

    def test_many_source_range_members_in_one_apply(self, ipset_adapter):
        """A run long enough to go over netlink where the real adapter has it."""
        name = NAMES.source_cidr_set
        members = {f"10.9.{i // 250}.{i % 250},tcp:80,{10 + i % 50}.{i % 7}.0.0/16": OWNER for i in range(600)}
        operations = [ops.CreateSet(IPSet(name, "hash:ip,port,net", 4))] + [ops.AddSetMember(name, m, c) for m, c in members.items()]  # type: ignore[arg-type]
        assert ipset_adapter.apply(operations) == len(operations)
        assert self.read_all(ipset_adapter)[name].members == members
