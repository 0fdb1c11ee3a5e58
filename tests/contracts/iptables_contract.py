"""What every IPTablesAdapter does, asserted through its read(): the real one and the fake alike.

The `iptables_adapter` fixture is an adapter over empty tables. Tests whose rules name
an ipset also use `ipset_adapter` to create it, so the two must act on one kernel (the
fakes on one shared state).
Must not import: kopf, kubernetes, jinja2, or any real adapter.
"""

from __future__ import annotations

import pytest

from tests.contracts import apply_in_order
from vsop.adapters.base import OperationFailed
from vsop.core import ops
from vsop.core.desired import SET_KINDS, constant_chains, constant_jumps
from vsop.core.plan import plan
from vsop.core.state import ChainKey, IPSet, Jump, KernelState, Names

NAMES = Names()
OWNED = NAMES.owned_chains()
MARK_RULE = f"-j MARK --set-xmark {NAMES.mark}"
MASQUERADE_RULE = f"-m mark --mark {NAMES.mark} -j MASQUERADE"
SSH_RULE = "-p tcp -m tcp --dport 22 -j ACCEPT"
DNS_RULE = "-p udp -m udp --dport 53 -j ACCEPT"


def mark_chain(family: int) -> ChainKey:
    return ChainKey(family, "nat", NAMES.mark_chain)  # type: ignore[arg-type]


def postrouting_chain(family: int) -> ChainKey:
    return ChainKey(family, "nat", NAMES.postrouting_chain)  # type: ignore[arg-type]


def filter_chain(family: int) -> ChainKey:
    return ChainKey(family, "filter", NAMES.filter_chain)  # type: ignore[arg-type]


def services_chain(family: int) -> ChainKey:
    return ChainKey(family, "nat", NAMES.services_chain)  # type: ignore[arg-type]


def jump(family: int, table: str, chain: str, target: str) -> Jump:
    return Jump(family, table, chain, f'-m comment --comment "{NAMES.comment}: test" -j {target}')  # type: ignore[arg-type]


def constant_sets(family: int) -> dict[str, IPSet]:
    return {
        NAMES.set_name(getattr(NAMES, attribute), family): IPSet(NAMES.set_name(getattr(NAMES, attribute), family), kind, family)  # type: ignore[arg-type]
        for attribute, kind in SET_KINDS
    }


