"""The real IPTablesKernel on both backends: the shared contract, plus what only a real host shows.

Foreign chains and rules are made with the iptables CLI of the same backend and
checked with its iptables-save; backend detection, the xtables lock and a missing
ip6tables are exercised here too.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.contracts import apply_in_order
from tests.contracts.iptables_contract import (
    CONSTANT_RULES_GOLDEN,
    NAMES,
    OWNED,
    SSH_RULE,
    IPTablesContract,
    constant_sets,
    filter_chain,
    render_save_rules,
    vsop_save_rules,
)
from tests.golden import GOLDEN, check_golden
from vsop.adapters.base import OperationFailed
from vsop.adapters.ipset import IPSetKernel
from vsop.adapters.iptables import IPTablesKernel, detect_backend
from vsop.core import ops
from vsop.core.desired import constant_chains, constant_jumps
from vsop.core.plan import plan
from vsop.core.state import ChainKey, Jump, KernelState


class BuiltinChains:
    """A built-in chain as this backend's iptables-save prints it, and foreign rules by its CLI."""

    def __init__(self, backend: str):
        self.backend = backend

    def rules(self, family: int, table: str, chain: str) -> list[str]:
        prefix = f"-A {chain} "
        return [line[len(prefix):] for line in save(self.backend, family, table).splitlines() if line.startswith(prefix)]

    def append(self, family: int, table: str, chain: str, rule: str) -> None:
        cli(self.backend, family, "-t", table, "-A", chain, *rule.split())


@pytest.fixture
def builtin_chain(iptables_backend: str) -> BuiltinChains:
    return BuiltinChains(iptables_backend)


class TestIPTablesKernel(IPTablesContract):
    pass


def tool(family: int) -> str:
    return "iptables" if family == 4 else "ip6tables"


def cli(backend: str, family: int, *arguments: str) -> None:
    subprocess.run([f"{tool(family)}-{backend}", "-w", *arguments], check=True, capture_output=True, text=True)


def save(backend: str, family: int, table: str) -> str:
    return subprocess.run(
        [f"{tool(family)}-{backend}-save", "-t", table], check=True, capture_output=True, text=True
    ).stdout


def foreign_lines(backend: str, family: int) -> list[str]:
    """Everything in nat and filter that is not vsop's, without comments and counters."""
    lines = []
    for table in ("nat", "filter"):
        for line in save(backend, family, table).splitlines():
            if line.startswith("#") or "VSOP" in line:
                continue
            lines.append(re.sub(r"\[\d+:\d+\]", "", line))
    return lines