class IPTablesContract:
    """Needs fixture `iptables_adapter` (empty tables) and, for rules naming sets, `ipset_adapter`;
    for the jumps' position, `builtin_chain`: an object with `rules(family, table, chain)` (the
    built-in chain's rules in order, as iptables-save prints them after "-A CHAIN ") and
    `append(family, table, chain, rule)` (a rule of someone else's, appended)."""

    @pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
    def family(self, request: pytest.FixtureRequest) -> int:
        return request.param

    def test_reads_nothing_from_empty_tables(self, iptables_adapter):
        assert iptables_adapter.read(OWNED) == ({}, frozenset())

    def test_writes_a_chain_with_its_rules(self, iptables_adapter, family):
        written = iptables_adapter.apply(
            [ops.WriteChain(mark_chain(family), (MARK_RULE,)), ops.WriteChain(filter_chain(family), (SSH_RULE, DNS_RULE))]
        )
        assert written == 2
        assert iptables_adapter.read(OWNED) == (
            {mark_chain(family): (MARK_RULE,), filter_chain(family): (SSH_RULE, DNS_RULE)},
            frozenset(),
        )

    def test_writes_an_empty_chain(self, iptables_adapter, family):
        iptables_adapter.apply([ops.WriteChain(filter_chain(family), ())])
        assert iptables_adapter.read(OWNED)[0] == {filter_chain(family): ()}

    def test_rewriting_a_chain_replaces_its_rules(self, iptables_adapter, family):
        key = filter_chain(family)
        iptables_adapter.apply([ops.WriteChain(key, (SSH_RULE, DNS_RULE))])
        iptables_adapter.apply([ops.WriteChain(key, (DNS_RULE, SSH_RULE, MASQUERADE_RULE.replace("MASQUERADE", "DROP")), exists=True)])
        assert iptables_adapter.read(OWNED)[0] == {key: (DNS_RULE, SSH_RULE, f"-m mark --mark {NAMES.mark} -j DROP")}
        iptables_adapter.apply([ops.WriteChain(key, (SSH_RULE,), exists=True)])
        assert iptables_adapter.read(OWNED)[0] == {key: (SSH_RULE,)}
        iptables_adapter.apply([ops.WriteChain(key, (), exists=True)])
        assert iptables_adapter.read(OWNED)[0] == {key: ()}

    def test_the_same_chain_name_in_two_tables_and_families_stays_apart(self, iptables_adapter):
        keys = [ChainKey(f, t, NAMES.filter_chain) for f in (4, 6) for t in ("nat", "filter")]  # type: ignore[arg-type]
        rules = {key: (f"-m mark --mark {0x100 * (index + 1):#x} -j RETURN",) for index, key in enumerate(keys)}
        assert iptables_adapter.apply([ops.WriteChain(key, rules[key]) for key in keys]) == 4
        assert iptables_adapter.read(OWNED)[0] == rules

    def test_constant_rules_read_back_exactly_so_a_second_sync_writes_nothing(self, iptables_adapter, ipset_adapter, family):
        """The rule texts of core.desired must be what iptables-save prints, or every sync rewrites them."""
        desired = KernelState(
            ipsets=constant_sets(family),
            chains=constant_chains(NAMES, family),
            jumps=constant_jumps(NAMES, family),
        )
        adapters = (ipset_adapter, iptables_adapter)
        first = plan(desired, KernelState(), NAMES)
        assert apply_in_order(first.ops, adapters) == len(first.ops)

        chains, jumps = iptables_adapter.read(OWNED)
        assert chains == constant_chains(NAMES, family)
        assert jumps == constant_jumps(NAMES, family)
        observed = KernelState(ipsets=ipset_adapter.read(NAMES.owned_set_names()), chains=chains, jumps=jumps)
        assert plan(desired, observed, NAMES).ops == ()

        # And back to nothing: what cleanup does.
        teardown = plan(KernelState(), observed, NAMES)
        apply_in_order(teardown.ops, adapters)
        assert iptables_adapter.read(OWNED) == ({}, frozenset())
        assert ipset_adapter.read(NAMES.owned_set_names()) == {}

    def test_adds_and_deletes_jumps(self, iptables_adapter, family):
        into_filter = jump(family, "filter", "INPUT", NAMES.filter_chain)
        into_postrouting = jump(family, "nat", "POSTROUTING", NAMES.postrouting_chain)
        # MASQUERADE is valid only when reached from POSTROUTING: the kernel refuses it elsewhere.
        from_output = jump(family, "nat", "OUTPUT", NAMES.mark_chain)
        iptables_adapter.apply(
            [
                ops.WriteChain(filter_chain(family), (SSH_RULE,)),
                ops.WriteChain(postrouting_chain(family), (MASQUERADE_RULE,)),
                ops.WriteChain(mark_chain(family), (MARK_RULE,)),
                ops.AddJump(into_filter),
                ops.AddJump(into_postrouting),
                ops.AddJump(from_output),
            ]
        )
        assert iptables_adapter.read(OWNED)[1] == {into_filter, into_postrouting, from_output}
        assert iptables_adapter.apply([ops.DeleteJump(from_output), ops.DeleteJump(into_filter)]) == 2
        assert iptables_adapter.read(OWNED)[1] == {into_postrouting}

    def test_deletes_chains(self, iptables_adapter, family):
        iptables_adapter.apply(
            [
                ops.WriteChain(mark_chain(family), (MARK_RULE,)),
                ops.WriteChain(services_chain(family), (f"-j {NAMES.mark_chain}",)),
                ops.WriteChain(filter_chain(family), (SSH_RULE,)),
            ]
        )
        # The referring chain first, then the one it jumps to, in one run.
        assert iptables_adapter.apply([ops.DeleteChain(services_chain(family)), ops.DeleteChain(mark_chain(family))]) == 2
        assert iptables_adapter.read(OWNED)[0] == {filter_chain(family): (SSH_RULE,)}

    def test_reads_only_the_chains_it_is_asked_for(self, iptables_adapter, family):
        other = ChainKey(family, "filter", "NOT-VSOP")  # type: ignore[arg-type]
        into_other = jump(family, "filter", "INPUT", "NOT-VSOP")
        iptables_adapter.apply(
            [ops.WriteChain(other, (SSH_RULE,)), ops.WriteChain(filter_chain(family), ()), ops.AddJump(into_other)]
        )
        assert iptables_adapter.read(OWNED) == ({filter_chain(family): ()}, frozenset())
        assert iptables_adapter.read(frozenset({"NOT-VSOP"})) == ({other: (SSH_RULE,)}, frozenset({into_other}))

    # -- failures: the failing op is named, the ones before it applied, none after it ---------

    def test_deleting_a_missing_chain_fails_naming_it(self, iptables_adapter, family):
        before = ops.WriteChain(filter_chain(family), (SSH_RULE,))
        missing = ops.DeleteChain(ChainKey(family, "filter", NAMES.services_chain))  # type: ignore[arg-type]
        after = ops.WriteChain(ChainKey(family, "filter", NAMES.mark_chain), ())  # type: ignore[arg-type]
        with pytest.raises(OperationFailed) as failed:
            iptables_adapter.apply([before, missing, after])
        assert failed.value.op == missing
        assert NAMES.services_chain in failed.value.reason and "does not exist" in failed.value.reason, failed.value.reason
        assert iptables_adapter.read(OWNED)[0] == {filter_chain(family): (SSH_RULE,)}

    def test_jumping_to_a_missing_chain_fails_naming_it(self, iptables_adapter, family):
        before = ops.WriteChain(mark_chain(family), (MARK_RULE,))
        dangling = ops.AddJump(jump(family, "nat", "PREROUTING", NAMES.services_chain))
        with pytest.raises(OperationFailed) as failed:
            iptables_adapter.apply([before, dangling, ops.AddJump(jump(family, "nat", "OUTPUT", NAMES.mark_chain))])
        assert failed.value.op == dangling
        assert iptables_adapter.read(OWNED) == ({mark_chain(family): (MARK_RULE,)}, frozenset())

    def test_a_rule_jumping_to_a_missing_chain_fails_naming_its_chain(self, iptables_adapter, family):
        before = ops.WriteChain(filter_chain(family), (SSH_RULE,))
        dangling = ops.WriteChain(services_chain(family), (f"-j {NAMES.mark_chain}",))
        with pytest.raises(OperationFailed) as failed:
            iptables_adapter.apply([before, dangling])
        assert failed.value.op == dangling
        assert iptables_adapter.read(OWNED)[0] == {filter_chain(family): (SSH_RULE,)}

    def test_deleting_an_absent_jump_fails_naming_it(self, iptables_adapter, family):
        present = jump(family, "filter", "INPUT", NAMES.filter_chain)
        absent = jump(family, "filter", "OUTPUT", NAMES.filter_chain)
        iptables_adapter.apply([ops.WriteChain(filter_chain(family), ()), ops.AddJump(present)])
        with pytest.raises(OperationFailed) as failed:
            iptables_adapter.apply([ops.DeleteJump(absent), ops.DeleteJump(present)])
        assert failed.value.op == ops.DeleteJump(absent)
        assert iptables_adapter.read(OWNED)[1] == {present}

    def test_deleting_a_chain_still_jumped_to_fails_and_keeps_it(self, iptables_adapter, family):
        into_filter = jump(family, "filter", "INPUT", NAMES.filter_chain)
        iptables_adapter.apply([ops.WriteChain(filter_chain(family), (SSH_RULE,)), ops.AddJump(into_filter)])
        busy = ops.DeleteChain(filter_chain(family))
        with pytest.raises(OperationFailed) as failed:
            iptables_adapter.apply([busy])
        assert failed.value.op == busy
        assert iptables_adapter.read(OWNED) == ({filter_chain(family): (SSH_RULE,)}, frozenset({into_filter}))

    def test_a_failure_in_a_later_table_keeps_the_earlier_tables_written(self, iptables_adapter, family):
        nat_first = ops.WriteChain(mark_chain(family), (MARK_RULE,))
        filter_fails = ops.DeleteChain(filter_chain(family))
        nat_after = ops.WriteChain(postrouting_chain(family), (MASQUERADE_RULE,))
        with pytest.raises(OperationFailed) as failed:
            iptables_adapter.apply([nat_first, filter_fails, nat_after])
        assert failed.value.op == filter_fails
        assert iptables_adapter.read(OWNED)[0] == {mark_chain(family): (MARK_RULE,)}

    def test_a_rule_naming_a_missing_set_fails_naming_its_chain(self, iptables_adapter, family):
        missing_set = f"-m set --match-set {NAMES.set_name(NAMES.vips_set, family)} dst -j ACCEPT"
        failing = ops.WriteChain(filter_chain(family), (SSH_RULE, missing_set))
        with pytest.raises(OperationFailed) as failed:
            iptables_adapter.apply([ops.WriteChain(mark_chain(family), (MARK_RULE,)), failing])
        assert failed.value.op == failing
        assert iptables_adapter.read(OWNED)[0] == {mark_chain(family): (MARK_RULE,)}

    def test_a_set_named_by_a_rule_cannot_be_destroyed(self, iptables_adapter, ipset_adapter, family):
        vips = NAMES.set_name(NAMES.vips_set, family)
        ipset_adapter.apply([ops.CreateSet(IPSet(vips, "hash:ip", family))])  # type: ignore[arg-type]
        rules = (f"-m set --match-set {vips} dst -j ACCEPT",)
        iptables_adapter.apply([ops.WriteChain(filter_chain(family), rules)])
        with pytest.raises(OperationFailed) as failed:
            ipset_adapter.apply([ops.DestroySet(vips)])
        assert failed.value.op == ops.DestroySet(vips)
        assert set(ipset_adapter.read(frozenset({vips}))) == {vips}
        iptables_adapter.apply([ops.DeleteChain(filter_chain(family))])
        ipset_adapter.apply([ops.DestroySet(vips)])
        assert ipset_adapter.read(frozenset({vips})) == {}

    # -- jumps: where they go, and how many ------------------------------------------------------

    def test_a_jump_goes_first_in_its_chain_ahead_of_rules_already_there(self, iptables_adapter, builtin_chain, family):
        """vsop's jump is inserted (-I), so a foreign ACCEPT or DROP further down cannot shadow it."""
        into_filter = jump(family, "filter", "INPUT", NAMES.filter_chain)
        builtin_chain.append(family, "filter", "INPUT", SSH_RULE)
        iptables_adapter.apply([ops.WriteChain(filter_chain(family), (DNS_RULE,)), ops.AddJump(into_filter)])
        assert builtin_chain.rules(family, "filter", "INPUT") == [into_filter.rule, SSH_RULE]

    def test_a_jump_added_twice_is_there_twice_and_one_delete_removes_every_copy(self, iptables_adapter, builtin_chain, family):
        """A crashed run may leave a copy: the read shows one Jump, and deleting it leaves none behind."""
        into_filter = jump(family, "filter", "INPUT", NAMES.filter_chain)
        builtin_chain.append(family, "filter", "INPUT", SSH_RULE)
        iptables_adapter.apply([ops.WriteChain(filter_chain(family), ()), ops.AddJump(into_filter), ops.AddJump(into_filter)])
        assert builtin_chain.rules(family, "filter", "INPUT") == [into_filter.rule, into_filter.rule, SSH_RULE]
        assert iptables_adapter.read(OWNED)[1] == {into_filter}
        assert iptables_adapter.apply([ops.DeleteJump(into_filter)]) == 1
        assert builtin_chain.rules(family, "filter", "INPUT") == [SSH_RULE]
        assert iptables_adapter.read(OWNED)[1] == frozenset()


# --- What iptables-save prints for vsop's constant rules -------------------------------------
# The fake stores rule texts as written, so on the fake "the constant rules read back exactly" is
# true of any text. The texts iptables-save really prints are kept in a golden file instead:
# the unit tier checks core.desired's texts against it, the netns tier checks it against both
# real backends' iptables-save. A rule text that iptables would print otherwise fails one of them.

CONSTANT_RULES_GOLDEN = "iptables/constant-rules.save"


def constant_rules_text() -> str:
    """core.desired's constant chains and jumps, both families, in iptables-save's words."""
    rules: dict[tuple[int, str, str], list[str]] = {}
    for family in (4, 6):
        for key, chain_rules in constant_chains(NAMES, family).items():
            rules.setdefault((family, key.table, key.chain), []).extend(chain_rules)
        for j in sorted(constant_jumps(NAMES, family), key=lambda j: (j.table, j.chain, j.rule)):
            rules.setdefault((family, j.table, j.chain), []).append(j.rule)
    return render_save_rules(rules)


def render_save_rules(rules: dict[tuple[int, str, str], list[str]]) -> str:
    """One block per family and table, chains by name, each chain's rules in their order."""
    lines: list[str] = []
    for family, table in sorted({(f, t) for f, t, _ in rules}):
        lines.append(f"# ipv{family} *{table}")
        for (_, _, chain), chain_rules in sorted(item for item in rules.items() if item[0][:2] == (family, table)):
            lines.extend(f"-A {chain} {rule}" for rule in chain_rules)
    return "\n".join(lines) + "\n"


def vsop_save_rules(family: int, table: str, save_text: str) -> dict[tuple[int, str, str], list[str]]:
    """From one table's iptables-save output: every rule of a vsop chain and every jump into one."""
    rules: dict[tuple[int, str, str], list[str]] = {}
    for line in save_text.splitlines():
        if not line.startswith("-A "):
            continue
        chain, _, rule = line[3:].partition(" ")
        if chain in OWNED or rule.rsplit(" -j ", 1)[-1] in OWNED:
            rules.setdefault((family, table, chain), []).append(rule)
    return rules