def add_foreign_rules(backend: str, family: int) -> None:
    cli(backend, family, "-t", "nat", "-N", "FOREIGN-NAT")
    cli(backend, family, "-t", "nat", "-A", "FOREIGN-NAT", "-j", "RETURN")
    cli(backend, family, "-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN-NAT")
    cli(backend, family, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "8080", "-j", "RETURN")
    # Names a vsop chain inside a comment only: a foreign rule, not a jump into vsop's chain.
    cli(backend, family, "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", f"see -j {NAMES.postrouting_chain}", "-j", "RETURN")
    cli(backend, family, "-t", "filter", "-N", "FOREIGN-FILTER")
    cli(backend, family, "-t", "filter", "-A", "FOREIGN-FILTER", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    cli(backend, family, "-t", "filter", "-A", "INPUT", "-j", "FOREIGN-FILTER")
    cli(backend, family, "-t", "filter", "-P", "FORWARD", "DROP")


def desired_constants(family: int) -> KernelState:
    return KernelState(ipsets=constant_sets(family), chains=constant_chains(NAMES, family), jumps=constant_jumps(NAMES, family))


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_foreign_chains_and_rules_survive_every_operation(iptables_backend: str, family: int):
    add_foreign_rules(iptables_backend, family)
    before = foreign_lines(iptables_backend, family)
    ipsets, iptables = IPSetKernel(), IPTablesKernel(iptables_backend)
    adapters = (ipsets, iptables)

    apply_in_order(plan(desired_constants(family), KernelState(), NAMES).ops, adapters)
    assert foreign_lines(iptables_backend, family) == before
    chains, jumps = iptables.read(OWNED)
    assert (chains, jumps) == (constant_chains(NAMES, family), constant_jumps(NAMES, family))

    key = filter_chain(family)
    iptables.apply([ops.WriteChain(key, (SSH_RULE,), exists=True)])
    assert foreign_lines(iptables_backend, family) == before
    iptables.apply([ops.DeleteJump(j) for j in sorted(jumps) if j.table == "filter"] + [ops.DeleteChain(key)])
    assert foreign_lines(iptables_backend, family) == before

    observed = KernelState(ipsets=ipsets.read(NAMES.owned_set_names()), chains=iptables.read(OWNED)[0], jumps=iptables.read(OWNED)[1])
    apply_in_order(plan(KernelState(), observed, NAMES).ops, adapters)
    assert foreign_lines(iptables_backend, family) == before
    assert iptables.read(OWNED) == ({}, frozenset())


def test_iptables_save_prints_the_constant_rules_as_the_golden_file_says(iptables_backend: str):
    """The unit tier checks core.desired's texts against this file; here the kernel's own words."""
    adapters = (IPSetKernel(), IPTablesKernel(iptables_backend))
    rules: dict[tuple[int, str, str], list[str]] = {}
    for family in (4, 6):
        apply_in_order(plan(desired_constants(family), KernelState(), NAMES).ops, adapters)
        for table in ("filter", "nat"):
            rules.update(vsop_save_rules(family, table, save(iptables_backend, family, table)))
    check_golden(GOLDEN / CONSTANT_RULES_GOLDEN, render_save_rules(rules))


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_jumps_go_to_the_top_of_the_built_in_chain(iptables_backend: str, family: int):
    add_foreign_rules(iptables_backend, family)
    apply_in_order(plan(desired_constants(family), KernelState(), NAMES).ops, (IPSetKernel(), IPTablesKernel(iptables_backend)))
    for table, chain in (("nat", "PREROUTING"), ("nat", "OUTPUT"), ("nat", "POSTROUTING"), ("filter", "INPUT")):
        first = next(line for line in save(iptables_backend, family, table).splitlines() if line.startswith(f"-A {chain} "))
        assert "-j VSOP-" in first, f"{table} {chain}: {first}"


def test_deleting_a_jump_removes_every_copy_of_it(iptables_backend: str):
    iptables = IPTablesKernel(iptables_backend)
    into_filter = next(j for j in constant_jumps(NAMES, 4) if j.table == "filter" and j.chain == "INPUT")
    iptables.apply([ops.WriteChain(filter_chain(4), ()), ops.AddJump(into_filter)])
    cli(iptables_backend, 4, "-A", "INPUT", "-j", "ACCEPT")
    subprocess.run(
        f"{tool(4)}-{iptables_backend} -w -A INPUT {into_filter.rule}", shell=True, check=True, capture_output=True
    )
    assert save(iptables_backend, 4, "filter").count(into_filter.rule) == 2
    assert iptables.read(OWNED)[1] == {into_filter}
    iptables.apply([ops.DeleteJump(into_filter)])
    assert into_filter.rule not in save(iptables_backend, 4, "filter")
    assert "-A INPUT -j ACCEPT" in save(iptables_backend, 4, "filter")


def test_each_backend_writes_only_its_own_tables(iptables_backend: str):
    other = "legacy" if iptables_backend == "nft" else "nft"
    apply_in_order(plan(desired_constants(4), KernelState(), NAMES).ops, (IPSetKernel(), IPTablesKernel(iptables_backend)))
    assert "VSOP" in save(iptables_backend, 4, "nat")
    assert "VSOP" not in save(other, 4, "nat") + save(other, 4, "filter")
    assert IPTablesKernel(other).read(OWNED) == ({}, frozenset())


def test_a_failure_carries_restores_reason(iptables_backend: str):
    missing_set = ops.WriteChain(filter_chain(4), ("-m set --match-set NO-SUCH-SET dst -j ACCEPT",))
    with pytest.raises(OperationFailed) as failed:
        IPTablesKernel(iptables_backend).apply([missing_set])
    assert failed.value.op == missing_set
    assert "NO-SUCH-SET" in failed.value.reason
    assert "Try `" not in failed.value.reason


def test_legacy_waits_for_the_xtables_lock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    # A private lock file: holding the host's /run/xtables.lock would stall its firewall tools.
    lock_path = tmp_path / "xtables.lock"
    monkeypatch.setenv("XTABLES_LOCKFILE", str(lock_path))
    holder = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    released: list[float] = []

    def release_lock() -> None:
        released.append(time.monotonic())
        os.close(holder)

    release = threading.Timer(1.0, release_lock)
    release.start()
    try:
        IPTablesKernel("legacy").apply([ops.WriteChain(filter_chain(4), (SSH_RULE,))])
        finished = time.monotonic()  # taken before join(): an apply that did not wait returns while the lock is held
    finally:
        release.join()
    assert released and finished >= released[0], "the apply returned while the lock was still held"
    assert IPTablesKernel("legacy").read(OWNED)[0] == {filter_chain(4): (SSH_RULE,)}


def test_without_ip6tables_ipv6_reads_as_empty_and_writes_fail(tmp_path: Path):
    for name in ("iptables-nft-save", "iptables-nft-restore"):
        (tmp_path / name).symlink_to("/usr/sbin/xtables-nft-multi")
    filter_chain6 = ChainKey(6, "filter", NAMES.filter_chain)
    IPTablesKernel("nft").apply([ops.WriteChain(filter_chain6, ()), ops.WriteChain(filter_chain(4), ())])
    iptables = IPTablesKernel("nft", search_path=str(tmp_path))
    assert not iptables.ipv6_available()
    assert iptables.read(OWNED) == ({filter_chain(4): ()}, frozenset())
    write6 = ops.WriteChain(filter_chain6, (SSH_RULE,))
    with pytest.raises(OperationFailed) as failed:
        iptables.apply([ops.WriteChain(filter_chain(4), (SSH_RULE,)), write6])
    assert failed.value.op == write6
    assert "IPv6" in failed.value.reason
    assert iptables.read(OWNED)[0] == {filter_chain(4): (SSH_RULE,)}


# -- backend detection, as kubernetes-sigs/iptables-wrappers --------------------------------


def test_an_empty_host_is_taken_for_nft():
    assert detect_backend() == "nft"


def test_a_host_with_legacy_rules_only_is_legacy():
    cli("legacy", 4, "-A", "INPUT", "-j", "ACCEPT")
    assert detect_backend() == "legacy"


def test_the_backend_with_more_rules_wins():
    cli("legacy", 4, "-A", "INPUT", "-j", "ACCEPT")
    for port in ("1", "2"):
        cli("nft", 6, "-A", "INPUT", "-p", "tcp", "--dport", port, "-j", "ACCEPT")
    assert detect_backend() == "nft"


def test_kubelets_hint_chain_outweighs_rule_counts():
    cli("legacy", 4, "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    for port in ("1", "2", "3"):
        cli("nft", 4, "-A", "INPUT", "-p", "tcp", "--dport", port, "-j", "ACCEPT")
    assert detect_backend() == "legacy"
    cli("nft", 6, "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
    assert detect_backend() == "nft"


def test_the_adapter_detects_its_backend_once_on_first_use():
    cli("legacy", 4, "-A", "INPUT", "-j", "ACCEPT")
    iptables = IPTablesKernel()
    iptables.apply([ops.WriteChain(filter_chain(4), ())])
    assert iptables.backend == "legacy"
    assert "VSOP-FILTER" in save("legacy", 4, "filter")


def test_a_failure_found_only_at_commit_is_pinned_to_its_op(iptables_backend: str):
    """Legacy names the COMMIT line when the kernel refuses the table; the op is found by replaying."""
    postrouting = ChainKey(4, "nat", NAMES.postrouting_chain)
    masquerade_from_output = ops.AddJump(Jump(4, "nat", "OUTPUT", f"-j {NAMES.postrouting_chain}"))
    iptables = IPTablesKernel(iptables_backend)
    with pytest.raises(OperationFailed) as failed:
        iptables.apply(
            [
                ops.WriteChain(postrouting, ("-j MASQUERADE",)),
                masquerade_from_output,
                ops.AddJump(Jump(4, "nat", "POSTROUTING", f"-j {NAMES.postrouting_chain}")),
            ]
        )
    assert failed.value.op == masquerade_from_output
    assert iptables.read(OWNED) == ({postrouting: ("-j MASQUERADE",)}, frozenset())
